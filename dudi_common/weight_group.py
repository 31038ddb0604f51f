"""The weight group: a process group of its own between the learner's rank 0 (rank 0, root of every broadcast) and
the rollout engines' worker processes, over TCP, so it crosses nodes and needs no shared filesystem.

It is stateless in torch's sense: a `TCPStore` at rank 0's address and a process group built on it directly, never
registered as torch's default group. Each side already has one (DeepSpeed's on the learner, vLLM's on the engine)
and must keep it; and a worker that Ray restarted joins a new group without touching the others' default groups.

The backend follows the weights' device, chosen once by the orchestrator (`backend_for`):
- gloo, when rank 0's weights are on CPU or some worker has no GPU: buffers in host memory, over the network;
- NCCL, when rank 0 and every worker hold GPUs: GPU buffers straight from the gathered parameters into the
  engines' GPUs (NVLink within a node, the NCCL network plugin across nodes), the path TRL, OpenRLHF and verl take.
  NCCL's interface is NCCL's to choose (`NCCL_SOCKET_IFNAME` and friends), not `own_host`.

Broadcasts are posted, not awaited (`post_broadcast` returns torch's `Work`): rank 0 goes back to training while the
engines take the bytes when they get to them. NCCL sets up its communicator lazily at the first collective, which
would make rank 0's first post block until every engine posts too; `open_group` connects it at once, so that it
exists when the group is formed, as gloo's does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the orchestrator picks a backend without importing torch
    import torch

BACKENDS = ("gloo", "nccl")


def backend_for(learner_gpu: str | None, worker_gpus: list[list[str]]) -> str:
    """NCCL when rank 0's weights are on a GPU and every worker sees one, gloo otherwise."""
    return "nccl" if learner_gpu is not None and worker_gpus and all(worker_gpus) else "gloo"


def group_device(backend: str) -> torch.device:
    """Where this process keeps the buffers it sends or receives over a group of `backend`."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def open_group(host: str, port: int, rank: int, world_size: int, backend: str, own_host: str, timeout_s: float = 600):
    """Joins the group as `rank` (rank 0 hosts the store at `host:port`); blocks until all `world_size` members
    have joined. Returns (store, group): the store must outlive the group."""
    from torch.distributed import TCPStore

    if backend not in BACKENDS:
        raise ValueError(f"weight group backend must be one of {BACKENDS}, got {backend!r}")
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    if backend == "gloo":
        from torch.distributed import ProcessGroupGloo

        options = ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [ProcessGroupGloo.create_device(hostname=own_host)]
        return store, ProcessGroupGloo(store, rank, world_size, options)
    from torch.distributed import ProcessGroupNCCL

    options = ProcessGroupNCCL.Options()
    options._timeout = timeout
    group = ProcessGroupNCCL(store, rank, world_size, options)
    group.eager_connect_single_device(group_device(backend))  # the communicator now, as torch's own factory does
    return store, group


def post_broadcast(group, buffer: torch.Tensor):
    """Posts a broadcast of `buffer` from rank 0 (sent by rank 0, received into it by the others); returns the
    `Work` to wait on. A group completes its broadcasts in the order they were posted."""
    from torch.distributed import BroadcastOptions

    options = BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([buffer], options)


def close_group(group, *, abort: bool = False) -> None:
    """Stops the group's threads and connections. Without it a process that returns from its main thread with a
    gloo group alive can die at exit (SIGABRT, "terminate called without an active exception"), and a group replaced
    after a member's restart would keep its sockets and, on NCCL, its communicator. `abort` for a group whose peers
    may be gone or whose last posts will never complete: it drops pending work instead of draining it."""
    if group is not None:
        group.abort() if abort else group.shutdown()


def wait_host(work, device: torch.device) -> None:
    """Blocks this thread until `work` is done. (NCCL's `wait` only orders the current stream after it.)"""
    work.wait()
    if device.type == "cuda":
        import torch

        torch.cuda.current_stream(device).synchronize()
