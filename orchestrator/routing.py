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


def kd_weights(teacher: dict[str, float], student: dict[str, float], cfg: RoutingConfig) -> dict[str, float]:
    """Per language: 1 where the teacher leads the student by at least `min_margin` exact-match points, else 0
    (`below_margin=off`) or `down_weight`."""
    low = 0.0 if cfg.below_margin == "off" else cfg.down_weight
    return {
        lang: 1.0 if teacher[lang] - student[lang] >= cfg.min_margin else low
        for lang in sorted(teacher)
        if lang != "avg" and lang in student
    }


def routing_metrics(weights: dict[str, float], teacher: dict[str, float], student: dict[str, float]) -> dict:
    """What is logged each step: per language, the KD weight and the two scores it came from."""
    metrics = {}
    for lang, weight in weights.items():
        metrics[f"routing/kd_weight_{lang}"] = weight
        metrics[f"routing/teacher_em_{lang}"] = teacher[lang]
        metrics[f"routing/student_em_{lang}"] = student[lang]
    return metrics
