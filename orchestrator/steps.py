"""The named steps of one distillation step: build prompts → generate → rank → score → assemble the batch.

This is the only place that converts between the components' message types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.config import ObjectiveConfig
from learner.types import TeacherScores, TokenSequences, TrainBatch
from orchestrator.data import Example
from orchestrator.tokens import encode_prompt, encode_response
from orchestrator.verbalizer import Verbalizer
from rollout.types import GenerationRequest, GenerationResult, TopIdsRequest
from teacher_server.types import ScoreRequest, ScoreResponse


@dataclass
class PromptSet:
    """Token ids of one batch: x, y, and the verbalized z (teacher) / p_z (student)."""

    x: list[list[int]]
    y: list[list[int]]
    z: list[list[int]]
    p_z: list[list[int]]


@dataclass
class KdSequences:
    """One KD term's sequences: the student sees (student_prompt, response), the teacher (teacher_prompt, response)."""

    student_prompts: list[list[int]]
    teacher_prompts: list[list[int]]
    responses: list[list[int]]
    student_top_ids: list[list[list[int]]] | None = None  # per response position, the student's best ids
    policy_versions: list[int] | None = None  # who sampled the responses (None: not the student)

    def as_student_sees(self) -> TokenSequences:
        return TokenSequences(self.student_prompts, self.responses)

    def rank_requests(self) -> list[TopIdsRequest]:
        return [TopIdsRequest(p, r) for p, r in zip(self.student_prompts, self.responses, strict=True)]


@dataclass
class KdSets:
    """The sequences of the two KD terms: Off-KD on the ground truth, On-KD on sampled (or teacher-written)
    responses; None where the objective has no such term."""

    off: KdSequences | None = None
    on: KdSequences | None = None

    def items(self) -> list[tuple[str, KdSequences]]:
        return [(name, s) for name, s in (("off", self.off), ("on", self.on)) if s is not None]


def build_prompts(rows: list[Example], tokenizer, verbalizer: Verbalizer | None) -> PromptSet:
    x = [encode_prompt(tokenizer, r.prompt) for r in rows]
    y = [encode_response(tokenizer, r.response) for r in rows]
    if verbalizer is None:
        return PromptSet(x, y, [], [])
    verbalized = [verbalizer(r.prompt, r.response, r.lang, r.prompt_en, r.response_en) for r in rows]
    z = [encode_prompt(tokenizer, v.teacher_prompt) for v in verbalized]
    p_z = [encode_prompt(tokenizer, v.student_prompt) for v in verbalized]
    return PromptSet(x, y, z, p_z)


def generation_requests(prompts: PromptSet, objective: ObjectiveConfig, student_writes_on_kd: bool):
    """y' ~ π_θ(·|x) for SPIN, then ỹ ~ π_θ(·|p_z) for On-KD, in one call so the engine batches both."""
    requests = []
    if objective.alpha > 0:
        requests += [GenerationRequest(x) for x in prompts.x]
    if objective.uses_on_kd and student_writes_on_kd:
        requests += [GenerationRequest(p) for p in prompts.p_z]
    return requests


def split_generations(results: list[GenerationResult], prompts: PromptSet, objective: ObjectiveConfig):
    """(rejected y' for SPIN, on-policy ỹ for On-KD), in the order `generation_requests` asked for them."""
    n = len(prompts.x) if objective.alpha > 0 else 0
    return results[:n], results[n:]


def on_policy_sequences(prompts: PromptSet, generated: list[GenerationResult]) -> KdSequences:
    return KdSequences(
        student_prompts=prompts.p_z,
        teacher_prompts=prompts.z,
        responses=[g.response_ids for g in generated],
        student_top_ids=[g.top_ids for g in generated] if generated and generated[0].top_ids is not None else None,
        policy_versions=[g.policy_version for g in generated],
    )


