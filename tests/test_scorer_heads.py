"""The teacher scorer applies the LM head per request; its scores equal a whole forward's for plain heads
(Qwen2), soft-capped heads (Gemma2) and, through the whole-forward path, heads rescaled in the forward (Cohere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teacher_server.scorer import TeacherScorer
from teacher_server.types import ScoreRequest


def tiny(kind: str):
    import transformers

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, num_key_value_heads=2))
    if kind == "gemma2":
        config = transformers.Gemma2Config(**common, num_key_value_heads=2, head_dim=16, final_logit_softcapping=5.0)
        return transformers.Gemma2ForCausalLM(config)
    config = transformers.CohereConfig(**common, num_key_value_heads=2, logit_scale=0.25)
    return transformers.CohereForCausalLM(config)


@pytest.mark.parametrize("kind, plain", [("qwen2", True), ("gemma2", True), ("cohere", False)])
def test_per_request_heads_equal_a_whole_forward(kind, plain, tmp_path):
    torch.manual_seed(0)
    model = tiny(kind).eval()
    model.save_pretrained(tmp_path)
    scorer = TeacherScorer(str(tmp_path))
    assert scorer._plain_head is plain
    requests = [ScoreRequest([5, 6, 7, 8], [9, 10, 11], top_k=None), ScoreRequest([12], [13, 14, 15, 16], top_k=None)]
    for request, response in zip(requests, scorer.score(requests), strict=True):
        with torch.no_grad():
            ids = torch.tensor([request.prompt_ids + request.response_ids[:-1]])
            logits = model(ids).logits[0, len(request.prompt_ids) - 1 :]
        np.testing.assert_allclose(response.full_logprobs, torch.log_softmax(logits, -1).numpy(), atol=1e-5)


def test_weights_loaded_bucket_by_bucket_must_cover_the_model_and_nothing_else(tmp_path):
    """An EMA teacher's update arrives in buckets (`TeacherScorer.load_weights`): together they replace every
    tensor; a tensor no bucket gave, or a name the model lacks, is an error that names it."""
    torch.manual_seed(0)
    tiny("qwen2").save_pretrained(tmp_path)
    scorer = TeacherScorer(str(tmp_path))
    state = {name: torch.full_like(t, 0.01) for name, t in scorer.model.state_dict().items()}
    names = sorted(state)
    scorer.load_weights(3, [{n: state[n] for n in names[:5]}, {n: state[n] for n in names[5:]}])
    assert scorer.weights_version == 3
    assert all(torch.equal(t, state[n]) for n, t in scorer.model.state_dict().items())
    with pytest.raises(ValueError, match=rf"v4 do not fit the model: missing \['{names[0]}'\]"):
        scorer.load_weights(4, [{n: state[n] for n in names[1:]}])
    with pytest.raises(ValueError, match=r"unexpected \['model.extra.weight'\]"):
        scorer.load_weights(5, [state, {"model.extra.weight": torch.zeros(1)}])
    assert scorer.weights_version == 3
