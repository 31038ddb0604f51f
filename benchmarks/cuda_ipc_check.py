"""Can two processes on this box share GPU memory through CUDA IPC? (The colocated learner → rollout transport the
distributed issue asks for would hand vLLM workers IPC handles of rank 0's weight buckets, as verl and OpenRLHF do
when colocated; under a sandbox such as gVisor the driver may refuse it.)

    python benchmarks/cuda_ipc_check.py        # on a GPU box: prints what the child read, exits 1 if it differs

A child process (spawned, as a vLLM worker would be) rebuilds a bf16 bucket from the handle torch's own reduction
gives, reads it back bit for bit, and writes into it; the parent checks that it sees the child's write.
"""

from __future__ import annotations

import sys

import torch
import torch.multiprocessing as mp
from torch.multiprocessing.reductions import reduce_tensor


def child(handles, results) -> None:
    rebuild, args = handles.get()
    shared = rebuild(*args)
    results.put(shared.view(torch.uint8).cpu().numpy().tobytes())
    shared[0] = 7.0  # the same memory, not a copy: the parent must see it
    torch.cuda.synchronize()
    results.put("written")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    context = mp.get_context("spawn")
    handles, results = context.Queue(), context.Queue()
    bucket = torch.randn(1 << 20, device="cuda", dtype=torch.bfloat16)
    process = context.Process(target=child, args=(handles, results))
    process.start()
    handles.put(reduce_tensor(bucket))
    try:
        read = results.get(timeout=120)
        written = results.get(timeout=60)
    finally:
        process.join(timeout=60)
    identical = read == bucket.view(torch.uint8).cpu().numpy().tobytes()
    seen = written == "written" and float(bucket[0]) == 7.0
    print(
        f"CUDA IPC on {torch.cuda.get_device_name()}: child read the bucket bit-identical: {identical}; "
        f"parent sees the child's write: {seen}; child exit code {process.exitcode}"
    )
    return 0 if identical and seen and process.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
