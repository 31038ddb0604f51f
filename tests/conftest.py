"""Shared fixtures. Tiers: unit tests (fast, no Ray) and `e2e` tests on the embedded default (real Ray, vLLM,
Ray Serve, DeepSpeed), which share one small tiny world and one Ray instance for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.tiny_world.build import TinyWorldSpec, build

# Small enough to build in seconds; the e2e checks need real components, not a good model.
E2E_WORLD_SPEC = TinyWorldSpec(seed=0, train_per_language=24, eval_per_language=3, teacher_steps=5)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-world")
    build(out, E2E_WORLD_SPEC, progress=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING"}})
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
