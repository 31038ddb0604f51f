"""Assembles the configured objective for one batch from model forwards (pure torch, testable without DeepSpeed).

dudi: L = α·SPIN(x, y, y') + (1−λ)·D_off(x, y) + λ·D_on(p_z, ỹ | teacher saw z)
sft:  L = CE(x, y)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner import objective
from learner.config import ObjectiveConfig
from learner.packing import PackedSequences, concat, pack, pad_teacher_logprobs
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
    if cfg.method == "sft":
        packed = pack(batch.chosen, pad_id)
        logits = policy_forward(packed)
        loss = objective.sft_loss(logits, packed.labels.to(logits.device), packed.response_mask.to(logits.device))
        return loss, {"loss/total": loss.item(), "loss/sft": loss.item()}
    return _dudi_loss(cfg, batch, policy_forward, reference_forward, pad_id)


def _check_inputs(cfg: ObjectiveConfig, batch: TrainBatch, has_reference: bool) -> None:
    if cfg.alpha > 0 and (batch.rejected is None or not has_reference):
        raise ValueError("alpha > 0 needs rejected rollouts and a reference model")
    if cfg.lam < 1 and batch.chosen_teacher_logprobs is None:
        raise ValueError("lam < 1 needs teacher scores of the ground-truth responses")
    if cfg.lam > 0 and (batch.on_policy is None or batch.on_policy_teacher_logprobs is None):
        raise ValueError("lam > 0 needs on-policy rollouts and their teacher scores")


def _dudi_loss(cfg: ObjectiveConfig, batch: TrainBatch, policy_forward, reference_forward, pad_id: int):
    _check_inputs(cfg, batch, reference_forward is not None)
    chosen = pack(batch.chosen, pad_id)
    # Each group gets its own forward: padding x-prompts to the longest verbalized p_z would waste most of it.
    chosen_logits = policy_forward(chosen)
    device = chosen_logits.device
    total = torch.zeros((), device=device)
    metrics: dict[str, float] = {}
    if cfg.alpha > 0:
        spin, spin_metrics = _spin_term(cfg, batch, chosen, chosen_logits, policy_forward, reference_forward, pad_id)
        total = total + cfg.alpha * spin
        metrics.update(spin_metrics)
    if cfg.lam < 1:
        off_kd, overlap = _kd_term(cfg, chosen_logits, batch.chosen_teacher_logprobs, chosen)
        total = total + (1 - cfg.lam) * off_kd
        metrics.update({"loss/off_kd": off_kd.item(), "diag/topk_overlap_off": overlap})
    if cfg.lam > 0:
        on_policy = pack(batch.on_policy, pad_id)
        on_kd, overlap = _kd_term(cfg, policy_forward(on_policy), batch.on_policy_teacher_logprobs, on_policy)
        total = total + cfg.lam * on_kd
        metrics.update({"loss/on_kd": on_kd.item(), "diag/topk_overlap_on": overlap})
    metrics["loss/total"] = total.item()
    return total, metrics


def _kd_term(cfg: ObjectiveConfig, student_logits, teacher_rows, packed: PackedSequences) -> tuple[torch.Tensor, float]:
    device = student_logits.device
    teacher = pad_teacher_logprobs(teacher_rows, packed.response_width).to(device)
    mask = packed.response_mask.to(device)
    per_token = objective.token_divergence(
        student_logits.float(), teacher, cfg.divergence, beta=cfg.jsd_beta, temperature=cfg.kd_temperature
    )
    overlap = objective.topk_overlap(student_logits.detach(), teacher, mask, TOPK_OVERLAP_K)
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
        "loss/spin": losses.mean().item(),
        "diag/spin_margin": margin.mean().item(),
        "diag/spin_accuracy": (margin > 0).float().mean().item(),
    }
