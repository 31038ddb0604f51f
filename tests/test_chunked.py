"""Chunked loss terms equal the unchunked ones, in value and gradient, in float64.

The oracle is the objective written the direct way: one forward returning whole [B, R, V] logits, then the
`learner.objective` functions on them (what the learner did before chunking).
"""

from __future__ import annotations

import math

import pytest
import torch

from learner import objective
from learner.chunked import ResponseStates, map_chunks, response_states
from learner.config import ObjectiveConfig
from learner.losses import compute_loss
from learner.packing import pack, pad_teacher_scores
from learner.types import TeacherScores, TokenSequences, TrainBatch

VOCAB = 40


def tiny_model(seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=seed % 2 == 0,
    )
    return Qwen2ForCausalLM(config).double().eval()


def whole_logits(model, packed):
    return model(
        input_ids=packed.input_ids,
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids,
        logits_to_keep=packed.response_width,
    ).logits


def unchunked_loss(cfg: ObjectiveConfig, batch: TrainBatch, policy, reference) -> dict[str, torch.Tensor]:
    """The oracle: every term from whole logits."""
    terms: dict[str, torch.Tensor] = {}
    chosen = pack(batch.chosen, 0)
    logits = whole_logits(policy, chosen)
    if cfg.cross_entropy != "none":
        logp = torch.log_softmax(logits, -1).gather(-1, chosen.labels.unsqueeze(-1)).squeeze(-1)
        per_token = -logp if cfg.cross_entropy == "sft" else -logp * logp.detach().exp()
        terms[cfg.cross_entropy] = objective.masked_mean(per_token, chosen.response_mask)
    if cfg.alpha > 0:
        rejected = pack(batch.rejected, 0)
        both = pack(
            TokenSequences(batch.chosen.prompt_ids * 2, batch.chosen.response_ids + batch.rejected.response_ids), 0
        )

        def seq(model_logits, packed):
            logp = torch.log_softmax(model_logits, -1).gather(-1, packed.labels.unsqueeze(-1)).squeeze(-1)
            return (logp * packed.response_mask).sum(-1)

        with torch.no_grad():
            ref = seq(whole_logits(reference, both), both)
        n = len(batch.chosen)
        losses = objective.spin_loss(
            seq(logits, chosen), seq(whole_logits(policy, rejected), rejected), ref[:n], ref[n:], cfg.spin_beta
        )
        terms["spin"] = losses.mean()
    for name, sequences, rows, uses in (
        ("off_kd", batch.chosen, batch.chosen_teacher, cfg.uses_off_kd),
        ("on_kd", batch.on_policy, batch.on_policy_teacher, cfg.uses_on_kd),
    ):
        if not uses:
            continue
        packed = pack(sequences, 0)
        student = logits if name == "off_kd" else whole_logits(policy, packed)
        teacher = pad_teacher_scores(rows, packed.response_width)
        tau = cfg.kd_temperature
        if teacher.full is not None:
            per_token = objective.divergence_from_logprobs(
                torch.log_softmax(student / tau, -1), teacher.full.double(), cfg.divergence, cfg.jsd_beta
            )
        else:
            per_token = objective.sparse_token_divergence(
                student,
                teacher.support_ids,
                teacher.support_logprobs.double(),
                teacher.tail_logprob.double(),
                cfg.divergence,
                cfg.jsd_beta,
                tau,
            )
        terms[name] = objective.masked_mean(per_token, packed.response_mask)
    return terms


