"""The comparison benchmark's report: seeds merged per run, the tables and the chart written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def aso_cache_in_tmp(compare, tmp_path, monkeypatch):
    """ε_min is remembered on disk; each test starts without it and leaves the user's cache alone."""
    monkeypatch.setattr(compare, "ASO_CACHE", tmp_path / "aso_cache.json")
    monkeypatch.setattr(compare, "_aso_cache", {})


LANGUAGES = ["en", "th", "my"]
BUDGET = {
    "steps": 50,
    "batch_size": 32,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.1,
    "eval_every_steps": 25,
}


def write_seed(compare, compare_dir: Path, seed: int, scores: dict[str, float]) -> None:
    """One seed's records as compare_methods writes them; each language scores `v`, Burmese `v − 10`."""
    seed_dir = compare_dir / f"seed{seed}"
    seed_dir.mkdir(parents=True)

    def accuracy(v: float) -> dict[str, float]:
        return {"en": v, "th": v, "my": v - 10, "avg": v - 10 / 3}

    cold = {
        "seed": seed,
        "checkpoint": "/nowhere",
        "teacher": accuracy(90.0),
        "cold_start": accuracy(20.0),
        "seconds": 30,
        "languages": LANGUAGES,
        "eval_rows": 600,
        "cold_start_budget": {"steps": 100, "batch_size": 32, "lr": 3e-3, "lr_schedule": "cosine", "warmup_ratio": 0.1},
        "config": "configs/bench.yaml",
        "world": {"chance_exact_match_eval_set": 1.11, "teacher_misreads": "my"},
    }
    (seed_dir / "_cold_start.json").write_text(json.dumps(cold))
    for name, v in scores.items():
        curve = [{"step": 25, **accuracy(v - 5)}, {"step": 50, **accuracy(v)}]
        record = {"name": name, "seed": seed, "accuracy": accuracy(v), "curve": curve, "seconds": 60, "budget": BUDGET}
        (seed_dir / f"{compare.slug(name)}.json").write_text(json.dumps(record))


def test_report_gives_intervals_paired_tests_and_the_weak_language(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 100)  # deepsig's variance bootstrap; 1000 costs seconds a call
    # Five seeds: DuDi is SFT + 5 on every seed (a constant shift: significant), GKD equals DuDi (no difference),
    # and the seed effect (±4) is larger than the DuDi-SFT gap, as in a real comparison.
    for seed, offset in enumerate([-4, 2, 0, 4, -2]):
        base = 40.0 + offset
        write_seed(
            compare,
            tmp_path / "compare",
            seed,
            {
                "sft": base,
                "gkd": base + 5,
                "dudi": base + 5,
                "dudi + routing": base + 5,
                "dudi + routing, every 40 steps": base + 15,
                "dudi, jsd": base + 5,
                compare.KD_CONTROL: base,
                compare.RKL_CONTROL: base - 3,
            },
        )
    compare.write_report(tmp_path, "--seeds 0 1 2 3 4")
    report = (tmp_path / "compare_methods.md").read_text()
    line = lambda start: next(row for row in report.splitlines() if row.startswith(start))  # noqa: E731
    # Mean avg of DuDi: 45 − 10/3 = 41.7; the t interval over five seeds has half-width 2.776·sd/√5 = 3.9.
    assert "**41.7** [37.7, 45.6]" in line("| dudi |")
    assert line("| chance (best constant answer) |").endswith("| 1.1 | | | |")
    assert "| teacher | 90.0 | 90.0 | 80.0 |" in report
    dudi_vs_sft = line("| dudi | sft |")
    assert "+5.0 | [+5.0, +5.0] | 0.000" in dudi_vs_sft and dudi_vs_sft.endswith("better (significant) |")
    assert line("| dudi | gkd |").endswith("no significant difference |")
    ordered = line("Ordering here (mean over each run's seeds): ")
    assert ordered.endswith(("dudi 41.7 > gkd 41.7 > sft 36.7", "gkd 41.7 > dudi 41.7 > sft 36.7"))
    assert "Ordering on the seeds every method has" not in report  # every run has every seed
    # The weak-teacher language: Burmese is 10 points under the others for every run.
    assert "| teacher | **80.0** [80.0, 80.0] | 90.0 | 5 |" in report
    assert line("| dudi + routing, every 40 steps | dudi |").endswith("better (significant) |")  # +10 on every seed
    assert "## Control: the KD machinery against SFT" in report
    assert line(f"| sft | {compare.KD_CONTROL} |").endswith("no significant difference |")
    assert line(f"| {compare.KD_CONTROL} | {compare.RKL_CONTROL} |").endswith("better (significant) |")
    assert "## DuDi ablation: divergence" in report and "| dudi, rkl | dudi, jsd |" in report
    assert (tmp_path / "compare_methods.png").stat().st_size > 10_000
    # The curves: every seed's DuDi curve gains 5 points from step 25 to 50 (avg 36.7 → 41.7 on average).
    curves = report.split("## Eval curves")[1].split("\n## ")[0]
    assert "| run | step 25 | step 50 | gain 25→50 [95% CI] |" in curves
    dudi_curve = next(row for row in curves.splitlines() if row.startswith("| dudi |"))
    assert dudi_curve == "| dudi | 36.7 | 41.7 | +5.0 [+5.0, +5.0] | +5.0 / +5.0 / +5.0 / +5.0 / +5.0 | 5 |"
    assert (tmp_path / "compare_methods_curves.png").stat().st_size > 10_000
    assert "then every run from it (50 steps of 32, lr 0.001, cosine after a 10% warm-up)" in report
    assert "different budgets" not in report
    # Methods with fewer than two seeds are named as not yet tested, not dropped from the table without a word.
    assert "Not yet tested (fewer than two seeds run for both): dudi against dft, dudi against spin" in report


