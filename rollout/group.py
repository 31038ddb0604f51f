"""N rollout workers driven as one: prompts are split evenly, results come back in request order.

A worker whose process dies is restarted by Ray (`rollout.max_restarts`). The group notices when a call to it
fails (it died during the call) or is refused (`WeightsLost`: it was restarted in between), waits until the new
engine is up, has it given the current weights (`restore_weights`, set by whoever keeps the weights moving; by
default the last weights loaded from a lasting path) and issues that worker's share of the prompts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray

from rollout.config import RolloutConfig, SamplingConfig
from rollout.types import (
    GenerationRequest,
    GenerationResult,
    SamplingSpec,
    TopIdsRequest,
    WeightGroupSpec,
    WeightsLost,
    WeightSnapshot,
)
from rollout.worker import RolloutWorker

# A call fails with these when its worker died during it, or is restarting or restarted without the weights.
LOST_WORKER_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, WeightsLost)


class RolloutFailure(RuntimeError):
    pass


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
            actor_cls.options(**base_options, max_restarts=config.max_restarts, **options[i]).remote(
                config, model_path, seed + i, worker_index=i
            )
            for i in range(count)
        ]
        self.restarts = 0  # workers restarted and restored so far
        # Gives restarted workers (by index) the current weights; None: reload `weights_source`.
        self.restore_weights: Callable[[list[int]], None] | None = None
        self.weights_source = WeightSnapshot(0, model_path)  # the last weights loaded from a lasting path
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
        """Worker i gets requests i, i + n, ...; a lost worker's share is issued again once it is restored."""
        n = len(self.workers)
        results: list = [None] * len(requests)
        todo = [i for i in range(n) if requests[i::n]]
        while todo:
            futures = {i: getattr(self.workers[i], method).remote(requests[i::n], *args) for i in todo}
            lost = []
            for i, future in futures.items():
                try:
                    results[i::n] = ray.get(future)
                except LOST_WORKER_ERRORS:
                    lost.append(i)
            if lost:
                self.recover(lost)
            todo = lost
        return results

    def recover(self, lost: list[int]) -> None:
        """Waits for the lost workers' restarted engines, then has them given the current weights."""
        deadline = time.monotonic() + self.config.restart_timeout_s
        for i in lost:
            while True:
                try:
                    ray.get(self.workers[i].get_policy_version.remote())
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:
                    if _dead_for_good(self.workers[i]):
                        raise RolloutFailure(
                            f"rollout worker {i} died and Ray will not restart it again "
                            f"(rollout.max_restarts={self.config.max_restarts}): {_first_line(error)}"
                        ) from None
                if time.monotonic() > deadline:
                    raise RolloutFailure(
                        f"rollout worker {i} was not back within rollout.restart_timeout_s="
                        f"{self.config.restart_timeout_s:.0f} s"
                    )
                time.sleep(1.0)
        self.restarts += len(lost)
        if self.restore_weights is not None:
            self.restore_weights(lost)
        else:
            self.load_weights(self.weights_source, workers=lost)

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[GenerationResult]:
        return self._fan_out("generate", requests, spec)

    def rank_ids(self, requests: list[TopIdsRequest], n: int) -> list[list[list[int]]]:
        """Per request, the policy's n most likely ids at each response position."""
        return self._fan_out("rank_ids", requests, n)

    def load_weights(
        self,
        snapshot: WeightSnapshot | list[WeightSnapshot],
        wait: bool = True,
        workers: list[int] | None = None,
        lasting: bool = True,
    ) -> list:
        """Every worker (or those of `workers`) takes the snapshot in place, after the calls already queued on it;
        a list gives each chosen worker its own (shared buffers: one handle per worker).
        `wait=False` returns the pending calls (Ray object refs of the versions) instead of the versions.
        `lasting`: the snapshot's files stay (a checkpoint), so a restarted worker can be given them again."""
        chosen = list(range(len(self.workers)) if workers is None else workers)
        snapshots = snapshot if isinstance(snapshot, list) else [snapshot] * len(chosen)
        if len(snapshots) != len(chosen):
            raise ValueError(f"{len(snapshots)} snapshots for {len(chosen)} workers")
        if lasting and snapshots[0].path is not None:
            self.weights_source = snapshots[0]
        pending = [self.workers[i].load_weights.remote(s) for i, s in zip(chosen, snapshots, strict=True)]
        return ray.get(pending) if wait else pending

    def reseed(self, seed: int) -> None:
        """Worker i's sampler starts again from `seed + i`, as a new group made with `seed` would: what a run samples
        then does not depend on what earlier runs on these engines sampled."""
        ray.get([w.reseed.remote(seed + i) for i, w in enumerate(self.workers)])

    def join_weight_group(self, group: WeightGroupSpec, record_digest: bool = False) -> list:
        """Worker i joins the learner's weight group as rank i + 1; returns the pending calls (they complete
        once the learner's rank 0 has joined too)."""
        return [w.join_weight_group.remote(group, i + 1, record_digest) for i, w in enumerate(self.workers)]

    def received_digests(self) -> list[dict[str, str]]:
        return ray.get([w.received_digest.remote() for w in self.workers])

    def node_ids(self) -> list[str]:
        return ray.get([w.node_id.remote() for w in self.workers])

    def gpu_uuids(self) -> list[list[str]]:
        """Per worker, the GPUs it sees (empty on CPU)."""
        return ray.get([w.gpu_uuids.remote() for w in self.workers])

    def policy_versions(self) -> list[int]:
        return ray.get([w.get_policy_version.remote() for w in self.workers])

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


def _dead_for_good(worker) -> bool:
    """Whether Ray's record of the actor says it is dead for good (not restarting)."""
    from ray._private.state import state  # the GCS actor table; Ray has no public per-actor state without a dashboard

    info = state.actor_table(worker._actor_id.hex())
    return info.get("State") == "DEAD"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
