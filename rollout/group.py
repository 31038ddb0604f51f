"""N rollout workers driven as one: prompts are split evenly, results come back in request order."""

from __future__ import annotations

import ray

from rollout.config import RolloutConfig, SamplingConfig
from rollout.types import (
    GenerationRequest,
    GenerationResult,
    SamplingSpec,
    TopIdsRequest,
    WeightGroupSpec,
    WeightSnapshot,
)
from rollout.worker import RolloutWorker


class RolloutGroup:
    def __init__(
        self,
        config: RolloutConfig,
        model_path: str,
        seed: int,
        num_workers: int | None = None,
        wait: bool = True,
        actor_options: list[dict] | None = None,
    ):
        """`actor_options`: per worker, extra Ray actor options (a placement group bundle, a label selector)."""
        self.config = config
        actor_cls = ray.remote(RolloutWorker)
        base_options = dict(
            num_cpus=config.num_cpus_per_worker, num_gpus=config.num_gpus_per_worker, resources=config.resources
        )
        count = num_workers or config.num_workers
        options = actor_options or [{}] * count
        self.workers = [
            actor_cls.options(**base_options, **options[i]).remote(config, model_path, seed + i) for i in range(count)
        ]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Blocks until every engine is up; start-up failures surface here, not at the first generate call."""
        ray.get([w.get_policy_version.remote() for w in self.workers])

    def sampling_spec(
        self,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        top_ids: int = 0,
        sampling: SamplingConfig | None = None,
        stop_token_ids: tuple[int, ...] = (),
    ) -> SamplingSpec:
        """`sampling`: the caller's settings (a run sharing these engines may sample differently); default: the
        group's config."""
        s = sampling or self.config.sampling
        return SamplingSpec(
            temperature=0.0 if greedy else s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            max_new_tokens=max_new_tokens or s.max_new_tokens,
            top_ids=top_ids,
            stop_token_ids=tuple(stop_token_ids),
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

    def load_weights(self, snapshot: WeightSnapshot, wait: bool = True) -> list:
        """Every worker takes the snapshot in place (after the calls already queued on it). `wait=False` returns
        the pending calls (Ray object refs of the versions) instead of the versions."""
        pending = [w.load_weights.remote(snapshot) for w in self.workers]
        return ray.get(pending) if wait else pending

    def join_weight_group(self, group: WeightGroupSpec, record_digest: bool = False) -> list:
        """Worker i joins the learner's weight group as rank i + 1; returns the pending calls (they complete
        once the learner's rank 0 has joined too)."""
        return [w.join_weight_group.remote(group, i + 1, record_digest) for i, w in enumerate(self.workers)]

    def received_digests(self) -> list[dict[str, str]]:
        return ray.get([w.received_digest.remote() for w in self.workers])

    def node_ids(self) -> list[str]:
        return ray.get([w.node_id.remote() for w in self.workers])

    def policy_versions(self) -> list[int]:
        return ray.get([w.get_policy_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
