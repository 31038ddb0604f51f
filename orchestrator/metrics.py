"""Step metrics to TensorBoard (`<run>/tensorboard`) and to `<run>/metrics.jsonl`, one namespace per stage."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    """State: the open TensorBoard writer and jsonl file of one run."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.jsonl.write(json.dumps({"stage": stage, "step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()


class Ledger:
    """`<run>/ledger.jsonl`: per trained step, the ids of its samples and the policy versions that produced them,
    so that every sample can be shown to be trained exactly once and within the staleness bound."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "ledger.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")

    def record(self, stage: str, step: int, learner_version: int, samples: list[int], versions: list[int]) -> None:
        entry = {
            "stage": stage,
            "step": step,
            "learner_version": learner_version,
            "samples": samples,
            "policy_versions": versions,
        }
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
