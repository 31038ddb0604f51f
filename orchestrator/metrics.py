"""Step metrics to TensorBoard (`<run>/tensorboard`), to `<run>/metrics.jsonl`, and to the Ray dashboard.

On Ray, every step metric is also a `ray.util.metrics.Gauge` named `dudi_<metric>` (`loss/on_kd` →
`dudi_loss_on_kd`), tagged with the run and the stage: Ray's metrics agent serves it on each node's Prometheus
endpoint, which the Ray dashboard's Grafana panels (and `deploy/grafana/dudi-dashboard.json`) read.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path


def prometheus_name(metric: str) -> str:
    """`loss/on_kd` → `dudi_loss_on_kd` (Prometheus names: letters, digits and underscores)."""
    return "dudi_" + re.sub(r"[^a-zA-Z0-9_]", "_", metric)


class RayGauges:
    """Sets `dudi_<metric>` gauges tagged with this run and the stage, kept on the endpoint until the run closes.
    Only where Ray is connected."""

    def __init__(self, run: str):
        from dudi_common.gauges import KeptGauges

        self.run = run
        self.gauges = KeptGauges()

    def set(self, stage: str, metrics: dict[str, float]) -> None:
        import ray

        if not ray.is_initialized():
            return
        for key, value in metrics.items():
            self.gauges.set(
                prometheus_name(key),
                value,
                tags={"run": self.run, "stage": stage},
                description=f"DuDi-Dist step metric {key}",
            )

    def close(self) -> None:
        self.gauges.close()


class MetricsLogger:
    """State: one TensorBoard writer per stage (`<run>/tensorboard/<stage>`) and the run's jsonl file.

    `resume_after`: per stage, the last step a resumed run's checkpoint holds. TensorBoard then hides that stage's
    later events, which the crashed run wrote and the resumed run writes again (TensorBoard purges by step, for
    every tag of an event directory, hence a directory per stage).
    """

    def __init__(self, run_dir: Path, resume_after: dict[str, int] | None = None, run_name: str | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ray_gauges = RayGauges(run_name or run_dir.name)
        self.tensorboard_dir = run_dir / "tensorboard"
        self.resume_after = dict(resume_after or {})
        self.writers: dict = {}
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def _writer(self, stage: str):
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.resume_after.get(stage)
            self.writers[stage] = SummaryWriter(
                str(self.tensorboard_dir / stage), purge_step=None if purge is None else purge + 1
            )
        return self.writers[stage]

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        writer = self._writer(stage)
        for key, value in metrics.items():
            writer.add_scalar(f"{stage}/{key}", value, step)
        self.jsonl.write(json.dumps({"stage": stage, "step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()
        self.ray_gauges.set(stage, metrics)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.jsonl.close()
        self.ray_gauges.close()


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
