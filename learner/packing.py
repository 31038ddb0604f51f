"""Turns unpadded (prompt, response) token lists into padded tensors aligned on response positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.types import TokenSequences


@dataclass
class PackedSequences:
    """Right-padded model inputs plus, per sequence, where each response token is predicted.

    `response_positions[i, t]` indexes the logit row that predicts `labels[i, t]` (the t-th response token).
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_positions: torch.Tensor  # [B, R]
    labels: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] bool

    def __len__(self) -> int:
        return self.input_ids.size(0)


def pack(sequences: TokenSequences, pad_id: int) -> PackedSequences:
    if any(len(r) == 0 for r in sequences.response_ids):
        raise ValueError("every response needs at least one token")
    # The last response token is only a label, never an input.
    inputs = [p + r[:-1] for p, r in zip(sequences.prompt_ids, sequences.response_ids, strict=True)]
    longest_input = max(len(x) for x in inputs)
    longest_response = max(len(r) for r in sequences.response_ids)
    batch = len(inputs)
    input_ids = torch.full((batch, longest_input), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, longest_input), dtype=torch.long)
    positions = torch.zeros((batch, longest_response), dtype=torch.long)
    labels = torch.zeros((batch, longest_response), dtype=torch.long)
    response_mask = torch.zeros((batch, longest_response), dtype=torch.bool)
    for i, (x, prompt, response) in enumerate(zip(inputs, sequences.prompt_ids, sequences.response_ids, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x)
        attention_mask[i, : len(x)] = 1
        positions[i, : len(response)] = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
        labels[i, : len(response)] = torch.tensor(response)
        response_mask[i, : len(response)] = True
    return PackedSequences(input_ids, attention_mask, positions, labels, response_mask)


def gather_response_logits(logits: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """[B, L, V] → [B, R, V]: the logits that predict each response token."""
    index = packed.response_positions.unsqueeze(-1).expand(-1, -1, logits.size(-1))
    return torch.gather(logits, 1, index)


def pad_teacher_logprobs(rows: list[np.ndarray], longest_response: int) -> torch.Tensor:
    """Per-sequence [R_i, V] arrays → [B, R, V]; padded rows are uniform and always masked out."""
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
