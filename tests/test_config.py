import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """
models: {student: s, teacher: t}
data: {train_path: a.jsonl, eval_path: b.jsonl}
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert cfg.models.student and cfg.models.teacher


@pytest.mark.parametrize("plan", sorted((ROOT / "configs" / "plans").glob("gpus-*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("pair", ["qwen2.5-3b-to-0.5b.yaml", "qwen2.5-3b-to-1.5b.yaml"])
def test_real_pairs_with_every_resource_plan_follow_the_paper(pair, plan):
    cfg = load_config(ROOT / "configs" / pair, [str(plan), "method=dudi"])
    gpus = int(plan.stem.removeprefix("gpus-"))
    used = (
        cfg.learner.num_ranks * cfg.learner.num_gpus_per_rank
        + cfg.rollout.num_workers * cfg.rollout.num_gpus_per_worker
        + cfg.teacher.num_replicas * cfg.teacher.num_gpus_per_replica
    )
    assert used == gpus
    assert cfg.models.teacher == "Qwen/Qwen2.5-3B-Instruct" and cfg.models.end_of_turn == "<|im_end|>"
    o = cfg.objective
    assert (o.lam, o.alpha, o.divergence, o.kd_temperature, cfg.learner.lr) == (0.5, 0.1, "rkl", 1.0, 2e-5)
    assert (cfg.distill.batch_size, cfg.distill.epochs, cfg.rollout.sampling.max_new_tokens) == (32, 3.0, 256)
    assert (cfg.rollout.sampling.temperature, cfg.rollout.sampling.top_k) == (0.9, 0)
    assert cfg.learner.dtype == "bfloat16" and cfg.learner.num_gpus_per_rank > 0


def test_overlay_files_merge_before_dotted_overrides(tmp_path):
    overlay = tmp_path / "plan.yaml"
    overlay.write_text("learner:\n  num_ranks: 2\n  lr: 0.5\n")
    cfg = load_config(write(tmp_path, MINIMAL), [str(overlay), "learner.lr=0.25"])
    assert (cfg.learner.num_ranks, cfg.learner.lr) == (2, 0.25)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write(tmp_path, MINIMAL), [str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").rglob("*.yaml")), ids=lambda p: p.name)
def test_deploy_manifests_are_valid_yaml(path):
    import yaml

    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_defaults_follow_the_design_card(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    o = cfg.learner.objective
    assert cfg.method == "dudi" and o.cross_entropy == "none" and o.kd_weight == 1.0
    assert (o.alpha, o.lam, o.divergence, o.kd_temperature, o.spin_beta) == (
        0.1,
        0.5,
        "rkl",
        1.0,
        0.1,
    )
    s = cfg.rollout.sampling
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.9, 0, 1.0, 256)
    assert cfg.rollout.max_model_len == 1024 and cfg.learner.lr == 2e-5 and cfg.distill.batch_size == 32
    assert cfg.distill.epochs == 3 and cfg.verbalizer.mode == "crosslingual"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL), ["learner.lr=1e-4", "learner.objective.divergence=jsd", "distill.steps=7"]
    )
    assert cfg.learner.lr == 1e-4 and cfg.objective.divergence == "jsd" and cfg.distill.steps == 7


def test_off_and_on_are_words_not_booleans_but_booleans_still_take_them(tmp_path):
    # YAML 1.1 reads a bare `off` as False: `routing.below_margin=off` failed validation before.
    cfg = load_config(
        write(tmp_path, MINIMAL), ["routing.below_margin=off", "distill.enabled=off", "eval.compare_teacher=yes"]
    )
    assert cfg.routing.below_margin == "off" and cfg.distill.enabled is False and cfg.eval.compare_teacher is True
    from_file = load_config(
        write(tmp_path, MINIMAL + "routing: {below_margin: off}\ncold_start: {enabled: false}\n"), []
    )
    assert from_file.routing.below_margin == "off" and from_file.cold_start.enabled is False


@pytest.mark.parametrize(
    "override, field",
    [
        ("learner.objective.lam=1.5", "learner.objective.lam"),
        ("learner.objective.divergence=kl", "learner.objective.divergence"),
        ("learner.lr=-1", "learner.lr"),
        ("cold_start.warmup_ratio=1", "cold_start.warmup_ratio"),
        ("distill.lr_schedule=exponential", "distill.lr_schedule"),
        ("verbalizer.mode=french", "verbalizer.mode"),
        ("learner.bogus=1", "learner.bogus"),
        ("rollout.sampling.temperature=hot", "rollout.sampling.temperature"),
    ],
)
def test_errors_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, MINIMAL), [override])
    assert field in str(error.value)


def test_missing_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="models"):
        load_config(write(tmp_path, "data: {train_path: a, eval_path: b}\n"))


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="distill.batch_size"):
        load_config(
            write(tmp_path, MINIMAL), ["learner.num_ranks=3", "cold_start.batch_size=33", "distill.batch_size=32"]
        )
    with pytest.raises(ConfigError, match="max_new_tokens"):
        load_config(write(tmp_path, MINIMAL), ["rollout.max_model_len=64", "rollout.sampling.max_new_tokens=64"])
    with pytest.raises(ConfigError, match="data.languages"):
        load_config(write(tmp_path, MINIMAL), ["data.languages=[xx]"])


def test_a_stage_overrides_only_the_lr_fields_it_sets(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL), ["learner.warmup_ratio=0.3", "distill.lr=0.5", "distill.lr_schedule=cosine"]
    )
    assert cfg.distill.learner_overrides() == {"lr": 0.5, "lr_schedule": "cosine"}
    assert cfg.cold_start.learner_overrides() == {}


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(write(tmp_path, MINIMAL), ["learner.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_fast_without_a_traceback(tmp_path):
    path = write(tmp_path, MINIMAL)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "train", str(path), "learner.objective.lam=2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "learner.objective.lam" in proc.stderr and "Traceback" not in proc.stderr


def test_config_import_does_not_load_torch():
    code = "import sys, orchestrator.config, orchestrator.cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


@pytest.mark.parametrize(
    "method, expected",
    [
        ("sft", {"cross_entropy": "sft", "terms": ["sft"], "mode": "none", "teacher": "model"}),
        ("dft", {"cross_entropy": "dft", "terms": ["dft"], "mode": "none"}),
        ("spin", {"terms": ["spin"], "mode": "none"}),
        ("sdft", {"terms": ["on_kd"], "mode": "english", "teacher": "ema", "divergence": "rkl"}),
        ("seqkd", {"terms": ["on_kd"], "mode": "none", "responses": "teacher", "divergence": "jsd"}),
        ("gkd", {"terms": ["off_kd", "on_kd"], "mode": "none", "divergence": "jsd", "lam": 0.5}),
        ("dudi", {"terms": ["spin", "off_kd", "on_kd"], "mode": "crosslingual", "divergence": "rkl", "alpha": 0.1}),
        ("copsd", {"terms": ["on_kd"], "mode": "privileged", "teacher": "student_start", "divergence": "fkl"}),
    ],
)
def test_each_preset_is_one_field_away(tmp_path, method, expected):
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"method={method}"])
    o = cfg.objective
    actual = {
        "cross_entropy": o.cross_entropy,
        "terms": o.terms,
        "mode": cfg.verbalizer.mode,
        "teacher": cfg.recipe.teacher,
        "responses": cfg.recipe.on_kd_responses,
        "divergence": o.divergence,
        "lam": o.lam,
        "alpha": o.alpha,
    }
    assert {k: actual[k] for k in expected} == expected
    # The per-preset config file says the same.
    assert load_config(ROOT / "configs" / f"{method}.yaml").objective == o


def test_explicit_settings_win_over_the_preset_so_ablations_are_one_field(tmp_path):
    demo = ROOT / "configs" / "demo.yaml"
    assert load_config(demo, ["learner.objective.alpha=0"]).objective.terms == ["off_kd", "on_kd"]
    assert load_config(demo, ["learner.objective.lam=1"]).objective.terms == ["spin", "on_kd"]
    assert load_config(demo, ["learner.objective.lam=0"]).objective.terms == ["spin", "off_kd"]
    assert load_config(demo, ["verbalizer.mode=none"]).verbalizer.mode == "none"
    assert not load_config(demo, ["verbalizer.include_english_target=false"]).verbalizer.include_english_target
    assert load_config(demo, ["method=gkd", "learner.objective.divergence=rkl"]).objective.divergence == "rkl"


def test_base_files_are_merged_and_unknown_methods_named(tmp_path):
    (tmp_path / "base.yaml").write_text(MINIMAL + "distill: {steps: 5, batch_size: 4}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmethod: sft\ndistill: {steps: 9}\n")
    cfg = load_config(child)
    assert (cfg.method, cfg.distill.steps, cfg.distill.batch_size) == ("sft", 9, 4)
    with pytest.raises(ConfigError, match="method"):
        load_config(child, ["method=ppo"])
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "loop.yaml")


def test_recipe_rules(tmp_path):
    with pytest.raises(ConfigError, match="verbalizer.mode=none"):
        load_config(write(tmp_path, MINIMAL), ["method=seqkd", "verbalizer.mode=english"])
    with pytest.raises(ConfigError, match="student_top_k"):
        load_config(write(tmp_path, MINIMAL), ["scoring.student_top_k=100"])
