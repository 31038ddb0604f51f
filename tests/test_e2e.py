"""End to end on the embedded default: real Ray, vLLM (CPU), Ray Serve and DeepSpeed (gloo), tiny models.

One Ray instance and one set of actors serve every test here (engine start-up dominates the cost).
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import requests
import torch

from learner.config import ObjectiveConfig
from orchestrator.config import RunConfig
from orchestrator.loop import Trainer
from orchestrator.tokens import encode_prompt
from rollout.types import GenerationRequest
from teacher_server.wire import ARROW_MEDIA_TYPE, decode_response

pytestmark = pytest.mark.e2e

COLD_START_STEPS, DISTILL_STEPS = 2, 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def run(tiny_world, ray_session, tmp_path_factory):
    cfg = RunConfig.model_validate(
        {
            "name": "e2e",
            "output_dir": str(tmp_path_factory.mktemp("runs") / "{name}"),
            "models": {"student": str(tiny_world / "student"), "teacher": str(tiny_world / "teacher")},
            "data": {
                "train_path": str(tiny_world / "data" / "train.jsonl"),
                "eval_path": str(tiny_world / "data" / "eval.jsonl"),
            },
            "cold_start": {"steps": COLD_START_STEPS, "batch_size": 8, "lr": 1e-2},
            "distill": {"steps": DISTILL_STEPS, "batch_size": 8, "lr": 1e-2},
            "rollout": {"max_model_len": 384, "enforce_eager": True, "sampling": {"max_new_tokens": 12}},
            "teacher": {"max_seq_len": 384, "http_port": free_port()},
            "eval": {"at_end_of_stages": False, "max_new_tokens": 12},
        }
    )
    trainer = Trainer(cfg, progress=False)
    trainer.start()
    cold_start = trainer.run_stage("cold_start", cfg.cold_start, ObjectiveConfig(method="sft"), cfg.models.student)
    trainer.run_stage("distill", cfg.distill, cfg.objective, cold_start)
    yield trainer
    trainer.close()


def test_every_dudi_loss_term_is_present_and_finite(run):
    metrics = run.result.last_metrics["distill"]
    for key in ("loss/spin", "loss/off_kd", "loss/on_kd", "loss/total", "train/grad_norm"):
        assert key in metrics and math.isfinite(metrics[key]), key
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


def test_teacher_http_scores_match_a_direct_forward_and_bad_requests_get_400(run):
    from transformers import AutoModelForCausalLM

    t = run.cfg.teacher
    url = f"http://{t.http_host}:{t.http_port}{t.route_prefix}"
    prompt, response = encode_prompt(run.tokenizer, run.eval_rows[0].prompt), [5, 6, 7, 8]
    reply = requests.post(url, json={"prompt_ids": prompt, "response_ids": response}, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith(ARROW_MEDIA_TYPE)
    scored = decode_response(reply.content).logprobs
    teacher = AutoModelForCausalLM.from_pretrained(run.cfg.models.teacher).eval()
    with torch.no_grad():
        logits = teacher(torch.tensor([prompt + response[:-1]])).logits[0, len(prompt) - 1 :]
    np.testing.assert_allclose(scored, torch.log_softmax(logits, -1).numpy(), atol=1e-5)

    vocab = teacher.config.vocab_size
    for body in (
        b"not json",
        b'{"prompt_ids": [1]}',
        b'{"prompt_ids": [], "response_ids": [1]}',
        f'{{"prompt_ids": [1], "response_ids": [{vocab}]}}'.encode(),
        b'{"prompt_ids": [1.5], "response_ids": [1]}',
    ):
        bad = requests.post(url, data=body, timeout=60)
        assert bad.status_code == 400, body
        assert bad.text
    assert requests.post(url, json={"prompt_ids": prompt, "response_ids": response}, timeout=60).status_code == 200
