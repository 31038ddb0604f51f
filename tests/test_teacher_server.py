"""The teacher server on Ray Serve, by handle and over HTTP: exact sparse and full scores, concurrent callers,
bad requests, and in-place weight updates (the EMA teacher)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from dudi_common.flat_bucket import FlatBucket
from teacher_server.config import TeacherConfig
from teacher_server.types import ScoreRequest, TeacherWeights
from teacher_server.wire import ARROW_MEDIA_TYPE, decode_response

pytestmark = pytest.mark.e2e

APP, ROUTE = "teacher-test", "/teacher-test"


@pytest.fixture(scope="module")
def teacher(tiny_world, ray_session, serve_port):
    from ray import serve
    from transformers import AutoModelForCausalLM

    from teacher_server.app import deploy

    config = TeacherConfig(max_seq_len=64, http_port=serve_port, app_name=APP, route_prefix=ROUTE, max_batch_size=4)
    handle = deploy(str(tiny_world / "teacher"), config)
    model = AutoModelForCausalLM.from_pretrained(tiny_world / "teacher").eval()
    yield handle, model, f"http://127.0.0.1:{serve_port}{ROUTE}"
    serve.delete(APP)


def direct_logprobs(model, prompt, response, temperature=1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response[:-1]])).logits[0, len(prompt) - 1 :]
    return torch.log_softmax(logits.double() / temperature, -1)


def test_sparse_scores_over_http_equal_a_direct_forward_and_close_the_distribution(teacher):
    _, model, url = teacher
    prompt, response = [1, 5, 9, 14, 3], [20, 21, 22, 7]
    extra = [[2, 3, 2], [4, 5, 6], [7, 8, 9], [10, 7, 12]]
    body = {"prompt_ids": prompt, "response_ids": response, "top_k": 8, "extra_ids": extra, "temperature": 1.5}
    reply = requests.post(url, json=body, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith(ARROW_MEDIA_TYPE)
    scored = decode_response(reply.content)
    expected = direct_logprobs(model, prompt, response, temperature=1.5)
    top = expected.topk(8, -1)
    np.testing.assert_array_equal(scored.topk_ids, top.indices.numpy())
    np.testing.assert_allclose(scored.topk_logprobs, top.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(scored.extra_logprobs, expected.gather(-1, torch.tensor(extra)).numpy(), atol=1e-5)
    assert scored.temperature == 1.5
    for t in range(len(response)):
        support = {int(i): float(v) for i, v in zip(scored.topk_ids[t], scored.topk_logprobs[t], strict=True)}
        support.update({i: float(v) for i, v in zip(extra[t], scored.extra_logprobs[t], strict=True)})
        total = torch.logsumexp(torch.tensor([*support.values(), float(scored.tail_logprob[t])]), 0)
        assert abs(float(total)) < 1e-5
        # The tail is exactly the mass outside the union support.
        outside = torch.ones(expected.size(-1), dtype=torch.bool)
        outside[list(support)] = False
        assert float(scored.tail_logprob[t]) == pytest.approx(float(torch.logsumexp(expected[t][outside], 0)), abs=1e-5)


def test_full_scores_by_handle_equal_a_direct_forward(teacher):
    handle, model, _ = teacher
    prompt, response = [1, 2, 3], [4, 5, 6, 7, 8]
    [scored] = handle.score_many.remote([ScoreRequest(prompt, response, top_k=None)]).result()
    assert scored.topk_ids is None and scored.full_logprobs.shape == (len(response), model.config.vocab_size)
    np.testing.assert_allclose(scored.full_logprobs, direct_logprobs(model, prompt, response).numpy(), atol=1e-5)


def test_a_sparse_request_covering_the_vocabulary_has_no_tail(teacher):
    handle, model, _ = teacher
    vocab = model.config.vocab_size
    [scored] = handle.score_many.remote([ScoreRequest([1, 2], [3], top_k=vocab)]).result()
    assert scored.tail_logprob[0] == -math.inf
    assert abs(float(torch.logsumexp(torch.tensor(scored.topk_logprobs[0]), 0))) < 1e-5


def test_concurrent_callers_each_get_their_own_result(teacher):
    handle, model, url = teacher
    sequences = [([1 + i, 2, 3 + i], [4 + i] * (1 + i % 4)) for i in range(12)]
    futures = [handle.score.remote(ScoreRequest(p, r, top_k=4)) for p, r in sequences]  # batched by @serve.batch
    with ThreadPoolExecutor(6) as pool:
        over_http = list(
            pool.map(
                lambda seq: decode_response(
                    requests.post(
                        url, json={"prompt_ids": seq[0], "response_ids": seq[1], "top_k": 4}, timeout=60
                    ).content
                ),
                sequences,
            )
        )
    for (prompt, response), future, http_scored in zip(sequences, futures, over_http, strict=True):
        expected = direct_logprobs(model, prompt, response).topk(4, -1)
        for scored in (future.result(), http_scored):
            np.testing.assert_array_equal(scored.topk_ids, expected.indices.numpy())
            np.testing.assert_allclose(scored.topk_logprobs, expected.values.numpy(), atol=1e-5)


def test_every_bad_request_gets_a_400_that_says_why_and_the_server_keeps_serving(teacher):
    _, model, url = teacher
    vocab = model.config.vocab_size
    good = {"prompt_ids": [1, 2], "response_ids": [3, 4]}
    bad_bodies = {
        "not json": b"not json",
        "not an object": b"[1, 2]",
        "missing field": b'{"prompt_ids": [1]}',
        "empty prompt": {**good, "prompt_ids": []},
        "empty response": {**good, "response_ids": []},
        "id out of range": {**good, "response_ids": [vocab]},
        "negative id": {**good, "prompt_ids": [-1]},
        "float ids": {**good, "prompt_ids": [1.5]},
        "string ids": {**good, "prompt_ids": "1 2"},
        "over-long": {**good, "prompt_ids": [1] * 70},
        "top_k zero": {**good, "top_k": 0},
        "top_k above vocab": {**good, "top_k": vocab + 1},
        "extra_ids rows": {**good, "extra_ids": [[1]]},
        "extra_ids ragged": {**good, "extra_ids": [[1], [1, 2]]},
        "extra_ids with full": {**good, "top_k": None, "extra_ids": [[1], [2]]},
        "temperature": {**good, "temperature": 0},
        "schema version": {**good, "schema_version": 1},
        "unknown field": {**good, "topk": 3},
    }
    for reason, body in bad_bodies.items():
        sent = (
            requests.post(url, data=body, timeout=60)
            if isinstance(body, bytes)
            else requests.post(url, json=body, timeout=60)
        )
        assert sent.status_code == 400, reason
        assert sent.text, reason
        assert requests.post(url, json=good, timeout=60).status_code == 200, f"after {reason}"


def test_pushed_weights_replace_the_teacher_and_are_reported(teacher, tmp_path):
    """The EMA teacher's path: a score_many call naming newer weights makes the replica load them first, bucket by
    bucket, from the Ray object store (any node) or from files (the replica's node)."""
    import ray
    from safetensors.torch import save_file

    handle, model, _ = teacher
    changed = {name: p.detach().clone() * 0.5 for name, p in model.named_parameters()}
    names = list(changed)
    buckets = [{n: changed[n] for n in names[: len(names) // 2]}, {n: changed[n] for n in names[len(names) // 2 :]}]
    request = ScoreRequest([1, 2, 3], [4, 5], top_k=None)
    pushed = TeacherWeights(7, buckets=ray.put([ray.put(FlatBucket.of(list(bucket.items()))) for bucket in buckets]))
    [scored] = handle.score_many.remote([request], pushed).result()
    assert scored.weights_version == 7
    halved = type(model)(model.config).eval()
    halved.load_state_dict(changed, strict=False)
    halved.tie_weights()
    np.testing.assert_allclose(scored.full_logprobs, direct_logprobs(halved, [1, 2, 3], [4, 5]).numpy(), atol=1e-5)
    # Put the original weights back for any later test.
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, str(tmp_path / "model.safetensors"))
    [restored] = handle.score_many.remote([request], TeacherWeights(8, path=str(tmp_path))).result()
    np.testing.assert_allclose(restored.full_logprobs, direct_logprobs(model, [1, 2, 3], [4, 5]).numpy(), atol=1e-5)


def test_a_live_replica_has_its_latency_and_batch_size_on_the_metrics_endpoint(teacher):
    from test_dashboard_metrics import TEACHER_METRICS, scrape, wait_for

    handle, _, _ = teacher
    replica = handle.info.remote().result()["replica"]
    handle.score_many.remote([ScoreRequest([1, 2], [3, 4], top_k=4)] * 3).result()

    def ours(samples: dict, name: str) -> list[float]:
        return [value for labels, value in samples.get(name, []) if labels.get("replica") == replica]

    # The endpoint shows a set after Ray's next export (up to ~10 s), and earlier tests' calls left their own values:
    # wait for the last call's. The replica sets its last values again while it lives (how long that lasts:
    # test_dashboard_metrics.py's kept-gauge test), so however late the scrape, they are there.
    wait_for(lambda: ours(scrape(), "dudi_teacher_batch_size") == [3.0], 60, "not the last call's batch size")
    samples = scrape()
    for name, (low, high) in TEACHER_METRICS.items():
        assert len(ours(samples, name)) == 1 and low <= ours(samples, name)[0] <= high, (name, samples.get(name))
