"""Run checkpoints under `<run>/checkpoints/`, written atomically, found again by `--resume`.

A checkpoint is a directory `<stage>-<step:06d>` holding `state.json` (the orchestrator's state: stage, step,
versions, the stages already finished, SeqKD's teacher responses, how many metric and ledger lines existed; the
data order and the verbalizer's choices follow from the seed and need no saved RNG state) and, for one taken inside
a stage, `learner/` (DeepSpeed's weights, optimizer and scheduler of every rank, and the EMA) and `student/` (an HF
export of the weights, loadable on its own). It is assembled in a hidden `.tmp-*` sibling and renamed into place,
so a crash while writing never leaves a directory that looks complete; `state.json` is written last, and only
directories that have one are candidates for a resume.

The learner's ranks write their own shards: across nodes, `output_dir` must be storage every node sees (NFS, a
mounted bucket), as for any multi-node trainer's checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAGES = ("cold_start", "distill")
STATE_FILE = "state.json"


class ResumeError(RuntimeError):
    pass


class RunFailure(RuntimeError):
    """A run that cannot go on by itself (a learner rank died); the message says where to resume from."""


@dataclass
class RunState:
    """Where a run stands between two steps."""

    stage: str  # the stage this checkpoint was taken in (or just finished)
    stage_step: int  # steps of `stage` trained so far
    stage_done: bool  # the stage ended here (its HF checkpoint is in `finished`)
    learner_steps: int  # optimizer steps over the whole run (the policy version)
    finished: dict[str, str] = field(default_factory=dict)  # stage → its final HF checkpoint
    teacher_responses: dict[str, list[int]] = field(default_factory=dict)  # SeqKD: prompt → ŷ
    metrics_lines: int = 0  # lines of metrics.jsonl written up to here
    ledger_lines: int = 0
    result: dict = field(default_factory=dict)  # accuracy, stage_seconds so far

    @property
    def order(self) -> tuple[int, int]:
        return STAGES.index(self.stage), self.stage_step + (1 if self.stage_done else 0)


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def write(run_dir: Path, state: RunState, write_payload, keep_last: int) -> Path:
    """Writes one checkpoint atomically. `write_payload(tmp_dir)` saves the learner and HF export into it (or
    nothing for a stage-end checkpoint); `keep_last` complete checkpoints survive."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{state.stage}-{state.stage_step:06d}{'-end' if state.stage_done else ''}"
    final, tmp = root / name, root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_payload(tmp)
    state_path = tmp / STATE_FILE
    state_path.write_text(json.dumps(asdict(state), indent=1))
    with open(state_path, "rb") as handle:
        os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)  # the same step written again (a resumed run): replace it
    os.rename(tmp, final)
    for old in complete(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-*"):  # a crash in an earlier write
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def read_state(directory: Path) -> RunState:
    return RunState(**json.loads((directory / STATE_FILE).read_text()))


def complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if not d.name.startswith(".") and (d / STATE_FILE).is_file()]
    return sorted(found, key=lambda d: read_state(d).order)


def latest(run_dir: Path) -> tuple[Path, RunState]:
    found = complete(run_dir)
    if not found:
        raise ResumeError(
            f"--resume: no complete checkpoint under {checkpoint_root(run_dir)} "
            "(checkpoints are written every `checkpoint.every_steps` steps and at the end of each stage)"
        )
    return found[-1], read_state(found[-1])


# Settings a resume may change: where and how wide things run, how often to checkpoint, what to evaluate. Anything
# else (models, data, seed, objective, stages, optimizer, sampling) would make the resumed run a different run.
RESUMABLE_CHANGES = (
    "name",
    "output_dir",
    "ray",
    "checkpoint",
    "weight_sync",
    "eval",
    "data.strict",
    "rollout.num_workers",
    "rollout.max_restarts",
    "rollout.restart_timeout_s",
    "rollout.resources",
    "rollout.num_cpus_per_worker",
    "rollout.num_gpus_per_worker",
    "rollout.kv_cache_gib",
    "teacher.num_replicas",
    "teacher.resources",
    "teacher.http_port",
    "teacher.http_host",
    "teacher.num_cpus_per_replica",
    "teacher.num_gpus_per_replica",
    "learner.resources",
)


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dumps, except those a resume may change."""
    changed = []
    for key in sorted(set(before) | set(after)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_CHANGES:
            continue
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += config_changes(old, new, f"{name}.")
        elif old != new:
            changed.append(name)
    return changed


def check_same_config(run_dir: Path, config: dict) -> None:
    """A resume continues the run its checkpoint came from: the settings that shape training must not change."""
    import yaml

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    changed = config_changes(yaml.safe_load(saved.read_text()) or {}, config)
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ResumeError(
            f"--resume: the config differs from the run's ({saved}) in {shown}; put those back, or start a new run "
            "under another name"
        )


# What a run appends to or resumes from in its directory (its stage exports, `<run>/<stage>/`, are overwritten).
RUN_RECORDS = ("metrics.jsonl", "ledger.jsonl", "tensorboard", "checkpoints")


def set_aside_earlier_run(run_dir: Path, stamp: str) -> Path | None:
    """A fresh run (no --resume) in a directory an earlier run wrote: that run's logs, ledger, TensorBoard events and
    resume checkpoints move to `<run>/earlier/<stamp>/`, so the new run's records hold it alone (appended, two runs'
    steps would interleave in one log and one TensorBoard curve) and `--resume` cannot continue the earlier run's
    state with the new run's ledger. Nothing is deleted. Returns where they went (None: nothing to set aside)."""
    present = [run_dir / name for name in RUN_RECORDS if (run_dir / name).exists()]
    if not present:
        return None
    target = run_dir / "earlier" / stamp
    suffix = 1
    while target.exists():  # two fresh starts within one second
        suffix += 1
        target = run_dir / "earlier" / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for path in present:
        path.rename(target / path.name)
    return target


def truncate_lines(path: Path, lines: int) -> None:
    """Drops what a crashed run logged after its last checkpoint, so the resumed run's log has each step once."""
    if not path.is_file():
        return
    kept = path.read_text().splitlines(keepends=True)[:lines]
    path.write_text("".join(kept))


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0
