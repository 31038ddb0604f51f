"""Turns unpadded (prompt, response) token lists into padded tensors whose response positions line up.

Prompts are left-padded and responses right-padded, so every response starts at the same column and the
model only has to project the last R hidden states onto the vocabulary (`logits_to_keep=R`): with long
verbalized prompts that skips most of the LM-head work and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.types import TeacherScores, TokenSequences


@dataclass
class PackedSequences:
    """`logits[:, -R:]` of a forward over these inputs predict `labels` ([B, R]) where `response_mask` is set."""

    input_ids: torch.Tensor  # [B, P + R - 1]
    attention_mask: torch.Tensor  # [B, P + R - 1]
    position_ids: torch.Tensor  # [B, P + R - 1], counted from each row's first real token
    labels: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] bool

    @property
    def response_width(self) -> int:
        return self.labels.size(1)

    def __len__(self) -> int:
        return self.input_ids.size(0)


def pack(sequences: TokenSequences, pad_id: int) -> PackedSequences:
    if any(len(r) == 0 for r in sequences.response_ids):
        raise ValueError("every response needs at least one token")
    longest_prompt = max(len(p) for p in sequences.prompt_ids)
    longest_response = max(len(r) for r in sequences.response_ids)
    batch, width = len(sequences), longest_prompt + longest_response - 1
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.zeros((batch, longest_response), dtype=torch.long)
    response_mask = torch.zeros((batch, longest_response), dtype=torch.bool)
    for i, (prompt, response) in enumerate(zip(sequences.prompt_ids, sequences.response_ids, strict=True)):
        start = longest_prompt - len(prompt)
        # The last response token is only a label, never an input.
        tokens = prompt + response[:-1]
        input_ids[i, start : start + len(tokens)] = torch.tensor(tokens)
        attention_mask[i, start : start + len(tokens)] = 1
        labels[i, : len(response)] = torch.tensor(response)
        response_mask[i, : len(response)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PackedSequences(input_ids, attention_mask, position_ids, labels, response_mask)


@dataclass
class PaddedTeacherScores:
    """A batch of `TeacherScores` padded to [B, R, ...]; padded positions are masked out by the caller."""

    full: torch.Tensor | None = None  # [B, R, V]
    support_ids: torch.Tensor | None = None  # [B, R, k + e], −1 = none
    support_logprobs: torch.Tensor | None = None  # [B, R, k + e]
    tail_logprob: torch.Tensor | None = None  # [B, R]
    topk_ids: torch.Tensor | None = None  # [B, R, k], best first
    temperature: float = 1.0

    def to(self, device) -> PaddedTeacherScores:
        moved = {
            name: getattr(self, name).to(device) if getattr(self, name) is not None else None
            for name in ("full", "support_ids", "support_logprobs", "tail_logprob", "topk_ids")
        }
        return PaddedTeacherScores(**moved, temperature=self.temperature)


def _stack(arrays: list[np.ndarray], length: int, fill, dtype) -> torch.Tensor:
    trailing = arrays[0].shape[1:]
    out = torch.full((len(arrays), length, *trailing), fill, dtype=dtype)
    for i, array in enumerate(arrays):
        out[i, : array.shape[0]] = torch.from_numpy(np.array(array)).to(dtype)  # a copy: Ray hands out read-only arrays
    return out


def pad_teacher_scores(rows: list[TeacherScores], longest_response: int) -> PaddedTeacherScores:
    """Per-sequence scores → padded tensors (all rows must share one format and shape)."""
    if len({r.is_sparse for r in rows}) != 1:
        raise ValueError("teacher scores in one batch mix the full and the sparse format")
    temperatures = {r.temperature for r in rows}
    if len(temperatures) != 1:
        raise ValueError(f"teacher scores in one batch were computed at different temperatures {temperatures}")
    for row, name in ((r, n) for r in rows for n in ("full", "topk_ids", "tail_logprob")):
        values = getattr(row, name)
        if values is not None and len(values) > longest_response:
            raise ValueError(f"teacher {name} has {len(values)} positions; the response has {longest_response}")
    temperature = temperatures.pop()
    if not rows[0].is_sparse:
        return PaddedTeacherScores(
            full=_stack([r.full for r in rows], longest_response, 0.0, torch.float32), temperature=temperature
        )
    support_ids = [np.concatenate([r.topk_ids, r.extra_ids], axis=-1) for r in rows]
    support_logprobs = [np.concatenate([r.topk_logprobs, r.extra_logprobs], axis=-1) for r in rows]
    return PaddedTeacherScores(
        support_ids=_stack(support_ids, longest_response, -1, torch.long),
        support_logprobs=_stack(support_logprobs, longest_response, 0.0, torch.float32),
        tail_logprob=_stack([r.tail_logprob for r in rows], longest_response, 0.0, torch.float32),
        topk_ids=_stack([r.topk_ids for r in rows], longest_response, -1, torch.long),
        temperature=temperature,
    )


def concat(*parts: TokenSequences) -> TokenSequences:
    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    for part in parts:
        prompts.extend(part.prompt_ids)
        responses.extend(part.response_ids)
    return TokenSequences(prompts, responses)
