"""The HTTP wire format: JSON token ids in, an Arrow IPC stream of float32 log-probs out."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from teacher_server.types import SCHEMA_VERSION, BadScoreRequest, ScoreRequest, ScoreResponse

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"


def parse_request(body: bytes) -> ScoreRequest:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadScoreRequest(f"body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise BadScoreRequest("body must be a JSON object with prompt_ids and response_ids")
    version = payload.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise BadScoreRequest(f"schema_version {version!r} is not supported; this server speaks {SCHEMA_VERSION}")
    missing = [k for k in ("prompt_ids", "response_ids") if k not in payload]
    if missing:
        raise BadScoreRequest(f"missing fields: {missing}")
    return ScoreRequest(prompt_ids=payload["prompt_ids"], response_ids=payload["response_ids"])


def encode_response(response: ScoreResponse) -> bytes:
    logprobs = np.ascontiguousarray(response.logprobs, dtype=np.float32)
    positions, vocab = logprobs.shape
    column = pa.FixedSizeListArray.from_arrays(pa.array(logprobs.reshape(-1)), vocab)
    schema = pa.schema([("logprobs", column.type)], metadata={"schema_version": str(response.schema_version)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch([column], schema=schema))
    return sink.getvalue().to_pybytes()


def decode_response(body: bytes) -> ScoreResponse:
    table = pa.ipc.open_stream(body).read_all()
    column = table.column("logprobs").combine_chunks()
    vocab = column.type.list_size
    logprobs = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, vocab)
    version = int((table.schema.metadata or {}).get(b"schema_version", SCHEMA_VERSION))
    return ScoreResponse(logprobs=logprobs, schema_version=version)
