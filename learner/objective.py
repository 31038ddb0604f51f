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
    """Σ_v p (log p − log q), with 0·log 0 = 0 so −inf logits are safe."""
    p = p_logprobs.exp()
    terms = p * (p_logprobs - q_logprobs)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)


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
    if kind == "rkl":
        return _kl_from_logprobs(student_logprobs, teacher_logprobs)
    if kind == "fkl":
        return _kl_from_logprobs(teacher_logprobs, student_logprobs)
    if kind == "jsd":
        if beta == 0.0:
            return _kl_from_logprobs(student_logprobs, student_logprobs)  # M = π_θ: zero, kept differentiable
        if beta == 1.0:
            return _kl_from_logprobs(teacher_logprobs, teacher_logprobs)
        mixture_logprobs = torch.logsumexp(
            torch.stack([teacher_logprobs + math.log(beta), student_logprobs + math.log(1.0 - beta)]), dim=0
        )
        return beta * _kl_from_logprobs(teacher_logprobs, mixture_logprobs) + (1.0 - beta) * _kl_from_logprobs(
            student_logprobs, mixture_logprobs
        )
    raise ValueError(f"unknown divergence kind {kind!r}; expected rkl, fkl or jsd")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label_t | ·) per position [B, T]; labels outside the vocabulary (padding) give 0."""
    safe_labels = labels.clamp(min=0, max=logits.size(-1) - 1)
    picked = torch.gather(F.log_softmax(logits.float(), dim=-1), -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return picked


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is true (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x) summed over response tokens, per sequence [B]."""
    return (token_logprobs(logits, labels) * mask.to(logits.dtype)).sum(-1)


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


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on response tokens, mean over tokens."""
    return masked_mean(-token_logprobs(logits, labels), mask)


def dft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DFT: each token's cross-entropy weighted by the stop-gradient of its own probability."""
    logps = token_logprobs(logits, labels)
    return masked_mean(-logps * logps.detach().exp(), mask)


def topk_overlap(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, k: int
) -> torch.Tensor:
    """|topk(π_T) ∩ topk(π_θ)| / k averaged over masked positions (paper §7.1)."""
    k = min(k, student_logits.size(-1))
    student_top = student_logits.topk(k, dim=-1).indices
    teacher_top = teacher_logits.topk(k, dim=-1).indices
    hits = (student_top.unsqueeze(-1) == teacher_top.unsqueeze(-2)).any(-1).sum(-1).to(torch.float32) / k
    return masked_mean(hits, mask)
