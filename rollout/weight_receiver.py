"""Runs inside vLLM's worker process (`worker_extension_cls`): takes new weights in place, keeps tied heads tied,
and restarts the sampler's random stream on demand.

Weights arrive in one of three ways:
- `receive_weights(path)`: safetensors files in a directory on this node (the same-node path through /dev/shm);
- `receive_shared(buckets)`: buffers of the learner's rank 0 on this node, mapped without a copy (CUDA IPC on a
  GPU, shared memory on CPU; `dudi_common.shared_tensors`) and streamed into `reload_weights` bucket by bucket;
- `receive_broadcast()`: bucket by bucket over a process group with the learner's rank 0, joined once with
  `join_weight_group` (`dudi_common.weight_group`: gloo into host memory, or NCCL into this worker's GPU).
  Nothing touches a filesystem, so learner and engine may sit on different nodes. Buckets stream into
  `reload_weights` as they arrive, and the next bucket's receive is posted before the current one is handed over,
  so the group takes in bucket i + 1 while vLLM loads and repacks bucket i: the worker holds two buckets beside
  the model.

With tied embeddings (no `lm_head.weight` in the checkpoint, e.g. Qwen2.5-0.5B), vLLM 0.32's layerwise
in-place reload swaps in a new embedding tensor but puts the LM head's old tensor back, and on CPU the
head keeps the GEMM kernel it prepacked at start-up. The head would keep the start-up weights while the
embedding moves on: greedy outputs drift and sampling goes near uniform (seen on the tiny world, caught by
the greedy-equality test). Re-tying and re-running the head's post-load processing restores the model the
checkpoint describes.
"""

from __future__ import annotations

import hashlib


class WeightReceiver:
    def receive_weights(self, weights_path: str, record_digest: bool = False) -> None:
        self.model_runner.reload_weights(weights_path=weights_path)
        self._after_reload()
        if record_digest:
            self._digest = _files_digest(weights_path)

    def join_weight_group(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        own_host: str,
        buckets: list,
        record_digest: bool,
        backend: str = "gloo",
    ) -> None:
        """Joins the learner's weight group as `rank` over `backend` (`dudi_common.weight_group`; blocks until every
        member has joined). `buckets`: per bucket, [name, dtype, shape] of its tensors in send order;
        `record_digest` keeps a sha256 per tensor."""
        from dudi_common.weight_group import group_device, open_group

        self.leave_weight_group(abort=True)  # a group from before another member's restart cannot complete
        self._weight_store, self._weight_group = open_group(host, port, rank, world_size, backend, own_host)
        self._weight_device = group_device(backend)
        self._weight_buckets = buckets
        self._record_digest = record_digest
        self._digest: dict[str, str] = {}

    def leave_weight_group(self, abort: bool = False) -> None:
        """Closes this worker's end of the weight group, if it joined one (`dudi_common.weight_group.close_group`)."""
        from dudi_common.weight_group import close_group

        close_group(getattr(self, "_weight_group", None), abort=abort)
        self._weight_store = self._weight_group = None

    def receive_shared(self, buckets: list, record_digest: bool) -> None:
        """`buckets`: `rollout.types.SharedBucket`s of one version, this worker's own handles."""
        self._record_digest = record_digest
        self._digest = {}
        self.model_runner.reload_weights(weights_iterator=self._shared_stream(buckets))
        self._after_reload()

    def receive_broadcast(self) -> None:
        stream = self._broadcast_stream()
        self.model_runner.reload_weights(weights_iterator=stream)
        for _ in stream:  # every posted bucket must be received, or the next version would read stale bytes
            pass
        self._after_reload()

    def received_digest(self) -> dict[str, str]:
        return self._digest

    def reseed(self, seed: int) -> None:
        """Restarts the sampler's random stream: requests without a seed of their own draw from this process's
        global generators, which otherwise carry on from wherever earlier generate calls left them."""
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(seed, self.parallel_config.data_parallel_index)

    def _broadcast_stream(self):
        import torch

        from dudi_common.flat_bucket import nbytes
        from dudi_common.weight_group import post_broadcast

        def post(bucket):
            buffer = torch.empty(nbytes(bucket), dtype=torch.uint8, device=self._weight_device)
            return post_broadcast(self._weight_group, buffer), buffer

        buckets = self._weight_buckets
        incoming = post(buckets[0]) if buckets else None
        for index, bucket in enumerate(buckets):
            work, buffer = incoming
            work.wait()  # on NCCL: what reads the buffer next on this stream runs after the receive
            # Broadcasts on one group complete in the order posted, as the learner posts them: the next one may
            # run while this bucket is loaded.
            incoming = post(buckets[index + 1]) if index + 1 < len(buckets) else None
            yield from self._split(buffer, bucket)

    def _shared_stream(self, buckets):
        from dudi_common.shared_tensors import open_shared

        for bucket in buckets:
            # Views of the mapping go to vLLM, which copies them into its parameters; once they are dropped the
            # learner can free the buffer.
            yield from self._split(open_shared(bucket.handle), bucket.tensors)

    def _split(self, buffer, tensors):
        """(name, tensor) of each tensor laid out back to back in a flat uint8 `buffer`."""
        import torch

        from dudi_common.flat_bucket import views

        for name, tensor in views(buffer, tensors):
            if self._record_digest:
                raw = tensor.reshape(-1).view(torch.uint8)
                self._digest[name] = hashlib.sha256(raw.cpu().numpy().tobytes()).hexdigest()
            yield name, tensor

    def _after_reload(self) -> None:
        if getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False):
            self._retie_lm_head()

    def _retie_lm_head(self) -> None:
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embedding = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embedding is None:
            raise RuntimeError(f"cannot re-tie the LM head of {type(model).__name__}: no lm_head / model.embed_tokens")
        head.weight = embedding.weight
        head.quant_method.process_weights_after_loading(head)


def _files_digest(directory: str) -> dict[str, str]:
    """sha256 of every tensor's raw bytes in a directory of safetensors files."""
    from pathlib import Path

    import torch
    from safetensors import safe_open

    digest = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a dict)
                raw = tensors.get_tensor(name).contiguous().reshape(-1).view(torch.uint8)
                digest[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    return digest
