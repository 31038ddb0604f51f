"""The teacher server's request and response schema (version 1).

A response carries, for every response position t, the teacher's log-probabilities over the whole
vocabulary for the token at t (full format). Over HTTP the tensor travels as an Arrow IPC stream, never
as JSON floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ScoreRequest:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass(frozen=True)
class ScoreResponse:
    """`logprobs[t]` is log π_T(· | prompt, response[:t]) over the vocabulary, float32 [len(response), V]."""

    logprobs: np.ndarray
    schema_version: int = SCHEMA_VERSION


class BadScoreRequest(ValueError):
    """A request the server refuses; the message says what is wrong (HTTP 400)."""
