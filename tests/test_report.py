"""results.png: the loss curves of each stage beside the per-language eval table, as a valid PNG."""

from __future__ import annotations

import json

import pytest

from orchestrator.report import loss_curves, write_results_png


def test_the_png_holds_every_stage_and_is_a_valid_image(tmp_path):
    import matplotlib.image

    lines = [
        {"stage": "cold_start", "step": s, "loss/total": 3.0 / s, "loss/sft": 3.0 / s, "time/train_s": 0.1}
        for s in range(1, 6)
    ] + [{"stage": "distill", "step": s, "loss/total": 1.0 / s, "loss/on_kd": 0.5 / s} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    curves = loss_curves(tmp_path / "metrics.jsonl")
    assert set(curves) == {"cold_start", "distill"} and set(curves["distill"]) == {"loss/total", "loss/on_kd"}
    assert curves["cold_start"]["loss/sft"][-1] == (5, pytest.approx(0.6))
    accuracy = {"teacher": {"en": 90.0, "th": 40.0, "avg": 65.0}, "dudi student": {"en": 50.0, "th": 45.0, "avg": 47.5}}
    path = write_results_png(tmp_path, accuracy, ["en", "th"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1.5 * height  # three panels side by side: two stages, the table


def test_a_run_without_eval_or_metrics_still_gets_a_png(tmp_path):
    assert write_results_png(tmp_path, {}, []).read_bytes()[:4] == b"\x89PNG"
