"""Every method of the paper, and COPSD, as a setting of the same config (DESIGN.md, "Presets").

A preset fills in the fields that define the method; whatever the config file or the command line sets
explicitly wins over it, so an ablation is a preset plus one field (`method=dudi learner.objective.alpha=0`).
"""

from __future__ import annotations

from typing import Any

_NO_KD = {"kd_weight": 0.0}
_NO_SPIN = {"alpha": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    # Cross-entropy on the ground truth, every token weighted 1.
    "sft": {
        "learner": {"objective": {"cross_entropy": "sft", **_NO_SPIN, **_NO_KD}},
        "verbalizer": {"mode": "none"},
    },
    # Cross-entropy weighted by the stop-gradient of the token's own probability.
    "dft": {
        "learner": {"objective": {"cross_entropy": "dft", **_NO_SPIN, **_NO_KD}},
        "verbalizer": {"mode": "none"},
    },
    # SPIN alone: ground truth y against a fresh y' ~ π_θ(·|x) each step, π_ref = the stage's start.
    "spin": {
        "learner": {"objective": {"cross_entropy": "none", "alpha": 1.0, **_NO_KD}},
        "verbalizer": {"mode": "none"},
    },
    # On-KD only; the teacher is an EMA of the student that sees the English demonstration template.
    "sdft": {
        "learner": {
            "objective": {"cross_entropy": "none", **_NO_SPIN, "kd_weight": 1.0, "lam": 1.0, "divergence": "rkl"}
        },
        "verbalizer": {"mode": "english"},
        "recipe": {"teacher": "ema", "on_kd_responses": "student"},
    },
    # Token-level KD on sequences the teacher generated (ŷ ~ π_T(·|x)), generalized JSD.
    "seqkd": {
        "learner": {
            "objective": {"cross_entropy": "none", **_NO_SPIN, "kd_weight": 1.0, "lam": 1.0, "divergence": "jsd"}
        },
        "verbalizer": {"mode": "none"},
        "recipe": {"teacher": "model", "on_kd_responses": "teacher"},
    },
    # GKD: (1−λ)·Off-KD + λ·On-KD with the generalized JSD, no verbalizer.
    "gkd": {
        "learner": {
            "objective": {"cross_entropy": "none", **_NO_SPIN, "kd_weight": 1.0, "lam": 0.5, "divergence": "jsd"}
        },
        "verbalizer": {"mode": "none"},
        "recipe": {"teacher": "model", "on_kd_responses": "student"},
    },
    # DuDi: α·SPIN + (1−λ)·Off-KD + λ·On-KD, reverse KL, crosslingual verbalizer.
    "dudi": {
        "learner": {
            "objective": {"cross_entropy": "none", "alpha": 0.1, "kd_weight": 1.0, "lam": 0.5, "divergence": "rkl"}
        },
        "verbalizer": {"mode": "crosslingual"},
        "recipe": {"teacher": "model", "on_kd_responses": "student"},
    },
    # COPSD: the student's own frozen start, given the English translation and reference answer, teaches
    # it on its own rollouts of the original problem; full-distribution forward KL.
    "copsd": {
        "learner": {
            "objective": {"cross_entropy": "none", **_NO_SPIN, "kd_weight": 1.0, "lam": 1.0, "divergence": "fkl"}
        },
        "verbalizer": {"mode": "privileged"},
        "recipe": {"teacher": "student_start", "on_kd_responses": "student"},
    },
}

METHODS = tuple(PRESETS)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for nested mappings."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """The preset named by `raw['method']` (default dudi) under the explicit settings of `raw`."""
    method = raw.get("method", "dudi")
    if method not in PRESETS:
        raise ValueError(f"method {method!r} is not a preset; choose one of {list(METHODS)}")
    return deep_merge(PRESETS[method], raw)