def ground_truth_sequences(prompts: PromptSet) -> KdSequences:
    """Off-KD: both see (x, y)."""
    return KdSequences(prompts.x, prompts.x, prompts.y)


def teacher_written_sequences(prompts: PromptSet, teacher_responses: list[list[int]]) -> KdSequences:
    """SeqKD: both see (x, ŷ) with ŷ ~ π_T(·|x)."""
    return KdSequences(prompts.x, prompts.x, teacher_responses)


def _extra_ids(response: list[int], top_ids: list[list[int]] | None, width: int) -> list[list[int]]:
    """Per position: the student's top ids, then the realized token; short rows repeat the realized token
    (repeats are ignored by the learner) so every row has `width` ids."""
    rows = []
    for t, token in enumerate(response):
        candidates = (top_ids[t][: width - 1] if top_ids is not None and t < len(top_ids) else []) + [token]
        rows.append(candidates + [token] * (width - len(candidates)))
    return rows


def score_requests(sequences: KdSequences, scoring, temperature: float) -> list[ScoreRequest]:
    """`scoring`: the run's `ScoringConfig` (format, top_k, student_top_k)."""
    if scoring.format == "full":
        return [
            ScoreRequest(p, r, top_k=None, temperature=temperature)
            for p, r in zip(sequences.teacher_prompts, sequences.responses, strict=True)
        ]
    width = scoring.student_top_k + 1
    top_ids = sequences.student_top_ids or [None] * len(sequences.responses)
    return [
        ScoreRequest(p, r, top_k=scoring.top_k, extra_ids=_extra_ids(r, ids, width), temperature=temperature)
        for p, r, ids in zip(sequences.teacher_prompts, sequences.responses, top_ids, strict=True)
    ]


def teacher_scores(requests: list[ScoreRequest], responses: list[ScoreResponse]) -> list[TeacherScores]:
    """Teacher-server responses → the learner's message (the asked-for ids come from the requests)."""
    scores = []
    for request, response in zip(requests, responses, strict=True):
        if response.full_logprobs is not None:
            scores.append(TeacherScores(full=response.full_logprobs, temperature=response.temperature))
            continue
        extra_ids = np.asarray(request.extra_ids or [[] for _ in request.response_ids], dtype=np.int64)
        extra_logprobs = (
            response.extra_logprobs
            if response.extra_logprobs is not None
            else np.zeros(extra_ids.shape, dtype=np.float32)
        )
        scores.append(
            TeacherScores(
                topk_ids=response.topk_ids,
                topk_logprobs=response.topk_logprobs,
                extra_ids=extra_ids,
                extra_logprobs=extra_logprobs,
                tail_logprob=response.tail_logprob,
                temperature=response.temperature,
            )
        )
    return scores


def assemble_batch(
    prompts: PromptSet,
    rejected: list[GenerationResult],
    kd: KdSets,
    scores: dict[str, list[TeacherScores]],
) -> TrainBatch:
    """`scores`: the teacher's scores of each KD set, by its name in `KdSets.items()`."""
    versions = [g.policy_version for g in rejected]
    if kd.on is not None and kd.on.policy_versions:
        versions += kd.on.policy_versions
    return TrainBatch(
        chosen=TokenSequences(prompts.x, prompts.y),
        rejected=TokenSequences(prompts.x, [g.response_ids for g in rejected]) if rejected else None,
        on_policy=kd.on.as_student_sees() if kd.on else None,
        chosen_teacher=scores.get("off"),
        on_policy_teacher=scores.get("on"),
        policy_versions=versions,
    )


def rollout_metrics(rejected: list[GenerationResult], on_policy: list[GenerationResult]) -> dict[str, float]:
    metrics = {}
    for name, group in (("rejected", rejected), ("on_policy", on_policy)):
        if group:
            metrics[f"rollout/{name}_len"] = sum(len(g.response_ids) for g in group) / len(group)
            metrics[f"rollout/{name}_finished"] = sum(g.finished for g in group) / len(group)
    return metrics
