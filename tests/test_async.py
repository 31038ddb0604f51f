"""The asynchronous pipeline: max_staleness=0 is the synchronous loop, and with max_staleness=2 every sample is at
most two versions old and every prompt of every step is trained exactly once (the ledger). And a run on engines that
earlier runs sampled from samples as it would on fresh ones."""

from __future__ import annotations

import pytest
from conftest import assert_planned_batches_trained_once, e2e_config

from orchestrator.loop import Trainer
from orchestrator.metrics import read_ledger

pytestmark = pytest.mark.e2e

STEPS = 4


def _trainer(shared_rollout, tiny_world, serve_port, tmp_path, name, **fields):
    cfg = e2e_config(tiny_world, tmp_path, serve_port, name=name, **fields)
    trainer = Trainer(cfg, progress=False, rollout=shared_rollout)
    trainer.start()
    return trainer


def test_max_staleness_zero_reproduces_the_synchronous_losses(run, shared_rollout, tiny_world, serve_port, tmp_path):
    # Greedy rollouts make both runs deterministic, so any difference in what was sampled from which weights
    # shows up in the losses.
    greedy = {"max_model_len": 384, "enforce_eager": True, "sampling": {"max_new_tokens": 12, "temperature": 0.0}}
    stage = {"steps": STEPS, "batch_size": 8, "lr": 1e-2, "max_staleness": 0}
    cold_start = run.result.checkpoints["cold_start"]

    piped = _trainer(shared_rollout, tiny_world, serve_port, tmp_path, "piped", rollout=greedy, distill=stage)
    try:
        piped.run_stage("distill", piped.cfg.distill, piped.cfg.objective, cold_start)
    finally:
        piped.close()
    piped_losses = [(e["step"], e["loss/total"]) for e in _metrics(piped) if e["stage"] == "distill"]

    # The synchronous loop written out: prepare → learn → push → wait for the workers, step after step.
    serial = _trainer(shared_rollout, tiny_world, serve_port, tmp_path, "serial", rollout=greedy, distill=stage)
    serial_losses = []
    try:
        verbalizer = serial.begin_stage("distill", serial.cfg.objective, cold_start, serial.cfg.distill)
        for step, row_ids in enumerate(serial.data_order("distill", 8, STEPS), 1):
            metrics = serial.learn(serial.prepare(row_ids, serial.cfg.objective, verbalizer), max_staleness=0)
            assert metrics["rollout/staleness"] == 0
            serial._push_policy()
            serial.policy_sync.wait()
            serial_losses.append((step, metrics["loss/total"]))
        serial.end_stage("distill")
    finally:
        serial.close()
    assert [step for step, _ in piped_losses] == [step for step, _ in serial_losses] == list(range(1, STEPS + 1))
    assert [loss for _, loss in piped_losses] == pytest.approx([loss for _, loss in serial_losses], rel=1e-6)


def test_a_run_samples_the_same_on_engines_earlier_runs_sampled_from(
    run, shared_rollout, tiny_world, serve_port, tmp_path, monkeypatch
):
    from rollout.group import RolloutGroup

    stage = {"steps": 1, "batch_size": 8, "lr": 1e-2}  # sampled rollouts (temperature > 0)
    cold_start = run.result.checkpoints["cold_start"]

    def losses(name: str) -> list[float]:
        trainer = _trainer(shared_rollout, tiny_world, serve_port, tmp_path, name, distill=stage)
        assert trainer.cfg.rollout.sampling.temperature > 0
        try:
            trainer.run_stage("distill", trainer.cfg.distill, trainer.cfg.objective, cold_start)
        finally:
            trainer.close()
        return [e["loss/total"] for e in _metrics(trainer) if e["stage"] == "distill"]

    first, second = losses("first"), losses("second")
    assert len(first) == 1 and first == pytest.approx(second, rel=1e-6)
    # The reseed at the stage's start is what makes them equal: without it the same run draws other samples.
    monkeypatch.setattr(RolloutGroup, "reseed", lambda self, seed: None)
    assert losses("unseeded") != pytest.approx(first, rel=1e-6)


def test_max_staleness_two_bounds_the_staleness_and_trains_every_prompt_once(
    run, shared_rollout, tiny_world, serve_port, tmp_path
):
    steps = 6
    stage = {"steps": steps, "batch_size": 8, "lr": 1e-2, "max_staleness": 2}
    trainer = _trainer(shared_rollout, tiny_world, serve_port, tmp_path, "async", distill=stage)
    try:
        first_version = trainer.version
        trainer.run_stage("distill", trainer.cfg.distill, trainer.cfg.objective, run.result.checkpoints["cold_start"])
    finally:
        trainer.close()
    ledger = read_ledger(trainer.run_dir / "ledger.jsonl")
    assert_planned_batches_trained_once(ledger, trainer.data_order("distill", 8, steps))
    staleness = []
    for entry in ledger:
        assert entry["learner_version"] == first_version + entry["step"] - 1
        # SPIN's y' and On-KD's ỹ of every row: 16 sampled responses per step, each with its version.
        assert len(entry["policy_versions"]) == 16
        staleness += [entry["learner_version"] - v for v in entry["policy_versions"]]
    assert 0 <= min(staleness) and max(staleness) <= 2
    # Batches really were sampled while earlier steps trained (the learner did not wait for each rollout).
    assert max(staleness) >= 1
    logged = [e for e in _metrics(trainer) if e["stage"] == "distill"]
    assert max(e["rollout/staleness"] for e in logged) == max(staleness)


def _metrics(trainer):
    return read_ledger(trainer.run_dir / "metrics.jsonl")
