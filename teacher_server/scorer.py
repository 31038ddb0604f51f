"""Scores (prompt, response) token sequences with a causal LM: full-vocabulary log-probs per response position.

Pure torch + transformers, so the Serve deployment is a thin shell around it and tests can call it directly.
"""

from __future__ import annotations

import numpy as np

from teacher_server.types import BadScoreRequest, ScoreRequest, ScoreResponse


class TeacherScorer:
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

    def validate(self, request: ScoreRequest) -> None:
        for field in ("prompt_ids", "response_ids"):
            ids = getattr(request, field)
            if not isinstance(ids, list) or not ids:
                raise BadScoreRequest(f"{field} must be a non-empty list of token ids")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise BadScoreRequest(f"{field} must hold integers only")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise BadScoreRequest(f"{field} has ids outside [0, {self.vocab_size}): {bad[:5]}")
        total = len(request.prompt_ids) + len(request.response_ids)
        if total > self.max_seq_len:
            raise BadScoreRequest(f"prompt + response is {total} tokens; the limit is {self.max_seq_len}")

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        """One padded forward over all requests; row t of each result predicts response token t.

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
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device),
                logits_to_keep=longest_response,
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return [
            ScoreResponse(logprobs=logprobs[i, : len(r.response_ids)].astype(np.float32, copy=True))
            for i, r in enumerate(requests)
        ]
