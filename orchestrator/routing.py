"""Per-language teacher routing: where the teacher is no better than the student, it should not be imitated.

The paper's teacher is weak on Burmese; a student distilled from it there learns its mistakes. At the start of
distillation the orchestrator measures the teacher and the student per language on held-out training rows
(`hold_out`), and `kd_weights` turns the two scores into a KD weight per language by the config's rule. Each
training row then carries its language's weight (`TrainBatch.kd_weights`), which scales its tokens in both KD terms.
"""

from __future__ import annotations

import random
from collections import defaultdict

from orchestrator.config import RoutingConfig


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
    (`below_margin=off`) or `down_weight`; with `other_teacher` the weight stays 1 (another teacher scores them)."""
    low = {"off": 0.0, "down_weight": cfg.down_weight, "other_teacher": 1.0}[cfg.below_margin]
    return {lang: low if trails else 1.0 for lang, trails in _trailing(teacher, student, cfg).items()}


def other_teacher_languages(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> set[str]:
    """The languages whose KD sequences `routing.other_teacher` scores (empty unless below_margin=other_teacher)."""
    if cfg.below_margin != "other_teacher":
        return set()
    return {lang for lang, trails in _trailing(teacher, student, cfg).items() if trails}


def routing_metrics(
    weights: dict[str, float], teacher: dict[str, float], student: dict[str, float], to_other: set[str] = frozenset()
) -> dict:
    """What is logged each step: per language, the KD weight, the two scores it came from, and (routing to
    another teacher) whether that teacher scores the language."""
    metrics = {}
    for lang, weight in weights.items():
        if to_other:
            metrics[f"routing/other_teacher_{lang}"] = float(lang in to_other)
        metrics[f"routing/kd_weight_{lang}"] = weight
        metrics[f"routing/teacher_em_{lang}"] = teacher[lang]
        metrics[f"routing/student_em_{lang}"] = student[lang]
    return metrics
