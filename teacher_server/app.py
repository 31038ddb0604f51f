"""The Ray Serve application: `TeacherScorer` behind dynamic batching, by handle and over HTTP.

Handle: `handle.score_many.remote([ScoreRequest, ...], weights)` → `[ScoreResponse, ...]` (one call per train
        batch: Serve's per-request overhead would dominate tiny per-sequence calls). `weights`
        (`TeacherWeights` or None) names the weights the caller wants scored with: a replica still on an older
        version loads them first, so every replica catches up without a broadcast (EMA teacher);
        `handle.score.remote(ScoreRequest)` → `ScoreResponse`, batched with concurrent callers.
HTTP:   POST {route_prefix} with JSON {"prompt_ids": [...], "response_ids": [...], "top_k": 64,
        "extra_ids": [[...], ...], "temperature": 1.0} → Arrow IPC stream (see `teacher_server.wire`);
        a bad request gets 400 with the reason, and the server keeps serving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from teacher_server.config import TeacherConfig
from teacher_server.scorer import TeacherScorer
from teacher_server.types import BadScoreRequest, ScoreRequest, ScoreResponse, TeacherWeights
from teacher_server.wire import ARROW_MEDIA_TYPE, encode_response, parse_request


@serve.deployment
class TeacherDeployment:
    def __init__(self, model_path: str, config: TeacherConfig):
        self.scorer = TeacherScorer(model_path, config.dtype, config.num_threads, config.max_seq_len)
        self.max_batch_size = config.max_batch_size
        self._score_batch.set_max_batch_size(config.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        from dudi_common.gauges import KeptGauges

        # On the Ray dashboard / Prometheus, per replica: how long a scoring call took and how many sequences.
        self.gauges = KeptGauges()
        self.replica_tag = {"replica": serve.get_replica_context().replica_id.unique_id}

    def info(self) -> dict:
        return {
            "model_path": self.scorer.model_path,
            "vocab_size": self.scorer.vocab_size,
            "max_seq_len": self.scorer.max_seq_len,
            "weights_version": self.scorer.weights_version,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "replica": self.replica_tag["replica"],  # the tag of this replica's metrics
        }

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        self.scorer.validate(request)
        return await self._score_batch(request)

    def score_many(self, requests: list[ScoreRequest], weights: TeacherWeights | None = None) -> list[ScoreResponse]:
        if weights is not None and weights.version != self.scorer.weights_version:
            self.scorer.load_weights(weights.version, _read_weights(weights))
        started = time.perf_counter()
        for request in requests:
            self.scorer.validate(request)
        size = self.max_batch_size
        scores = [
            r for start in range(0, len(requests), size) for r in self.scorer.score(requests[start : start + size])
        ]
        tags = self.replica_tag
        self.gauges.set("dudi_teacher_latency_s", time.perf_counter() - started, tags, "Seconds per score_many call")
        self.gauges.set("dudi_teacher_batch_size", len(requests), tags, "Sequences per score_many call")
        return scores

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        return self.scorer.score(requests)

    async def __call__(self, http_request: Request) -> Response:
        try:
            request = parse_request(await http_request.body())
            response = await self.score(request)
        except BadScoreRequest as error:
            return PlainTextResponse(str(error), status_code=400)
        return Response(encode_response(response), media_type=ARROW_MEDIA_TYPE)


def _read_weights(weights: TeacherWeights) -> Iterator[dict]:
    """The weights bucket by bucket, each read only when the one before it is loaded."""
    if weights.buckets is not None:
        for bucket in ray.get(weights.buckets):
            yield ray.get(bucket).unpack()
        return
    from safetensors.torch import load_file

    for file in sorted(Path(weights.path).glob("*.safetensors")):
        yield load_file(str(file))


def build_app(model_path: str, config: TeacherConfig, actor_options: dict | None = None):
    """`actor_options`: extra Ray actor options for every replica (e.g. a label selector that places them)."""
    return TeacherDeployment.options(
        num_replicas=config.num_replicas,
        logging_config={"log_level": config.log_level},
        ray_actor_options={
            "num_cpus": config.num_cpus_per_replica,
            "num_gpus": config.num_gpus_per_replica,
            **({"resources": config.resources} if config.resources else {}),
            **(actor_options or {}),
        },
    ).bind(model_path, config)


def deploy(model_path: str, config: TeacherConfig, actor_options: dict | None = None):
    """Starts Serve on `config.http_host:http_port` (loopback by default) and returns the app's handle."""
    serve.start(
        http_options={"host": config.http_host, "port": config.http_port},
        logging_config={"log_level": config.log_level},
    )
    return serve.run(
        build_app(model_path, config, actor_options), name=config.app_name, route_prefix=config.route_prefix
    )
