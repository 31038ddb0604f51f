"""The data-parallel group of `LearnerRank` Ray actors, driven as one object by the orchestrator."""

from __future__ import annotations

import ray

from learner.config import LearnerConfig
from learner.rank import LearnerRank
from learner.types import PublishedWeights, TrainBatch


class LearnerGroup:
    def __init__(
        self,
        config: LearnerConfig,
        model_path: str,
        reference_path: str | None,
        lr: float,
        pad_id: int,
        seed: int,
    ):
        self.config = config
        actor_cls = ray.remote(num_cpus=config.num_cpus_per_rank, num_gpus=config.num_gpus_per_rank)(LearnerRank)
        self.ranks = [actor_cls.remote(config, rank, config.num_ranks) for rank in range(config.num_ranks)]
        master = ray.get(self.ranks[0].address.remote())
        sizes = ray.get(
            [r.init_engine.remote(model_path, reference_path, master, lr, pad_id, seed) for r in self.ranks]
        )
        self.num_parameters = sizes[0]

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        world = len(self.ranks)
        results = ray.get([r.train_step.remote(batch.shard(i, world)) for i, r in enumerate(self.ranks)])
        return {key: sum(m[key] for m in results) / world for key in results[0]}

    def publish_weights(self, version: int, directory: str, ema: bool = False) -> PublishedWeights:
        """The current weights (or, with `ema`, their moving average) as `{directory}/[ema-]v{version}`."""
        return ray.get([r.publish_weights.remote(version, directory, ema) for r in self.ranks])[0]

    def save_checkpoint(self, directory: str) -> str:
        return ray.get([r.save_checkpoint.remote(directory) for r in self.ranks])[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        self.ranks = []