def test_report_flags_runs_written_under_different_budgets(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 100)
    write_seed(compare, tmp_path / "compare", 0, {"sft": 40.0, "dudi": 45.0})
    record_path = tmp_path / "compare" / "seed0" / "dudi.json"
    record = json.loads(record_path.read_text())
    record["budget"] = {**BUDGET, "steps": 400}
    record_path.write_text(json.dumps(record))
    compare.write_report(tmp_path, "--seeds 0")
    assert "written under 2 different budgets" in (tmp_path / "compare_methods.md").read_text()


def test_two_seeds_are_tested_but_not_called(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 100)
    for seed, offset in enumerate([-4, 2]):
        write_seed(compare, tmp_path / "compare", seed, {"sft": 40.0 + offset, "dudi": 50.0 + offset})
    compare.write_report(tmp_path, "--seeds 0 1")
    row = next(r for r in (tmp_path / "compare_methods.md").read_text().splitlines() if r.startswith("| dudi | sft |"))
    assert "| +10.0 | [+10.0, +10.0] |" in row and row.endswith("| 2 | not called (2 seeds) |")


def test_the_ordering_is_also_given_on_the_seeds_every_method_has(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 100)
    # SFT on two seeds, DFT on the first only: seed 1 is the easy seed, so over their own seeds SFT looks ahead,
    # while on seed 0, which both have, DFT is.
    write_seed(compare, tmp_path / "compare", 0, {"sft": 40.0, "dft": 45.0})
    write_seed(compare, tmp_path / "compare", 1, {"sft": 60.0})
    compare.write_report(tmp_path, "--seeds 0 1")
    report = (tmp_path / "compare_methods.md").read_text()
    # avg = v − 10/3: SFT 46.7 over seeds 0 and 1, 36.7 on seed 0; DFT 41.7.
    assert "Ordering here (mean over each run's seeds): sft 46.7 (2 seeds) > dft 41.7 (1 seed)" in report
    assert "Ordering on the seeds every method has ([0]): dft 41.7 > sft 36.7" in report


