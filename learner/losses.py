"""Assembles the configured objective for one batch from model forwards (pure torch, testable without DeepSpeed).

L = CE(x, y) [sft | dft] + α·SPIN(x, y, y') + kd_weight·[(1−λ)·D(x, y) + λ·D(p_z, ỹ | teacher saw z)]

Per-language routing weights each KD term per row; rows routed to the ground truth get, in Off-KD's place,
kd_weight·(1−λ)·CE(x, y) (forward KL to the data's one-hot y), logged as `loss/ground_truth`.

Each term is computed only when its weight is non-zero, and logged as `loss/<term>`. Forwards return the final
hidden states of the response positions (`chunked.ResponseStates`); every term that needs the vocabulary maps
over chunks of positions (`chunked.map_chunks`), so no [B, R, V] logits tensor ever exists.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from learner import objective
from learner.chunked import ResponseStates, map_chunks
from learner.config import ObjectiveConfig
from learner.packing import PackedSequences, PaddedTeacherScores, concat, pack, pad_teacher_scores
from learner.types import TrainBatch

# packed sequences → the final hidden states of their response positions (see chunked.response_states)
ForwardFn = Callable[[PackedSequences], ResponseStates]

TOPK_OVERLAP_K = 8


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
    chosen_states = policy_forward(chosen) if _needs_chosen_forward(cfg) else None
    # log π_θ(y_t) serves both the cross-entropy and SPIN's chosen sequence log-prob: one pass over the chunks.
    needs_logps = cfg.cross_entropy != "none" or cfg.alpha > 0 or _routes_to_ground_truth(cfg, batch)
    chosen_logps = label_logprobs(chosen_states, chosen) if needs_logps else None
    total = torch.zeros(())
    metrics: dict[str, float] = {}

    def add(name: str, weight: float, value: torch.Tensor) -> None:
        nonlocal total
        total = total.to(value.device) + weight * value
        metrics[f"loss/{name}"] = value.item()

    if cfg.cross_entropy != "none":
        add(cfg.cross_entropy, 1.0, _mean(objective.cross_entropy_per_token(chosen_logps, cfg.cross_entropy)))
    if cfg.alpha > 0:
        spin, spin_metrics = _spin_term(
            cfg, batch, chosen_states, chosen_logps, policy_forward, reference_forward, pad_id
        )
        add("spin", cfg.alpha, spin)
        metrics.update(spin_metrics)
    if cfg.uses_off_kd:
        off_kd, overlap = _kd_term(cfg, chosen_states, batch.chosen_teacher, chosen, batch.off_kd_weights)
        add("off_kd", cfg.kd_weight * (1 - cfg.lam), off_kd)
        metrics["diag/topk_overlap_off"] = overlap
    if _routes_to_ground_truth(cfg, batch):
        per_token = objective.cross_entropy_per_token(chosen_logps, "sft")
        add(
            "ground_truth",
            cfg.kd_weight * (1 - cfg.lam),
            _mean(_by_row(per_token, chosen_states, batch.ground_truth_weights)),
        )
    if cfg.uses_on_kd:
        on_policy = pack(batch.on_policy, pad_id)
        on_kd, overlap = _kd_term(
            cfg, policy_forward(on_policy), batch.on_policy_teacher, on_policy, batch.on_kd_weights
        )
        add("on_kd", cfg.kd_weight * cfg.lam, on_kd)
        metrics["diag/topk_overlap_on"] = overlap
    metrics["loss/total"] = total.item()
    return total, metrics


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the real response positions of a batch (0 when there are none)."""
    return values.sum() / max(values.numel(), 1)


def label_logprobs(states: ResponseStates, packed: PackedSequences) -> torch.Tensor:
    """log π(y_t | ·) at every real response position [M]."""
    (logps,) = map_chunks(
        states, lambda logits, labels: (objective.token_logprobs(logits, labels),), states.select(packed.labels)
    )
    return logps


def _needs_chosen_forward(cfg: ObjectiveConfig) -> bool:
    return cfg.cross_entropy != "none" or cfg.alpha > 0 or cfg.uses_off_kd


def _routes_to_ground_truth(cfg: ObjectiveConfig, batch: TrainBatch) -> bool:
    return cfg.uses_off_kd and batch.ground_truth_weights is not None


def _by_row(per_token: torch.Tensor, states: ResponseStates, row_weights: list[float]) -> torch.Tensor:
    """Each response position's value [M] times its row's factor."""
    weights = torch.tensor(row_weights, dtype=per_token.dtype, device=per_token.device)
    return per_token * states.select(weights[:, None].expand(states.mask.shape))


def _check_inputs(cfg: ObjectiveConfig, batch: TrainBatch, has_reference: bool) -> None:
    if cfg.alpha > 0 and (batch.rejected is None or not has_reference):
        raise ValueError("alpha > 0 needs rejected rollouts and a reference model")
    if cfg.uses_off_kd and batch.chosen_teacher is None:
        raise ValueError("kd_weight > 0 with lam < 1 needs teacher scores of the ground-truth responses")
    if cfg.uses_on_kd and (batch.on_policy is None or batch.on_policy_teacher is None):
        raise ValueError("kd_weight > 0 with lam > 0 needs on-policy sequences and their teacher scores")


