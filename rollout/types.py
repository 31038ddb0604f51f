"""Messages into and out of the rollout workers."""

from __future__ import annotations

from dataclasses import dataclass

from dudi_common.shared_tensors import SharedTensor


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized by the orchestrator (chat template applied)."""

    prompt_ids: list[int]


@dataclass(frozen=True)
class SamplingSpec:
    """Per-call sampling; `temperature == 0` is greedy."""

    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int | None = None  # per-request seed; GPU only (vLLM 0.32's CPU sampler kills the engine on one)
    top_ids: int = 0  # also return the policy's n most likely ids at every sampled position (0 = none)
    stop_token_ids: tuple[int, ...] = ()  # besides the model's own EOS (a chat template's end of turn)


@dataclass(frozen=True)
class GenerationResult:
    """A sampled response with the log-prob of each sampled token and the policy that produced it."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    finished: bool
    policy_version: int
    top_ids: list[list[int]] | None = None  # per response token: the policy's most likely ids, best first


@dataclass(frozen=True)
class TopIdsRequest:
    """A given (prompt, response) whose response positions should be ranked by the policy (no sampling)."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass(frozen=True)
class SharedBucket:
    """One bucket of a version, in a buffer on the worker's node that it maps without a copy: the tensors
    (HF name, dtype name, shape) back to back, in this order."""

    handle: SharedTensor
    tensors: list[tuple[str, str, tuple[int, ...]]]


@dataclass(frozen=True)
class WeightSnapshot:
    """A published version of the full weights: safetensors files (HF names) in `path`, a directory on the
    worker's node; buckets in `shared` buffers on the worker's node (this worker's own handles); or, with
    neither, the next broadcast over the weight group the workers joined. `record_digest`: the worker keeps a
    sha256 of every tensor of the files or shared buffers it takes (for a check against the learner's; a
    broadcast's are kept when joining the group asks for them)."""

    version: int
    path: str | None = None
    shared: list[SharedBucket] | None = None
    record_digest: bool = False


class WeightsLost(RuntimeError):
    """A restarted worker (Ray actor restart) holds its start-up weights until it is given the current ones: it
    refuses to generate or take part in a broadcast before that."""


@dataclass(frozen=True)
class WeightGroupSpec:
    """The learner's weight group: its rank 0 listens at (host, port); workers take ranks 1..world_size-1.
    `buckets`: per broadcast bucket, (HF name, dtype name, shape) of each tensor in send order. `backend`: "gloo"
    (buffers in host memory) or "nccl" (on the workers' GPUs)."""

    host: str
    port: int
    world_size: int
    buckets: list[list[tuple[str, str, tuple[int, ...]]]]
    backend: str = "gloo"
