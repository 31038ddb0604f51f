"""Resume: a run killed after a checkpoint continues where it stopped. With greedy rollouts its next losses and its
final weights equal an uninterrupted run's; with the asynchronous pipeline on, the ledger still shows every prompt
of every step trained exactly once (batches prepared ahead at the crash are prepared again, not lost)."""

from __future__ import annotations

import zlib

import pytest
import torch
from conftest import assert_planned_batches_trained_once, e2e_config, free_port_override
from safetensors.torch import load_file

from orchestrator.loop import Trainer, batches
from orchestrator.metrics import read_ledger

pytestmark = pytest.mark.e2e

GREEDY = {"max_model_len": 384, "enforce_eager": True, "sampling": {"max_new_tokens": 12, "temperature": 0.0}}


class SimulatedCrash(RuntimeError):
    pass


def _config(run, tiny_world, serve_port, tmp_path, name, **fields):
    # The distillation stage alone, from the session's cold start, as a whole run (`Trainer.run`).
    models = {"student": run.result.checkpoints["cold_start"], "teacher": str(tiny_world / "teacher")}
    return e2e_config(
        tiny_world, tmp_path, serve_port, name=name, models=models, cold_start={"enabled": False}, **fields
    )


def _crash_at(monkeypatch, learner_steps: int) -> None:
    original = Trainer.learn

    def learn(self, prepared, max_staleness):
        if self.learner_steps == learner_steps:
            raise SimulatedCrash(f"killed before optimizer step {learner_steps + 1}")
        return original(self, prepared, max_staleness)

    monkeypatch.setattr(Trainer, "learn", learn)


def _losses(run_dir):
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(e["step"], e["loss/total"]) for e in map(json.loads, lines) if e["stage"] == "distill"]


def _tensorboard_losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "distill"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("distill/loss/total")]


def test_a_resumed_run_takes_the_same_steps_as_an_uninterrupted_one(
    run, shared_rollout, tiny_world, serve_port, tmp_path, monkeypatch
):
    stage = {"steps": 4, "batch_size": 8, "lr": 1e-2}
    fields = {"rollout": GREEDY, "distill": stage, "checkpoint": {"every_steps": 2}}
    whole = Trainer(_config(run, tiny_world, serve_port, tmp_path, "whole", **fields), False, shared_rollout)
    whole.run()

    cfg = _config(run, tiny_world, serve_port, tmp_path, "crashed", **fields)
    with monkeypatch.context() as patch:
        _crash_at(patch, 3)  # after step 3, inside step 4: step 3 was logged after the step-2 checkpoint
        with pytest.raises(SimulatedCrash):
            Trainer(cfg, False, shared_rollout).run()
    assert [step for step, _ in _losses(cfg.run_dir)] == [1, 2, 3]
    resumed = Trainer(cfg, False, shared_rollout, resume=True)
    resumed.run()

    assert [step for step, _ in _losses(cfg.run_dir)] == [1, 2, 3, 4]
    assert [loss for _, loss in _losses(cfg.run_dir)] == pytest.approx(
        [loss for _, loss in _losses(whole.run_dir)], rel=1e-6
    )
    # TensorBoard hides the crashed run's step 3: each step once, with the resumed run's values.
    shown = _tensorboard_losses(cfg.run_dir)
    assert [step for step, _ in shown] == [1, 2, 3, 4]
    assert [loss for _, loss in shown] == pytest.approx([loss for _, loss in _losses(cfg.run_dir)], rel=1e-6)
    final = load_file(str(cfg.run_dir / "distill" / "model.safetensors"))
    for name, value in load_file(str(whole.run_dir / "distill" / "model.safetensors")).items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert_planned_batches_trained_once(read_ledger(cfg.run_dir / "ledger.jsonl"), resumed.data_order("distill", 8, 4))
    names = [p.name for p in (cfg.run_dir / "checkpoints").iterdir()]
    assert sorted(names) == ["distill-000002", "distill-000004-end"]  # keep_last = 2

    # Started again without --resume: a new run, whose logs and ledger do not continue the earlier one's.
    fresh = Trainer(cfg, False, shared_rollout)
    fresh.close()
    [earlier] = (cfg.run_dir / "earlier").iterdir()
    assert [step for step, _ in _losses(earlier)] == [1, 2, 3, 4] and (earlier / "checkpoints").is_dir()
    assert (cfg.run_dir / "metrics.jsonl").read_text() == "" and fresh.samples_trained == 0
    assert not (cfg.run_dir / "checkpoints").exists() and (cfg.run_dir / "distill" / "model.safetensors").is_file()