CLOSURE_TOLERANCE = 1e-3


def kd_divergence(cfg: ObjectiveConfig, student_logits: torch.Tensor, teacher: PaddedTeacherScores) -> torch.Tensor:
    """Per-position D(π_T, π_θ) [...] from full or sparse teacher scores (the teacher already applied τ);
    the teacher's tensors share the logits' leading shape."""
    if abs(teacher.temperature - cfg.kd_temperature) > 1e-6:
        raise ValueError(
            f"teacher scores were computed at temperature {teacher.temperature}; the objective uses {cfg.kd_temperature}"
        )
    student_logits = objective.at_least_float32(student_logits)
    tau = cfg.kd_temperature
    if teacher.full is not None:
        student_logprobs = F.log_softmax(student_logits / tau, dim=-1)
        teacher_logprobs = teacher.full.to(student_logprobs.dtype)
        return objective.divergence_from_logprobs(student_logprobs, teacher_logprobs, cfg.divergence, cfg.jsd_beta)
    return objective.sparse_token_divergence(
        student_logits,
        teacher.support_ids,
        teacher.support_logprobs,
        teacher.tail_logprob,
        cfg.divergence,
        beta=cfg.jsd_beta,
        temperature=tau,
    )


_TEACHER_FIELDS = ("full", "support_ids", "support_logprobs", "tail_logprob", "topk_ids")


def kd_per_token(
    cfg: ObjectiveConfig, states: ResponseStates, teacher: PaddedTeacherScores
) -> tuple[torch.Tensor, torch.Tensor]:
    """D(π_T, π_θ) and the top-k overlap at every real response position ([M] each), chunk by chunk."""
    present = [name for name in _TEACHER_FIELDS if getattr(teacher, name) is not None]

    def per_chunk(logits: torch.Tensor, *fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = PaddedTeacherScores(**dict(zip(present, fields, strict=True)), temperature=teacher.temperature)
        divergence = kd_divergence(cfg, logits, chunk)
        with torch.no_grad():
            top_ids = chunk.topk_ids if chunk.full is None else chunk.full.topk(TOPK_OVERLAP_K, dim=-1).indices
            hits = objective.topk_hits(logits, top_ids, TOPK_OVERLAP_K)
        return divergence, hits

    return map_chunks(states, per_chunk, *(states.select(getattr(teacher, name)) for name in present))


def _kd_term(
    cfg: ObjectiveConfig,
    states: ResponseStates,
    teacher_rows,
    packed: PackedSequences,
    row_weights: list[float] | None = None,
) -> tuple[torch.Tensor, float]:
    """The KD term: the mean over response tokens of D(π_T, π_θ), each token weighted by its row's factor (the
    mean keeps counting down-weighted tokens, so a language routed off lowers the term instead of renormalizing
    the others)."""
    teacher = pad_teacher_scores(teacher_rows, packed.response_width).to(states.hidden.device)
    if teacher.full is None:
        mask = states.mask
        closure = objective.sparse_closure_error(teacher.support_ids, teacher.support_logprobs, teacher.tail_logprob)
        worst = float((closure * mask).max()) if mask.any() else 0.0
        if worst > CLOSURE_TOLERANCE:
            raise ValueError(f"sparse teacher scores do not sum to 1 (|log mass| up to {worst:.2e})")
    divergence, hits = kd_per_token(cfg, states, teacher)
    if row_weights is not None:
        divergence = _by_row(divergence, states, row_weights)
    return _mean(divergence), _mean(hits).item()


def _sequence_logps(states: ResponseStates, token_logps: torch.Tensor) -> torch.Tensor:
    """log π(y|x) per sequence [B] from the per-position log-probs [M]."""
    return states.scatter(token_logps).sum(-1)


def _spin_term(
    cfg, batch: TrainBatch, chosen_states: ResponseStates, chosen_logps, policy_forward, reference_forward, pad_id
):
    rejected = pack(batch.rejected, pad_id)
    rejected_states = policy_forward(rejected)
    policy_chosen = _sequence_logps(chosen_states, chosen_logps)
    policy_rejected = _sequence_logps(rejected_states, label_logprobs(rejected_states, rejected))
    with torch.no_grad():
        # chosen and rejected share the prompt x, so one padded reference forward serves both.
        both = pack(concat(batch.chosen, batch.rejected), pad_id)
        reference_states = reference_forward(both)
        ref_logps = _sequence_logps(reference_states, label_logprobs(reference_states, both))
    n = len(batch.chosen)
    ref_chosen, ref_rejected = ref_logps[:n], ref_logps[n:]
    losses = objective.spin_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.spin_beta)
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return losses.mean(), {
        "diag/spin_margin": margin.mean().item(),
        "diag/spin_accuracy": (margin > 0).float().mean().item(),
    }
