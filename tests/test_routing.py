"""Per-language teacher routing: the rule's weights on a hand-made case, what is logged, the held-out rows."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from orchestrator import routing
from orchestrator.config import RoutingConfig


@dataclass(frozen=True)
class Row:
    prompt: str
    lang: str


TEACHER = {"en": 90.0, "my": 20.0, "th": 61.0, "avg": 57.0}
STUDENT = {"en": 40.0, "my": 35.0, "th": 55.0, "avg": 43.3}


def test_the_rule_sets_each_languages_kd_weight():
    # The teacher trails in Burmese and leads Thai by 6 points.
    down = routing.kd_weights(TEACHER, STUDENT, RoutingConfig(enabled=True, min_margin=5.0, down_weight=0.25))
    assert down == {"en": 1.0, "my": 0.25, "th": 1.0}
    off = routing.kd_weights(TEACHER, STUDENT, RoutingConfig(enabled=True, min_margin=10.0, below_margin="off"))
    assert off == {"en": 1.0, "my": 0.0, "th": 0.0}


def test_what_is_logged_per_language():
    weights = routing.kd_weights(TEACHER, STUDENT, RoutingConfig(enabled=True, below_margin="off"))
    logged = routing.routing_metrics(weights, TEACHER, STUDENT)
    assert logged["routing/kd_weight_my"] == 0.0 and logged["routing/kd_weight_en"] == 1.0
    assert logged["routing/teacher_em_my"] == 20.0 and logged["routing/student_em_my"] == 35.0
    assert len(logged) == 3 * 3  # three languages, three numbers each; no "avg"


def test_without_per_term_one_measurement_weights_both_kd_terms():
    decision = routing.decide(TEACHER, STUDENT, RoutingConfig(enabled=True, below_margin="off"))
    assert decision.weights["off"] == decision.weights["on"] == {"en": 1.0, "my": 0.0, "th": 1.0}
    assert decision.metrics == routing.routing_metrics(decision.weights["off"], TEACHER, STUDENT)


def test_per_term_weights_on_kd_by_the_teacher_measured_on_its_own_prompt():
    # The bench world's case: the teacher misreads Burmese on x but copies the demonstration z holds.
    on_z = {"en": 95.0, "my": 89.0, "th": 50.0, "avg": 78.0}
    rule = RoutingConfig(enabled=True, below_margin="off", per_term=True)
    decision = routing.decide(TEACHER, STUDENT, rule, teacher_on_z=on_z)
    assert decision.weights["off"] == {"en": 1.0, "my": 0.0, "th": 1.0}
    assert decision.weights["on"] == {"en": 1.0, "my": 1.0, "th": 0.0}
    logged = decision.metrics
    assert logged["routing/off_kd_weight_my"] == 0.0 and logged["routing/on_kd_weight_my"] == 1.0
    assert logged["routing/off_teacher_em_my"] == 20.0 and logged["routing/on_teacher_em_my"] == 89.0
    assert logged["routing/student_em_my"] == 35.0
    assert not any(key.startswith("routing/kd_weight_") for key in logged)
    assert len(logged) == 3 * 5  # per language: two weights, two teacher scores, the student's score
    to_other = RoutingConfig(enabled=True, below_margin="other_teacher", other_teacher="/m", per_term=True)
    routed = routing.decide(TEACHER, STUDENT, to_other, teacher_on_z=on_z)
    assert routed.to_other == {"off": {"my"}, "on": {"th"}}


def test_routing_to_the_ground_truth_puts_the_data_in_off_kds_place():
    rule = RoutingConfig(enabled=True, min_margin=5.0, below_margin="ground_truth")
    decision = routing.decide(TEACHER, STUDENT, rule)
    # The teacher trails in Burmese and leads Thai by 6 points, above the margin.
    assert decision.ground_truth == {"my"}
    assert decision.weights["off"] == decision.weights["on"] == {"en": 1.0, "my": 0.0, "th": 1.0}
    assert decision.metrics["routing/ground_truth_my"] == 1.0 and decision.metrics["routing/ground_truth_en"] == 0.0
    assert decision.metrics["routing/kd_weight_my"] == 0.0
    # Per term, the data still takes only Off-KD: On-KD follows the teacher's score on z.
    on_z = {"en": 95.0, "my": 89.0, "th": 50.0, "avg": 78.0}
    per_term = routing.decide(TEACHER, STUDENT, rule.model_copy(update={"per_term": True}), teacher_on_z=on_z)
    assert per_term.ground_truth == {"my"}
    assert per_term.weights["on"] == {"en": 1.0, "my": 1.0, "th": 0.0}
    assert not routing.decide(TEACHER, STUDENT, RoutingConfig(enabled=True, below_margin="off")).ground_truth


def test_the_teacher_is_measured_on_the_prompt_on_kd_shows_it():
    from orchestrator.data import Example
    from orchestrator.verbalizer import Verbalizer

    rows = [
        Example("Ana has 3 apples. She gets 4 more. How many now?", "3 + 4 = 7. The answer is 7.", "en"),
        Example("Ani punya 2 apel. Dia dapat 5 lagi. Berapa sekarang?", "2 + 5 = 7. Jawabannya 7.", "id"),
    ]
    verbalizer = Verbalizer("crosslingual", ["en", "id", "th"], seed=0)
    seen = routing.as_the_teacher_sees_them(rows, verbalizer, key=3)
    for row, z in zip(rows, seen, strict=True):
        assert z.response == row.response and z.lang == row.lang
        assert row.prompt in z.prompt and row.response in z.prompt and z.prompt != row.prompt
    assert routing.as_the_teacher_sees_them(rows, Verbalizer("crosslingual", ["en", "id", "th"], seed=9), 3) == seen


def test_held_out_rows_are_never_trained_on_and_fixed_by_the_seed():
    rows = [Row(f"p{i}", lang) for i in range(10) for lang in ("en", "my")]
    train, held = routing.hold_out(rows, 3, seed=0)
    assert len(held) == 6 and sorted(r.lang for r in held) == ["en"] * 3 + ["my"] * 3
    assert not set(train) & set(held) and len(train) + len(held) == len(rows)
    assert routing.hold_out(rows, 3, seed=0) == (train, held)
    assert routing.hold_out(rows, 3, seed=1)[1] != held
    with pytest.raises(ValueError, match="all 10 training rows of 'en'"):
        routing.hold_out(rows, 10, seed=0)


def test_routing_needs_a_teacher_model_to_measure(tmp_path):
    from conftest import e2e_config

    with pytest.raises(ValueError, match="routing.enabled measures models.teacher"):
        e2e_config(tmp_path, tmp_path, 1, method="sdft", routing={"enabled": True})
    assert e2e_config(tmp_path, tmp_path, 1, routing={"enabled": True}).routing.enabled
    to_data = {"enabled": True, "below_margin": "ground_truth"}
    with pytest.raises(ValueError, match="ground_truth puts the data in Off-KD's place.*lam=1"):
        e2e_config(tmp_path, tmp_path, 1, method="seqkd", routing=to_data)
    assert e2e_config(tmp_path, tmp_path, 1, routing=to_data).routing.below_margin == "ground_truth"


@pytest.mark.e2e
def test_languages_routed_to_another_teacher_are_scored_by_it_in_a_real_run(
    run, shared_rollout, tiny_world, serve_port, tmp_path
):
    """Through the whole stack: the teacher and the student are measured on held-out rows (the teacher on a vLLM
    engine of its own), an unreachable margin routes every language to the other teacher, deployed as a second
    Serve app. That teacher is the student's own starting point, so the first step's KD terms are 0 (the student
    imitates itself), which the real teacher's scores could not give; the second step's are not (it has moved).
    Both KD terms are routed, each by the teacher measured on the prompt it shows it (`routing.per_term`).
    Routing off is the same rule with weight 0 (`kd_weights`, and the learner's per-row weights in test_objective)."""
    import json

    from conftest import e2e_config

    from orchestrator.loop import Trainer

    start = run.result.checkpoints["cold_start"]
    models = {"student": start, "teacher": str(tiny_world / "teacher")}
    rule = {
        "rows_per_language": 1,
        "min_margin": 1000.0,
        "below_margin": "other_teacher",
        "other_teacher": start,
        "per_term": True,  # the teacher is measured on x and on the crosslingual z, each term routed by its own
    }
    cfg = e2e_config(
        tiny_world,
        tmp_path,
        serve_port,
        name="routed",
        models=models,
        cold_start={"enabled": False},
        distill={"steps": 2, "batch_size": 8, "lr": 1e-2},
        routing={"enabled": True, **rule},
    )
    trainer = Trainer(cfg, False, shared_rollout)
    held = {r.prompt for r in trainer.routing_rows}
    assert len(trainer.routing_rows) == len(trainer.languages)
    assert not held & {r.prompt for r in trainer.train_rows}
    trainer.run()
    first, second = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert first["loss/off_kd"] == pytest.approx(0.0, abs=1e-4) and first["loss/on_kd"] == pytest.approx(0.0, abs=1e-4)
    assert second["loss/off_kd"] > 1e-3 and first["loss/spin"] > 0
    for step in (first, second):
        for lang in trainer.languages:
            for term in ("off", "on"):
                assert step[f"routing/{term}_other_teacher_{lang}"] == 1.0
                assert step[f"routing/{term}_kd_weight_{lang}"] == 1.0
                assert 0.0 <= step[f"routing/{term}_teacher_em_{lang}"] <= 100.0
    teacher_on_x, teacher_on_z = trainer._routing_teacher
    assert teacher_on_z is not None and set(teacher_on_z) == set(teacher_on_x)


def test_routing_to_another_teacher_needs_its_path():
    with pytest.raises(ValueError, match="needs routing.other_teacher"):
        RoutingConfig(enabled=True, below_margin="other_teacher")
    to_other = RoutingConfig(enabled=True, min_margin=5.0, below_margin="other_teacher", other_teacher="/m")
    assert routing.other_teacher_languages(TEACHER, STUDENT, to_other) == {"my"}
    assert routing.kd_weights(TEACHER, STUDENT, to_other) == {"en": 1.0, "my": 1.0, "th": 1.0}
    assert routing.other_teacher_languages(TEACHER, STUDENT, RoutingConfig(enabled=True, min_margin=5.0)) == set()
    logged = routing.routing_metrics({"my": 1.0}, TEACHER, STUDENT, {"my"})
    assert logged["routing/other_teacher_my"] == 1.0


@pytest.mark.e2e
def test_languages_routed_to_the_ground_truth_train_on_it_in_a_real_run(
    run, shared_rollout, tiny_world, serve_port, tmp_path
):
    """An unreachable margin routes every language to the ground truth: no teacher KD is left, and Off-KD's place
    (weight 1 − λ) is cross-entropy on the data's y, logged as `loss/ground_truth`."""
    import json

    from conftest import e2e_config

    from orchestrator.loop import Trainer

    rule = {"rows_per_language": 1, "min_margin": 1000.0, "below_margin": "ground_truth"}
    cfg = e2e_config(
        tiny_world,
        tmp_path,
        serve_port,
        name="to_data",
        models={"student": run.result.checkpoints["cold_start"], "teacher": str(tiny_world / "teacher")},
        cold_start={"enabled": False},
        distill={"steps": 1, "batch_size": 8, "lr": 1e-2},
        routing={"enabled": True, **rule},
    )
    trainer = Trainer(cfg, False, shared_rollout)
    trainer.run()
    [step] = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step["loss/off_kd"] == 0.0 and step["loss/on_kd"] == 0.0
    assert step["loss/ground_truth"] > 0.0
    lam, alpha = cfg.objective.lam, cfg.objective.alpha
    expected = (1 - lam) * step["loss/ground_truth"] + alpha * step["loss/spin"]
    assert step["loss/total"] == pytest.approx(expected, rel=1e-5)
    for lang in trainer.languages:
        assert step[f"routing/ground_truth_{lang}"] == 1.0 and step[f"routing/kd_weight_{lang}"] == 0.0
