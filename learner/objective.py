"""The distillation objective as pure torch functions (no Ray, no DeepSpeed).

Conventions (DESIGN.md): π_θ is the student, π_T the teacher. `rkl` = KL(π_θ‖π_T), `fkl` = KL(π_T‖π_θ),
`jsd` = β·KL(π_T‖M) + (1−β)·KL(π_θ‖M) with M = β·π_T + (1−β)·π_θ. Divergences are per position, summed
over the vocabulary; the caller averages them over response tokens with `masked_mean`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

DivergenceKind = Literal["rkl", "fkl", "jsd"]


def _kl_from_logprobs(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """Σ_v p (log p − log q), with 0·log 0 = 0.

    Entries where p = 0 are cut out before any arithmetic, so −inf log-probs give neither NaN values
    nor NaN gradients (where q = 0 but p > 0 the divergence is +inf, as it should be).
    """
    p = p_logprobs.exp()
    live = p > 0
    log_ratio = torch.where(live, p_logprobs, 0.0) - torch.where(live, q_logprobs, 0.0)
    return (p * log_ratio).sum(-1)


def _mixture_logprobs(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, beta: float) -> torch.Tensor:
    """log(β·π_T + (1−β)·π_θ), NaN-free in value and gradient where both are −inf."""
    both_zero = torch.isneginf(teacher_logprobs) & torch.isneginf(student_logprobs)
    mixed = torch.logaddexp(
        torch.where(both_zero, 0.0, teacher_logprobs) + math.log(beta),
        torch.where(both_zero, 0.0, student_logprobs) + math.log(1.0 - beta),
    )
    return torch.where(both_zero, -math.inf, mixed)


def divergence_from_logprobs(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, kind: DivergenceKind, beta: float = 0.5
) -> torch.Tensor:
    """The divergence between two normalized distributions given as log-probs over the same support [..., S]."""
    if kind == "rkl":
        return _kl_from_logprobs(student_logprobs, teacher_logprobs)
    if kind == "fkl":
        return _kl_from_logprobs(teacher_logprobs, student_logprobs)
    if kind == "jsd":
        if beta == 0.0:
            return _kl_from_logprobs(student_logprobs, student_logprobs)  # M = π_θ: zero, kept differentiable
        if beta == 1.0:
            return _kl_from_logprobs(teacher_logprobs, teacher_logprobs)
        mixture = _mixture_logprobs(teacher_logprobs, student_logprobs, beta)
        return beta * _kl_from_logprobs(teacher_logprobs, mixture) + (1.0 - beta) * _kl_from_logprobs(
            student_logprobs, mixture
        )
    raise ValueError(f"unknown divergence kind {kind!r}; expected rkl, fkl or jsd")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: DivergenceKind,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position divergence [B, T] between logits [B, T, V] (teacher log-probs are valid logits too)."""
    student_logprobs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_logprobs = F.log_softmax(teacher_logits / temperature, dim=-1)
    return divergence_from_logprobs(student_logprobs, teacher_logprobs, kind, beta)


