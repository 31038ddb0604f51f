"""Messages into and out of the learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dudi_common.shared_tensors import SharedTensor


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
class TeacherScores:
    """The teacher's log-probs for one response, per response position t (predicting token t).

    Full: `full` float32 [R, V]. Sparse: the teacher's top-k (`topk_ids` int [R, k], `topk_logprobs`), its
    log-probs at ids the caller chose (`extra_ids` int [R, e], `extra_logprobs`), and `tail_logprob` [R],
    the log of its mass on every id in neither. `temperature` is the τ the teacher applied.
    """

    full: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    extra_ids: np.ndarray | None = None
    extra_logprobs: np.ndarray | None = None
    tail_logprob: np.ndarray | None = None
    temperature: float = 1.0

    @property
    def is_sparse(self) -> bool:
        return self.full is None


@dataclass
class TrainBatch:
    """One optimizer step's worth of data for the configured objective.

    - `chosen`: (x, y), ground truth. SFT target, Off-KD sequence, SPIN's chosen.
    - `rejected`: (x, y'), y' ~ π_θ(·|x). SPIN's rejected.
    - `on_policy`: (p_z, ỹ), ỹ ~ π_θ(·|p_z) (or ŷ ~ π_T(·|x) for SeqKD). On-KD sequence as the student sees it.
    - `*_teacher[i]`: the teacher's scores of response i (for On-KD the teacher saw z instead of p_z, so
      only the responses line up).
    """

    chosen: TokenSequences
    rejected: TokenSequences | None = None
    on_policy: TokenSequences | None = None
    chosen_teacher: list[TeacherScores] | None = None
    on_policy_teacher: list[TeacherScores] | None = None
    policy_versions: list[int] = field(default_factory=list)
    # Per row (prompt), a factor on each KD term (per-language teacher routing); None: 1 everywhere.
    off_kd_weights: list[float] | None = None
    on_kd_weights: list[float] | None = None
    # Per row, a factor on cross-entropy to its y in Off-KD's place (routing to the ground truth); None: no such term.
    ground_truth_weights: list[float] | None = None

    def shard(self, rank: int, world: int) -> TrainBatch:
        def pick(items):
            return None if items is None else items[rank::world]

        return TrainBatch(
            chosen=self.chosen.shard(rank, world),
            rejected=None if self.rejected is None else self.rejected.shard(rank, world),
            on_policy=None if self.on_policy is None else self.on_policy.shard(rank, world),
            chosen_teacher=pick(self.chosen_teacher),
            on_policy_teacher=pick(self.on_policy_teacher),
            policy_versions=self.policy_versions,
            off_kd_weights=pick(self.off_kd_weights),
            on_kd_weights=pick(self.on_kd_weights),
            ground_truth_weights=pick(self.ground_truth_weights),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One parameter as it travels: HF name, dtype name (`float32`, `bfloat16`, ...) and full shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        size = 2 if self.dtype in ("bfloat16", "float16") else 4
        for dim in self.shape:
            size *= dim
        return size


@dataclass(frozen=True)
class PublishedWeights:
    """A version of the full weights published by rank 0 for other components, in one of three forms:
    `path`: a directory of safetensors files (HF names) on rank 0's node; `buckets`: the tensors of each bucket
    in the order they were broadcast over the weight group (`LearnerGroup.open_weight_group`); `buckets` with
    `shared`: per consumer, per bucket, a handle on a buffer holding that bucket's tensors back to back, which
    processes on rank 0's node map without a copy (held by rank 0 until `release_shared_weights`)."""

    version: int
    path: str | None = None
    buckets: list[list[TensorSpec]] | None = None
    shared: list[list[SharedTensor]] | None = None