def teacher_rows(teacher, sequences: TokenSequences, tau: float, sparse_k: int | None) -> list[TeacherScores]:
    rows = []
    for prompt, response in zip(sequences.prompt_ids, sequences.response_ids, strict=True):
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt + response[:-1]])).logits[0, len(prompt) - 1 :]
        logprobs = torch.log_softmax(logits / tau, -1)
        if sparse_k is None:
            rows.append(TeacherScores(full=logprobs.float().numpy(), temperature=tau))
            continue
        top = logprobs.topk(sparse_k, -1)
        # The realized token, and one repeat of the best id, to exercise the repeated-id path.
        extra = torch.stack([torch.tensor(response), top.indices[:, 0]], -1)
        inside = torch.zeros_like(logprobs, dtype=torch.bool).scatter(-1, top.indices, True).scatter(-1, extra, True)
        rows.append(
            TeacherScores(
                topk_ids=top.indices.numpy(),
                topk_logprobs=top.values.numpy(),
                extra_ids=extra.numpy(),
                extra_logprobs=logprobs.gather(-1, extra).numpy(),
                tail_logprob=torch.logsumexp(logprobs.masked_fill(inside, -math.inf), -1).numpy(),
                temperature=tau,
            )
        )
    return rows


def make_batch(teacher, tau: float, sparse_k: int | None) -> TrainBatch:
    chosen = TokenSequences([[1, 2, 3], [4, 5], [6]], [[7, 8], [9, 10, 11, 12], [13]])
    rejected = TokenSequences(chosen.prompt_ids, [[14], [15, 16], [17, 18, 19]])
    on_policy = TokenSequences([[20, 21, 22, 23], [24], [25, 26]], [[27, 28, 29], [30], [31, 32]])
    return TrainBatch(
        chosen=chosen,
        rejected=rejected,
        on_policy=on_policy,
        chosen_teacher=teacher_rows(teacher, chosen, tau, sparse_k),
        on_policy_teacher=teacher_rows(teacher, on_policy, tau, sparse_k),
    )


OBJECTIVES = {
    "dudi": {"alpha": 0.3, "lam": 0.4},
    "sft": {"cross_entropy": "sft", "alpha": 0, "kd_weight": 0},
    "dft+spin": {"cross_entropy": "dft", "alpha": 0.5, "kd_weight": 0},
}


CASES = [("dudi", divergence, scores) for divergence in ("rkl", "fkl", "jsd") for scores in ("full", "sparse")]
CASES += [("sft", "rkl", "full"), ("dft+spin", "rkl", "full")]  # no KD term: divergence and scores play no part


@pytest.mark.parametrize("objective_name, divergence, scores", CASES)
def test_chunked_terms_and_gradients_equal_the_unchunked_ones(objective_name, divergence, scores):
    policy, reference, teacher = tiny_model(0), tiny_model(1), tiny_model(2)
    tau = 1.3
    cfg = ObjectiveConfig(divergence=divergence, kd_temperature=tau, **OBJECTIVES[objective_name])
    batch = make_batch(teacher, tau, sparse_k=None if scores == "full" else 6)

    expected_terms = unchunked_loss(cfg, batch, policy, reference)
    weights = {"sft": 1.0, "dft": 1.0, "spin": cfg.alpha, "off_kd": cfg.kd_weight * (1 - cfg.lam)}
    weights["on_kd"] = cfg.kd_weight * cfg.lam
    expected_total = sum(weights[name] * value for name, value in expected_terms.items())
    expected_grads = torch.autograd.grad(expected_total, list(policy.parameters()))

    for chunk_size in (1, 4, 1000):
        total, metrics = compute_loss(
            cfg,
            batch,
            lambda packed, size=chunk_size: response_states(policy, packed, size),
            lambda packed, size=chunk_size: response_states(reference, packed, size),
            pad_id=0,
        )
        assert total.dtype == torch.float64
        for name, value in expected_terms.items():
            assert metrics[f"loss/{name}"] == pytest.approx(value.item(), rel=1e-12, abs=1e-14), (name, chunk_size)
        grads = torch.autograd.grad(total, list(policy.parameters()))
        for (param_name, _), got, want in zip(policy.named_parameters(), grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13, msg=f"{param_name}, chunk {chunk_size}")


