"""The teacher server's request and response schema (version 2).

A request names a (prompt, response) token sequence and the format it wants back:

- sparse (`top_k` set, the default): per response position t, the teacher's top-k ids and log-probs, its
  log-probs at the caller's `extra_ids[t]` (the student's top-k and the realized token, say), and the log of
  the mass on every id in neither (−inf when nothing is left);
- full (`top_k=None`): log-probs over the whole vocabulary, float32 [len(response), V], for a caller on the
  teacher's node (by handle they travel through Ray's object store, never through JSON).

All log-probs are of softmax(logits / temperature). Over HTTP a response is an Arrow IPC stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ScoreRequest:
    prompt_ids: list[int]
    response_ids: list[int]
    top_k: int | None = 64
    extra_ids: list[list[int]] | None = None  # [len(response_ids)][e], same e on every row
    temperature: float = 1.0

    @property
    def is_sparse(self) -> bool:
        return self.top_k is not None


@dataclass(frozen=True)
class ScoreResponse:
    """Row t scores the token at response position t. Sparse fields are None in the full format and back."""

    full_logprobs: np.ndarray | None = None  # float32 [R, V]
    topk_ids: np.ndarray | None = None  # int32 [R, k], best first
    topk_logprobs: np.ndarray | None = None  # float32 [R, k]
    extra_logprobs: np.ndarray | None = None  # float32 [R, e], at the request's extra_ids
    tail_logprob: np.ndarray | None = None  # float32 [R]
    temperature: float = 1.0
    weights_version: int = 0  # which teacher weights scored it (0 = the weights it started with)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_positions(self) -> int:
        return len(self.full_logprobs) if self.full_logprobs is not None else len(self.tail_logprob)


@dataclass(frozen=True)
class TeacherWeights:
    """New teacher weights with HF names, e.g. the EMA of the student, in buckets a replica loads one at a time:
    `buckets`, a Ray object ref to a list of object refs, one `dudi_common.flat_bucket.FlatBucket` per bucket
    (readable on any node; the outer ref lets the sender pass it on before the buckets are put), or safetensors
    files in the directory `path` (on the replica's node), one bucket per file."""

    version: int
    path: str | None = None
    buckets: Any = None  # ray.ObjectRef of list[ray.ObjectRef]


class BadScoreRequest(ValueError):
    """A request the server refuses; the message says what is wrong (HTTP 400)."""
