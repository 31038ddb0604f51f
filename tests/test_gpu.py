"""CUDA paths that run without vLLM, Ray or DeepSpeed: the objective and the teacher scorer on a GPU.

Skipped on machines without CUDA (CI has none); run on a GPU box with `pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner import objective

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_full_and_sparse_divergences_on_cuda_match_float64_on_cpu(kind):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 8, 4096, generator=gen, dtype=torch.float64) * 3
    teacher = torch.log_softmax(torch.randn(2, 8, 4096, generator=gen, dtype=torch.float64) * 3, -1)
    ids = torch.cat([teacher.topk(64, -1).indices, student.topk(65, -1).indices], -1)
    picked = teacher.gather(-1, ids)
    inside = torch.zeros_like(teacher, dtype=torch.bool).scatter(-1, ids, True)
    tail = torch.logsumexp(teacher.masked_fill(inside, -math.inf), -1)
    cpu_full = objective.token_divergence(student, teacher, kind, temperature=1.5)
    cpu_sparse = objective.sparse_token_divergence(student, ids, picked, tail, kind)
    on_gpu = student.float().cuda().requires_grad_(True)
    gpu_full = objective.token_divergence(on_gpu, teacher.float().cuda(), kind, temperature=1.5)
    gpu_sparse = objective.sparse_token_divergence(on_gpu, ids.cuda(), picked.float().cuda(), tail.float().cuda(), kind)
    torch.testing.assert_close(gpu_full.double().cpu(), cpu_full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_sparse.double().cpu(), cpu_sparse, rtol=1e-4, atol=1e-5)
    gpu_sparse.sum().backward()
    assert torch.isfinite(on_gpu.grad).all()


def test_teacher_scorer_on_cuda_matches_a_cpu_forward(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from teacher_server.scorer import TeacherScorer
    from teacher_server.types import ScoreRequest

    config = Qwen2Config(
        vocab_size=5000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    scorer = TeacherScorer(str(tmp_path))
    assert scorer.device == "cuda"
    prompt, response = [1, 2, 3, 4], [5, 6, 7]
    full, sparse = scorer.score(
        [ScoreRequest(prompt, response, top_k=None), ScoreRequest(prompt, response, top_k=16, extra_ids=[[9]] * 3)]
    )
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([prompt + response[:-1]])).logits[0, len(prompt) - 1 :], -1)
    np.testing.assert_allclose(full.full_logprobs, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(sparse.topk_logprobs, expected.topk(16, -1).values.numpy(), atol=1e-4)
    closure = torch.logsumexp(
        torch.cat(
            [
                torch.from_numpy(sparse.topk_logprobs),
                torch.from_numpy(sparse.extra_logprobs),
                torch.from_numpy(sparse.tail_logprob)[:, None],
            ],
            -1,
        ),
        -1,
    )
    assert closure.abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_kd_on_cuda_matches_whole_logits(dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from learner.chunked import response_states
    from learner.config import ObjectiveConfig
    from learner.losses import kd_divergence, kd_per_token
    from learner.packing import PackedSequences, PaddedTeacherScores

    config = Qwen2Config(
        vocab_size=32_000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.gradient_checkpointing_enable()
    model.train()
    batch, prompt, response = 3, 5, 40
    ids = torch.randint(0, config.vocab_size, (batch, prompt + response - 1), device="cuda")
    mask = torch.ones(batch, response, dtype=torch.bool, device="cuda")
    mask[1, 30:] = False
    packed = PackedSequences(
        ids, torch.ones_like(ids), torch.arange(ids.size(1), device="cuda").expand(batch, -1), ids[:, -response:], mask
    )
    logprobs = torch.log_softmax(torch.randn(batch, response, 65, device="cuda"), -1)
    teacher = PaddedTeacherScores(
        support_ids=torch.randint(0, config.vocab_size, (batch, response, 64), device="cuda"),
        support_logprobs=logprobs[..., :64],
        tail_logprob=logprobs[..., 64],
        topk_ids=torch.randint(0, config.vocab_size, (batch, response, 64), device="cuda"),
    )
    cfg = ObjectiveConfig(alpha=0.0, lam=1.0, divergence="jsd")

    logits = model(input_ids=ids, logits_to_keep=response).logits
    whole = kd_divergence(cfg, logits, teacher)[mask].mean()
    (whole_grad,) = torch.autograd.grad(whole, [model.model.embed_tokens.weight])
    divergence, _ = kd_per_token(cfg, response_states(model, packed, chunk_size=16), teacher)
    (chunked_grad,) = torch.autograd.grad(divergence.mean(), [model.model.embed_tokens.weight])
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(divergence.mean(), whole, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(chunked_grad.float(), whole_grad.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("scores", ["full", "sparse"])
def test_the_whole_dudi_loss_with_routing_on_cuda_matches_float64_on_cpu(scores):
    """compute_loss end to end on CUDA: every term (SPIN, Off-KD, On-KD, the ground-truth routing term), each row's
    routing weight, and the gradients, against the same batch in float64 on the CPU."""
    import copy
    import dataclasses
    from functools import partial

    from test_chunked import make_batch, tiny_model

    from learner.chunked import response_states
    from learner.config import ObjectiveConfig
    from learner.losses import compute_loss

    policy, reference, teacher = tiny_model(0), tiny_model(1), tiny_model(2)
    cfg = ObjectiveConfig(alpha=0.3, lam=0.4, divergence="rkl", kd_temperature=1.3)
    # Row 1's language is routed off for On-KD and to the ground truth for Off-KD; row 2's Off-KD is halved.
    batch = dataclasses.replace(
        make_batch(teacher, 1.3, sparse_k=None if scores == "full" else 6),
        off_kd_weights=[1.0, 0.0, 0.5],
        on_kd_weights=[1.0, 0.0, 1.0],
        ground_truth_weights=[0.0, 1.0, 0.0],
    )

    def loss_and_grads(policy_model, reference_model):
        total, metrics = compute_loss(
            cfg,
            batch,
            partial(response_states, policy_model, chunk_size=2),
            partial(response_states, reference_model, chunk_size=2),
            pad_id=0,
        )
        return total, metrics, torch.autograd.grad(total, list(policy_model.parameters()))

    cpu_total, cpu_metrics, cpu_grads = loss_and_grads(policy, reference)
    gpu_policy, gpu_reference = (copy.deepcopy(m).float().cuda() for m in (policy, reference))
    gpu_total, gpu_metrics, gpu_grads = loss_and_grads(gpu_policy, gpu_reference)
    assert gpu_total.is_cuda
    for name in ("spin", "off_kd", "ground_truth", "on_kd", "total"):
        assert gpu_metrics[f"loss/{name}"] == pytest.approx(cpu_metrics[f"loss/{name}"], rel=1e-4, abs=1e-5), name
    for (name, _), got, want in zip(policy.named_parameters(), gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-3, atol=1e-5, msg=name)
