"""Scores (prompt, response) token sequences with a causal LM, in the full or the sparse format.

Pure torch + transformers, so the Serve deployment is a thin shell around it and tests can call it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from teacher_server.types import BadScoreRequest, ScoreRequest, ScoreResponse


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class TeacherScorer:
    """State: the model on its device, the vocabulary size, the length limit and the weights version."""

    def __init__(
        self, model_path: str, dtype: str = "float32", num_threads: int | None = None, max_seq_len: int = 1024
    ):
        import torch
        from transformers import AutoModelForCausalLM

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.max_seq_len = min(max_seq_len, getattr(self.model.config, "max_position_embeddings", max_seq_len))
        self.model_path = model_path
        self.weights_version = 0

    # --- requests --------------------------------------------------------------------------------------------
    def _check_ids(self, name: str, ids) -> None:
        if not all(_is_int(t) for t in ids):
            raise BadScoreRequest(f"{name} must hold integers only")
        bad = [int(t) for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise BadScoreRequest(f"{name} has ids outside [0, {self.vocab_size}): {bad[:5]}")

    def validate(self, request: ScoreRequest) -> None:
        for name in ("prompt_ids", "response_ids"):
            ids = getattr(request, name)
            if not isinstance(ids, list) or not ids:
                raise BadScoreRequest(f"{name} must be a non-empty list of token ids")
            self._check_ids(name, ids)
        total = len(request.prompt_ids) + len(request.response_ids)
        if total > self.max_seq_len:
            raise BadScoreRequest(f"prompt + response is {total} tokens; the limit is {self.max_seq_len}")
        temperature = request.temperature
        if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 < temperature < math.inf:
            raise BadScoreRequest(f"temperature must be a positive number, got {temperature!r}")
        if request.top_k is not None and (not _is_int(request.top_k) or not 1 <= request.top_k <= self.vocab_size):
            raise BadScoreRequest(f"top_k must be an integer in [1, {self.vocab_size}] or null, got {request.top_k!r}")
        if request.extra_ids is not None:
            if request.top_k is None:
                raise BadScoreRequest("extra_ids only apply to the sparse format (set top_k)")
            rows = request.extra_ids
            if not isinstance(rows, list) or len(rows) != len(request.response_ids):
                raise BadScoreRequest(
                    f"extra_ids must hold one list per response position ({len(request.response_ids)})"
                )
            widths = {len(row) if isinstance(row, list) else -1 for row in rows}
            if len(widths) != 1 or -1 in widths:
                raise BadScoreRequest("extra_ids rows must be lists of the same length")
            for row in rows:
                self._check_ids("extra_ids", row)

    # --- scoring ---------------------------------------------------------------------------------------------
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        """One padded forward over all requests; row t of each result scores response token t.

        Prompts are left-padded so all responses start at the same column and only the response positions
        go through the LM head (`logits_to_keep`).
        """
        import torch

        longest_prompt = max(len(r.prompt_ids) for r in requests)
        longest_response = max(len(r.response_ids) for r in requests)
        input_ids = torch.zeros((len(requests), longest_prompt + longest_response - 1), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, r in enumerate(requests):
            start = longest_prompt - len(r.prompt_ids)
            tokens = r.prompt_ids + r.response_ids[:-1]
            input_ids[i, start : start + len(tokens)] = torch.tensor(tokens)
            attention_mask[i, start : start + len(tokens)] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            inputs = {
                "input_ids": input_ids.to(self.device),
                "attention_mask": attention_mask.to(self.device),
                "position_ids": position_ids.to(self.device),
            }
            if not self._plain_head:
                logits = self.model(**inputs, logits_to_keep=longest_response).logits
                return [self._format(logits[i, : len(r.response_ids)], r) for i, r in enumerate(requests)]
            # The LM head per request, on its response positions only: [R, V] logits at a time instead of
            # [B, R, V] (at V = 151,936 a batch of 32 × 1,000 tokens would be 9.7 GB in bf16), at no cost in speed
            # (H200, Qwen2.5-0.5B shape, 16 × 256 tokens, k = 64: 84 ms against 82 ms for the whole forward, peak
            # 0.5 GiB against 1.6). Per request also lets one batch mix formats, k and temperatures.
            hidden = self.model.get_decoder()(**inputs).last_hidden_state[:, -longest_response:]
            return [self._format(self._head(hidden[i, : len(r.response_ids)]), r) for i, r in enumerate(requests)]

    @property
    def _plain_head(self) -> bool:
        """Logits = LM head (then optional soft-capping), as for Qwen, Llama, Gemma; models that rescale logits in
        their forward (Cohere's logit_scale, Granite's logits_scaling) take the whole-forward path instead."""
        config = self.model.config
        return getattr(config, "logit_scale", None) is None and getattr(config, "logits_scaling", None) is None

    def _head(self, hidden):
        import torch

        logits = self.model.get_output_embeddings()(hidden)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / softcap) * softcap if softcap else logits

    def _format(self, logits, request: ScoreRequest) -> ScoreResponse:
        import torch

        logprobs = torch.log_softmax(logits.float() / request.temperature, dim=-1)
        common = {"temperature": float(request.temperature), "weights_version": self.weights_version}
        if request.top_k is None:
            return ScoreResponse(full_logprobs=logprobs.cpu().numpy(), **common)
        top = logprobs.topk(request.top_k, dim=-1)
        rest = logprobs.scatter(-1, top.indices, -math.inf)  # one [R, V] copy with the scored ids knocked out
        extra_logprobs = None
        if request.extra_ids is not None and len(request.extra_ids[0]):
            extra_ids = torch.tensor(request.extra_ids, dtype=torch.long, device=logprobs.device)
            extra_logprobs = torch.gather(logprobs, -1, extra_ids).cpu().numpy()
            rest.scatter_(-1, extra_ids, -math.inf)
        # Summing what is left (not 1 − Σ scored) keeps a tiny tail exact instead of a rounding residue, and
        # gives exactly −inf when the scored ids cover the vocabulary.
        tail = torch.logsumexp(rest, dim=-1)
        return ScoreResponse(
            topk_ids=top.indices.to(torch.int32).cpu().numpy(),
            topk_logprobs=top.values.cpu().numpy(),
            extra_logprobs=extra_logprobs,
            tail_logprob=tail.cpu().numpy(),
            **common,
        )

    # --- weights ---------------------------------------------------------------------------------------------
    def load_weights(self, version: int, buckets: Iterable[dict]) -> None:
        """Replaces the weights in place with {HF name: tensor} buckets, one at a time (an EMA teacher's update);
        a tied LM head follows its embedding. Names the model lacks, or a tensor of the model no bucket gave, are
        an error (the weights are then partly loaded: the run stops)."""
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        loaded, unexpected = set(), []
        for bucket in buckets:
            unexpected += self.model.load_state_dict(bucket, strict=False).unexpected_keys
            loaded.update(bucket)
        missing = sorted(set(self.model.state_dict()) - loaded - tied)
        if unexpected or missing:
            raise ValueError(
                f"teacher weights v{version} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if tied:
            self.model.tie_weights()
        self.weights_version = version
