"""A vLLM engine in a Ray actor: samples responses tagged with the policy version, takes weights in place.

Weights arrive as a directory holding one safetensors file with HF names (`WeightSnapshot`); the engine
reloads them with the worker's `reload_weights` (via `rollout.weight_receiver`), which repacks CPU linear
weights (a plain `load_weights` does not on CPU), then drops the prefix cache, whose KV came from the old
weights.
"""

from __future__ import annotations

import os

from rollout.config import RolloutConfig
from rollout.types import GenerationRequest, GenerationResult, SamplingSpec, WeightSnapshot


class RolloutWorker:
    """State: the vLLM engine and the version of the policy it holds."""

    def __init__(self, config: RolloutConfig, model_path: str, seed: int, policy_version: int = 0):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=seed,
            enforce_eager=config.enforce_eager,
            worker_extension_cls="rollout.weight_receiver.WeightReceiver",
        )
        self.policy_version = policy_version

    def generate(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[GenerationResult]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=spec.temperature,
            top_k=spec.top_k if spec.top_k > 0 else 0,
            top_p=spec.top_p,
            max_tokens=spec.max_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
            seed=spec.seed,
        )
        outputs = self.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False)
        results = []
        for request, output in zip(requests, outputs, strict=True):
            completion = output.outputs[0]
            token_ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], token_ids, strict=False)]
            results.append(
                GenerationResult(
                    prompt_ids=request.prompt_ids,
                    response_ids=token_ids,
                    response_logprobs=logprobs,
                    finished=completion.finish_reason == "stop",
                    policy_version=self.policy_version,
                )
            )
        return results

    def load_weights(self, snapshot: WeightSnapshot) -> int:
        self.llm.collective_rpc("receive_weights", kwargs={"weights_path": snapshot.path})
        self.llm.reset_prefix_cache()
        self.policy_version = snapshot.version
        return self.policy_version

    def get_policy_version(self) -> int:
        return self.policy_version
