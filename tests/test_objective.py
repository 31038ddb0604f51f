"""The objective's math against independent float64 references written with explicit sums."""

import dataclasses
import math

import pytest
import torch

from learner import objective
from learner.chunked import response_states
from learner.config import ObjectiveConfig
from learner.losses import compute_loss
from learner.packing import pack
from learner.types import TeacherScores, TokenSequences, TrainBatch


def brute_divergence(s_logits, t_logits, kind, beta=0.5, tau=1.0):
    """Explicit loops over positions and vocabulary, float64, softmax shifted by the row max."""
    B, T, V = s_logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)

    def softmax(row):
        row = [x / tau for x in row]
        top = max(row)
        exps = [math.exp(x - top) if x != -math.inf else 0.0 for x in row]
        return [e / sum(exps) for e in exps]

    def kl(p, r):
        return sum(pi * math.log(pi / ri) for pi, ri in zip(p, r, strict=True) if pi > 0)

    for b in range(B):
        for t in range(T):
            ps = softmax(s_logits[b, t].double().tolist())
            pt = softmax(t_logits[b, t].double().tolist())
            if kind == "rkl":
                out[b, t] = kl(ps, pt)
            elif kind == "fkl":
                out[b, t] = kl(pt, ps)
            else:
                m = [beta * a + (1 - beta) * c for a, c in zip(pt, ps, strict=True)]
                out[b, t] = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    return out


def logits_case(case: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64) * 3
    if case == "peaked":
        t[..., 4] += 40.0  # the teacher is nearly one-hot
    elif case == "large":
        s, t = s * 20 + 1e4, t * 20 - 5e3  # exp() would overflow without the max shift
    elif case == "neg_inf":
        s[..., :2] = -math.inf  # banned ids: zero probability under both
        t[..., :2] = -math.inf
    return s, t


CASES = ["random", "peaked", "large", "neg_inf"]


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
@pytest.mark.parametrize("tau", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("case", CASES)
def test_divergences_match_brute_force(kind, tau, case):
    s, t = logits_case(case)
    got = objective.token_divergence(s, t, kind, beta=0.3, temperature=tau)
    torch.testing.assert_close(got, brute_divergence(s, t, kind, beta=0.3, tau=tau), rtol=1e-9, atol=1e-9)


def test_masked_mean_averages_response_tokens_only():
    s, t = logits_case("random")
    mask = torch.tensor([[True, True, False], [True, False, False]])
    per_token = objective.token_divergence(s, t, "rkl")
    brute = brute_divergence(s, t, "rkl")
    expected = (brute[0, 0] + brute[0, 1] + brute[1, 0]) / 3
    torch.testing.assert_close(objective.masked_mean(per_token, mask), expected)
    assert objective.masked_mean(per_token, torch.zeros_like(mask)) == 0


def test_divergences_are_zero_for_equal_inputs_and_handle_minus_inf():
    logits = torch.randn(2, 4, 7, dtype=torch.float64)
    logits[..., 0] = -math.inf
    for kind in ("rkl", "fkl", "jsd"):
        d = objective.token_divergence(logits, logits.clone(), kind)
        assert torch.isfinite(d).all() and d.abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_gradcheck_float64(kind):
    s = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: objective.token_divergence(x, t, kind, temperature=1.3).sum(), (s,))


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_gradients_stay_finite_with_minus_inf_logits(kind):
    s, t = logits_case("neg_inf")
    s.requires_grad_(True)
    objective.token_divergence(s, t, kind).sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[..., :2] == 0).all()


# --- sparse teacher scores ------------------------------------------------------------------------------------


