"""The objective's math against independent float64 references written with explicit sums."""

import math

import pytest
import torch

from learner import objective
from learner.config import ObjectiveConfig
from learner.losses import compute_loss, response_logits
from learner.packing import pack
from learner.types import TokenSequences, TrainBatch


def brute_divergence(s_logits, t_logits, kind, beta=0.5, tau=1.0):
    """Explicit loops over positions and vocabulary, float64."""
    B, T, V = s_logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            s = [math.exp(x) for x in (s_logits[b, t].double() / tau).tolist()]
            q = [math.exp(x) for x in (t_logits[b, t].double() / tau).tolist()]
            ps = [x / sum(s) for x in s]
            pt = [x / sum(q) for x in q]

            def kl(p, r):
                return sum(pi * math.log(pi / ri) for pi, ri in zip(p, r, strict=True) if pi > 0)

            if kind == "rkl":
                out[b, t] = kl(ps, pt)
            elif kind == "fkl":
                out[b, t] = kl(pt, ps)
            else:
                m = [beta * a + (1 - beta) * c for a, c in zip(pt, ps, strict=True)]
                out[b, t] = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    return out


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_divergences_match_brute_force(kind, tau):
    gen = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(2, 3, 11, generator=gen, dtype=torch.float64),
        torch.randn(2, 3, 11, generator=gen, dtype=torch.float64) * 3,
    )
    got = objective.token_divergence(s, t, kind, beta=0.3, temperature=tau)
    torch.testing.assert_close(got, brute_divergence(s, t, kind, beta=0.3, tau=tau))


def test_divergences_are_zero_for_equal_inputs_and_handle_minus_inf():
    logits = torch.randn(2, 4, 7, dtype=torch.float64)
    logits[..., 0] = -math.inf
    for kind in ("rkl", "fkl", "jsd"):
        d = objective.token_divergence(logits, logits.clone(), kind)
        assert torch.isfinite(d).all() and d.abs().max() < 1e-12


def test_gradcheck_float64():
    s = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 5, dtype=torch.float64)
    for kind in ("rkl", "fkl", "jsd"):
        assert torch.autograd.gradcheck(lambda x, kind=kind: objective.token_divergence(x, t, kind).sum(), (s,))


def test_spin_limits_and_hand_value():
    zeros = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(
        objective.spin_loss(zeros, zeros, zeros, zeros, 0.1), torch.full((3,), math.log(2), dtype=torch.float64)
    )
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-5.0, -9.0, -6.0, -7.0))
    margin = (-5 + 6) - (-9 + 7)  # 3
    torch.testing.assert_close(
        objective.spin_loss(pc, pr, rc, rr, 0.5),
        torch.tensor([math.log1p(math.exp(-0.5 * margin))], dtype=torch.float64),
    )


def test_dft_weights_by_detached_probability():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    labels = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[True, True, False]])
    logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    expected = (-(logp * logp.detach().exp()) * mask).sum() / 2
    torch.testing.assert_close(objective.dft_loss(logits, labels, mask), expected)


def tiny_qwen2(vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    return Qwen2ForCausalLM(config).eval()


def test_packing_aligns_responses_and_matches_unpadded_forward():
    torch.manual_seed(0)
    model = tiny_qwen2(50)
    seqs = TokenSequences([[3, 4, 5, 6], [7, 8]], [[9, 10], [11, 12, 13]])
    packed = pack(seqs, pad_id=0)
    with torch.no_grad():
        logits = response_logits(model, packed)
        for i, (p, r) in enumerate(zip(seqs.prompt_ids, seqs.response_ids, strict=True)):
            alone = model(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :]
            torch.testing.assert_close(logits[i, : len(r)], alone, atol=1e-5, rtol=1e-4)
            assert packed.labels[i, : len(r)].tolist() == r


def test_dudi_total_combines_the_three_terms():
    torch.manual_seed(0)
    policy, reference, teacher = (tiny_qwen2(30) for _ in range(3))
    x, y = [[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]]
    y_prime, p_z, y_tilde = [[11], [12, 13]], [[14, 15, 16, 17], [18]], [[19, 20], [21]]

    def teacher_rows(prompts, responses):
        return [
            torch.log_softmax(teacher(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :], -1).detach().numpy()
            for p, r in zip(prompts, responses, strict=True)
        ]

    batch = TrainBatch(
        chosen=TokenSequences(x, y),
        rejected=TokenSequences(x, y_prime),
        on_policy=TokenSequences(p_z, y_tilde),
        chosen_teacher_logprobs=teacher_rows(x, y),
        on_policy_teacher_logprobs=teacher_rows(p_z, y_tilde),
    )
    cfg = ObjectiveConfig(alpha=0.3, lam=0.25)
    forward = lambda packed: response_logits(policy, packed)  # noqa: E731
    ref_forward = lambda packed: response_logits(reference, packed)  # noqa: E731
    loss, metrics = compute_loss(cfg, batch, forward, ref_forward, pad_id=0)
    assert loss.requires_grad
    expected = 0.3 * metrics["loss/spin"] + 0.75 * metrics["loss/off_kd"] + 0.25 * metrics["loss/on_kd"]
    assert metrics["loss/total"] == pytest.approx(expected, rel=1e-6)
    # Off-KD by hand: mean over all response tokens of KL(π_θ‖π_T).
    per_token = []
    for p, r, t in zip(x, y, batch.chosen_teacher_logprobs, strict=True):
        s = policy(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :]
        per_token += objective.token_divergence(s[None], torch.from_numpy(t)[None], "rkl")[0].tolist()
    assert metrics["loss/off_kd"] == pytest.approx(sum(per_token) / len(per_token), rel=1e-5)
    # With policy == reference the SPIN margin is 0, so the term is log 2.
    _, same = compute_loss(cfg, batch, forward, forward, pad_id=0)
    assert same["loss/spin"] == pytest.approx(math.log(2), rel=1e-6)


def test_missing_inputs_are_reported():
    cfg = ObjectiveConfig()
    batch = TrainBatch(chosen=TokenSequences([[1]], [[2]]))
    with pytest.raises(ValueError, match="alpha > 0"):
        compute_loss(cfg, batch, lambda p: None, None, pad_id=0)
