"""Across nodes: a three-node Ray cluster on this machine, each role on its own node, no shared-file path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_learner_rollout_and_teacher_on_three_nodes_get_bit_identical_weights(tiny_world, tmp_path):
    script = Path(__file__).with_name("multinode_run.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_world), str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 3
    for zero in ("zero2", "zero3"):
        run = report["runs"][zero]
        learner, rollout, teacher = (set(run["nodes"][role]) for role in ("learner", "rollout", "teacher"))
        assert len(learner) == len(rollout) == len(teacher) == 1, run["nodes"]
        assert learner.isdisjoint(rollout) and learner.isdisjoint(teacher) and rollout.isdisjoint(teacher)
        sync = run["weight_sync"]
        # Every push, the final one included, was checked tensor by tensor on both workers.
        assert sync["transport"] == "broadcast" and sync["pushes"] == 2 and sync["verified"] == 2, sync
        assert all(v == v for v in run["losses"].values()) and run["losses"]["loss/on_kd"] > 0
    workers = report["two_workers"]
    assert workers["in_order"] and workers["complete"] and workers["same_after_reordering"]
    assert len(workers["versions"]) == 2 and len(set(workers["versions"])) == 1
