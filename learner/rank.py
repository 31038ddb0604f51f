"""One data-parallel rank: a DeepSpeed engine around the student, plus the frozen reference model.

Runs inside a Ray actor (see `learner.group`). Heavy imports happen in `init_engine`, after the
process-group environment is set, because DeepSpeed reads it at import and init time.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from pathlib import Path

from learner.config import LearnerConfig, ObjectiveConfig
from learner.types import PublishedWeights, TrainBatch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _prefer_this_environments_ninja() -> None:
    """DeepSpeed JIT-builds its CPU ops (the shared-memory all-reduce) with whichever `ninja` comes first on PATH,
    and ninja rebuilds everything when the log was written by another ninja version. A rank launched from a
    shell without the virtual environment on PATH (the system's ninja) and one launched by `ray job submit`
    (the environment's) would rebuild the op in turn, 30-50 s each time; one ninja for every launch keeps the
    build cached."""
    bin_dir = os.path.dirname(sys.executable)
    if os.path.isfile(os.path.join(bin_dir, "ninja")):
        path = os.environ.get("PATH", "").split(os.pathsep)
        os.environ["PATH"] = os.pathsep.join([bin_dir] + [p for p in path if p != bin_dir])


def _skip_shared_memory_all_reduce() -> None:
    """A single CPU rank reduces with nobody, yet DeepSpeed's CPU backend JIT-builds its shared-memory all-reduce
    op when it starts (30-50 s on a fresh 2-core machine, before the first step of `make demo`). Marked
    incompatible, the op is neither built nor loaded, and the backend's collectives go through torch.distributed
    (gloo), which over one rank return their input unchanged: the same step, bit for bit."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


class LearnerRank:
    """State: the DeepSpeed engine, the reference model (or None), the step counter."""

    def __init__(self, config: LearnerConfig, rank: int, world_size: int, ema_decay: float | None = None):
        self.config = config
        self.ema_decay = ema_decay
        self.rank = rank
        self.world_size = world_size
        self.engine = None
        self.reference = None
        self.ema: dict | None = None  # rank 0: full EMA weights (CPU float32) when ema_decay is set
        self.objective: ObjectiveConfig = config.objective
        self.pad_id = 0
        self.step = 0
        self.device = "cpu"
        self.bucket_plan = None  # the weights' buckets, fixed at the first publish
        self.broadcaster = None  # rank 0's end of the weight group, once opened
        self.shared_versions: dict[int, list] = {}  # rank 0: version → buffers its consumers map, until released
        if rank == 0:
            from dudi_common.shared_tensors import free_orphaned_buffers

            free_orphaned_buffers()  # of an earlier learner on this node that was killed (an OOM kill, say)

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group."""
        import ray

        return ray.util.get_node_ip_address(), self.config.master_port or free_port()

    def init_engine(
        self,
        model_path: str,
        reference_path: str | None,
        master: tuple[str, int],
        pad_id: int,
        seed: int,
        total_steps: int | None = None,
    ) -> int:
        import torch

        use_cuda = self.config.num_gpus_per_rank > 0 and torch.cuda.is_available()
        self.device = "cuda" if use_cuda else "cpu"
        os.environ.update(
            {
                "DS_ACCELERATOR": "cuda" if use_cuda else "cpu",
                "MASTER_ADDR": master[0],
                "MASTER_PORT": str(master[1]),
                "RANK": str(self.rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": "0",
            }
        )
        if not use_cuda:
            torch.set_num_threads(self.config.num_threads)
        _prefer_this_environments_ninja()
        # DeepSpeed's ZeRO collectives call torch APIs deprecated in 2.13; the warning repeats every step.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
        torch.manual_seed(seed + self.rank)
        import deepspeed
        from transformers import AutoModelForCausalLM

        if not use_cuda and self.world_size == 1:
            _skip_shared_memory_all_reduce()
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False)
        dtype = torch.bfloat16 if self.config.dtype == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if self.objective.uses_reference:
            self.reference = AutoModelForCausalLM.from_pretrained(reference_path or model_path, dtype=dtype).to(
                self.device
            )
            self.reference.eval().requires_grad_(False)
        # A torch AdamW keeps DeepSpeed from JIT-building fused_adam on CPU (about a minute per fresh machine).
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        scheduler = lr_scheduler(optimizer, self.config, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._deepspeed_config()
        )
        if self.world_size == 1 and self.config.zero_stage == 0:
            # Nothing to all-reduce, yet DeepSpeed would still flatten every gradient into 2 GB buckets and back.
            self.engine.enable_backward_allreduce = False
        self.pad_id = pad_id
        if self.ema_decay is not None:
            # Every rank iterates (the gathers are collective under ZeRO-3); only rank 0's buckets hold tensors.
            ema = {spec.name: t.float() for bucket in self._buckets() for spec, t in bucket}
            self.ema = ema if self.rank == 0 else None
        return sum(p.numel() for p in model.parameters())

    def _deepspeed_config(self) -> dict:
        return {
            "train_micro_batch_size_per_gpu": 1,  # nominal: each step hands the engine its whole shard at once
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.config.grad_clip,
            "zero_optimization": {"stage": self.config.zero_stage},
            "bf16": {"enabled": self.config.dtype == "bfloat16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        from functools import partial

        from learner.chunked import response_states
        from learner.losses import compute_loss

        started = time.perf_counter()
        if self.broadcaster is not None:
            self.broadcaster.release_sent()  # the last version has usually reached every engine by now
        self.engine.train()
        chunk = self.config.loss_chunk_size
        policy_forward = partial(response_states, self.engine, chunk_size=chunk)
        reference_forward = (
            partial(response_states, self.reference, chunk_size=chunk) if self.reference is not None else None
        )
        loss, metrics = compute_loss(self.objective, batch, policy_forward, reference_forward, self.pad_id)
        self.engine.backward(loss)
        # Without ZeRO, DeepSpeed clips fp32 gradients but keeps no norm (get_global_grad_norm stays None).
        unclipped_norm = self._grad_norm() if self.config.zero_stage == 0 and self.config.dtype == "float32" else None
        self.engine.step()
        self.step += 1
        if self.ema_decay is not None:
            self._update_ema(self.ema_decay)
        grad_norm = self.engine.get_global_grad_norm() if unclipped_norm is None else unclipped_norm
        metrics["train/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["train/lr"] = self.engine.get_lr()[0]
        metrics["time/learner_step_s"] = time.perf_counter() - started
        return metrics

    def _grad_norm(self) -> float:
        import torch

        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def _full_state_dict(self) -> dict:
        """Full, unpartitioned parameters with HF names; every rank must call it (ZeRO-3 gathers collectively)."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.config.zero_stage == 3):
            # named_parameters() lists a tied lm_head once, under the embedding's name, as vLLM expects.
            return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in module.named_parameters()}

    def _buckets(self, views: bool = False):
        """The full weights, bucket by bucket (collective under ZeRO-3: every rank must iterate); `views`: see
        `gathered_buckets`."""
        from learner.weight_sync import gathered_buckets

        zero3 = self.config.zero_stage == 3
        return gathered_buckets(self.engine.module, self._bucket_plan(), zero3, copy=self.rank == 0, views=views)

    def _bucket_plan(self):
        from learner.weight_sync import plan_buckets

        if self.bucket_plan is None:
            self.bucket_plan = plan_buckets(self.engine.module, self.config.publish_bucket_mib << 20)
        return self.bucket_plan

    def _update_ema(self, decay: float) -> None:
        import torch

        # Bucket by bucket (collective under ZeRO-3: every rank gathers, rank 0 keeps the EMA).
        with torch.no_grad():
            for bucket in self._buckets():
                for spec, value in bucket:
                    self.ema[spec.name].mul_(decay).add_(value.float(), alpha=1.0 - decay)

    def publish_weights(self, version: int, directory: str) -> PublishedWeights | None:
        """Writes the full weights as safetensors files, one per bucket (rank 0), into `{directory}/v{version}`,
        for consumers on this node."""
        from safetensors.torch import save_file

        target = Path(directory) / f"v{version}"
        metadata = {"format": "pt", "policy_version": str(version)}
        for index, bucket in enumerate(self._buckets()):
            if self.rank == 0:
                target.mkdir(parents=True, exist_ok=True)
                state = {spec.name: tensor for spec, tensor in bucket}
                save_file(state, str(target / f"model-{index:05d}.safetensors"), metadata=metadata)
        return PublishedWeights(version=version, path=str(target)) if self.rank == 0 else None

    def share_weights(self, version: int, consumers: int) -> PublishedWeights | None:
        """Copies the full weights, bucket by bucket, into buffers that processes on this node map without a copy
        (CUDA IPC on a GPU, shared memory on CPU), and makes a handle on each for every one of `consumers`. Rank 0
        holds the buffers until `release_shared_weights(version)`."""
        from learner.weight_sync import share_bucket

        buffers, handles = [], []
        for bucket in self._buckets(views=True):
            if self.rank == 0:
                buffer, bucket_handles = share_bucket(bucket, consumers)
                buffers.append(buffer)
                handles.append(bucket_handles)
        if self.rank != 0:
            return None
        self.shared_versions[version] = buffers
        per_consumer = [[bucket_handles[i] for bucket_handles in handles] for i in range(consumers)]
        return PublishedWeights(version=version, buckets=self.bucket_plan, shared=per_consumer)

    def release_shared_weights(self, version: int) -> None:
        """Frees a shared version's buffers: their memory goes once every consumer has dropped its mapping (at once
        if they all have)."""
        for buffer in self.shared_versions.pop(version, []):
            buffer.free()

    def ema_buckets(self) -> list:
        """Rank 0's EMA of the weights in the training dtype, put into the Ray object store bucket by bucket (the
        bucket plan of every other way out): one object ref per bucket, a `dudi_common.flat_bucket.FlatBucket`.
        Each bucket's copy is dropped once it is put, so rank 0 never holds a second copy of the whole model."""
        import ray

        from dudi_common.flat_bucket import FlatBucket

        if self.rank != 0 or self.ema is None:
            raise RuntimeError("the EMA lives on rank 0 and needs an ema_decay")
        dtype = next(iter(self.engine.module.parameters())).dtype
        return [
            ray.put(FlatBucket.of([(s.name, self.ema[s.name]) for s in bucket], dtype))
            for bucket in self._bucket_plan()
        ]

    # --- the weight group: rank 0 broadcasts to consumer processes on any node ---------------------------------
    def weight_group_plan(self) -> tuple[str, int, list]:
        import ray

        self._buckets()  # fixes the plan
        return ray.util.get_node_ip_address(), free_port(), self.bucket_plan

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def gpu_uuid(self) -> str | None:
        """The GPU holding this rank's weights (None on CPU): who may map its shared buffers by CUDA IPC."""
        from dudi_common.shared_tensors import gpu_uuid

        device = next(self.engine.module.parameters()).device
        return gpu_uuid(device) if device.type == "cuda" else None

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str = "gloo") -> None:
        """Rank 0 becomes rank 0 of a group with `world_size - 1` consumers (they join concurrently) over `backend`
        (`dudi_common.weight_group`); broadcasts follow the bucket plan of `weight_group_plan`. Other ranks only
        take part in the gathers."""
        from learner.weight_sync import WeightBroadcaster

        if self.rank == 0:
            if self.broadcaster is not None:  # a new group after a consumer's restart: the old one cannot complete
                self.broadcaster.close(abort=True)
            self.broadcaster = WeightBroadcaster(host, port, world_size, backend)

    def broadcast_weights(self, version: int) -> PublishedWeights | None:
        """Posts this version's buckets to the weight group; returns once they are copied out, not received."""
        if self.rank == 0:
            if self.broadcaster is None:
                raise RuntimeError("broadcast_weights before open_weight_group")
            self.broadcaster.wait()  # the previous version has reached every consumer
        for bucket in self._buckets(views=True):  # `send` copies each bucket out before the next is gathered
            if self.rank == 0:
                self.broadcaster.send(bucket)
        return PublishedWeights(version=version, buckets=self.bucket_plan) if self.rank == 0 else None

    def weights_digest(self) -> dict[str, str] | None:
        """sha256 of every full tensor (rank 0), to check that consumers hold bit-identical weights."""
        from learner.weight_sync import tensor_digest

        digest = {spec.name: tensor_digest(t) for bucket in self._buckets() for spec, t in bucket}
        return digest if self.rank == 0 else None

    def save_state(self, directory: str) -> None:
        """Everything a resumed run needs to take the same next step: DeepSpeed's checkpoint (weights, optimizer,
        scheduler; each rank writes its own shards, so across nodes `directory` must be shared storage) and rank 0's
        EMA. Collective: every rank must call it."""
        from safetensors.torch import save_file

        self.engine.save_checkpoint(directory, tag="state", client_state={"step": self.step})
        if self.rank == 0 and self.ema is not None:
            save_file({name: t.contiguous() for name, t in self.ema.items()}, str(Path(directory) / "ema.safetensors"))

    def load_state(self, directory: str) -> int:
        """Restores `save_state`'s checkpoint into the running engine; returns the optimizer step it was taken at."""
        from safetensors.torch import load_file

        path, client_state = self.engine.load_checkpoint(
            directory, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no learner state in {directory}")
        self.step = int(client_state["step"])
        ema_path = Path(directory) / "ema.safetensors"
        if self.ema_decay is not None and self.rank == 0:
            if not ema_path.is_file():
                raise FileNotFoundError(f"the run keeps an EMA teacher, but {ema_path} is missing")
            self.ema = load_file(str(ema_path))
        return self.step

    def save_checkpoint(self, directory: str) -> str | None:
        """HF format (`save_pretrained`), loadable with `AutoModelForCausalLM.from_pretrained`."""
        state = self._full_state_dict()
        if self.rank != 0:
            return None
        self.engine.module.save_pretrained(directory, state_dict=state, safe_serialization=True)
        return directory


def lr_scheduler(optimizer, config: LearnerConfig, total_steps: int | None):
    """transformers' warm-up-then-decay schedules over a stage of `total_steps` (a decay reaches 0 at its end)."""
    from transformers import get_scheduler

    if total_steps is None and (config.lr_schedule != "constant" or config.warmup_ratio > 0):
        raise ValueError(
            f"lr_schedule={config.lr_schedule} with warmup_ratio={config.warmup_ratio} needs the number of training steps"
        )
    warmup = round(config.warmup_ratio * total_steps) if total_steps else 0
    if config.lr_schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    return get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
