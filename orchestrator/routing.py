"""Per-language teacher routing: where the teacher is no better than the student, it should not be imitated.

The paper's teacher is weak on Burmese; a student distilled from it there learns its mistakes. At the start of
distillation the orchestrator measures the teacher and the student per language on held-out training rows
(`hold_out`), and `kd_weights` turns the two scores into a KD weight per language by the config's rule. Each
training row then carries its language's weight for each KD term (`TrainBatch.off_kd_weights`, `on_kd_weights`).
With `below_margin=ground_truth` a trailing language's Off-KD takes the data as its teacher instead
(`TrainBatch.ground_truth_weights`: cross-entropy on y), the paper's premise turned around where the data beats
the teacher.

The teacher is measured on the prompt each term shows it. Off-KD shows it the plain prompt x. On-KD shows it the
verbalizer's z, which contains the ground-truth demonstration, so a teacher that misreads x can still be right on z
(the bench world's: 5% exact match in Burmese on x, 89% on crosslingual z). With `routing.per_term` each term is
weighted by its own measurement; without it both take the one on x.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

from orchestrator.config import RoutingConfig

TERMS = ("off", "on")  # the KD terms: Off-KD on (x, y), On-KD on the student's samples


def hold_out(rows: list, per_language: int, seed: int) -> tuple[list, list]:
    """(rows to train on, `per_language` rows of each language set aside), chosen by the seed."""
    by_language: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_language[row.lang].append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for lang in sorted(by_language):
        indices = by_language[lang]
        if len(indices) <= per_language:
            raise ValueError(
                f"routing.rows_per_language={per_language} would hold out all {len(indices)} training rows of {lang!r}"
            )
        held.update(rng.sample(indices, per_language))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _trailing(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> dict[str, bool]:
    """Per language: whether the teacher fails to lead the student by `min_margin` exact-match points."""
    return {
        lang: teacher[lang] - student[lang] < cfg.min_margin
        for lang in sorted(teacher)
        if lang != "avg" and lang in student
    }


def kd_weights(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> dict[str, float]:
    """Per language: 1 where the teacher leads the student by at least `min_margin` exact-match points, else 0
    (`below_margin=off`, and `ground_truth`, where the data takes Off-KD's place) or `down_weight`; with
    `other_teacher` the weight stays 1 (another teacher scores them)."""
    low = {"off": 0.0, "down_weight": cfg.down_weight, "other_teacher": 1.0, "ground_truth": 0.0}[cfg.below_margin]
    return {lang: low if trails else 1.0 for lang, trails in _trailing(teacher, student, cfg).items()}


def _routed(rule: str, teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> set[str]:
    """The languages where the teacher trails, if `rule` is the config's `below_margin` (else none)."""
    if cfg.below_margin != rule:
        return set()
    return {lang for lang, trails in _trailing(teacher, student, cfg).items() if trails}


def ground_truth_languages(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> set[str]:
    """The languages whose Off-KD teacher is replaced by the ground truth (empty unless below_margin=ground_truth):
    on (x, y) the data is a teacher too, one-hot on y, and forward KL to it is cross-entropy."""
    return _routed("ground_truth", teacher, student, cfg)


def other_teacher_languages(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> set[str]:
    """The languages whose KD sequences `routing.other_teacher` scores (empty unless below_margin=other_teacher)."""
    return _routed("other_teacher", teacher, student, cfg)


def routing_metrics(
    weights: dict[str, float],
    teacher: dict[str, float],
    student: dict[str, float],
    to_other: set[str] = frozenset(),
    prefix: str = "",
    ground_truth: set[str] | None = None,
) -> dict:
    """What is logged each step: per language, the KD weight, the two scores it came from, and (routing to
    another teacher, or to the ground truth) whether it takes the language. `prefix` names the term when the
    terms are routed apart (`off_`, `on_`)."""
    metrics = {}
    for lang, weight in weights.items():
        if to_other:
            metrics[f"routing/{prefix}other_teacher_{lang}"] = float(lang in to_other)
        if ground_truth is not None:
            metrics[f"routing/ground_truth_{lang}"] = float(lang in ground_truth)
        metrics[f"routing/{prefix}kd_weight_{lang}"] = weight
        metrics[f"routing/{prefix}teacher_em_{lang}"] = teacher[lang]
        metrics[f"routing/student_em_{lang}"] = student[lang]
    return metrics


@dataclass
class Decision:
    """One measurement's outcome, per KD term: each language's weight and the languages the other teacher scores;
    and the languages whose Off-KD the ground truth takes over (`ground_truth`, Off-KD only)."""

    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    to_other: dict[str, set[str]] = field(default_factory=dict)
    ground_truth: set[str] = field(default_factory=set)
    metrics: dict[str, float] = field(default_factory=dict)


def decide(
    teacher: dict[str, float],
    student: dict[str, float],
    cfg: RoutingConfig,
    teacher_on_z: dict[str, float] | None = None,
) -> Decision:
    """Each term's weights from the teacher's score on that term's prompt against the student's on x (the prompt it
    is evaluated on). `teacher_on_z`: the teacher measured on On-KD's prompt z (`routing.per_term`, where On-KD
    shows it z), which then sets On-KD's weights; logged per term (`routing/off_kd_weight_<lang>`,
    `routing/on_kd_weight_<lang>`, ...). Without it one rule covers both terms (`routing/kd_weight_<lang>`)."""
    decision = Decision(ground_truth=ground_truth_languages(teacher, student, cfg))
    by_term = {"off": teacher, "on": teacher if teacher_on_z is None else teacher_on_z}
    for term in TERMS:
        decision.weights[term] = kd_weights(by_term[term], student, cfg)
        decision.to_other[term] = other_teacher_languages(by_term[term], student, cfg)
        if teacher_on_z is not None or term == "off":
            prefix = "" if teacher_on_z is None else f"{term}_"
            ground_truth = decision.ground_truth if term == "off" and cfg.below_margin == "ground_truth" else None
            logged = routing_metrics(
                decision.weights[term], by_term[term], student, decision.to_other[term], prefix, ground_truth
            )
            decision.metrics.update(logged)
    return decision


def as_the_teacher_sees_them(rows: list, verbalizer, key: int) -> list:
    """The rows with each prompt replaced by the teacher prompt z the verbalizer makes of it (the answer stays):
    what On-KD shows the teacher. `key` fixes the verbalizer's random choices (crosslingual targets)."""
    verbalizer.reseed(key)
    return [
        replace(
            row, prompt=verbalizer(row.prompt, row.response, row.lang, row.prompt_en, row.response_en).teacher_prompt
        )
        for row in rows
    ]