def sparse_from_full(teacher_logprobs: torch.Tensor, support_ids: torch.Tensor):
    """What the teacher server sends for `support_ids`: their log-probs and the log of the rest's mass."""
    picked = torch.gather(teacher_logprobs, -1, support_ids.clamp(min=0))
    inside = torch.zeros_like(teacher_logprobs, dtype=torch.bool).scatter(-1, support_ids.clamp(min=0), True)
    tail = torch.logsumexp(teacher_logprobs.masked_fill(inside, -math.inf), -1)
    return picked, tail


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("case", CASES)
def test_sparse_equals_full_when_the_support_covers_the_vocabulary(kind, tau, case):
    s, t = logits_case(case)
    teacher = torch.log_softmax(t / tau, -1)  # the server applies τ before it picks ids
    gen = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randperm(11, generator=gen) for _ in range(6)]).view(2, 3, 11)
    # Shuffled ids, repeats and padding (−1) must not change anything.
    ids = torch.cat([ids, ids[..., :3], torch.full((2, 3, 2), -1)], -1)
    picked, tail = sparse_from_full(teacher, ids)
    assert torch.isneginf(tail).all()
    got = objective.sparse_token_divergence(s, ids, picked, tail, kind, beta=0.3, temperature=tau)
    torch.testing.assert_close(got, brute_divergence(s, t, kind, beta=0.3, tau=tau), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_sparse_is_a_lower_bound_whose_error_shrinks_with_the_support(kind):
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(4, 5, 200, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(4, 5, 200, generator=gen, dtype=torch.float64) * 2
    teacher = torch.log_softmax(t, -1)
    exact = objective.token_divergence(s, t, kind)
    errors = []
    for k in (4, 16, 64, 199):
        ids = teacher.topk(k, -1).indices
        picked, tail = sparse_from_full(teacher, ids)
        approx = objective.sparse_token_divergence(s, ids, picked, tail, kind)
        assert (approx <= exact + 1e-12).all()  # data processing inequality
        errors.append(float(((exact - approx) / exact).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    # The student's own top ids in the support cut the reverse-KL error (what the rollout sends the teacher).
    top_t = teacher.topk(16, -1).indices
    union = torch.cat([top_t, s.topk(16, -1).indices], -1)
    picked_t, tail_t = sparse_from_full(teacher, top_t)
    picked_u, tail_u = sparse_from_full(teacher, union)
    only_teacher = objective.sparse_token_divergence(s, top_t, picked_t, tail_t, kind)
    with_student = objective.sparse_token_divergence(s, union, picked_u, tail_u, kind)
    assert (with_student >= only_teacher - 1e-12).all()


@pytest.mark.parametrize("kind", ["rkl", "fkl", "jsd"])
def test_sparse_gradcheck_and_finite_gradients_at_full_cover(kind):
    s = torch.randn(1, 2, 9, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(1, 2, 9, dtype=torch.float64), -1)
    ids = teacher.topk(4, -1).indices
    picked, tail = sparse_from_full(teacher, ids)
    assert torch.autograd.gradcheck(
        lambda x: objective.sparse_token_divergence(x, ids, picked, tail, kind, temperature=1.5).sum(), (s,)
    )
    full_ids = torch.arange(9).expand(1, 2, 9)
    picked, tail = sparse_from_full(teacher, full_ids)
    objective.sparse_token_divergence(s, full_ids, picked, tail, kind).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_sparse_rejects_ids_outside_the_vocabulary_and_measures_closure():
    s = torch.randn(1, 1, 5)
    with pytest.raises(ValueError, match="vocabulary"):
        objective.sparse_token_divergence(s, torch.tensor([[[5]]]), torch.zeros(1, 1, 1), torch.zeros(1, 1), "rkl")
    teacher = torch.log_softmax(torch.randn(1, 1, 5, generator=torch.Generator().manual_seed(0)), -1)
    # The teacher's top 2 of 5 ids hold at least 40% of its mass, so shifting their log-probs by 0.1 moves the
    # total by at least log(1 + 0.4·(e^0.1 − 1)) = 0.041, whatever the draw (unseeded, ids 0 and 1 once held 7%).
    ids = teacher.topk(2, dim=-1).indices
    picked, tail = sparse_from_full(teacher, ids)
    assert objective.sparse_closure_error(ids, picked, tail).max() < 1e-6
    assert objective.sparse_closure_error(ids, picked + 0.1, tail).max() > 1e-2


def test_topk_hits_count_shared_ids():
    student = torch.tensor([[[5.0, 4.0, 3.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[5.0, 0.0, 4.0, 3.0, 0.0]]])
    assert objective.topk_hits(student, teacher.topk(2, -1).indices, 2) == pytest.approx(0.5)  # {0,1} vs {0,2}
    assert objective.topk_hits(student, torch.tensor([[[0, 2, 3]]]), 3) == pytest.approx(2 / 3)


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
    dft = objective.cross_entropy_per_token(objective.token_logprobs(logits, labels), "dft")
    torch.testing.assert_close(objective.masked_mean(dft, mask), expected)


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
        # Hidden states come in row-major order over the real response positions; the head gives the logits.
        logits = response_states(model, packed, chunk_size=2).logits().split([len(r) for r in seqs.response_ids])
        for i, (p, r) in enumerate(zip(seqs.prompt_ids, seqs.response_ids, strict=True)):
            alone = model(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :]
            torch.testing.assert_close(logits[i], alone, atol=1e-5, rtol=1e-4)
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
        chosen_teacher=[TeacherScores(full=r) for r in teacher_rows(x, y)],
        on_policy_teacher=[TeacherScores(full=r) for r in teacher_rows(p_z, y_tilde)],
    )
    cfg = ObjectiveConfig(alpha=0.3, lam=0.25)
    forward = lambda packed: response_states(policy, packed, chunk_size=3)  # noqa: E731
    ref_forward = lambda packed: response_states(reference, packed, chunk_size=3)  # noqa: E731
    loss, metrics = compute_loss(cfg, batch, forward, ref_forward, pad_id=0)
    assert loss.requires_grad
    expected = 0.3 * metrics["loss/spin"] + 0.75 * metrics["loss/off_kd"] + 0.25 * metrics["loss/on_kd"]
    assert metrics["loss/total"] == pytest.approx(expected, rel=1e-6)
    # Off-KD by hand: mean over all response tokens of KL(π_θ‖π_T).
    per_token = []
    for p, r, t in zip(x, y, (s.full for s in batch.chosen_teacher), strict=True):
        s = policy(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :]
        per_token += objective.token_divergence(s[None], torch.from_numpy(t)[None], "rkl")[0].tolist()
    assert metrics["loss/off_kd"] == pytest.approx(sum(per_token) / len(per_token), rel=1e-5)
    # With policy == reference the SPIN margin is 0, so the term is log 2.
    _, same = compute_loss(cfg, batch, forward, forward, pad_id=0)
    assert same["loss/spin"] == pytest.approx(math.log(2), rel=1e-6)
    # Per-row KD weights (per-language routing), one list per term: row 1's Off-KD routed off adds nothing to that
    # term, the mean still runs over every response token, and On-KD and SPIN are untouched.
    routed_batch = dataclasses.replace(batch, off_kd_weights=[1.0, 0.0])
    _, routed = compute_loss(cfg, routed_batch, forward, ref_forward, pad_id=0)
    assert routed["loss/off_kd"] == pytest.approx(sum(per_token[: len(y[0])]) / len(per_token), rel=1e-5)
    assert routed["loss/on_kd"] == pytest.approx(metrics["loss/on_kd"], rel=1e-6)
    assert routed["loss/spin"] == pytest.approx(metrics["loss/spin"], rel=1e-6)
    halved = dataclasses.replace(batch, on_kd_weights=[0.5, 0.5])
    _, half = compute_loss(cfg, halved, forward, ref_forward, pad_id=0)
    assert half["loss/on_kd"] == pytest.approx(metrics["loss/on_kd"] / 2, rel=1e-5)
    assert half["loss/off_kd"] == pytest.approx(metrics["loss/off_kd"], rel=1e-6)
    both_off = dataclasses.replace(batch, off_kd_weights=[0.0, 0.0], on_kd_weights=[0.0, 0.0])
    _, neither = compute_loss(cfg, both_off, forward, ref_forward, pad_id=0)
    assert neither["loss/off_kd"] == 0.0 and neither["loss/on_kd"] == 0.0
    # Routed to the ground truth, row 1's Off-KD takes the data as its teacher: cross-entropy on its y, at Off-KD's
    # weight and over the same token count; row 0 keeps the teacher.
    to_data = dataclasses.replace(batch, off_kd_weights=[1.0, 0.0], ground_truth_weights=[0.0, 1.0])
    _, grounded = compute_loss(cfg, to_data, forward, ref_forward, pad_id=0)
    logits = policy(torch.tensor([x[1] + y[1][:-1]])).logits[0, len(x[1]) - 1 :]
    nll = -torch.log_softmax(logits, -1)[torch.arange(len(y[1])), torch.tensor(y[1])]
    assert grounded["loss/ground_truth"] == pytest.approx(nll.sum().item() / len(per_token), rel=1e-5)
    assert grounded["loss/off_kd"] == pytest.approx(routed["loss/off_kd"], rel=1e-6)
    assert grounded["loss/total"] == pytest.approx(
        0.3 * grounded["loss/spin"]
        + 0.75 * (grounded["loss/off_kd"] + grounded["loss/ground_truth"])
        + 0.25 * grounded["loss/on_kd"],
        rel=1e-6,
    )
    assert "loss/ground_truth" not in metrics


def test_missing_inputs_are_reported():
    cfg = ObjectiveConfig()
    batch = TrainBatch(chosen=TokenSequences([[1]], [[2]]))
    with pytest.raises(ValueError, match="alpha > 0"):
        compute_loss(cfg, batch, lambda p: None, None, pad_id=0)


def test_sft_and_dft_losses_match_hand_computation():
    logits = torch.randn(2, 3, 6, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    nll = [-logp[b, t].item() for b in range(2) for t in range(3) if mask[b, t]]
    token_logps = objective.token_logprobs(logits, labels)
    sft = objective.masked_mean(objective.cross_entropy_per_token(token_logps, "sft"), mask)
    assert sft.item() == pytest.approx(sum(nll) / 5)
    weighted = [-logp[b, t].item() * math.exp(logp[b, t].item()) for b in range(2) for t in range(3) if mask[b, t]]
    dft = objective.masked_mean(objective.cross_entropy_per_token(token_logps, "dft"), mask)
    assert dft.item() == pytest.approx(sum(weighted) / 5)


def _scored_batch(teacher, x, y, p_z, y_tilde, sparse_k=None):
    def scores(prompts, responses):
        rows = []
        for p, r in zip(prompts, responses, strict=True):
            logprobs = torch.log_softmax(teacher(torch.tensor([p + r[:-1]])).logits[0, len(p) - 1 :], -1).detach()
            if sparse_k is None:
                rows.append(TeacherScores(full=logprobs.numpy()))
                continue
            top = logprobs.topk(sparse_k, -1)
            extra = torch.tensor([[tok] for tok in r])
            inside = (
                torch.zeros_like(logprobs, dtype=torch.bool).scatter(-1, top.indices, True).scatter(-1, extra, True)
            )
            rows.append(
                TeacherScores(
                    topk_ids=top.indices.numpy(),
                    topk_logprobs=top.values.numpy(),
                    extra_ids=extra.numpy(),
                    extra_logprobs=logprobs.gather(-1, extra).numpy(),
                    tail_logprob=torch.logsumexp(logprobs.masked_fill(inside, -math.inf), -1).numpy(),
                )
            )
        return rows

    return TrainBatch(
        chosen=TokenSequences(x, y),
        rejected=TokenSequences(x, [[11], [12, 13]]),
        on_policy=TokenSequences(p_z, y_tilde),
        chosen_teacher=scores(x, y),
        on_policy_teacher=scores(p_z, y_tilde),
    )


def test_compute_loss_with_sparse_scores_covering_the_vocabulary_equals_full():
    torch.manual_seed(0)
    policy, reference, teacher = (tiny_qwen2(30) for _ in range(3))
    args = ([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]], [[14, 15, 16, 17], [18]], [[19, 20], [21]])
    forward = lambda packed: response_states(policy, packed, chunk_size=3)  # noqa: E731
    ref_forward = lambda packed: response_states(reference, packed, chunk_size=3)  # noqa: E731
    cfg = ObjectiveConfig(alpha=0.3, lam=0.25)
    _, full = compute_loss(cfg, _scored_batch(teacher, *args), forward, ref_forward, pad_id=0)
    _, sparse = compute_loss(cfg, _scored_batch(teacher, *args, sparse_k=30), forward, ref_forward, pad_id=0)
    _, lossy = compute_loss(cfg, _scored_batch(teacher, *args, sparse_k=3), forward, ref_forward, pad_id=0)
    for key in ("loss/off_kd", "loss/on_kd", "loss/total"):
        assert sparse[key] == pytest.approx(full[key], rel=1e-5)
    assert lossy["loss/off_kd"] < full["loss/off_kd"]


@pytest.mark.parametrize(
    "fields, terms",
    [
        ({"cross_entropy": "sft", "alpha": 0, "kd_weight": 0}, {"sft"}),
        ({"cross_entropy": "dft", "alpha": 0, "kd_weight": 0}, {"dft"}),
        ({"alpha": 1.0, "kd_weight": 0}, {"spin"}),
        ({"alpha": 0, "lam": 1.0}, {"on_kd"}),
        ({"alpha": 0, "lam": 0.0}, {"off_kd"}),
        ({"alpha": 0.1, "lam": 0.5}, {"spin", "off_kd", "on_kd"}),
    ],
)
def test_each_objective_logs_exactly_its_terms(fields, terms):
    torch.manual_seed(0)
    policy, reference, teacher = (tiny_qwen2(30) for _ in range(3))
    batch = _scored_batch(teacher, [[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]], [[14, 15], [18]], [[19, 20], [21]])
    cfg = ObjectiveConfig(**fields)
    assert set(cfg.terms) == terms
    forward = lambda packed: response_states(policy, packed, chunk_size=3)  # noqa: E731
    loss, metrics = compute_loss(cfg, batch, forward, lambda p: response_states(reference, p, chunk_size=3), pad_id=0)
    assert {k.removeprefix("loss/") for k in metrics if k.startswith("loss/")} == terms | {"total"}
    loss.backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)


def test_an_objective_without_terms_is_rejected():
    with pytest.raises(ValueError, match="no term"):
        ObjectiveConfig(alpha=0, kd_weight=0)


def test_off_kd_forward_kl_to_a_one_hot_teacher_is_sft():
    """Through packing, chunking and the teacher's padding: FKL to a teacher certain of y on (x, y) has SFT's loss
    and gradient (the method comparison's control rests on it)."""
    torch.manual_seed(0)
    model = tiny_qwen2(40)
    x, y = [[1, 2, 3], [4, 5], [6]], [[7, 8], [9, 10, 11, 12], [13]]
    certain = []
    for r in y:
        logprobs = torch.full((len(r), 40), -60.0)  # e^-60: nothing off y
        logprobs[torch.arange(len(r)), torch.tensor(r)] = 0.0
        certain.append(TeacherScores(full=torch.log_softmax(logprobs, -1).numpy()))
    batch = TrainBatch(chosen=TokenSequences(x, y), chosen_teacher=certain)
    forward = lambda packed: response_states(model, packed, chunk_size=3)  # noqa: E731
    results = {}
    for name, cfg in {
        "sft": ObjectiveConfig(cross_entropy="sft", alpha=0, kd_weight=0),
        "fkl": ObjectiveConfig(alpha=0, lam=0, divergence="fkl"),
    }.items():
        model.zero_grad()
        loss, _ = compute_loss(cfg, batch, forward, None, pad_id=0)
        loss.backward()
        results[name] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    assert results["fkl"][0] == pytest.approx(results["sft"][0], rel=1e-6)
    for fkl_grad, sft_grad in zip(results["fkl"][1], results["sft"][1], strict=True):
        torch.testing.assert_close(fkl_grad, sft_grad, rtol=1e-5, atol=1e-7)
