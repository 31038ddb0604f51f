"""End to end on the embedded default: real Ray, vLLM (CPU), Ray Serve and DeepSpeed (gloo), tiny models.

One Ray instance and one set of actors serve every test here (engine start-up dominates the cost).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import COLD_START_STEPS, DISTILL_STEPS

from orchestrator.tokens import encode_prompt
from rollout.types import GenerationRequest

pytestmark = pytest.mark.e2e


def test_every_dudi_loss_term_is_present_and_finite(run):
    metrics = run.result.last_metrics["distill"]
    for key in ("loss/spin", "loss/off_kd", "loss/on_kd", "loss/total", "train/grad_norm", "diag/topk_overlap_on"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert run.cfg.scoring.format == "sparse"  # the default the demo runs with
    o = run.cfg.objective
    expected = o.alpha * metrics["loss/spin"] + (1 - o.lam) * metrics["loss/off_kd"] + o.lam * metrics["loss/on_kd"]
    assert metrics["loss/total"] == pytest.approx(expected, rel=1e-5)
    assert run.result.last_metrics["cold_start"]["loss/sft"] > 0


def test_policy_version_advanced_on_every_rollout_worker(run):
    assert run.version == COLD_START_STEPS + DISTILL_STEPS
    assert run.rollout.policy_versions() == [run.version]
    results = run.rollout.generate([GenerationRequest([1, 2, 3])], run.rollout.sampling_spec(max_new_tokens=2))
    assert results[0].policy_version == run.version


def test_worker_greedy_after_sync_equals_transformers_greedy_of_the_learner_weights(run):
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run.result.checkpoints["distill"]).eval()
    initial = AutoModelForCausalLM.from_pretrained(run.cfg.models.student).eval()
    prompts = [encode_prompt(run.tokenizer, row.prompt) for row in run.eval_rows[:6]]
    new_tokens = 12
    worker = run.rollout.generate(
        [GenerationRequest(p) for p in prompts], run.rollout.sampling_spec(greedy=True, max_new_tokens=new_tokens)
    )
    eos = run.tokenizer.eos_token_id
    for prompt, result in zip(prompts, worker, strict=True):
        with torch.no_grad():
            out = final.generate(
                torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos
            )
            reference = out[0, len(prompt) :].tolist()
        assert result.response_ids == reference
    # The comparison can fail: training moved the weights away from the student the workers started with.
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        assert not torch.allclose(final(ids).logits, initial(ids).logits, atol=1e-4)


def test_checkpoints_load_in_hf_format(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("cold_start", "distill"):
        path = run.result.checkpoints[name]
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(path))


def test_eval_reports_every_language(run):
    scores = run._evaluate_rollout()
    assert set(scores) == {r.lang for r in run.eval_rows} | {"avg"}
    assert all(0.0 <= v <= 100.0 for v in scores.values())


def test_eval_curves_are_measured_during_both_stages(run):
    import json

    curves = run.result.curves
    assert [p["step"] for p in curves["cold_start"]] == list(range(1, COLD_START_STEPS))
    assert [p["step"] for p in curves["distill"]] == list(range(1, DISTILL_STEPS))
    assert all(set(p) == {"step", "avg"} | {r.lang for r in run.eval_rows} for c in curves.values() for p in c)
    logged = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    with_eval = [(m["stage"], m["step"]) for m in logged if "eval/avg" in m]
    assert with_eval == [("cold_start", s) for s in range(1, COLD_START_STEPS)] + [
        ("distill", s) for s in range(1, DISTILL_STEPS)
    ]


def test_student_top_ids_and_logprobs_match_a_transformers_forward(run):
    """The ids the teacher is asked about: the policy's top-n at every sampled position (from sampling) and at every
    position of a given response (a prefill), best first, with the sampled token's log-prob."""
    from transformers import AutoModelForCausalLM

    from rollout.types import TopIdsRequest

    model = AutoModelForCausalLM.from_pretrained(run.result.checkpoints["distill"]).eval()
    prompts = [encode_prompt(run.tokenizer, row.prompt) for row in run.eval_rows[:4]]
    n, tie = 8, 1e-3
    spec = run.rollout.sampling_spec(greedy=True, max_new_tokens=6, top_ids=n)
    sampled = run.rollout.generate([GenerationRequest(p) for p in prompts], spec)
    ranked = run.rollout.rank_ids([TopIdsRequest(p, r.response_ids) for p, r in zip(prompts, sampled, strict=True)], n)
    checked = 0
    for prompt, result, ranks in zip(prompts, sampled, ranked, strict=True):
        response = result.response_ids
        assert len(result.top_ids) == len(ranks) == len(result.response_logprobs) == len(response) > 0
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        logprobs = torch.log_softmax(logits, dim=-1)
        for t, row in enumerate(logits):
            assert result.response_logprobs[t] == pytest.approx(logprobs[t, response[t]].item(), abs=1e-4)
            for ids in (result.top_ids[t], ranks[t]):
                # A valid top-n, best first, up to float noise between vLLM's and transformers' kernels: a barely
                # trained student has near-ties, so an exact order would test the kernels, not the ranking.
                chosen = row[torch.tensor(ids)]
                others = row.clone()
                others[torch.tensor(ids)] = -torch.inf
                assert len(set(ids)) == n and (chosen.diff() <= tie).all() and chosen.min() >= others.max() - tie
                checked += 1
    assert checked == 2 * sum(len(r.response_ids) for r in sampled)
