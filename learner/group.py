"""The data-parallel group of `LearnerRank` Ray actors, driven as one object by the orchestrator."""

from __future__ import annotations

import ray

from learner.config import LearnerConfig
from learner.rank import LearnerRank
from learner.types import PublishedWeights, TensorSpec, TrainBatch


class LearnerGroup:
    def __init__(
        self,
        config: LearnerConfig,
        model_path: str,
        reference_path: str | None,
        pad_id: int,
        seed: int,
        ema_decay: float | None = None,
        actor_options: list[dict] | None = None,
        wait: bool = True,
        total_steps: int | None = None,
    ):
        """`config.lr`: the peak of `config.lr_schedule`, whose decay ends at `total_steps`; `ema_decay`: keep an
        EMA of the weights on rank 0 (an EMA teacher's); `actor_options`: per rank, extra Ray actor options (a
        placement group bundle, a label selector); `wait=False` returns while the ranks still load and initialize
        (call `wait_ready` before using them), so other start-up can overlap."""
        self.config = config
        self.ema_decay = ema_decay
        actor_cls = ray.remote(LearnerRank)
        base_options = dict(
            num_cpus=config.num_cpus_per_rank, num_gpus=config.num_gpus_per_rank, resources=config.resources
        )
        options = actor_options or [{}] * config.num_ranks
        self.ranks = [
            actor_cls.options(**base_options, **options[rank]).remote(config, rank, config.num_ranks, ema_decay)
            for rank in range(config.num_ranks)
        ]
        master = ray.get(self.ranks[0].address.remote())
        self._initializing = [
            r.init_engine.remote(model_path, reference_path, master, pad_id, seed, total_steps) for r in self.ranks
        ]
        self.num_parameters: int | None = None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Blocks until every rank's engine is initialized; start-up failures surface here."""
        if self._initializing:
            self.num_parameters = ray.get(self._initializing)[0]
            self._initializing = []

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        world = len(self.ranks)
        results = ray.get([r.train_step.remote(batch.shard(i, world)) for i, r in enumerate(self.ranks)])
        return {key: sum(m[key] for m in results) / world for key in results[0]}

    def publish_weights(self, version: int, directory: str) -> PublishedWeights:
        """The current weights as safetensors files in `{directory}/v{version}` on rank 0's node."""
        return ray.get([r.publish_weights.remote(version, directory) for r in self.ranks])[0]

    def share_weights(self, version: int, consumers: int) -> PublishedWeights:
        """The current weights in buffers that `consumers` processes on rank 0's node map without a copy (CUDA IPC
        on a GPU, shared memory on CPU): per consumer, one handle per bucket. Held until `release_shared_weights`."""
        return ray.get([r.share_weights.remote(version, consumers) for r in self.ranks])[0]

    def release_shared_weights(self, version: int) -> None:
        """Frees a shared version once its consumers are done with it (returns at once)."""
        self.ranks[0].release_shared_weights.remote(version)

    def ema_buckets(self):
        """The EMA of the weights, readable from any node: an object ref to the list of per-bucket object refs
        (`dudi_common.flat_bucket.FlatBucket` each). Returns at once; a reader waits for rank 0 to have put them."""
        if self.ema_decay is None:
            raise ValueError("ema_buckets() needs an ema_decay")
        return self.ranks[0].ema_buckets.remote()

    # --- the weight group: rank 0 → consumer processes on any node ---------------------------------------------
    def weight_group_plan(self) -> tuple[str, int, list[list[TensorSpec]]]:
        """(host, port) where rank 0 will listen, and the buckets every broadcast sends."""
        return ray.get(self.ranks[0].weight_group_plan.remote())

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str = "gloo") -> list:
        """Rank 0 opens the group over `backend` ("gloo" or "nccl"); returns the pending calls, which finish once
        every consumer has joined."""
        return [r.open_weight_group.remote(host, port, world_size, backend) for r in self.ranks]

    def broadcast_weights(self, version: int) -> PublishedWeights:
        """Posts the current weights to the weight group; returns once rank 0 has copied them out."""
        return ray.get([r.broadcast_weights.remote(version) for r in self.ranks])[0]

    def weights_digest(self) -> dict[str, str]:
        return ray.get([r.weights_digest.remote() for r in self.ranks])[0]

    def gpu_uuid(self) -> str | None:
        """The GPU of rank 0's weights (None on CPU)."""
        return ray.get(self.ranks[0].gpu_uuid.remote())

    def node_id(self) -> str:
        return ray.get(self.ranks[0].node_id.remote())

    def save_state(self, directory: str) -> None:
        """DeepSpeed state of every rank (weights, optimizer, scheduler) and the EMA, for an exact resume."""
        ray.get([r.save_state.remote(directory) for r in self.ranks])

    def load_state(self, directory: str) -> int:
        """Restores `save_state`; returns the learner's optimizer step at that point."""
        return ray.get([r.load_state.remote(directory) for r in self.ranks])[0]

    def save_checkpoint(self, directory: str) -> str:
        return ray.get([r.save_checkpoint.remote(directory) for r in self.ranks])[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        self.ranks = []
