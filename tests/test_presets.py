"""Every preset runs two distillation steps end to end through the real components and logs exactly its terms.

Reuses the session's DuDi run (its cold-start checkpoint and its vLLM engines) so no engine is started twice;
this module runs after test_e2e.py, whose checks need the engines on the DuDi run's final weights.
"""

from __future__ import annotations

import math

import pytest
from conftest import e2e_config

from orchestrator.loop import Trainer
from orchestrator.presets import METHODS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_runs_and_logs_exactly_its_terms(method, run, shared_rollout, tiny_world, serve_port, tmp_path):
    cfg = e2e_config(
        tiny_world, tmp_path, serve_port, name=method, method=method, distill={"steps": 2, "batch_size": 8}
    )
    trainer = Trainer(cfg, progress=False, rollout=shared_rollout)
    try:
        trainer.run_stage("distill", cfg.distill, cfg.objective, run.result.checkpoints["cold_start"])
    finally:
        trainer.close()
    metrics = trainer.result.last_metrics["distill"]
    o = cfg.objective
    logged = {key.removeprefix("loss/") for key in metrics if key.startswith("loss/")} - {"total"}
    assert logged == set(o.terms)
    weights = {
        "sft": 1.0,
        "dft": 1.0,
        "spin": o.alpha,
        "off_kd": o.kd_weight * (1 - o.lam),
        "on_kd": o.kd_weight * o.lam,
    }
    assert metrics["loss/total"] == pytest.approx(sum(weights[t] * metrics[f"loss/{t}"] for t in logged), rel=1e-5)
    assert all(math.isfinite(metrics[f"loss/{t}"]) for t in logged)
    assert trainer.learner_steps == 2
    if o.needs_rollouts:
        assert trainer.version == 2 and "time/sync_s" in metrics
    if cfg.recipe.teacher == "ema":
        assert "time/teacher_sync_s" in metrics
    if cfg.recipe.on_kd_responses == "teacher":
        assert trainer.teacher_responses and "time/generate_s" not in metrics
