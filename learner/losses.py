"""Assembles the configured objective for one batch from model forwards (pure torch, testable without DeepSpeed).

L = CE(x, y) [sft | dft] + α·SPIN(x, y, y') + kd_weight·[(1−λ)·D(x, y) + λ·D(p_z, ỹ | teacher saw z)]

Each term is computed only when its weight is non-zero, and logged as `loss/<term>`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from learner import objective
from learner.config import ObjectiveConfig
from learner.packing import PackedSequences, PaddedTeacherScores, concat, pack, pad_teacher_scores
from learner.types import TrainBatch

# packed sequences → logits of the response positions, [B, R, V]
ForwardFn = Callable[[PackedSequences], torch.Tensor]

TOPK_OVERLAP_K = 8


def response_logits(model, packed: PackedSequences) -> torch.Tensor:
    """A causal LM's logits for the response positions only (`logits_to_keep` skips the prompt's LM head)."""
    device = next(model.parameters()).device
    out = model(
        input_ids=packed.input_ids.to(device),
        attention_mask=packed.attention_mask.to(device),
        position_ids=packed.position_ids.to(device),
        logits_to_keep=packed.response_width,
    )
    return out.logits


def compute_loss(
    cfg: ObjectiveConfig,
    batch: TrainBatch,
    policy_forward: ForwardFn,
    reference_forward: ForwardFn | None,
    pad_id: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    _check_inputs(cfg, batch, reference_forward is not None)
    chosen = pack(batch.chosen, pad_id)
    # Each group gets its own forward: padding x-prompts to the longest verbalized p_z would waste most of it.
    chosen_logits = policy_forward(chosen) if _needs_chosen_forward(cfg) else None
    total = torch.zeros(())
    metrics: dict[str, float] = {}

    def add(name: str, weight: float, value: torch.Tensor) -> None:
        nonlocal total
        total = total.to(value.device) + weight * value
        metrics[f"loss/{name}"] = value.item()

    if cfg.cross_entropy != "none":
        labels, mask = chosen.labels.to(chosen_logits.device), chosen.response_mask.to(chosen_logits.device)
        loss_fn = objective.sft_loss if cfg.cross_entropy == "sft" else objective.dft_loss
        add(cfg.cross_entropy, 1.0, loss_fn(chosen_logits, labels, mask))
    if cfg.alpha > 0:
        spin, spin_metrics = _spin_term(cfg, batch, chosen, chosen_logits, policy_forward, reference_forward, pad_id)
        add("spin", cfg.alpha, spin)
        metrics.update(spin_metrics)
    if cfg.uses_off_kd:
        off_kd, overlap = _kd_term(cfg, chosen_logits, batch.chosen_teacher, chosen)
        add("off_kd", cfg.kd_weight * (1 - cfg.lam), off_kd)
        metrics["diag/topk_overlap_off"] = overlap
    if cfg.uses_on_kd:
        on_policy = pack(batch.on_policy, pad_id)
        on_kd, overlap = _kd_term(cfg, policy_forward(on_policy), batch.on_policy_teacher, on_policy)
        add("on_kd", cfg.kd_weight * cfg.lam, on_kd)
        metrics["diag/topk_overlap_on"] = overlap
    metrics["loss/total"] = total.item()
    return total, metrics


def _needs_chosen_forward(cfg: ObjectiveConfig) -> bool:
    return cfg.cross_entropy != "none" or cfg.alpha > 0 or cfg.uses_off_kd


def _check_inputs(cfg: ObjectiveConfig, batch: TrainBatch, has_reference: bool) -> None:
    if cfg.alpha > 0 and (batch.rejected is None or not has_reference):
        raise ValueError("alpha > 0 needs rejected rollouts and a reference model")
    if cfg.uses_off_kd and batch.chosen_teacher is None:
        raise ValueError("kd_weight > 0 with lam < 1 needs teacher scores of the ground-truth responses")
    if cfg.uses_on_kd and (batch.on_policy is None or batch.on_policy_teacher is None):
        raise ValueError("kd_weight > 0 with lam > 0 needs on-policy sequences and their teacher scores")


CLOSURE_TOLERANCE = 1e-3


def kd_divergence(cfg: ObjectiveConfig, student_logits: torch.Tensor, teacher: PaddedTeacherScores) -> torch.Tensor:
    """Per-position D(π_T, π_θ) [B, R] from full or sparse teacher scores (the teacher already applied τ)."""
    if abs(teacher.temperature - cfg.kd_temperature) > 1e-6:
        raise ValueError(
            f"teacher scores were computed at temperature {teacher.temperature}; the objective uses {cfg.kd_temperature}"
        )
    student_logits = student_logits.float()
    tau = cfg.kd_temperature
    if teacher.full is not None:
        student_logprobs = F.log_softmax(student_logits / tau, dim=-1)
        return objective.divergence_from_logprobs(student_logprobs, teacher.full, cfg.divergence, cfg.jsd_beta)
    return objective.sparse_token_divergence(
        student_logits,
        teacher.support_ids,
        teacher.support_logprobs,
        teacher.tail_logprob,
        cfg.divergence,
        beta=cfg.jsd_beta,
        temperature=tau,
    )


def _kd_term(
    cfg: ObjectiveConfig, student_logits: torch.Tensor, teacher_rows, packed: PackedSequences
) -> tuple[torch.Tensor, float]:
    device = student_logits.device
    teacher = pad_teacher_scores(teacher_rows, packed.response_width).to(device)
    mask = packed.response_mask.to(device)
    if teacher.full is None:
        closure = objective.sparse_closure_error(teacher.support_ids, teacher.support_logprobs, teacher.tail_logprob)
        worst = float((closure * mask).max()) if mask.any() else 0.0
        if worst > CLOSURE_TOLERANCE:
            raise ValueError(f"sparse teacher scores do not sum to 1 (|log mass| up to {worst:.2e})")
    per_token = kd_divergence(cfg, student_logits, teacher)
    with torch.no_grad():
        if teacher.full is not None:
            overlap = objective.topk_overlap(student_logits, teacher.full, mask, TOPK_OVERLAP_K)
        else:
            overlap = objective.topk_overlap_with_ids(student_logits, teacher.topk_ids, mask, TOPK_OVERLAP_K)
    return objective.masked_mean(per_token, mask), overlap.item()


def _sequence_logps(logits: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    return objective.sequence_logprob(logits, packed.labels.to(logits.device), packed.response_mask.to(logits.device))


def _spin_term(
    cfg, batch: TrainBatch, chosen: PackedSequences, chosen_logits, policy_forward, reference_forward, pad_id
):
    rejected = pack(batch.rejected, pad_id)
    policy_chosen = _sequence_logps(chosen_logits, chosen)
    policy_rejected = _sequence_logps(policy_forward(rejected), rejected)
    with torch.no_grad():
        # chosen and rejected share the prompt x, so one padded reference forward serves both.
        both = pack(concat(batch.chosen, batch.rejected), pad_id)
        ref_logps = _sequence_logps(reference_forward(both), both)
    n = len(batch.chosen)
    ref_chosen, ref_rejected = ref_logps[:n], ref_logps[n:]
    losses = objective.spin_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.spin_beta)
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return losses.mean(), {
        "diag/spin_margin": margin.mean().item(),
        "diag/spin_accuracy": (margin > 0).float().mean().item(),
    }
