"""Typed configuration of the learner and of the objective it optimizes (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ObjectiveConfig(BaseModel):
    """The loss as a weighted sum of terms, with the conventions of DESIGN.md:

        L = CE(x, y) [sft | dft]  +  α·SPIN(x, y, y')  +  kd_weight·[(1−λ)·Off-KD(x, y) + λ·On-KD]

    Every method of the paper is a setting of these fields (see orchestrator/presets.py).
    """

    model_config = ConfigDict(extra="forbid")

    cross_entropy: Literal["none", "sft", "dft"] = Field(
        "none", description="Cross-entropy on the ground truth y: sft (w = 1), dft (w = sg(π_θ(y_t))), or none."
    )
    alpha: float = Field(0.1, ge=0.0, description="Weight of the SPIN sequence term (0 switches it off).")
    kd_weight: float = Field(1.0, ge=0.0, description="Weight of the distillation terms (0 switches both off).")
    lam: float = Field(0.5, ge=0.0, le=1.0, description="λ: On-KD weight inside the KD term; Off-KD gets 1−λ.")
    divergence: Literal["rkl", "fkl", "jsd"] = Field(
        "rkl", description="rkl = KL(π_θ‖π_T), fkl = KL(π_T‖π_θ), jsd = generalized JSD."
    )
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="β of the generalized JSD (0.5 = symmetric).")
    kd_temperature: float = Field(1.0, gt=0.0, description="τ dividing student and teacher logits in D.")
    spin_beta: float = Field(0.1, gt=0.0, description="β of SPIN's log-sigmoid margin.")

    @model_validator(mode="after")
    def _has_a_term(self) -> ObjectiveConfig:
        if self.cross_entropy == "none" and self.alpha == 0 and self.kd_weight == 0:
            raise ValueError("the objective has no term: set cross_entropy, alpha > 0 or kd_weight > 0")
        return self

    @property
    def uses_off_kd(self) -> bool:
        return self.kd_weight > 0 and self.lam < 1

    @property
    def uses_on_kd(self) -> bool:
        return self.kd_weight > 0 and self.lam > 0

    @property
    def uses_teacher(self) -> bool:
        return self.kd_weight > 0

    @property
    def uses_reference(self) -> bool:
        return self.alpha > 0

    @property
    def needs_rollouts(self) -> bool:
        """Whether a step samples from the student (so the rollout workers must hold the current weights)."""
        return self.alpha > 0 or self.uses_on_kd

    @property
    def terms(self) -> list[str]:
        """The `loss/*` names this objective logs."""
        names = [self.cross_entropy] if self.cross_entropy != "none" else []
        names += ["spin"] if self.alpha > 0 else []
        names += ["off_kd"] if self.uses_off_kd else []
        names += ["on_kd"] if self.uses_on_kd else []
        return names


class LearnerConfig(BaseModel):
    """One DeepSpeed engine per rank; `num_ranks` Ray actors form the data-parallel group."""

    model_config = ConfigDict(extra="forbid")

    num_ranks: int = Field(1, ge=1, description="Data-parallel ranks (one Ray actor each).")
    zero_stage: Literal[0, 1, 2, 3] = Field(3, description="DeepSpeed ZeRO stage.")
    lr: float = Field(2e-5, gt=0.0, description="AdamW peak learning rate (reached after warm-up).")
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Linear warm-up over this fraction of the stage's steps (from lr 0)."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="After warm-up: constant, or a linear or cosine decay to 0 at the stage's last step "
        "(transformers' schedulers; the learner is told the stage's length).",
    )
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient-norm clip; 0 disables it.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Training dtype (bfloat16 needs a GPU to pay off)."
    )
    num_threads: int = Field(2, ge=1, description="torch intra-op threads per rank (CPU).")
    num_cpus_per_rank: float = Field(0.5, ge=0.0, description="Ray CPU reservation per rank.")
    num_gpus_per_rank: float = Field(0.0, ge=0.0, description="Ray GPU reservation per rank (1 on a GPU cluster).")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per rank, e.g. {learner: 1} to run only on nodes that advertise them.",
    )
    master_port: int = Field(0, ge=0, le=65535, description="torch.distributed port; 0 picks a free one.")
    publish_bucket_mib: int = Field(
        64, ge=1, description="Weights leave the learner in buckets of this size (gathered one at a time under ZeRO-3)."
    )
    loss_chunk_size: int = Field(
        1024,
        ge=1,
        description="Response positions per chunk of the LM head and every full-vocabulary loss term: a chunk's "
        "logits (chunk × vocabulary floats) are the largest tensor the loss holds, recomputed in backward.",
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)

    @model_validator(mode="after")
    def _bf16_needs_gpu(self) -> LearnerConfig:
        if self.dtype == "bfloat16" and self.num_gpus_per_rank == 0:
            raise ValueError("dtype=bfloat16 is only supported with num_gpus_per_rank > 0")
        return self
