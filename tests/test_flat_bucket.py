"""A bucket of weights as one numpy array (`dudi_common.flat_bucket`), the EMA teacher's update in the object store."""

from __future__ import annotations

import warnings

import torch

from dudi_common.flat_bucket import FlatBucket, nbytes


def test_a_bucket_cast_on_the_way_in_unpacks_to_the_same_values_from_a_read_only_buffer():
    ema = {"model.embed_tokens.weight": torch.randn(7, 5), "model.norm.weight": torch.randn(5)}
    bucket = FlatBucket.of(list(ema.items()), torch.bfloat16)
    assert bucket.tensors == [
        ("model.embed_tokens.weight", "bfloat16", (7, 5)),
        ("model.norm.weight", "bfloat16", (5,)),
    ]
    assert bucket.data.dtype == "uint8" and bucket.data.nbytes == nbytes(bucket.tensors) == 2 * (35 + 5)
    bucket.data.setflags(write=False)  # as the object store hands it out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unpacked = bucket.unpack()
    assert list(unpacked) == list(ema)
    for name, value in ema.items():
        assert unpacked[name].dtype == torch.bfloat16
        assert torch.equal(unpacked[name], value.to(torch.bfloat16))


def test_tensors_keep_their_own_dtypes_without_a_cast():
    named = [("a", torch.arange(6, dtype=torch.float32).view(2, 3)), ("b", torch.arange(4, dtype=torch.float16))]
    unpacked = FlatBucket.of(named).unpack()
    assert [(t.dtype, tuple(t.shape)) for t in unpacked.values()] == [(torch.float32, (2, 3)), (torch.float16, (4,))]
    assert all(torch.equal(unpacked[name], tensor) for name, tensor in named)
