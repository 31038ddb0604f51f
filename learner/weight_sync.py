"""Learner rank 0 → other processes: the full weights, gathered and sent bucket by bucket.

Three ways out, all fed by `gathered_buckets` (under ZeRO-3 each bucket's parameters are gathered, copied and
released before the next bucket: the whole model is never gathered at once):
- safetensors files, one per bucket, in a directory (`LearnerRank.publish_weights`; same node, through /dev/shm);
- `share_bucket`: each bucket flattened into one buffer other processes on this node map without a copy (CUDA IPC
  on a GPU, shared memory on CPU), one handle per consumer;
- `WeightBroadcaster`: a process group (gloo from host memory, NCCL between GPUs) between rank 0 and every
  consumer process, which needs no shared filesystem and crosses nodes. Every tensor travels as its raw bytes, so
  receivers get bit-identical weights. Broadcasts are posted asynchronously: rank 0 returns as soon as each bucket
  is copied out, and the consumers pick the bytes up when they get to it (they may be busy generating). A bucket's
  copy is kept until every consumer has it, so a version in flight costs one copy of the weights on rank 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from learner.types import TensorSpec


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_buckets(module, bucket_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive parameters (HF names; a tied head listed once, under the embedding) in buckets of at most
    `bucket_bytes` (one larger parameter gets a bucket of its own)."""
    buckets: list[list[TensorSpec]] = [[]]
    size = 0
    for name, param in module.named_parameters():
        shape = tuple(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the full shape aside
        spec = TensorSpec(name, dtype_name(param.dtype), shape)
        if buckets[-1] and size + spec.nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(spec)
        size += spec.nbytes
    return [b for b in buckets if b]


def gathered_buckets(
    module, buckets: list[list[TensorSpec]], zero3: bool, copy: bool = True, views: bool = False
) -> Iterator[list[tuple[TensorSpec, torch.Tensor]]]:
    """Full CPU copies of each bucket's parameters. Under ZeRO-3 every rank must iterate (gathering is
    collective); each bucket is released before the next one is gathered. `copy=False` (ranks that only take part
    in the gathers) yields empty buckets. `views=True` yields the gathered parameters themselves, on their own
    device, valid only until the next bucket is asked for (for a consumer that copies them out at once).

    Copies by default: views would hold every consumer to finishing with a bucket before asking for the next (the
    EMA, which keeps what it is given, would alias the weights). The shared buffers and the weight group take views,
    since they copy each bucket out at once on the weights' own device: with the weights on a GPU, a copy to host
    memory would be the larger part of an NCCL broadcast. (On CPU, views saved about 0.1 s of a 4-5 s sync for
    Qwen2.5-0.5B's shape, within noise: `benchmarks/weight_sync.py`, three runs back to back.)"""
    import deepspeed

    params = dict(module.named_parameters())
    for bucket in buckets:
        members = [params[spec.name] for spec in bucket]
        with deepspeed.zero.GatheredParameters(members, modifier_rank=None, enabled=zero3):
            yield [
                (spec, p.detach() if views else p.detach().to("cpu", copy=True).contiguous())
                for spec, p in zip(bucket, members, strict=True)
                if copy
            ]


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes: equal digests mean bit-identical tensors."""
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def flatten(bucket: list[tuple[TensorSpec, torch.Tensor]], out: torch.Tensor | None = None) -> torch.Tensor:
    """One uint8 buffer holding the bucket's tensors back to back (what a receiver splits with the same specs)."""
    return torch.cat([t.reshape(-1).view(torch.uint8) for _, t in bucket], out=out)


def share_bucket(bucket: list[tuple[TensorSpec, torch.Tensor]], consumers: int):
    """The bucket copied once into a `SharedBuffer` on its own device, and one handle on it per consumer
    (`dudi_common.shared_tensors`). Free the buffer once every consumer is done with it."""
    from dudi_common.shared_tensors import SharedBuffer

    device = bucket[0][1].device if bucket else torch.device("cpu")
    buffer = SharedBuffer(sum(spec.nbytes for spec, _ in bucket), device)
    flatten(bucket, out=buffer.tensor)
    return buffer, [buffer.handle() for _ in range(consumers)]


class WeightBroadcaster:
    """Rank 0's end of the weight group (`dudi_common.weight_group`): rank 0 of `1 + consumers` processes, root of
    every broadcast, over gloo from host memory or NCCL from the GPU holding the weights.

    Constructing it blocks until every consumer has joined (`join_weight_group` on the other side, called
    concurrently).
    """

    def __init__(self, host: str, port: int, world_size: int, backend: str = "gloo", timeout_s: float = 600.0):
        from dudi_common.weight_group import group_device, open_group

        self.device = group_device(backend)
        self.store, self.group = open_group(host, port, 0, world_size, backend, own_host=host, timeout_s=timeout_s)
        self._in_flight: list = []  # (work, buffer) of the last version, until every consumer has it

    def send(self, bucket: list[tuple[TensorSpec, torch.Tensor]]) -> None:
        """Posts one bucket. Its tensors may be views of the live (gathered) weights: they are copied out at once,
        on the group's device."""
        from dudi_common.weight_group import post_broadcast

        buffer = flatten(bucket).to(self.device)  # one copy, unless the weights are on a GPU and the group is gloo
        self._in_flight.append((post_broadcast(self.group, buffer), buffer))

    def release_sent(self) -> None:
        """Drops the buffers of broadcasts that have completed (a whole version's copy, otherwise held until the
        next `wait`)."""
        self._in_flight = [(work, buffer) for work, buffer in self._in_flight if not work.is_completed()]

    def wait(self) -> None:
        """Blocks until every consumer has received every bucket posted so far."""
        from dudi_common.weight_group import wait_host

        for work, _ in self._in_flight:
            wait_host(work, self.device)
        self._in_flight = []

    def close(self, abort: bool = False) -> None:
        """Leaves the group (`dudi_common.weight_group.close_group`); `abort` drops broadcasts not yet received."""
        from dudi_common.weight_group import close_group

        close_group(self.group, abort=abort)
        self._in_flight = []
