"""A vLLM engine in a Ray actor: samples responses tagged with the policy version, takes weights in place.

Weights arrive as a directory holding one safetensors file with HF names (`WeightSnapshot`); the engine
reloads them with the worker's `reload_weights` (via `rollout.weight_receiver`), which repacks CPU linear
weights (a plain `load_weights` does not on CPU), then drops the prefix cache, whose KV came from the old
weights.

When its process dies, Ray restarts the actor (`rollout.max_restarts`) with the arguments it was first made
with, so the new engine holds the start-up weights: it raises `WeightsLost` on every call that needs the
policy until `load_weights` gives it the current ones (`RolloutGroup` does, then issues the prompts again).
"""

from __future__ import annotations

import os
import time

from rollout.config import RolloutConfig
from rollout.types import (
    GenerationRequest,
    GenerationResult,
    SamplingSpec,
    TopIdsRequest,
    WeightGroupSpec,
    WeightsLost,
    WeightSnapshot,
)


class RolloutWorker:
    """State: the vLLM engine and the version of the policy it holds."""

    def __init__(
        self, config: RolloutConfig, model_path: str, seed: int, policy_version: int = 0, worker_index: int = 0
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        # The engine core runs in this actor's process, not in a child process of its own: the actor already is
        # the process boundary. On the tiny student this cut the engine's start from 18 s to 2.3 s (no second
        # interpreter re-importing vLLM and torch), generated 128 × 64 tokens in 0.67 s instead of 0.86-0.96 s,
        # and made sampling reproducible for a given seed (the child-process engine gave different samples on
        # every start). Ray still restarts the whole actor when it dies.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import ray
        from vllm import LLM

        self.weights_lost = ray.get_runtime_context().was_current_actor_reconstructed
        self.in_weight_group = False

        self.llm = LLM(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=seed,
            enforce_eager=config.enforce_eager,
            max_logprobs=config.max_logprobs,
            worker_extension_cls="rollout.weight_receiver.WeightReceiver",
            # A weight push reloads a checkpoint file in place on every step: with the engine in this actor,
            # vLLM's per-load progress bar would print three lines per step into the driver's output.
            use_tqdm_on_load=False,
        )
        self.config = config
        self.policy_version = policy_version
        from dudi_common.gauges import KeptGauges

        # On the Ray dashboard / Prometheus, per worker (the orchestrator logs the whole group's rate).
        self.gauges = KeptGauges()
        self.worker_tag = {"worker": str(worker_index)}

    def _check_weights(self) -> None:
        if self.weights_lost:
            raise WeightsLost(f"rollout worker (pid {os.getpid()}) was restarted and has no current weights yet")

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[GenerationResult]:
        from vllm import SamplingParams

        self._check_weights()
        if spec.seed is not None and self.config.num_gpus_per_worker == 0:
            raise ValueError(
                "per-request sampling seeds are GPU-only: vLLM's CPU sampler fails on them (seed the engine)"
            )
        params = SamplingParams(
            temperature=spec.temperature,
            top_k=spec.top_k if spec.top_k > 0 else 0,
            top_p=spec.top_p,
            max_tokens=spec.max_new_tokens,
            logprobs=spec.top_ids,  # 0: the sampled token's log-prob only
            seed=spec.seed,
            stop_token_ids=list(spec.stop_token_ids) or None,
            detokenize=False,  # callers decode what they need; detokenizing 64 candidates per token costs seconds
            flat_logprobs=True,  # a few flat lists per request instead of one dict of Logprob objects per id
        )
        started = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False)
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        self.gauges.set(
            "dudi_rollout_worker_tokens_per_s",
            tokens / max(time.perf_counter() - started, 1e-9),
            tags=self.worker_tag,
            description="Sampled tokens per second of one generate call",
        )
        results = []
        for request, output in zip(requests, outputs, strict=True):
            completion = output.outputs[0]
            token_ids = list(completion.token_ids)
            flat = completion.logprobs
            positions = range(len(flat.start_indices)) if flat is not None else range(0)
            # vLLM lays out each position as [sampled token, top 1, ..., top k].
            logprobs = [flat.logprobs[flat.start_indices[t]] for t in positions]
            results.append(
                GenerationResult(
                    prompt_ids=request.prompt_ids,
                    response_ids=token_ids,
                    response_logprobs=logprobs,
                    finished=completion.finish_reason == "stop",
                    policy_version=self.policy_version,
                    top_ids=[_top_ids(flat, t, spec.top_ids) for t in positions] if spec.top_ids else None,
                )
            )
        return results

    def rank_ids(self, requests: list[TopIdsRequest], n: int) -> list[list[list[int]]]:
        """The policy's n most likely ids at every response position of given sequences (a prefill only)."""
        from vllm import SamplingParams

        self._check_weights()
        params = SamplingParams(max_tokens=1, prompt_logprobs=n, temperature=0.0, detokenize=False, flat_logprobs=True)
        outputs = self.llm.generate(
            [{"prompt_token_ids": r.prompt_ids + r.response_ids} for r in requests], params, use_tqdm=False
        )
        ranked = []
        for request, output in zip(requests, outputs, strict=True):
            # Position j ranks the candidates for token j of prompt + response (position 0 is empty).
            flat = output.prompt_logprobs
            start = len(request.prompt_ids)
            ranked.append([_top_ids(flat, j, n) for j in range(start, start + len(request.response_ids))])
        return ranked

    def load_weights(self, snapshot: WeightSnapshot) -> int:
        if snapshot.path is not None:
            kwargs = {"weights_path": snapshot.path, "record_digest": snapshot.record_digest}
            self.llm.collective_rpc("receive_weights", kwargs=kwargs)
        elif snapshot.shared is not None:
            kwargs = {"buckets": snapshot.shared, "record_digest": snapshot.record_digest}
            self.llm.collective_rpc("receive_shared", kwargs=kwargs)
        elif self.in_weight_group:
            self.llm.collective_rpc("receive_broadcast")
        else:  # restarted since it joined: the group's other members wait on a new group (`PolicySync.restore`)
            raise WeightsLost(f"rollout worker (pid {os.getpid()}) is not in the weight group since its restart")
        self.llm.reset_prefix_cache()
        self.policy_version = snapshot.version
        self.weights_lost = False
        return self.policy_version

    def reseed(self, seed: int) -> None:
        self.llm.collective_rpc("reseed", kwargs={"seed": seed})

    def join_weight_group(self, group: WeightGroupSpec, rank: int, record_digest: bool = False) -> None:
        """The engine's worker process joins the learner's weight group as `rank` (blocks until all have)."""
        import ray

        self.llm.collective_rpc(
            "join_weight_group",
            kwargs={
                "host": group.host,
                "port": group.port,
                "rank": rank,
                "world_size": group.world_size,
                "own_host": ray.util.get_node_ip_address(),
                "buckets": [[[name, dtype, list(shape)] for name, dtype, shape in b] for b in group.buckets],
                "record_digest": record_digest,
                "backend": group.backend,
            },
        )
        self.in_weight_group = True

    def received_digest(self) -> dict[str, str]:
        """sha256 per tensor of the last weights received with `record_digest` (or over the weight group, joined
        with `record_digest`)."""
        return self.llm.collective_rpc("received_digest")[0]

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def gpu_uuids(self) -> list[str]:
        """The GPUs this worker sees (none on CPU): the learner's shared buffers on one of them can be mapped."""
        import torch

        from dudi_common.shared_tensors import gpu_uuid

        return [gpu_uuid(i) for i in range(torch.cuda.device_count())] if self.config.num_gpus_per_worker else []

    def get_policy_version(self) -> int:
        return self.policy_version

    def pid(self) -> int:
        return os.getpid()


def _top_ids(flat, position: int, n: int) -> list[int]:
    """The policy's n most likely ids at `position`, best first, from vLLM's flat log-probs, which hold for each
    position [the sampled (or given) token, top 1, ..., top k]."""
    first = flat.start_indices[position] + 1
    return flat.token_ids[first : min(first + n, flat.end_indices[position])]
