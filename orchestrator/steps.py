"""The named steps of one distillation step: build prompts → generate → score → assemble the train batch.

This is the only place that converts between the components' message types.
"""

from __future__ import annotations

from dataclasses import dataclass

from learner.config import ObjectiveConfig
from learner.types import TokenSequences, TrainBatch
from orchestrator.data import Example
from orchestrator.tokens import encode_prompt, encode_response
from orchestrator.verbalizer import Verbalizer
from rollout.types import GenerationRequest, GenerationResult
from teacher_server.types import ScoreRequest


@dataclass
class PromptSet:
    """Token ids of one batch: x, y, and the verbalized z (teacher) / p_z (student)."""

    x: list[list[int]]
    y: list[list[int]]
    z: list[list[int]]
    p_z: list[list[int]]


def build_prompts(rows: list[Example], tokenizer, verbalizer: Verbalizer | None) -> PromptSet:
    x = [encode_prompt(tokenizer, r.prompt) for r in rows]
    y = [encode_response(tokenizer, r.response) for r in rows]
    if verbalizer is None:
        return PromptSet(x, y, [], [])
    verbalized = [verbalizer(r.prompt, r.response, r.lang) for r in rows]
    z = [encode_prompt(tokenizer, v.teacher_prompt) for v in verbalized]
    p_z = [encode_prompt(tokenizer, v.student_prompt) for v in verbalized]
    return PromptSet(x, y, z, p_z)


def generation_requests(prompts: PromptSet, objective: ObjectiveConfig) -> list[GenerationRequest]:
    """y' ~ π_θ(·|x) for SPIN, then ỹ ~ π_θ(·|p_z) for On-KD, in one call so the engine batches both."""
    requests = []
    if objective.alpha > 0:
        requests += [GenerationRequest(x) for x in prompts.x]
    if objective.lam > 0:
        requests += [GenerationRequest(p) for p in prompts.p_z]
    return requests


def split_generations(results: list[GenerationResult], prompts: PromptSet, objective: ObjectiveConfig):
    n = len(prompts.x)
    rejected = results[:n] if objective.alpha > 0 else []
    on_policy = results[n:] if objective.alpha > 0 else results
    return rejected, on_policy


def score_requests(
    prompts: PromptSet, on_policy: list[GenerationResult], objective: ObjectiveConfig
) -> list[ScoreRequest]:
    """Teacher sees (x, y) for Off-KD and (z, ỹ) for On-KD: ỹ was sampled under p_z, scored under z."""
    requests = []
    if objective.lam < 1:
        requests += [ScoreRequest(x, y) for x, y in zip(prompts.x, prompts.y, strict=True)]
    if objective.lam > 0:
        requests += [ScoreRequest(z, g.response_ids) for z, g in zip(prompts.z, on_policy, strict=True)]
    return requests


def assemble_batch(
    prompts: PromptSet, rejected, on_policy, teacher_logprobs: list, objective: ObjectiveConfig
) -> TrainBatch:
    n = len(prompts.x)
    off_scores = teacher_logprobs[:n] if objective.lam < 1 else None
    on_scores = teacher_logprobs[n:] if objective.lam < 1 else teacher_logprobs
    return TrainBatch(
        chosen=TokenSequences(prompts.x, prompts.y),
        rejected=TokenSequences(prompts.x, [g.response_ids for g in rejected]) if rejected else None,
        on_policy=TokenSequences(prompts.p_z, [g.response_ids for g in on_policy]) if on_policy else None,
        chosen_teacher_logprobs=off_scores,
        on_policy_teacher_logprobs=on_scores if objective.lam > 0 else None,
        policy_versions=[g.policy_version for g in list(rejected) + list(on_policy)],
    )


def rollout_metrics(rejected: list[GenerationResult], on_policy: list[GenerationResult]) -> dict[str, float]:
    metrics = {}
    for name, group in (("rejected", rejected), ("on_policy", on_policy)):
        if group:
            metrics[f"rollout/{name}_len"] = sum(len(g.response_ids) for g in group) / len(group)
            metrics[f"rollout/{name}_finished"] = sum(g.finished for g in group) / len(group)
    return metrics
