"""The weight group (`dudi_common.weight_group`) from learner rank 0's end (`WeightBroadcaster`) to the rollout
worker's (`WeightReceiver._broadcast_stream`), without vLLM or Ray: the consumers are plain subprocesses.

gloo runs here. The NCCL variant needs two GPUs, one per end (NCCL refuses two ranks on one GPU): it is skipped on
this machine and on the one-GPU probe host, and runs on any host with two or more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from dudi_common.weight_group import backend_for
from learner.types import TensorSpec
from learner.weight_sync import WeightBroadcaster, dtype_name, tensor_digest

CONSUMER = """
import json, sys
from rollout.weight_receiver import WeightReceiver
host, port, rank, world_size, backend, buckets, versions = json.loads(sys.argv[1])
receiver = WeightReceiver()  # the vLLM worker extension's own code; only vLLM's reload is left out
receiver.join_weight_group(host, port, rank, world_size, host, buckets, record_digest=True, backend=backend)
print(json.dumps({"joined": rank}), flush=True)
for _ in range(versions):
    go = sys.stdin.readline().strip()  # rank 0 says go only after posting the whole version
    tensors = dict(receiver._broadcast_stream())
    devices = sorted({str(t.device) for t in tensors.values()})
    print(json.dumps({"go": go, "digest": receiver._digest, "devices": devices}), flush=True)
sys.stdin.readline()  # rank 0 closes stdin once it has checked every report
receiver.leave_weight_group()  # exiting with the group's threads alive can abort the process
"""

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_buckets(version: int, device: str) -> list[list[tuple[TensorSpec, torch.Tensor]]]:
    """Three buckets of mixed dtypes and shapes, different values per version."""
    generator = torch.Generator().manual_seed(version)
    tensors = {
        "model.embed_tokens.weight": torch.randn(64, 16, generator=generator).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=generator),
        "model.layers.0.input_layernorm.weight": torch.randn(16, generator=generator).to(torch.float16),
        "model.norm.weight": torch.randn(16, generator=generator),
    }
    bucket = [(TensorSpec(n, dtype_name(t.dtype), tuple(t.shape)), t.to(device)) for n, t in tensors.items()]
    return [bucket[:1], bucket[1:3], bucket[3:]]


def test_the_group_is_nccl_only_where_both_ends_hold_gpus():
    assert backend_for(None, [[], []]) == "gloo"
    assert backend_for("GPU-1", [["GPU-2"], ["GPU-3", "GPU-1"]]) == "nccl"
    assert backend_for("GPU-1", [["GPU-2"], []]) == "gloo"  # a CPU engine takes the bytes in host memory
    assert backend_for(None, [["GPU-2"]]) == "gloo"


@pytest.mark.parametrize(
    ("backend", "consumers"),
    [
        ("gloo", 2),
        pytest.param("nccl", min(GPUS - 1, 2), marks=pytest.mark.skipif(GPUS < 2, reason="needs two GPUs")),
    ],
)
def test_posted_versions_reach_every_consumer_bit_identical(backend, consumers):
    """Rank 0 posts each version whole before any consumer starts receiving it, so a post that waited for the
    receivers (NCCL setting up its communicator at the first broadcast, say) would hang here instead of passing."""
    device = "cuda:0" if backend == "nccl" else "cpu"
    versions = 2
    specs = [[[s.name, s.dtype, list(s.shape)] for s, _ in b] for b in model_buckets(0, "cpu")]
    host, port, world_size = "127.0.0.1", free_port(), 1 + consumers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = []
    for rank in range(1, world_size):
        args = json.dumps([host, port, rank, world_size, backend, specs, versions])
        # Each NCCL consumer sees only its own GPU, as a Ray actor does.
        gpu = {"CUDA_VISIBLE_DEVICES": str(rank)} if backend == "nccl" else {}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CONSUMER, args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**env, **gpu},
            )
        )
    try:
        broadcaster = WeightBroadcaster(host, port, world_size, backend, timeout_s=120)
        assert [json.loads(p.stdout.readline()) for p in procs] == [{"joined": r} for r in range(1, world_size)]
        for version in range(versions):
            buckets = model_buckets(version, device)
            for bucket in buckets:
                broadcaster.send(bucket)
            for p in procs:
                p.stdin.write(f"v{version}\n")
                p.stdin.flush()
            received = [json.loads(p.stdout.readline()) for p in procs]
            broadcaster.wait()
            expected = {spec.name: tensor_digest(t.cpu()) for b in buckets for spec, t in b}
            for report in received:
                assert report["go"] == f"v{version}"
                assert report["digest"] == expected
                assert report["devices"] == (["cuda:0"] if backend == "nccl" else ["cpu"])
        # Different versions differ, so equal digests above are not the same bytes seen twice.
        assert tensor_digest(model_buckets(0, "cpu")[0][0][1]) != tensor_digest(model_buckets(1, "cpu")[0][0][1])
        broadcaster.close()
        for p in procs:
            p.stdin.close()
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