def test_a_run_is_reused_only_under_the_same_budget(compare):
    from orchestrator.config import load_config

    bench = ROOT / "configs" / "bench.yaml"
    planned = compare.budget(load_config(bench, []), "distill")
    assert planned == compare.budget(load_config(bench, ["method=sft"]), "distill")  # the method is not the budget
    assert planned != compare.budget(load_config(bench, ["distill.steps=7"]), "distill")
    assert planned != compare.budget(
        load_config(bench, ["learner.lr_schedule=linear", "distill.lr_schedule=null"]), "distill"
    )
    cold = compare.budget(load_config(bench, []), "cold_start")
    assert cold != compare.budget(load_config(bench, ["cold_start.lr=1e-3"]), "cold_start")
    assert "eval_every_steps" in planned and "eval_every_steps" not in cold


def test_runs_are_named_by_file_safe_slugs(compare):
    names = [name for group in compare.GROUPS.values() for name, _ in group]
    slugs = [compare.slug(name) for name in names]
    assert len(set(slugs)) == len(names) and all(s.replace("_", "").isalnum() for s in slugs)
    assert compare.slug("dudi, λ=0.5") == "dudi_lambda_0_5"


def test_a_retrained_cold_start_stands_in_only_if_it_scores_exactly_as_recorded(compare, tmp_path, capsys):
    recorded = {"checkpoint": "/gone", "cold_start": {"en": 20.0, "my": 11.0, "avg": 15.5}}
    compare.check_retrained_cold_start(0, recorded, {"en": 20.0, "my": 11.0, "avg": 15.5}, tmp_path)
    assert "scores exactly as recorded" in capsys.readouterr().out
    with pytest.raises(compare.SeedCannotRunHere, match=r"scores .* not the recorded .* move .* aside"):
        compare.check_retrained_cold_start(0, recorded, {"en": 20.0, "my": 11.5, "avg": 15.75}, tmp_path)
    trained_elsewhere = {**recorded, "trained_on": {"cpu": "Xeon X", "cpu_capability": "AVX512", "torch": "2.13.0"}}
    with pytest.raises(compare.SeedCannotRunHere, match=r"trained on Xeon X, torch 2.13.0 on AVX512, this machine is"):
        compare.check_retrained_cold_start(0, trained_elsewhere, {"en": 20.0, "my": 11.5, "avg": 15.75}, tmp_path)


def test_a_seed_written_on_another_world_is_told_apart(compare):
    spec = {"seed": 0, "teacher_steps": 3000}
    world = {"spec": spec, "teacher_final_loss": 0.0123, "chance_exact_match": 1.1, "build_seconds": 1200}
    assert not compare.world_changed({"world": world}, {**world, "build_seconds": 900})
    assert compare.world_changed({"world": world}, {**world, "teacher_final_loss": 0.0124})
    assert compare.world_changed({"world": world}, {**world, "spec": {**spec, "teacher_steps": 1500}})
    # A spec field added after the record was written is not compared; the teacher's loss still is.
    newer = {**world, "spec": {**spec, "teacher_loss_every_position": True}}
    assert not compare.world_changed({"world": world}, newer)
    assert not compare.world_changed({}, world)  # records from before the manifest was kept
    # Where the build ran is a fact about the machine, not the world: the outcome decides.
    elsewhere = {"cpu": "another CPU", "cpu_capability": "AVX512", "torch": "2.13.0"}
    assert not compare.world_changed({"world": {**world, "built_on": elsewhere}}, world)


