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
