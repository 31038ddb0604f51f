"""Turns unpadded (prompt, response) token lists into padded tensors whose response positions line up.

Prompts are left-padded and responses right-padded, so every response starts at the same column and the
model only has to project the last R hidden states onto the vocabulary (`logits_to_keep=R`): with long
verbalized prompts that skips most of the LM-head work and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.types import TokenSequences


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


def pad_teacher_logprobs(rows: list[np.ndarray], longest_response: int) -> torch.Tensor:
    """Per-sequence [R_i, V] arrays → [B, R, V]; padded rows are zeros and always masked out."""
    vocab = rows[0].shape[-1]
    out = torch.zeros((len(rows), longest_response, vocab), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = torch.from_numpy(np.asarray(row, dtype=np.float32))
    return out


def concat(*parts: TokenSequences) -> TokenSequences:
    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    for part in parts:
        prompts.extend(part.prompt_ids)
        responses.extend(part.response_ids)
    return TokenSequences(prompts, responses)
