"""Data parallelism across learner ranks: two ranks over gloo take the same step as one rank (ZeRO-3 and
ZeRO-0), and keep the same EMA of the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.config import LearnerConfig, ObjectiveConfig
from learner.group import LearnerGroup
from learner.types import TokenSequences, TrainBatch

pytestmark = pytest.mark.e2e

LR = 1e-2


# ZeRO-0 too: one rank skips DeepSpeed's all-reduce (nothing to reduce), two ranks run it.
@pytest.mark.parametrize("zero_stage", [3, 0])
def test_two_ranks_take_the_same_step_as_one(tiny_world, ray_session, tmp_path, zero_stage):
    # Equal lengths everywhere, so the mean over each rank's tokens averaged over ranks is the global mean.
    prompts = [[5 + i, 6 + i, 7 + i] for i in range(4)]
    responses = [[20 + i, 21 + i] for i in range(4)]
    batch = TrainBatch(chosen=TokenSequences(prompts, responses))
    published = {}
    ema = {}
    grad_norms = {}
    for ranks in (1, 2):
        config = LearnerConfig(
            num_ranks=ranks,
            lr=LR,
            zero_stage=zero_stage,
            num_threads=1,
            objective=ObjectiveConfig(cross_entropy="sft", alpha=0, kd_weight=0),
            publish_bucket_mib=1,  # several buckets, each gathered on its own under ZeRO-3
        )
        group = LearnerGroup(config, str(tiny_world / "student"), None, pad_id=0, seed=0, ema_decay=0.75)
        try:
            metrics = group.train_step(batch)
            assert torch.isfinite(torch.tensor(metrics["loss/sft"]))
            grad_norms[ranks] = metrics["train/grad_norm"]
            files = sorted(Path(group.publish_weights(1, str(tmp_path / f"ranks{ranks}")).path).glob("*.safetensors"))
            assert len(files) > 1
            published[ranks] = {k: v for f in files for k, v in load_file(str(f)).items()}
            buckets = ray_session.get(group.ema_buckets())  # object refs, one per bucket
            assert len(buckets) == len(files)  # the EMA goes out in the same buckets as the weights
            ema[ranks] = {k: v for bucket in ray_session.get(buckets) for k, v in bucket.unpack().items()}
        finally:
            group.shutdown()
    # The global norm before clipping; without ZeRO DeepSpeed keeps none, so the rank measures it.
    assert grad_norms[1] > 0 and grad_norms[2] == pytest.approx(grad_norms[1], rel=1e-4)
    initial = load_file(str(tiny_world / "student" / "model.safetensors"))
    name = "model.embed_tokens.weight"
    assert not torch.allclose(published[1][name], initial[name]), "the step must move the weights"
    # Adam's first step is about lr·sign(g): where |g| is near eps, float-order differences between one
    # all-reduced and one local gradient move an element by up to ~1e-5 (seen: 1.3e-5 on 0.002% of one
    # matrix). A wrong shard or a missing all-reduce moves whole tensors by ~lr = 1e-2.
    for key, value in published[1].items():
        torch.testing.assert_close(published[2][key], value, atol=1e-4, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    # The EMA (SDFT's teacher) after one step: 0.75·θ_0 + 0.25·θ_1, gathered the same way under ZeRO-3.
    for key, value in published[1].items():
        torch.testing.assert_close(ema[1][key], 0.75 * initial[key] + 0.25 * value, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ema[2][key], ema[1][key], atol=1e-4, rtol=0)


def test_a_single_cpu_rank_neither_builds_nor_loads_the_shared_memory_all_reduce(monkeypatch):
    """What `make demo` relies on to skip the op's 30-50 s build: DeepSpeed's CPU backend asks `build_shm_op`,
    which must answer None without building. (Bit-identical steps with and without the op: both ways gave the same
    losses and published weights over three ZeRO-3 steps of one rank.)"""
    import importlib

    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    from learner.rank import _skip_shared_memory_all_reduce

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, ShareMemCommBuilder.NAME, True)

    def no_build(self, *args, **kwargs):
        raise AssertionError("the op was built or loaded")

    monkeypatch.setattr(ShareMemCommBuilder, "load", no_build)
    _skip_shared_memory_all_reduce()
    assert importlib.import_module("deepspeed.comm.torch").build_shm_op() is None
