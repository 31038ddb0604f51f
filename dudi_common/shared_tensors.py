"""Buffers another process on the same node maps without a copy: CUDA IPC for a GPU buffer, a file in /dev/shm for
a CPU one. A handle is a small picklable message, so it travels through Ray calls to processes torch never spawned.

- CPU: the producer maps a new file in /dev/shm (shared); a consumer maps the same file copy-on-write, so it reads
  the producer's pages without copying them and cannot write into them. `SharedBuffer.free` unlinks the file: its
  memory goes once the last mapping is dropped, and a consumer that died holds nothing. (Torch's own CPU sharing
  was tried first: its segments are reference-counted by every process that maps them, so a consumer killed
  mid-load kept them alive for good, and Ray kills a dead worker's children, torch's shm manager among them, so
  nothing cleaned them up.) Files of a producer that was killed before freeing them are unlinked by
  `free_orphaned_buffers`, which the next learner rank 0 on the node runs as it starts.
- CUDA: torch's CUDA IPC reduction of the buffer. Ray gives each actor its own `CUDA_VISIBLE_DEVICES`, so the same
  GPU may have different indices in producer and consumer: the handle names its GPU by UUID and the consumer maps
  it onto whichever of its visible devices has that UUID. Torch keeps the producer's memory allocated until every
  consumer has dropped its tensor, so each consumer needs a handle of its own.
"""

from __future__ import annotations

import itertools
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the message types import this module; a driver that only passes handles on needs no torch
    import torch


@dataclass(frozen=True)
class SharedTensor:
    """One consumer's handle on a flat uint8 buffer of another process on this node."""

    nbytes: int
    path: str | None = None  # CPU: the file the producer maps
    cuda_ipc: bytes | None = None  # CUDA: the pickled (rebuild, args) of torch's reduction, the device index left out
    device_uuid: str | None = None  # CUDA: the GPU holding the buffer


class SharedBuffer:
    """A uint8 buffer of `nbytes` on `device` that consumers on this node map through `handle()`s. The producer
    writes into `tensor`, then hands out handles; `free()` once every consumer is done with them."""

    def __init__(self, nbytes: int, device: torch.device | str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.path: Path | None = None
        if self.device.type == "cuda":
            self.tensor = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        else:
            self.path = _SHM_DIR / f"{_PREFIX}{os.getpid()}-{_PROCESS_TAG}-{next(_counter)}"
            self.tensor = torch.from_file(str(self.path), shared=True, size=nbytes, dtype=torch.uint8)

    def handle(self) -> SharedTensor:
        """A handle for one consumer (call once per consumer)."""
        nbytes = self.tensor.numel()
        if self.path is not None:
            return SharedTensor(nbytes, path=str(self.path))
        from torch.multiprocessing.reductions import reduce_tensor

        # The copy into the buffer may still be queued: the handle carries an IPC event the consumer waits on.
        rebuild, args = reduce_tensor(self.tensor)
        args = list(args)
        args[_CUDA_DEVICE_ARG] = None  # the consumer's own index of the GPU, found by UUID in `open_shared`
        return SharedTensor(nbytes, cuda_ipc=pickle.dumps((rebuild, args)), device_uuid=gpu_uuid(self.device))

    def free(self) -> None:
        """Drops the producer's reference; consumers that still map the buffer keep it until they drop theirs."""
        self.tensor = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def open_shared(handle: SharedTensor) -> torch.Tensor:
    """The producer's buffer mapped into this process (read-only in effect on CPU: writes stay private)."""
    import torch

    if handle.path is not None:
        return torch.from_file(handle.path, shared=False, size=handle.nbytes, dtype=torch.uint8)
    visible = {gpu_uuid(index): index for index in range(torch.cuda.device_count())}
    if handle.device_uuid not in visible:
        raise RuntimeError(
            f"the shared buffer is on GPU {handle.device_uuid}, which this process does not see (visible: "
            f"{sorted(visible) or 'none'}): CUDA IPC needs producer and consumer on the same GPU"
        )
    rebuild, args = pickle.loads(handle.cuda_ipc)
    args[_CUDA_DEVICE_ARG] = visible[handle.device_uuid]
    return rebuild(*args)


def free_orphaned_buffers() -> list[str]:
    """Unlinks the CPU buffers of producers on this node that are no longer running; returns their names."""
    freed = []
    for path in _SHM_DIR.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
            freed.append(path.name)
    return freed


def gpu_uuid(device: torch.device | int) -> str:
    import torch

    return str(torch.cuda.get_device_properties(device).uuid)


_SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
_PREFIX = "dudi-shared-"  # + producer pid - tag - counter
_PROCESS_TAG = os.urandom(4).hex()  # a later process given the same pid must not open this one's leftovers
_counter = itertools.count()
# `reduce_tensor` of a CUDA tensor returns (rebuild_cuda_tensor, args) with the storage's device index here.
_CUDA_DEVICE_ARG = 6


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
