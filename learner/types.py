"""Messages into and out of the learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TokenSequences:
    """Prompt/response pairs, unpadded."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def shard(self, rank: int, world: int) -> TokenSequences:
        return TokenSequences(self.prompt_ids[rank::world], self.response_ids[rank::world])


@dataclass
class TrainBatch:
    """One optimizer step's worth of data for the configured objective.

    - `chosen`: (x, y), ground truth. SFT target, Off-KD sequence, SPIN's chosen.
    - `rejected`: (x, y'), y' ~ π_θ(·|x). SPIN's rejected.
    - `on_policy`: (p_z, ỹ), ỹ ~ π_θ(·|p_z). On-KD sequence as the student sees it.
    - `*_teacher_logprobs[i]`: float32 [len(response_i), V], the teacher's log-probs per response position
      (for On-KD the teacher saw z instead of p_z, so only the responses line up).
    """

    chosen: TokenSequences
    rejected: TokenSequences | None = None
    on_policy: TokenSequences | None = None
    chosen_teacher_logprobs: list[np.ndarray] | None = None
    on_policy_teacher_logprobs: list[np.ndarray] | None = None
    policy_versions: list[int] = field(default_factory=list)

    def shard(self, rank: int, world: int) -> TrainBatch:
        def pick(items):
            return None if items is None else items[rank::world]

        return TrainBatch(
            chosen=self.chosen.shard(rank, world),
            rejected=None if self.rejected is None else self.rejected.shard(rank, world),
            on_policy=None if self.on_policy is None else self.on_policy.shard(rank, world),
            chosen_teacher_logprobs=pick(self.chosen_teacher_logprobs),
            on_policy_teacher_logprobs=pick(self.on_policy_teacher_logprobs),
            policy_versions=self.policy_versions,
        )


@dataclass(frozen=True)
class PublishedWeights:
    """Full weights written once by rank 0 (safetensors, HF names), for whoever consumes them."""

    version: int
    path: str