def test_a_world_built_on_another_cpu_is_explained_as_such(compare, tmp_path):
    spec = {"seed": 0, "teacher_steps": 3000}
    recorded = {"spec": spec, "teacher_final_loss": 0.000196}
    here = {"spec": spec, "teacher_final_loss": 0.000308, "built_on": compare.machine_facts()}
    message = compare.world_mismatch(2, recorded, here, tmp_path)
    assert "0.000196" in message and "0.000308" in message
    assert "another kind of CPU" in message and "not recorded" in message
    assert compare.machine_facts()["cpu_capability"] in message
    recorded_with_machine = {**recorded, "built_on": {"cpu": "Xeon X", "cpu_capability": "AVX512", "torch": "2.13.0"}}
    assert "Xeon X, torch 2.13.0 on AVX512" in compare.world_mismatch(2, recorded_with_machine, here, tmp_path)
    # Same spec, same machine: the build's code changed.
    same_machine = {**recorded, "built_on": compare.machine_facts()}
    assert "the code that builds it has changed" in compare.world_mismatch(2, same_machine, here, tmp_path)
    # Another spec is not a machine's doing: rebuild from this checkout.
    other_spec = {**here, "spec": {**spec, "teacher_steps": 1500}}
    message = compare.world_mismatch(2, recorded, other_spec, tmp_path)
    assert "another kind of CPU" not in message and "dudi tiny-world --size bench" in message


def test_fill_tops_a_run_up_to_n_seeds_with_what_it_is_tested_against(compare):
    plan = compare.GROUPS["methods"] + compare.GROUPS["routing"]
    # Seeds 0-1 have everything; DFT also has seed 2; DuDi and once-measured routing have seeds 0-4.
    written = {name: {0, 1} for name, _ in plan}
    written |= {"dft": {0, 1, 2}, "dudi": {0, 1, 2, 3, 4}, compare.ROUTED[0]: {0, 1, 2, 3, 4}}
    names = lambda chosen: [name for name, _ in chosen]  # noqa: E731
    on_seed_5 = compare.fill_plan(plan, 5, written, fill=3)
    # DFT has 3 seeds already; every other run needs this seed, after DuDi's defaults (their partner) and, for
    # the routing variants, after once-measured routing, which they are tested against.
    assert names(on_seed_5) == [
        "dudi",
        "spin",
        "seqkd",
        "sdft",
        "copsd",
        compare.ROUTED[0],
        compare.ROUTED[3],
        compare.ROUTED[2],
        compare.ROUTED[1],
    ]
    assert dict(on_seed_5)["dudi"] == ["method=dudi"] and dict(on_seed_5)["spin"] == ["method=spin"]
    # Once seed 5 is written, seed 6 takes nothing: every run has 3 seeds.
    after = {name: seeds | {5} for name, seeds in written.items()}
    assert compare.fill_plan(plan, 6, after, fill=3) == []
    # A seed that already has a run keeps it in its plan (the run is then skipped as written), partners included.
    assert names(compare.fill_plan(plan, 1, written, fill=2)) == names(plan)
    assert compare.fill_plan(plan, 5, written, fill=None) == plan
    # The control pairs with SFT, the JSD-without-verbalizer ablation with JSD, transitively with DuDi.
    assert compare.partners(compare.KD_CONTROL) == ["dudi", "sft"]  # SFT is itself tested against DuDi
    assert compare.partners(compare.JSD_NO_VERBALIZER) == ["dudi", "dudi, jsd"]
    assert compare.partners(compare.ROUTED[1]) == ["dudi", compare.ROUTED[0]]


def test_the_report_names_each_seeds_world_build(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 100)
    for seed in (0, 1):
        write_seed(compare, tmp_path / "compare", seed, {"sft": 40.0 + seed, "dudi": 45.0})
    compare.write_report(tmp_path, "--seeds 0 1")
    report = (tmp_path / "compare_methods.md").read_text()
    assert "Every seed distils from the same build of the bench world" in report
    # Seed 5 was trained on a world built elsewhere: another teacher.
    write_seed(compare, tmp_path / "compare", 5, {"sft": 30.0, "dudi": 50.0})
    cold_path = tmp_path / "compare" / "seed5" / "_cold_start.json"
    cold = json.loads(cold_path.read_text())
    cold["world"] = {**cold["world"], "teacher_final_loss": 0.0003}
    cold["trained_on"] = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.13.0"}
    cold_path.write_text(json.dumps(cold))
    assert compare.world_builds(compare.load_results(tmp_path / "compare")[0]) == {0: "A", 1: "A", 5: "B"}
    compare.write_report(tmp_path, "--seeds 0 1 5")
    report = (tmp_path / "compare_methods.md").read_text()
    assert "The seeds distil from 2 builds of the bench world" in report
    assert "| 5 | B | 0.0003 | 86.7 | 80.0 | 16.7 | AMD EPYC, torch 2.13.0 on AVX2 |" in report
    assert "| 0 | A |  | 86.7 | 80.0 | 16.7 | not recorded |" in report


