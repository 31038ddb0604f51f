"""Assembles the configured objective for one batch from model forwards (pure torch, testable without DeepSpeed).

    dudi: L = α·SPIN(x, y, y') + (1−λ)·D_off(x, y) + λ·D_on(p_z, ỹ | teacher saw z)
    sft:  L = CE(x, y)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner import objective
from learner.config import ObjectiveConfig
from learner.packing import PackedSequences, concat, gather_response_logits, pack, pad_teacher_logprobs
from learner.types import TrainBatch

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) → logits [B, L, V]

TOPK_OVERLAP_K = 8


def _response_logits(forward: ForwardFn, packed: PackedSequences) -> torch.Tensor:
    return gather_response_logits(forward(packed.input_ids, packed.attention_mask), packed)


def compute_loss(
    cfg: ObjectiveConfig,
    batch: TrainBatch,
    policy_forward: ForwardFn,
    reference_forward: ForwardFn | None,
    pad_id: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    if cfg.method == "sft":
        packed = pack(batch.chosen, pad_id)
        loss = objective.sft_loss(_response_logits(policy_forward, packed), packed.labels, packed.response_mask)
        return loss, {"loss/total": loss.item(), "loss/sft": loss.item()}
    return _dudi_loss(cfg, batch, policy_forward, reference_forward, pad_id)


def _kd_term(cfg: ObjectiveConfig, student_logits, teacher_rows, packed: PackedSequences) -> tuple[torch.Tensor, float]:
    teacher = pad_teacher_logprobs(teacher_rows, packed.labels.size(1)).to(student_logits.device)
    per_token = objective.token_divergence(
        student_logits.float(), teacher, cfg.divergence, beta=cfg.jsd_beta, temperature=cfg.kd_temperature
    )
    overlap = objective.topk_overlap(student_logits.detach(), teacher, packed.response_mask, TOPK_OVERLAP_K)
    return objective.masked_mean(per_token, packed.response_mask), overlap.item()


def _dudi_loss(cfg, batch: TrainBatch, policy_forward, reference_forward, pad_id):
    use_spin = cfg.alpha > 0
    use_off = cfg.lam < 1
    use_on = cfg.lam > 0
    if use_spin and (batch.rejected is None or reference_forward is None):
        raise ValueError("alpha > 0 needs rejected rollouts and a reference model")
    if use_off and batch.chosen_teacher_logprobs is None:
        raise ValueError("lam < 1 needs teacher scores of the ground-truth responses")
    if use_on and (batch.on_policy is None or batch.on_policy_teacher_logprobs is None):
        raise ValueError("lam > 0 needs on-policy rollouts and their teacher scores")

    # One forward over every sequence the step needs, so ZeRO-3 gathers each parameter once.
    groups = {"chosen": batch.chosen}
    if use_spin:
        groups["rejected"] = batch.rejected
    if use_on:
        groups["on_policy"] = batch.on_policy
    packed_all = pack(concat(*groups.values()), pad_id)
    logits_all = _response_logits(policy_forward, packed_all)
    parts = dict(zip(groups, _split(packed_all, logits_all, [len(g) for g in groups.values()]), strict=True))

    total = torch.zeros((), device=logits_all.device)
    metrics: dict[str, float] = {}
    if use_spin:
        spin, spin_metrics = _spin_term(cfg, parts["chosen"], parts["rejected"], reference_forward, batch, pad_id)
        total = total + cfg.alpha * spin
        metrics.update(spin_metrics)
    if use_off:
        packed, logits = parts["chosen"]
        off_kd, overlap = _kd_term(cfg, logits, batch.chosen_teacher_logprobs, packed)
        total = total + (1 - cfg.lam) * off_kd
        metrics.update({"loss/off_kd": off_kd.item(), "diag/topk_overlap_off": overlap})
    if use_on:
        packed, logits = parts["on_policy"]
        on_kd, overlap = _kd_term(cfg, logits, batch.on_policy_teacher_logprobs, packed)
        total = total + cfg.lam * on_kd
        metrics.update({"loss/on_kd": on_kd.item(), "diag/topk_overlap_on": overlap})
    metrics["loss/total"] = total.item()
    return total, metrics


def _spin_term(cfg, chosen, rejected, reference_forward: ForwardFn, batch: TrainBatch, pad_id: int):
    (chosen_packed, chosen_logits), (rejected_packed, rejected_logits) = chosen, rejected
    policy_chosen = objective.sequence_logprob(chosen_logits, chosen_packed.labels, chosen_packed.response_mask)
    policy_rejected = objective.sequence_logprob(rejected_logits, rejected_packed.labels, rejected_packed.response_mask)
    with torch.no_grad():
        ref_packed = pack(concat(batch.chosen, batch.rejected), pad_id)
        ref_logits = _response_logits(reference_forward, ref_packed)
        ref_logps = objective.sequence_logprob(ref_logits, ref_packed.labels, ref_packed.response_mask)
    n = len(batch.chosen)
    losses = objective.spin_loss(policy_chosen, policy_rejected, ref_logps[:n], ref_logps[n:], cfg.spin_beta)
    margin = (policy_chosen - ref_logps[:n]) - (policy_rejected - ref_logps[n:])
    return losses.mean(), {
        "loss/spin": losses.mean().item(),
        "diag/spin_margin": margin.mean().item(),
        "diag/spin_accuracy": (margin > 0).float().mean().item(),
    }


def _split(packed: PackedSequences, logits: torch.Tensor, sizes: list[int]):
    """Cuts a packed batch and its response logits back into the groups it was built from."""
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        longest = int(packed.response_mask[rows].sum(-1).max())
        part = PackedSequences(
            packed.input_ids[rows],
            packed.attention_mask[rows],
            packed.response_positions[rows, :longest],
            packed.labels[rows, :longest],
            packed.response_mask[rows, :longest],
        )
        yield part, logits[rows, :longest]
        start += size
