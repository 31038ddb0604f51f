"""Learner rank 0 → other processes: the full weights, gathered and sent bucket by bucket.

Three ways out, all fed by `gathered_buckets` (under ZeRO-3 each bucket's parameters are gathered, copied and
released before the next bucket: the whole model is never gathered at once):
- safetensors files, one per bucket, in a directory (`LearnerRank.publish_weights`; same node, through /dev/shm);
- `share_bucket`: each bucket flattened into one buffer other processes on this node map without a copy (CUDA IPC
  on a GPU, shared memory on CPU), one handle per consumer;
- `WeightBroadcaster`: a process group (gloo on CPU) between rank 0 and every consumer process, which needs no
  shared filesystem and crosses nodes. Every tensor travels as its raw bytes, so receivers get bit-identical
  weights. Broadcasts are posted asynchronously: rank 0 returns as soon as each bucket is copied out, and the
  consumers pick the bytes up when they get to it (they may be busy generating). A bucket's copy is kept until
  every consumer has it, so a version in flight costs one copy of the weights on rank 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta

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

    Copies, not views of the live weights, although today's consumers copy again or only read: views would hold
    every consumer to finishing with a bucket before asking for the next (the EMA, which keeps what it is given,
    would alias the weights). Sending views saved about 0.1 s of a 4-5 s sync for Qwen2.5-0.5B's shape on two
    cores, within noise (`benchmarks/weight_sync.py`, three runs back to back)."""
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
    """Rank 0's end of the weight group: rank 0 of `1 + consumers` processes, root of every broadcast.

    Constructing it blocks until every consumer has joined (`join` on the other side, called concurrently).
    """

    def __init__(self, host: str, port: int, world_size: int, timeout_s: float = 600.0):
        from torch.distributed import ProcessGroupGloo, TCPStore

        timeout = timedelta(seconds=timeout_s)
        self.store = TCPStore(host, port, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        options = ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [ProcessGroupGloo.create_device(hostname=host)]
        self.group = ProcessGroupGloo(self.store, 0, world_size, options)
        self._in_flight: list = []  # (work, buffer) of the last version, until every consumer has it

    def send(self, bucket: list[tuple[TensorSpec, torch.Tensor]]) -> None:
        from torch.distributed import BroadcastOptions

        buffer = flatten(bucket)
        options = BroadcastOptions()
        options.rootRank = 0
        self._in_flight.append((self.group.broadcast([buffer], options), buffer))

    def release_sent(self) -> None:
        """Drops the buffers of broadcasts that have completed (a whole version's copy, otherwise held until the
        next `wait`)."""
        self._in_flight = [(work, buffer) for work, buffer in self._in_flight if not work.is_completed()]

    def wait(self) -> None:
        """Blocks until every consumer has received every bucket posted so far."""
        for work, _ in self._in_flight:
            work.wait()
        self._in_flight = []
