"""Placement: colocated reserves one node for learner ranks and rollout workers (a STRICT_PACK placement group) and
pins everything else to it; disaggregated leaves each role to its resources."""

from __future__ import annotations

import pytest
from conftest import e2e_config

from orchestrator.placement import Placement

pytestmark = pytest.mark.e2e


def test_colocated_reserves_one_node_and_pins_the_rest_to_it(ray_session, tiny_world, serve_port, tmp_path):
    ray = ray_session
    # Small reservations: the session's other actors (rollout engines, Serve) hold most of its two CPUs.
    rollout = {
        "num_workers": 2,
        "num_cpus_per_worker": 0.05,
        "max_model_len": 384,
        "enforce_eager": True,
        "sampling": {"max_new_tokens": 12},
    }
    cfg = e2e_config(
        tiny_world,
        tmp_path,
        serve_port,
        ray={"placement": "colocated"},
        rollout=rollout,
        learner={"num_cpus_per_rank": 0.05},
    )
    placement = Placement(cfg)
    try:
        assert placement.node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]}

        @ray.remote(num_cpus=0.001)
        def node_of() -> str:
            return ray.get_runtime_context().get_node_id()

        options = placement.learner_options() + placement.rollout_options()
        assert len(options) == 1 + 2
        # Every bundle, and anything pinned, runs on the reserved node.
        nodes = ray.get([node_of.options(**o).remote() for o in options], timeout=60)
        nodes.append(ray.get(node_of.options(**placement.pinned_options()).remote(), timeout=60))
        assert set(nodes) == {placement.node_id}
    finally:
        placement.close()
    assert placement.group is None


def test_disaggregated_adds_nothing(ray_session, tiny_world, serve_port, tmp_path):
    placement = Placement(e2e_config(tiny_world, tmp_path, serve_port))
    assert placement.learner_options() == [{}] and placement.rollout_options() == [{}]
    assert placement.pinned_options() == {}
