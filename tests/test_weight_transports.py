"""Learner rank 0 → rollout workers on one node: the transport `auto` picks, and the same-node transports end to end.
(The cross-node broadcast is `tests/test_multinode.py`'s.)"""

from __future__ import annotations

import os
import time

import pytest
import ray

from orchestrator.config import ConfigError
from orchestrator.weight_sync import choose_transport

NODE, OTHER = "a" * 56, "b" * 56
GPU, OTHER_GPU = "GPU-11111111", "GPU-22222222"


def test_auto_maps_the_learners_buffers_on_its_node_and_broadcasts_across_nodes():
    assert choose_transport("auto", NODE, [NODE, NODE], None, [[], []]) == "shared"
    assert choose_transport("auto", NODE, [NODE, OTHER], None, [[], []]) == "broadcast"
    # On GPUs, CUDA IPC needs every worker to see the GPU that holds rank 0's weights.
    assert choose_transport("auto", NODE, [NODE], GPU, [[GPU]]) == "shared"
    # A worker on rank 0's node on another GPU takes an NCCL broadcast; one without a GPU reads files.
    assert choose_transport("auto", NODE, [NODE, NODE], GPU, [[GPU], [OTHER_GPU]]) == "broadcast"
    assert choose_transport("auto", NODE, [NODE, NODE], GPU, [[GPU], []]) == "files"
    assert choose_transport("auto", NODE, [OTHER], GPU, [[GPU]]) == "broadcast"
    assert choose_transport("broadcast", NODE, [NODE], None, [[]]) == "broadcast"


def test_a_same_node_transport_asked_for_where_it_cannot_work_says_why():
    with pytest.raises(ConfigError, match=r"transport='shared' needs every rollout worker on the learner's node"):
        choose_transport("shared", NODE, [NODE, OTHER], None, [[], []])
    with pytest.raises(ConfigError, match=r"transport='files' needs every rollout worker"):
        choose_transport("files", NODE, [OTHER], None, [[]])
    with pytest.raises(ConfigError, match=r"maps the learner's GPU \(GPU-11111111\) by CUDA IPC"):
        choose_transport("shared", NODE, [NODE], GPU, [[OTHER_GPU]])


def learner_buffers(pid: int) -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"dudi-shared-{pid}-")}


@pytest.mark.e2e
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_same_node_pushes_leave_every_worker_with_the_learners_bytes(run, shared_rollout, zero_stage):
    """A learner on the cold-start checkpoint pushes to the session's engines, which hold the distilled weights:
    through shared buffers, then files, each push checked tensor by tensor on both ends, then restores a worker.
    The shared buffers are freed once the workers have loaded them."""
    from safetensors import safe_open

    from learner.group import LearnerGroup
    from learner.weight_sync import tensor_digest
    from orchestrator.config import WeightSyncConfig
    from orchestrator.weight_sync import PolicySync

    learner_cfg = run.cfg.learner.model_copy(update={"zero_stage": zero_stage, "publish_bucket_mib": 1})
    cold_start = run.result.checkpoints["cold_start"]
    learner = LearnerGroup(learner_cfg, cold_start, None, run.tokenizer.pad_token_id, seed=0)
    try:
        pid = ray.get(learner.ranks[0].__ray_call__.remote(lambda rank: os.getpid()))
        # The check can fail: the engines hold the distilled weights, the learner the cold start's.
        embedding = "model.embed_tokens.weight"
        with safe_open(f"{run.result.checkpoints['distill']}/model.safetensors", framework="pt") as distilled:
            held = tensor_digest(distilled.get_tensor(embedding))
        assert learner.weights_digest()[embedding] != held
        for transport in ("shared", "files"):
            sync = PolicySync(learner, run.rollout, WeightSyncConfig(transport=transport, verify=True))
            assert sync.transport == transport
            for version in (run.version + 1, run.version + 2):
                sync.push(version)
            # What a worker restarted by Ray is given (here a live one: killing an engine is test_faults.py's).
            sync.restore([0], run.version + 3)
            sync.close()
            assert sync.verified == 2
            assert run.rollout.policy_versions() == [run.version + 3]
        assert len(learner.weight_group_plan()[2]) > 1  # several buckets, so the bucketing itself was exercised
        deadline = time.monotonic() + 10
        while learner_buffers(pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # the release is fire-and-forget
        assert not learner_buffers(pid), "rank 0 kept shared buffers of versions every worker had loaded"
    finally:
        learner.shutdown()