def test_a_dry_run_prints_each_seeds_plan_and_writes_nothing(compare, tmp_path):
    import subprocess
    import sys

    write_seed(compare, tmp_path / "compare", 0, {"dudi": 45.0, "dft": 40.0, "spin": 41.0})
    # The world on disk is seed 0's; seed 3 was written on another build (another teacher), so it cannot go on here.
    world = json.loads((tmp_path / "compare" / "seed0" / "_cold_start.json").read_text())["world"]
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "manifest.json").write_text(json.dumps(world))
    write_seed(compare, tmp_path / "compare", 3, {"dudi": 45.0})
    seed3 = tmp_path / "compare" / "seed3" / "_cold_start.json"
    seed3.write_text(json.dumps({**json.loads(seed3.read_text()), "world": {**world, "teacher_final_loss": 0.0003}}))
    before = sorted(p.name for p in (tmp_path / "compare").rglob("*"))
    command = [sys.executable, str(ROOT / "benchmarks" / "compare_methods.py"), "--out", str(tmp_path)]
    command += ["--seeds", "0", "3", "5", "6", "--fill", "2", "--groups", "methods", "--only", "dft", "seqkd"]
    command += ["--dry-run", f"models.teacher={tmp_path / 'world' / 'teacher'}"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    # Seed 0 has DuDi already; seed 3 is skipped with its reason; seed 5 runs DuDi first, then brings DFT and
    # SeqKD to 2 seeds, so seed 6 takes nothing.
    assert printed[:2] == ["seed 0: dft (written)", "seed 0: seqkd"]
    assert printed[2].startswith("=== seed 3: skipped. seed 3: the bench world on disk is not the one")
    assert printed[3:] == ["seed 5: dudi", "seed 5: dft", "seed 5: seqkd"]
    assert sorted(p.name for p in (tmp_path / "compare").rglob("*")) == before
    # Where no seed can run, the command fails with every reason.
    command[command.index("--seeds") + 1 : command.index("--fill")] = ["3"]
    failed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode != 0 and "no seed could run on this machine's bench world" in failed.stderr


def test_aso_is_remembered_on_disk_by_its_inputs(compare, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 50)
    first = compare.aso([50.0, 52.0, 54.0], [40.0, 41.0, 43.0])
    assert first < 0.5  # A is stochastically better
    assert len(json.loads(compare.ASO_CACHE.read_text())) == 1
    # A new process reads the file: poisoned entries show that the value comes from it, not from deepsig.
    poisoned = {key: 0.123 for key in json.loads(compare.ASO_CACHE.read_text())}
    compare.ASO_CACHE.write_text(json.dumps(poisoned))
    monkeypatch.setattr(compare, "_aso_cache", {})
    assert compare.aso([50.0, 52.0, 54.0], [40.0, 41.0, 43.0]) == 0.123
    # Other scores, or another bootstrap size, are computed anew.
    assert compare.aso([40.0, 41.0, 43.0], [50.0, 52.0, 54.0]) > 0.5
    monkeypatch.setattr(compare, "ASO_ITERATIONS", 60)
    assert compare.aso([50.0, 52.0, 54.0], [40.0, 41.0, 43.0]) != 0.123
    assert len(json.loads(compare.ASO_CACHE.read_text())) == 3
