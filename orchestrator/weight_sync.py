"""Learner → rollout workers: versioned weights, through the transport the placement allows.

- shared: rank 0 copies each bucket into a buffer that workers on its node map without a copy (a file in /dev/shm
  on CPU, CUDA IPC when worker and learner share a GPU) and hands each worker its own handles through Ray; rank 0
  frees a version's buffers once every worker has loaded it. Same node only.
- files: rank 0 writes safetensors files (one per bucket) under /dev/shm; every worker reloads them. Only for
  workers on rank 0's node (a same-node path, even where several Ray nodes share one machine's /dev/shm).
- broadcast: rank 0 and every engine's worker process form a process group of their own (`dudi_common.weight_group`:
  NCCL when the learner and every worker hold GPUs, gloo otherwise); buckets travel as raw bytes, bit-identical,
  over the network. Works across nodes; opened once per learner group.

`auto` (`choose_transport`) takes shared when every worker runs on rank 0's node (and, with the learner on a GPU,
sees that GPU), files when a worker on its node has no GPU to take an NCCL broadcast, and broadcast otherwise. Loads
are queued on the workers behind the calls already there, so a sync never waits for a generation in flight; `wait()`
does.

A worker that died and was restarted by Ray is given the current weights with `restore`: a same-node push to that
worker only, or everyone joining a new weight group (its death broke the old one) and one more broadcast.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

import ray

from dudi_common.weight_group import backend_for
from learner.group import LearnerGroup
from orchestrator.config import ConfigError, WeightSyncConfig
from rollout.group import LOST_WORKER_ERRORS, RolloutGroup
from rollout.types import SharedBucket, WeightGroupSpec, WeightSnapshot


def same_node_dir() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() else None


def choose_transport(
    requested: str, learner_node: str, worker_nodes: list[str], learner_gpu: str | None, worker_gpus: list[list[str]]
) -> str:
    """The transport for `requested` ("auto" or a name) given where the learner's rank 0 and the workers are:
    their Ray nodes and, on GPUs, the GPU holding rank 0's weights and the GPUs each worker sees. A transport the
    placement cannot serve is a config error (the CLI prints it as one line)."""
    same_node = set(worker_nodes) == {learner_node}
    sees_learner_gpu = learner_gpu is None or all(learner_gpu in gpus for gpus in worker_gpus)
    if requested == "auto":
        if same_node and sees_learner_gpu:
            return "shared"
        if same_node and backend_for(learner_gpu, worker_gpus) == "gloo":
            return "files"  # the GPU learner's weights would go through host memory either way
        return "broadcast"
    if requested in ("files", "shared") and not same_node:
        raise ConfigError(
            f"weight_sync.transport={requested!r} needs every rollout worker on the learner's node (learner rank 0: "
            f"{learner_node[:8]}; workers: {sorted({n[:8] for n in worker_nodes})}): use 'broadcast' or 'auto'"
        )
    if requested == "shared" and not sees_learner_gpu:
        raise ConfigError(
            f"weight_sync.transport='shared' maps the learner's GPU ({learner_gpu}) by CUDA IPC, and not every "
            f"rollout worker sees it (they see {worker_gpus}): colocate them on that GPU, or use 'files' or 'auto'"
        )
    return requested


class PolicySync:
    """One learner group → one rollout group. State: the transport, the loads still in flight."""

    def __init__(self, learner: LearnerGroup, rollout: RolloutGroup, cfg: WeightSyncConfig):
        self.learner = learner
        self.rollout = rollout
        self.cfg = cfg
        learner_gpu, worker_gpus = learner.gpu_uuid(), rollout.gpu_uuids()
        self.transport = choose_transport(
            cfg.transport,
            learner_node=learner.node_id(),
            worker_nodes=rollout.node_ids(),
            learner_gpu=learner_gpu,
            worker_gpus=worker_gpus,
        )
        self.group_backend = backend_for(learner_gpu, worker_gpus)  # of the broadcast's process group
        self.weights_dir = tempfile.mkdtemp(prefix="dudi-weights-", dir=same_node_dir())
        # Per push, oldest first: (pending loads, files to delete / shared version to free once they are done).
        self._in_flight: deque[tuple[list, str | int | None]] = deque()
        self.verified = 0  # pushes whose bytes were compared on both ends (with `verify`)
        if self.transport == "broadcast":
            self._open_group()

    def _open_group(self) -> None:
        host, port, buckets = self.learner.weight_group_plan()
        group = WeightGroupSpec(
            host=host,
            port=port,
            world_size=1 + len(self.rollout.workers),
            buckets=[[(s.name, s.dtype, tuple(s.shape)) for s in bucket] for bucket in buckets],
            backend=self.group_backend,
        )
        ray.get(
            self.learner.open_weight_group(host, port, group.world_size, group.backend)
            + self.rollout.join_weight_group(group, record_digest=self.cfg.verify)
        )

    def push(self, version: int) -> None:
        """Publishes the learner's weights as `version` and queues the load on every worker (no waiting)."""
        if self.transport == "files":
            published = self.learner.publish_weights(version, self.weights_dir)
            snapshot = WeightSnapshot(version, published.path, record_digest=self.cfg.verify)
            pending = self.rollout.load_weights(snapshot, wait=False, lasting=False)
            self._in_flight.append((pending, published.path))
        elif self.transport == "shared":
            pending = self.rollout.load_weights(self._shared_snapshots(version, len(self.rollout.workers)), wait=False)
            self._in_flight.append((pending, version))
        else:
            self.learner.broadcast_weights(version)
            pending = self.rollout.load_weights(WeightSnapshot(version), wait=False)
            self._in_flight.append((pending, None))
        if self.cfg.verify:
            self._collect(block=True)  # a check, not a fast path: the learner must not move on before it
            self.check_identical()
        self._collect(block=False)

    def restore(self, lost: list[int], version: int) -> None:
        """Restarted workers (indices in the rollout group) take the learner's weights, which must be `version`
        (the caller keeps the learner from stepping meanwhile)."""
        self._collect(block=True)
        if self.transport == "files":
            published = self.learner.publish_weights(version, self.weights_dir)
            try:
                self.rollout.load_weights(WeightSnapshot(version, published.path), workers=lost, lasting=False)
            finally:
                shutil.rmtree(published.path, ignore_errors=True)
        elif self.transport == "shared":
            try:
                self.rollout.load_weights(self._shared_snapshots(version, len(lost)), workers=lost)
            finally:
                self.learner.release_shared_weights(version)
        else:
            self._open_group()  # every member joins a new group: the dead one broke the old
            self.learner.broadcast_weights(version)
            self.rollout.load_weights(WeightSnapshot(version))  # all of them: a broadcast reaches every member

    def _shared_snapshots(self, version: int, consumers: int) -> list[WeightSnapshot]:
        published = self.learner.share_weights(version, consumers)
        tensors = [[(s.name, s.dtype, tuple(s.shape)) for s in bucket] for bucket in published.buckets]
        return [
            WeightSnapshot(
                version,
                shared=[SharedBucket(h, t) for h, t in zip(handles, tensors, strict=True)],
                record_digest=self.cfg.verify,
            )
            for handles in published.shared
        ]

    def wait(self) -> None:
        """Blocks until every queued load has been applied."""
        self._collect(block=True)

    def check_identical(self) -> None:
        """Every worker received exactly the learner's bytes (sha256 of every tensor on both ends)."""
        expected = self.learner.weights_digest()
        for i, received in enumerate(self.rollout.received_digests()):
            if received != expected:
                differ = sorted(n for n in expected if received.get(n) != expected[n])
                raise RuntimeError(f"rollout worker {i} does not hold the learner's weights: {differ[:5]} differ")
        self.verified += 1

    def _collect(self, block: bool) -> None:
        """Forgets finished loads (oldest first) and frees the files or buffers no worker will read again."""
        while self._in_flight:
            pending, source = self._in_flight[0]
            if not block and ray.wait(pending, num_returns=len(pending), timeout=0)[1]:
                return
            for load in pending:
                try:
                    ray.get(load)
                except LOST_WORKER_ERRORS:
                    pass  # a worker that died: the rollout group restores it when it next asks for work
            self._in_flight.popleft()
            if isinstance(source, str):
                shutil.rmtree(source, ignore_errors=True)
            elif isinstance(source, int):
                self.learner.release_shared_weights(source)

    def close(self) -> None:
        try:
            self._collect(block=True)
        finally:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
