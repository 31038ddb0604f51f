"""Run checkpoints: atomic writes, the newest complete one found again, old ones pruned (no Ray here)."""

from __future__ import annotations

import pytest

from orchestrator import checkpoints
from orchestrator.checkpoints import ResumeError, RunState


def state(stage: str, step: int, done: bool = False) -> RunState:
    return RunState(stage=stage, stage_step=step, stage_done=done, learner_steps=step)


def test_the_newest_complete_checkpoint_wins_across_stages(tmp_path):
    for s in (state("cold_start", 3), state("cold_start", 5, done=True), state("distill", 2)):
        checkpoints.write(tmp_path, s, lambda d: (d / "payload").write_text("x"), keep_last=5)
    path, found = checkpoints.latest(tmp_path)
    assert (found.stage, found.stage_step) == ("distill", 2) and (path / "payload").read_text() == "x"
    assert [p.name for p in checkpoints.complete(tmp_path)] == [
        "cold_start-000003",
        "cold_start-000005-end",
        "distill-000002",
    ]


def test_a_crash_while_writing_leaves_nothing_a_resume_would_pick(tmp_path):
    checkpoints.write(tmp_path, state("distill", 2), lambda d: None, keep_last=2)

    def crash(directory):
        (directory / "learner").mkdir()
        raise KeyboardInterrupt  # killed half-way through the payload

    with pytest.raises(KeyboardInterrupt):
        checkpoints.write(tmp_path, state("distill", 4), crash, keep_last=2)
    assert (checkpoints.checkpoint_root(tmp_path) / ".tmp-distill-000004").is_dir()
    _, found = checkpoints.latest(tmp_path)
    assert found.stage_step == 2
    checkpoints.write(tmp_path, state("distill", 4), lambda d: None, keep_last=2)  # the next write cleans up
    assert not list(checkpoints.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_only_the_last_k_are_kept(tmp_path):
    for step in range(1, 6):
        checkpoints.write(tmp_path, state("distill", step), lambda d: None, keep_last=2)
    assert [p.name for p in checkpoints.complete(tmp_path)] == ["distill-000004", "distill-000005"]


def test_resume_without_a_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(ResumeError, match="no complete checkpoint under .*checkpoints"):
        checkpoints.latest(tmp_path)


def test_truncating_logs_keeps_what_the_checkpoint_counted(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("a\nb\nc\n")
    assert checkpoints.count_lines(log) == 3
    checkpoints.truncate_lines(log, 2)
    assert log.read_text() == "a\nb\n"


def test_a_resume_refuses_settings_that_shape_training_but_not_where_it_runs(tmp_path):
    import yaml

    before = {"seed": 0, "distill": {"steps": 4, "lr": 0.01}, "rollout": {"num_workers": 1, "dtype": "float32"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(before))
    wider = {**before, "rollout": {"num_workers": 4, "dtype": "float32"}, "ray": {"address": "auto"}}
    checkpoints.check_same_config(tmp_path, wider)  # more engines, another cluster: the same run
    changed = {**before, "seed": 1, "distill": {"steps": 4, "lr": 0.02}}
    with pytest.raises(ResumeError, match=r"differs .* in distill\.lr, seed;"):
        checkpoints.check_same_config(tmp_path, changed)


def test_a_fresh_run_sets_an_earlier_runs_records_aside_and_keeps_its_exports(tmp_path):
    run_dir = tmp_path / "demo"
    (run_dir / "checkpoints" / "distill-000002").mkdir(parents=True)
    (run_dir / "tensorboard" / "distill").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "ledger.jsonl").write_text('{"step": 1}\n')
    (run_dir / "distill").mkdir()  # a stage's HF export: the new run overwrites it, another run may be reading it
    (run_dir / "distill" / "config.json").write_text("{}")

    moved = checkpoints.set_aside_earlier_run(run_dir, "20261127-150000")
    assert moved == run_dir / "earlier" / "20261127-150000"
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "ledger.jsonl", "metrics.jsonl", "tensorboard"]
    assert (moved / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not any((run_dir / name).exists() for name in checkpoints.RUN_RECORDS)
    assert (run_dir / "distill" / "config.json").is_file()

    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')  # a second fresh start in the same second
    assert checkpoints.set_aside_earlier_run(run_dir, "20261127-150000") == run_dir / "earlier" / "20261127-150000-2"
    assert checkpoints.set_aside_earlier_run(run_dir, "20261127-150001") is None  # nothing left to set aside
