"""Typed configuration of the vLLM rollout workers (no vLLM import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    """On-policy sampling (paper, App. B: do_sample, top-k 0, temperature 0.9)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.9, ge=0.0, description="0 = greedy.")
    top_k: int = Field(0, ge=0, description="0 = off.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(1, ge=1, description="vLLM engines, one Ray actor each; prompts are split evenly.")
    max_model_len: int = Field(1024, ge=16, description="Prompt + response tokens per sequence.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    enforce_eager: bool = Field(
        False,
        description="Skip torch.compile / CUDA graphs: faster engine start, slower generation (tiny or short runs).",
    )
    max_logprobs: int = Field(
        64, ge=0, description="Most ids an engine ranks per position (the student's top-k sent to the teacher)."
    )
    num_cpus_per_worker: float = Field(0.5, ge=0.0)
    num_gpus_per_worker: float = Field(0.0, ge=0.0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per worker, e.g. {rollout: 1} to run only on nodes that advertise them.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_restarts: int = Field(
        3,
        ge=0,
        description="Times Ray restarts a worker whose process died; it is then given the current weights and "
        "its prompts are issued again. 0: a dead worker ends the run.",
    )
    restart_timeout_s: float = Field(600.0, gt=0, description="How long to wait for a restarted engine to be up.")