def test_map_chunks_never_holds_more_than_one_chunk_of_logits():
    hidden = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    widths: list[int] = []

    def head(h):
        widths.append(h.size(0))
        return h @ weight.T

    states = ResponseStates(hidden=hidden, mask=torch.ones(2, 5, dtype=torch.bool), head=head, chunk_size=4)
    (values,) = map_chunks(states, lambda logits: (torch.logsumexp(logits, -1),))
    values.sum().backward()
    assert widths == [4, 4, 2] + [4, 4, 2][::-1]  # forward, then recomputed one chunk at a time in backward
    expected = torch.logsumexp(hidden.detach() @ weight.detach().T, -1)
    torch.testing.assert_close(values.detach(), expected)
    assert states.scatter(values.detach()).shape == (2, 5)


def test_map_chunks_with_no_real_position_gives_empty_results():
    hidden = torch.zeros(0, 4, requires_grad=True)
    states = ResponseStates(hidden, torch.zeros(1, 3, dtype=torch.bool), torch.nn.Linear(4, 6), chunk_size=2)
    (values,) = map_chunks(states, lambda logits: (logits.sum(-1),))
    assert values.shape == (0,)


def square_first_occurrences(support_ids: torch.Tensor) -> torch.Tensor:
    """The former [..., S, S] comparison, kept as the oracle of the sort-based check."""
    valid = support_ids >= 0
    size = support_ids.size(-1)
    same = support_ids.unsqueeze(-1) == support_ids.unsqueeze(-2)
    earlier = torch.ones(size, size, dtype=torch.bool).tril(-1)
    return valid & ~(same & earlier & valid.unsqueeze(-2)).any(-1)


@pytest.mark.parametrize("seed", range(5))
def test_sort_based_repeat_check_equals_the_square_one(seed):
    gen = torch.Generator().manual_seed(seed)
    # Few distinct ids, so rows hold many repeats; −1 marks padding, as pad_teacher_scores writes it.
    ids = torch.randint(-1, 12, (3, 7, 25), generator=gen)
    ids[0, 0] = -1
    ids[1, 2] = 5
    got = objective._first_occurrences(ids)
    torch.testing.assert_close(got, square_first_occurrences(ids))
    kept = ids[got.nonzero(as_tuple=True)]
    assert kept.ge(0).all()
    for b in range(3):
        for t in range(7):
            row = ids[b, t]
            assert sorted(row[got[b, t]].tolist()) == sorted(set(row[row >= 0].tolist()))


def test_a_single_chunk_keeps_its_logits_instead_of_recomputing():
    hidden = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    widths: list[int] = []

    def head(h):
        widths.append(h.size(0))
        return h * 2

    states = ResponseStates(hidden=hidden, mask=torch.ones(1, 3, dtype=torch.bool), head=head, chunk_size=3)
    (values,) = map_chunks(states, lambda logits: (torch.logsumexp(logits, -1),))
    values.sum().backward()
    assert widths == [3]


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite"])
def test_response_states_follow_heads_that_rescale_logits(kind):
    """Soft-capping (Gemma2), a logit scale (Cohere), a logit divisor (Granite): applied after the head."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    if kind == "gemma2":
        config = transformers.Gemma2Config(**common, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0)
        model = transformers.Gemma2ForCausalLM(config)
    elif kind == "cohere":
        model = transformers.CohereForCausalLM(
            transformers.CohereConfig(**common, num_key_value_heads=1, logit_scale=0.25)
        )
    else:
        model = transformers.GraniteForCausalLM(
            transformers.GraniteConfig(**common, num_key_value_heads=1, logits_scaling=4.0)
        )
    model = model.double().eval()
    packed = pack(TokenSequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]), 0)
    with torch.no_grad():
        expected = whole_logits(model, packed)[packed.response_mask]
        got = response_states(model, packed, chunk_size=2).logits()
    torch.testing.assert_close(got, expected)
