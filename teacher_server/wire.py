"""The HTTP wire format: a JSON request (token ids are integers, so JSON is compact enough), an Arrow IPC
stream back (one row per response position, never JSON floats)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa

from teacher_server.types import SCHEMA_VERSION, BadScoreRequest, ScoreRequest, ScoreResponse

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
# The request's JSON keys are ScoreRequest's fields (its defaults apply to the ones left out), plus the version.
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(ScoreRequest)} | {"schema_version"}


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
    unknown = sorted(set(payload) - _REQUEST_FIELDS)
    if unknown:
        raise BadScoreRequest(f"unknown fields: {unknown}; expected some of {sorted(_REQUEST_FIELDS)}")
    return ScoreRequest(**{key: value for key, value in payload.items() if key != "schema_version"})


def _rows(array: np.ndarray, dtype) -> pa.Array:
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.ndim == 1:
        return pa.array(array)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])


def encode_response(response: ScoreResponse) -> bytes:
    columns = {
        "full_logprobs": (response.full_logprobs, np.float32),
        "topk_ids": (response.topk_ids, np.int32),
        "topk_logprobs": (response.topk_logprobs, np.float32),
        "extra_logprobs": (response.extra_logprobs, np.float32),
        "tail_logprob": (response.tail_logprob, np.float32),
    }
    arrays = {name: _rows(values, dtype) for name, (values, dtype) in columns.items() if values is not None}
    metadata = {
        "schema_version": str(response.schema_version),
        "weights_version": str(response.weights_version),
        "temperature": repr(response.temperature),
    }
    schema = pa.schema([(name, array.type) for name, array in arrays.items()], metadata=metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch(list(arrays.values()), schema=schema))
    return sink.getvalue().to_pybytes()


def decode_response(body: bytes) -> ScoreResponse:
    table = pa.ipc.open_stream(body).read_all()
    fields = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            fields[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        else:
            fields[name] = column.to_numpy(zero_copy_only=False)
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return ScoreResponse(
        **fields,
        temperature=float(metadata.get("temperature", 1.0)),
        weights_version=int(metadata.get("weights_version", 0)),
        schema_version=int(metadata.get("schema_version", SCHEMA_VERSION)),
    )
