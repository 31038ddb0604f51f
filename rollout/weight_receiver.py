"""Runs inside vLLM's worker process (`worker_extension_cls`): reloads weights in place, keeps tied heads tied.

With tied embeddings (no `lm_head.weight` in the checkpoint, e.g. Qwen2.5-0.5B), vLLM 0.32's layerwise
in-place reload swaps in a new embedding tensor but puts the LM head's old tensor back, and on CPU the
head keeps the GEMM kernel it prepacked at start-up. The head would keep the start-up weights while the
embedding moves on: greedy outputs drift and sampling goes near uniform (seen on the tiny world, caught by
the greedy-equality test). Re-tying and re-running the head's post-load processing restores the model the
checkpoint describes.
"""

from __future__ import annotations


class WeightReceiver:
    def receive_weights(self, weights_path: str) -> None:
        self.model_runner.reload_weights(weights_path=weights_path)
        if getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False):
            self._retie_lm_head()

    def _retie_lm_head(self) -> None:
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embedding = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embedding is None:
            raise RuntimeError(f"cannot re-tie the LM head of {type(model).__name__}: no lm_head / model.embed_tokens")
        head.weight = embedding.weight
        head.quant_method.process_weights_after_loading(head)
