"""Typed configuration of the learner and of the objective it optimizes (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ObjectiveConfig(BaseModel):
    """Which loss terms the learner computes, with the conventions of DESIGN.md."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["sft", "dudi"] = Field(
        "dudi", description="sft: cross-entropy on y; dudi: α·SPIN + (1−λ)·Off-KD + λ·On-KD."
    )
    alpha: float = Field(0.1, ge=0.0, description="Weight of the SPIN sequence term (0 switches it off).")
    lam: float = Field(0.5, ge=0.0, le=1.0, description="λ: On-KD weight; Off-KD gets 1−λ.")
    divergence: Literal["rkl", "fkl", "jsd"] = Field(
        "rkl", description="rkl = KL(π_θ‖π_T), fkl = KL(π_T‖π_θ), jsd = generalized JSD."
    )
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="β of the generalized JSD (0.5 = symmetric).")
    kd_temperature: float = Field(1.0, gt=0.0, description="τ dividing student and teacher logits in D.")
    spin_beta: float = Field(0.1, gt=0.0, description="β of SPIN's log-sigmoid margin.")

    @property
    def uses_teacher(self) -> bool:
        return self.method == "dudi"

    @property
    def uses_reference(self) -> bool:
        return self.method == "dudi" and self.alpha > 0


class LearnerConfig(BaseModel):
    """One DeepSpeed engine per rank; `num_ranks` Ray actors form the data-parallel group."""

    model_config = ConfigDict(extra="forbid")

    num_ranks: int = Field(1, ge=1, description="Data-parallel ranks (one Ray actor each).")
    zero_stage: Literal[0, 1, 2, 3] = Field(3, description="DeepSpeed ZeRO stage.")
    lr: float = Field(2e-5, gt=0.0, description="AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient-norm clip; 0 disables it.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Training dtype (bfloat16 needs a GPU to pay off)."
    )
    num_threads: int = Field(2, ge=1, description="torch intra-op threads per rank (CPU).")
    num_cpus_per_rank: float = Field(0.5, ge=0.0, description="Ray CPU reservation per rank.")
    num_gpus_per_rank: float = Field(0.0, ge=0.0, description="Ray GPU reservation per rank (1 on a GPU cluster).")
    master_port: int = Field(0, ge=0, le=65535, description="torch.distributed port; 0 picks a free one.")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)

    @model_validator(mode="after")
    def _bf16_needs_gpu(self) -> LearnerConfig:
        if self.dtype == "bfloat16" and self.num_gpus_per_rank == 0:
            raise ValueError("dtype=bfloat16 is only supported with num_gpus_per_rank > 0")
        return self