def test_an_ema_teacher_is_restored_on_resume(run, shared_rollout, tiny_world, serve_port, tmp_path, monkeypatch):
    """SDFT scores with an EMA of the student: the resumed run's teacher must hold the EMA of the checkpoint,
    or its losses drift from the uninterrupted run's from the first resumed step on."""
    stage = {"steps": 3, "batch_size": 8, "lr": 1e-2}
    fields = {"method": "sdft", "rollout": GREEDY, "distill": stage, "checkpoint": {"every_steps": 1}}
    whole = Trainer(_config(run, tiny_world, serve_port, tmp_path, "sdft-whole", **fields), False, shared_rollout)
    whole.run()
    cfg = _config(run, tiny_world, serve_port, tmp_path, "sdft-crashed", **fields)
    assert cfg.recipe.teacher == "ema"
    with monkeypatch.context() as patch:
        _crash_at(patch, 2)
        with pytest.raises(SimulatedCrash):
            Trainer(cfg, False, shared_rollout).run()
    Trainer(cfg, False, shared_rollout, resume=True).run()
    assert [loss for _, loss in _losses(cfg.run_dir)] == pytest.approx(
        [loss for _, loss in _losses(whole.run_dir)], rel=1e-6
    )


def test_a_resume_with_the_asynchronous_pipeline_trains_every_prompt_once(
    run, shared_rollout, tiny_world, serve_port, tmp_path, monkeypatch
):
    steps = 6
    stage = {"steps": steps, "batch_size": 8, "lr": 1e-2, "max_staleness": 2}
    cfg = _config(run, tiny_world, serve_port, tmp_path, "async", distill=stage, checkpoint={"every_steps": 3})
    with monkeypatch.context() as patch:
        _crash_at(patch, 4)  # batches 5 and 6 are being (or have been) prepared ahead at the crash
        with pytest.raises(SimulatedCrash):
            Trainer(cfg, False, shared_rollout).run()
    assert [e["step"] for e in read_ledger(cfg.run_dir / "ledger.jsonl")] == [1, 2, 3, 4]
    resumed = Trainer(cfg, False, shared_rollout, resume=True)
    resumed.run()
    ledger = read_ledger(cfg.run_dir / "ledger.jsonl")
    # The ledger lost step 4 with the crash (it came after the checkpoint) and got it back from the resume.
    assert_planned_batches_trained_once(ledger, resumed.data_order("distill", 8, steps))
    assert all(0 <= e["learner_version"] - v <= 2 for e in ledger for v in e["policy_versions"])


def test_resume_without_a_checkpoint_is_refused(run, tiny_world, serve_port, tmp_path):
    from orchestrator.checkpoints import ResumeError

    with pytest.raises(ResumeError, match="no complete checkpoint"):
        Trainer(_config(run, tiny_world, serve_port, tmp_path, "fresh"), False, resume=True)


def test_a_dudi_train_killed_at_a_random_moment_resumes_from_its_last_checkpoint(tmp_path, tiny_world):
    """`dudi train` in its own process group, SIGKILLed at a random moment after its first checkpoint (possibly
    while writing one), then `dudi train --resume`: the steps the killed run had logged after its checkpoint
    come out the same again (the cold start is deterministic), and the ledger has every planned batch once."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tiny_world / "data" / "train.jsonl"
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "orchestrator", "train", "configs/demo.yaml"]
    command += [f"models.student={tiny_world / 'student'}", f"models.teacher={tiny_world / 'teacher'}"]
    command += [f"data.train_path={data}", f"data.eval_path={data}", f"output_dir={run_dir}", "distill.enabled=false"]
    command += ["cold_start.steps=24", "cold_start.batch_size=8", "checkpoint.every_steps=4", "checkpoint.keep_last=3"]
    command += ["eval.compare_teacher=false", "eval.at_end_of_stages=false", "ray.num_cpus=2"]
    command += free_port_override()
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
    delay = random.uniform(0.0, 3.0)
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            if "checkpoint cold_start-000004" in line:
                break
        else:
            pytest.fail("the run ended before its first checkpoint:\n" + "".join(printed)[-3000:])
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    def losses():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return {e["step"]: e["loss/total"] for e in map(json.loads, lines)}

    before = losses()
    resumed = subprocess.run([*command, "--resume"], cwd=root, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"killed {delay:.2f} s after the first checkpoint:\n{resumed.stdout[-3000:]}"
    after = losses()
    assert sorted(after) == list(range(1, 25))
    assert [after[s] for s in sorted(before)] == pytest.approx([before[s] for s in sorted(before)], rel=1e-6)
    rows = len(data.read_text().splitlines())  # 192: the 24 batches are one epoch
    planned = list(batches(list(range(rows)), 8, 24, seed=0 + zlib.crc32(b"cold_start")))  # demo.yaml: seed 0
    assert_planned_batches_trained_once(read_ledger(run_dir / "ledger.jsonl"), planned)
