"""Full-vocabulary terms over chunks of response positions, so the loss's memory does not grow with B × R × V.

A forward returns the final hidden states at the real response positions (`ResponseStates`), not logits. Each
term maps a function over chunks of those positions: the LM head is applied to one chunk, the function reduces
the chunk's logits to a few numbers per position, and under autograd the chunk runs inside a non-reentrant
activation checkpoint, so its [n, V] logits are freed at once and recomputed, one chunk at a time, in backward.
Padding positions never reach the head. At V = 151,936 a chunk of 1,024 positions holds 0.6 GB of fp32
logits, against 18.6 GB for a whole 32 × 1,024 batch (and several times that in the softmax's intermediates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from learner.objective import at_least_float32
from learner.packing import PackedSequences

Head = Callable[[torch.Tensor], torch.Tensor]  # hidden states [n, H] → logits [n, V]


@dataclass
class ResponseStates:
    """Final hidden states of the positions where `mask` ([B, R]) is set, in row-major order ([M, H])."""

    hidden: torch.Tensor
    mask: torch.Tensor
    head: Head
    chunk_size: int

    def select(self, per_position: torch.Tensor) -> torch.Tensor:
        """[B, R, ...] → [M, ...], in the order of `hidden`."""
        return per_position.to(self.hidden.device)[self.mask]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """[M] → [B, R], zero at the masked-out positions."""
        out = values.new_zeros(self.mask.shape)
        out[self.mask] = values
        return out

    def logits(self) -> torch.Tensor:
        """All logits at once, [M, V]: for tests and small vocabularies only."""
        return self.head(self.hidden)


def map_chunks(
    states: ResponseStates, fn: Callable[..., tuple[torch.Tensor, ...]], *per_position: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """`fn(logits [n, V], *args [n, ...]) → ([n, ...], ...)` over chunks of positions, results concatenated ([M, ...]).

    The logits reach `fn` in at least float32 (bf16 models are reduced in fp32, float64 stays float64).
    """
    size = max(1, states.chunk_size)
    # One chunk holds no more logits than the chunk size allows, so it keeps them for backward (no recompute).
    recompute = torch.is_grad_enabled() and states.hidden.requires_grad and states.hidden.size(0) > size

    def run(hidden: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return fn(at_least_float32(states.head(hidden)), *args)

    outputs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, states.hidden.size(0), size):
        chunk = [states.hidden[start : start + size]] + [a[start : start + size] for a in per_position]
        # Non-reentrant: recomputation happens inside the one backward, so each parameter's gradient is
        # accumulated once (ZeRO-3's gradient hooks rely on that) and the head's parameters are gathered again.
        outputs.append(checkpoint(run, *chunk, use_reentrant=False) if recompute else run(*chunk))
    if not outputs:  # no real response position: empty results of the right arity
        empty = run(states.hidden[:0], *(a[:0] for a in per_position))
        return tuple(empty)
    return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))


def output_head(model) -> Head:
    """The module that maps final hidden states to logits, with what the model's forward does after it: Cohere's
    `logit_scale`, Granite's `logits_scaling`, Gemma's soft-capping (Qwen and Llama have none of these)."""
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    head = module.get_output_embeddings()
    config = module.config
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    if not (scale or divide or softcap):
        return head

    def scaled(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return scaled


def response_states(model, packed: PackedSequences, chunk_size: int) -> ResponseStates:
    """Runs a causal LM over `packed` and keeps the final hidden states of its real response positions.

    The model's own LM head is asked for no position (`logits_to_keep` = an empty index). The final hidden
    states come back as part of the forward's output (`hidden_states[-1]`, which transformers ties to the
    normed `last_hidden_state`), not through a hook: a DeepSpeed engine starts its backward bookkeeping from
    hooks on its outputs, so the loss's gradient has to flow through one of them.
    """
    module = getattr(model, "module", model)
    device = next(module.parameters()).device
    out = model(
        input_ids=packed.input_ids.to(device),
        attention_mask=packed.attention_mask.to(device),
        position_ids=packed.position_ids.to(device),
        logits_to_keep=torch.empty(0, dtype=torch.long, device=device),
        output_hidden_states=True,
    )
    mask = packed.response_mask.to(device)
    hidden = out.hidden_states[-1][:, -packed.response_width :][mask]
    return ResponseStates(hidden=hidden, mask=mask, head=output_head(model), chunk_size=chunk_size)