def _first_occurrences(support_ids: torch.Tensor) -> torch.Tensor:
    """True where an id is ≥ 0 and does not already appear earlier in its row [..., S].

    Sort-based, O(S log S) per row: after a stable sort, an id equal to its left neighbour is a repeat, and
    stability makes the first of each run the earliest occurrence in the original order.
    """
    valid = support_ids >= 0
    if support_ids.size(-1) == 0:
        return valid
    ordered, order = torch.sort(support_ids, dim=-1, stable=True)
    repeat_in_order = torch.zeros_like(valid)
    repeat_in_order[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    repeated = torch.zeros_like(valid).scatter_(-1, order, repeat_in_order)
    return valid & ~repeated


def _logsumexp_outside(logprobs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """log Σ_{v ∉ inside} exp(logprobs_v) per row; −inf (with zero, not NaN, gradient) when nothing is left."""
    outside_alive = ~inside & torch.isfinite(logprobs)
    floor = torch.finfo(logprobs.dtype).min / 4  # finite, so logsumexp's backward never sees (−inf) − (−inf)
    rest = torch.logsumexp(torch.where(outside_alive, logprobs, floor), dim=-1)
    return torch.where(outside_alive.any(-1), rest, -math.inf)


def sparse_token_divergence(
    student_logits: torch.Tensor,
    support_ids: torch.Tensor,
    teacher_support_logprobs: torch.Tensor,
    teacher_tail_logprob: torch.Tensor,
    kind: DivergenceKind,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position divergence [B, T] from sparse teacher scores, on the support plus one tail bucket.

    `support_ids` [B, T, S]: the ids the teacher scored (its top-k, then the ids the caller asked for);
    repeats and negative (padding) ids are ignored. `teacher_support_logprobs` [B, T, S] are the teacher's
    log-probs there and `teacher_tail_logprob` [B, T] the log of its mass on every other id, all computed
    by the teacher at this `temperature` (only the student's logits are divided here).

    Both distributions are coarsened to (support ids, everything else); the divergence of the coarsened
    pair equals the full-vocabulary one when the support covers the vocabulary, and is otherwise a lower
    bound of it (data processing inequality for f-divergences), tight when the tail holds little mass.
    """
    student_logprobs = F.log_softmax(student_logits / temperature, dim=-1)
    vocab = student_logprobs.size(-1)
    if support_ids.numel() and int(support_ids.max()) >= vocab:
        raise ValueError(f"sparse teacher ids reach {int(support_ids.max())}; the student's vocabulary has {vocab}")
    keep = _first_occurrences(support_ids)
    ids = torch.where(keep, support_ids, vocab)  # dropped entries go to a scratch column
    padded = F.pad(student_logprobs, (0, 1), value=-math.inf)
    student_support = torch.gather(padded, -1, ids).masked_fill(~keep, -math.inf)
    in_support = torch.zeros_like(padded, dtype=torch.bool).scatter_(-1, ids, True)[..., :vocab]
    student_tail = _logsumexp_outside(student_logprobs, in_support)
    teacher_support = teacher_support_logprobs.to(student_logprobs.dtype).masked_fill(~keep, -math.inf)
    student_buckets = torch.cat([student_support, student_tail.unsqueeze(-1)], dim=-1)
    teacher_buckets = torch.cat([teacher_support, teacher_tail_logprob.to(student_logprobs.dtype).unsqueeze(-1)], -1)
    return divergence_from_logprobs(student_buckets, teacher_buckets, kind, beta)


def sparse_closure_error(
    support_ids: torch.Tensor, teacher_support_logprobs: torch.Tensor, teacher_tail_logprob: torch.Tensor
) -> torch.Tensor:
    """|log(Σ support + tail)| per position: 0 when the sparse teacher scores describe a whole distribution."""
    keep = _first_occurrences(support_ids)
    total = torch.logsumexp(
        torch.cat([teacher_support_logprobs.masked_fill(~keep, -math.inf), teacher_tail_logprob.unsqueeze(-1)], dim=-1),
        dim=-1,
    )
    return total.abs()


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label_t | ·) per position [..., T]; padding labels are clamped into the vocabulary (mask them out)."""
    safe_labels = labels.clamp(min=0, max=logits.size(-1) - 1)
    logprobs = F.log_softmax(at_least_float32(logits), dim=-1)
    return torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)


def at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are reduced in fp32; float64 (the exactness tests) stays float64."""
    return values if values.dtype == torch.float64 else values.float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is true (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def spin_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Original SPIN (= DPO sigmoid, chosen = ground truth y, rejected = y' ~ π_θ), per sequence [B]."""
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def cross_entropy_per_token(token_logps: torch.Tensor, kind: Literal["sft", "dft"]) -> torch.Tensor:
    """SFT: −log π(y_t); DFT: the same weighted by the stop-gradient of π(y_t)."""
    if kind == "sft":
        return -token_logps
    if kind == "dft":
        return -token_logps * token_logps.detach().exp()
    raise ValueError(f"unknown cross-entropy kind {kind!r}; expected sft or dft")


def topk_hits(student_logits: torch.Tensor, teacher_top_ids: torch.Tensor, k: int) -> torch.Tensor:
    """|topk(π_θ) ∩ teacher's top-k| / k per position (paper §7.1), from the teacher's top ids (sorted, best first)
    [..., ≥k]."""
    k = min(k, student_logits.size(-1), teacher_top_ids.size(-1))
    student_top = student_logits.topk(k, dim=-1).indices
    teacher_top = teacher_top_ids[..., :k].to(student_top.device)
    return (student_top.unsqueeze(-1) == teacher_top.unsqueeze(-2)).any(-1).sum(-1).to(torch.float32) / k
