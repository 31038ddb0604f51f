"""N rollout workers driven as one: prompts are split evenly, results come back in request order."""

from __future__ import annotations

import ray

from rollout.config import RolloutConfig
from rollout.types import GenerationRequest, GenerationResult, SamplingSpec, TopIdsRequest, WeightSnapshot
from rollout.worker import RolloutWorker


class RolloutGroup:
    def __init__(
        self, config: RolloutConfig, model_path: str, seed: int, num_workers: int | None = None, wait: bool = True
    ):
        self.config = config
        actor_cls = ray.remote(num_cpus=config.num_cpus_per_worker, num_gpus=config.num_gpus_per_worker)(RolloutWorker)
        count = num_workers or config.num_workers
        self.workers = [actor_cls.remote(config, model_path, seed + i) for i in range(count)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Blocks until every engine is up; start-up failures surface here, not at the first generate call."""
        ray.get([w.get_policy_version.remote() for w in self.workers])

    def sampling_spec(self, greedy: bool = False, max_new_tokens: int | None = None, top_ids: int = 0) -> SamplingSpec:
        s = self.config.sampling
        return SamplingSpec(
            temperature=0.0 if greedy else s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            max_new_tokens=max_new_tokens or s.max_new_tokens,
            top_ids=top_ids,
        )

    def _fan_out(self, method: str, requests: list, *args) -> list:
        n = len(self.workers)
        shards = [requests[i::n] for i in range(n)]
        futures = [
            getattr(w, method).remote(shard, *args) for w, shard in zip(self.workers, shards, strict=True) if shard
        ]
        results: list = [None] * len(requests)
        for i, shard_results in enumerate(ray.get(futures)):
            results[i::n] = shard_results
        return results

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[GenerationResult]:
        return self._fan_out("generate", requests, spec)

    def rank_ids(self, requests: list[TopIdsRequest], n: int) -> list[list[list[int]]]:
        """Per request, the policy's n most likely ids at each response position."""
        return self._fan_out("rank_ids", requests, n)

    def load_weights(self, snapshot: WeightSnapshot) -> list[int]:
        return ray.get([w.load_weights.remote(snapshot) for w in self.workers])

    def policy_versions(self) -> list[int]:
        return ray.get([w.get_policy_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
