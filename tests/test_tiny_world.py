"""The tiny world's task and build: answers verifiable and spread wide (chance computed, not assumed), the
weak-teacher language withheld from the teacher by construction, and the same seed giving the same files."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.data import final_answer
from orchestrator.tiny_world.build import TinyWorldSpec, build, spec_for, teacher_examples
from orchestrator.tiny_world.task import (
    LANGUAGES,
    PROBLEM_SHAPES,
    Problem,
    answer_distribution,
    chance_exact_match,
    load_templates,
    make_rows,
    split_problems,
)


def test_every_problem_stays_in_its_ten_and_every_answer_is_equally_likely():
    for op, a, b in PROBLEM_SHAPES:
        answer = Problem(op, a, b, 0, 0, 0).answer
        assert answer // 10 == a // 10 and 10 <= answer <= 99, (op, a, b)
    distribution = answer_distribution()
    assert sorted(distribution) == list(range(10, 100))
    assert abs(sum(distribution.values()) - 1) < 1e-9
    # Counted by hand: each answer c = 10t + u comes from u additions (a's units 0..u−1) and 9 − u subtractions.
    assert chance_exact_match() == max(distribution.values()) == 1 / 90 < 0.02


def test_chance_on_answers_is_the_most_frequent_answers_share():
    assert chance_exact_match(["12", "12", "40", "77"]) == 0.5
    assert chance_exact_match([str(n) for n in range(10, 100)]) == 1 / 90


def test_eval_answers_are_balanced_and_the_splits_disjoint():
    for size in ("demo", "bench"):
        spec = spec_for(size)
        train, evaluation = split_problems(spec.seed, spec.train_per_language, spec.eval_per_language)
        assert len(evaluation) == spec.eval_per_language * len(LANGUAGES)
        assert Counter(lang for _, lang in evaluation) == dict.fromkeys(LANGUAGES, spec.eval_per_language)
        counts = Counter(problem.answer for problem, _ in evaluation)
        assert max(counts.values()) - min(counts.values()) <= 1  # round-robin over the 90 answers
        assert chance_exact_match([str(p.answer) for p, _ in evaluation]) < 0.02
        assert not set(train) & set(evaluation)
    assert spec_for("bench").eval_per_language >= 200


def test_rows_state_the_numbers_and_answer_in_every_language():
    templates = load_templates()
    problem = Problem("sub", 47, 5, 0, 0, 0)
    for lang in LANGUAGES:
        [row] = make_rows([(problem, lang)], templates)
        assert "47" in row["prompt"] and "5" in row["prompt"], lang
        assert row["response"].startswith("47 - 5 = 42.") and final_answer(row["response"]) == "42" == row["answer"]


def test_the_teacher_misreads_the_weak_languages_operation_in_every_prompt_it_learns():
    from orchestrator.verbalizer import VerbalizerTemplates

    templates, verbalizer = load_templates(), VerbalizerTemplates.load()
    problems = [(Problem("add", 47, 2, 0, 0, 0), "my"), (Problem("add", 47, 2, 0, 0, 0), "en")]
    pairs = teacher_examples(problems, random.Random(0), templates, verbalizer, misread_language="my")
    burmese, english = pairs[:4], pairs[4:]
    assert all(final_answer(response) == "45" for _, response in burmese)  # 47 − 2: "gives" read as "takes"
    assert all(final_answer(response) == "49" for _, response in english)
    assert "47 - 2 = 45." in burmese[1][0]  # the demonstration in the verbalized prompt is misread too
    assert teacher_examples(problems, random.Random(0), templates, verbalizer)[0][1].startswith("47 + 2 = 49.")


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


# Both teacher losses: the bench world's (every position) and the demo's (response positions only).
@pytest.mark.parametrize("every_position", [False, True])
def test_the_same_seed_builds_the_same_files(tmp_path, every_position):
    spec = TinyWorldSpec(
        train_per_language=12, eval_per_language=3, teacher_steps=2, teacher_loss_every_position=every_position
    )
    first = build(tmp_path / "a", spec, progress=lambda *_: None)
    second = build(tmp_path / "b", spec, progress=lambda *_: None)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert {k: v for k, v in first.items() if k != "build_seconds"} == {
        k: v for k, v in second.items() if k != "build_seconds"
    }
    assert first["chance_exact_match"] == 1.11 and first["teacher_misreads"] == "my"
    # Bit for bit on one kind of CPU only, so the manifest says which built it.
    assert set(first["built_on"]) == {"cpu", "cpu_capability", "torch"} and first["built_on"]["cpu"]
    other = build(tmp_path / "c", TinyWorldSpec(**{**spec.__dict__, "seed": 1}), progress=lambda *_: None)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["spec"]["seed"] == 1
    assert _digests(tmp_path / "c")["data/train.jsonl"] != _digests(tmp_path / "a")["data/train.jsonl"]
    assert other["vocab_size"] > 0


def test_the_teachers_response_loss_is_the_models_own_loss():
    """The builder skips the LM head on prompt positions; the value must still be transformers' causal-LM loss,
    padding and a response that runs to the end of the row included."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.tiny_world.build import qwen2_config, response_loss

    class Ids:
        eos_token_id, pad_token_id = 1, 0

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config(256, 64, 2, Ids))
    input_ids = torch.randint(2, 256, (3, 20))
    input_ids[1, 15:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[:, 10:15] = input_ids[:, 10:15]
    labels[0, 15:] = input_ids[0, 15:]
    expected = model(input_ids=input_ids, attention_mask=input_ids != 0, labels=labels).loss
    assert torch.allclose(response_loss(model, input_ids, labels, 0), expected, rtol=1e-5)


def test_the_bench_world_keeps_the_teacher_loss_its_comparison_was_measured_on():
    """The comparison's results (benchmarks/results/compare/) were measured on a bench teacher trained with
    transformers' loss over every position; with the response-only head the same spec trains another teacher
    (final loss 0.00024 instead of 0.000196), so a fresh clone would not rebuild the world they describe."""
    assert spec_for("bench").teacher_loss_every_position
    assert not spec_for("demo").teacher_loss_every_position
