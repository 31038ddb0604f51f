"""Buffers that another process on this node maps without a copy (`dudi_common.shared_tensors`), from learner
rank 0's side (`share_bucket`) to the rollout worker's (`WeightReceiver._shared_stream`).

The consumer here is a plain subprocess, not a multiprocessing child: the same situation as a Ray actor, which torch
never spawned. The CUDA variant runs where a GPU is lent (`benchmarks/gpu_probe.sh`), skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from dudi_common.shared_tensors import SharedBuffer, SharedTensor, free_orphaned_buffers, open_shared

RECEIVER = """
import json, pickle, sys
from rollout.weight_receiver import WeightReceiver
buckets = pickle.loads(open(sys.argv[1], "rb").read())
receiver = WeightReceiver()  # the vLLM worker extension's own code; only vLLM's reload is left out
receiver._record_digest, receiver._digest = True, {}
tensors = dict(receiver._shared_stream(buckets))
print(json.dumps({"digest": receiver._digest, "devices": sorted({str(t.device) for t in tensors.values()})}))
"""


def run_python(code: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)


def own_files() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"dudi-shared-{os.getpid()}-")}


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_a_learner_bucket_reaches_an_unrelated_process_bit_identical_and_is_freed(tmp_path, device):
    """CUDA IPC on a GPU (the consumer sees the GPU only by its UUID, as a Ray actor given that GPU would), a file
    in /dev/shm on CPU. Two consumers, one handle each; the producer frees the buffer afterwards."""
    from learner.types import TensorSpec
    from learner.weight_sync import share_bucket, tensor_digest
    from rollout.types import SharedBucket

    gen = torch.Generator().manual_seed(1)
    bucket = [
        (TensorSpec("a", "bfloat16", (3, 1000)), torch.randn(3, 1000, generator=gen).bfloat16().to(device)),
        (TensorSpec("b", "float32", (7, 3)), torch.randn(7, 3, generator=gen).to(device)),
    ]
    expected = {spec.name: tensor_digest(t.cpu()) for spec, t in bucket}
    env = {}
    if device == "cuda":
        from dudi_common.shared_tensors import gpu_uuid

        baseline = torch.cuda.memory_allocated()
        uuid = gpu_uuid(bucket[0][1].device)
        env["CUDA_VISIBLE_DEVICES"] = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    files_before = own_files()
    buffer, handles = share_bucket(bucket, consumers=2)
    assert len(own_files() - files_before) == (1 if device == "cpu" else 0)
    specs = [(spec.name, spec.dtype, spec.shape) for spec, _ in bucket]
    for consumer, handle in enumerate(handles):
        handle_file = tmp_path / f"bucket{consumer}"
        handle_file.write_bytes(pickle.dumps([SharedBucket(handle, specs)]))  # any pickler carries a handle
        done = run_python(RECEIVER, str(handle_file), env_extra=env)
        assert done.returncode == 0, done.stderr[-3000:]
        received = json.loads(done.stdout.strip().splitlines()[-1])
        assert received["digest"] == expected
        assert received["devices"] == (["cpu"] if device == "cpu" else ["cuda:0"])
    buffer.free()
    assert own_files() == files_before
    if device == "cuda":
        del buffer
        torch.cuda.ipc_collect()  # blocks the consumers have released go back to the allocator
        assert torch.cuda.memory_allocated() == baseline


def test_a_consumer_cannot_write_into_the_learners_cpu_buffer():
    buffer = SharedBuffer(64)
    buffer.tensor.fill_(7)
    mapped = open_shared(buffer.handle())
    mapped[0] = 9
    assert int(mapped[0]) == 9 and int(buffer.tensor[0]) == 7
    buffer.free()
    assert int(mapped.sum()) == 9 + 63 * 7  # the mapping outlives the name


def test_a_freed_buffer_cannot_be_opened_and_says_so():
    buffer = SharedBuffer(64)
    handle = buffer.handle()
    buffer.free()
    with pytest.raises(RuntimeError, match="No such file"):
        open_shared(handle)


def test_opening_a_gpu_handle_this_process_cannot_see_names_the_gpu():
    handle = SharedTensor(64, cuda_ipc=pickle.dumps(None), device_uuid="GPU-00000000-dead-beef-0000-000000000000")
    with pytest.raises(RuntimeError, match="GPU-00000000-dead-beef.*same GPU"):
        open_shared(handle)


KILLED_PRODUCER = """
import os, signal
from dudi_common.shared_tensors import SharedBuffer
buffer = SharedBuffer(1 << 16)
handle = buffer.handle()  # a version in flight: not freed yet
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as Ray's OOM killer does: nothing runs after it
"""


def test_the_buffers_of_a_killed_producer_are_freed_by_the_next_sweep():
    done = run_python(KILLED_PRODUCER)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    pid = int(done.stdout.split()[0])
    left = {name for name in os.listdir("/dev/shm") if name.startswith(f"dudi-shared-{pid}-")}
    assert len(left) == 1, left
    live = SharedBuffer(64)  # this process runs: its buffers stay
    freed = free_orphaned_buffers()
    assert left <= set(freed) and not left & set(os.listdir("/dev/shm"))
    assert live.path.exists()
    live.free()
