"""Shared fixtures. Tiers: unit tests (fast, no Ray) and `e2e` tests on the embedded default (real Ray, vLLM,
Ray Serve, DeepSpeed), which share one small tiny world and one Ray instance for the whole session."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from orchestrator.tiny_world.build import TinyWorldSpec, build

# Small enough to build in seconds; the e2e checks need real components, not a good model. Two layers each (the
# demo's have four): every e2e step's sampling, scoring and training costs less, the shapes still differ.
E2E_WORLD_SPEC = TinyWorldSpec(
    seed=0, train_per_language=24, eval_per_language=3, teacher_steps=5, teacher_layers=2, student_layers=2
)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-world")
    build(out, E2E_WORLD_SPEC, progress=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    ray.init(
        address="local",  # not a cluster some `ray start` on this machine left behind (tests/test_job_submit.py)
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING"}},
        _metrics_export_port=METRICS_PORT,  # the node's Prometheus endpoint (tests/test_dashboard_metrics.py)
    )
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


COLD_START_STEPS, DISTILL_STEPS = 2, 3


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen, since a port released at once can be
    handed out again by the next bind."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port_override() -> list[str]:
    """Serve's port for a `dudi train` the tests start: it checks the port right after loading its config, so a job on
    the default port (a benchmark beside the tests) would end it there."""
    return [f"teacher.http_port={free_port()}"]


METRICS_PORT = free_port()


@pytest.fixture(scope="session")
def serve_port() -> int:
    """Serve's HTTP proxy starts once per Ray session, so every app in the tests shares this port."""
    return free_port()


def assert_planned_batches_trained_once(ledger: list[dict], planned: list[list[int]]) -> None:
    """The ledger holds every planned batch, in order, once: nothing lost, nothing trained twice."""
    assert [e["step"] for e in ledger] == list(range(1, len(planned) + 1))
    assert [e["samples"] for e in ledger] == planned
    trained = [i for e in ledger for i in e["samples"]]
    assert len(trained) == len(set(trained)) == sum(len(batch) for batch in planned)


def e2e_config(tiny_world: Path, output_dir: Path, serve_port: int, **fields):
    from orchestrator.config import RunConfig
    from orchestrator.presets import apply_preset

    raw = {
        "name": "e2e",
        "output_dir": str(output_dir / "{name}"),
        "models": {"student": str(tiny_world / "student"), "teacher": str(tiny_world / "teacher")},
        "data": {
            "train_path": str(tiny_world / "data" / "train.jsonl"),
            "eval_path": str(tiny_world / "data" / "eval.jsonl"),
        },
        "cold_start": {"steps": COLD_START_STEPS, "batch_size": 8, "lr": 1e-2},
        "distill": {"steps": DISTILL_STEPS, "batch_size": 8, "lr": 1e-2},
        "rollout": {"max_model_len": 384, "enforce_eager": True, "sampling": {"max_new_tokens": 12}},
        "teacher": {"max_seq_len": 384, "http_port": serve_port},
        "scoring": {"top_k": 16, "student_top_k": 16},
        "eval": {"at_end_of_stages": False, "max_new_tokens": 12},
    }
    for key, value in fields.items():
        raw[key] = value
    return RunConfig.model_validate(apply_preset(raw))


@pytest.fixture(scope="session")
def run(tiny_world, ray_session, serve_port, tmp_path_factory):
    """One DuDi run (cold start, then distillation) whose trainer and rollout engines later tests reuse."""
    from orchestrator.loop import COLD_START_OBJECTIVE, Trainer

    # Evaluated after every step but the last (eval curves), in the cold start too, where nothing samples.
    evals = {"at_end_of_stages": False, "max_new_tokens": 12, "every_steps": 1}
    cfg = e2e_config(tiny_world, tmp_path_factory.mktemp("runs"), serve_port, eval=evals)
    trainer = Trainer(cfg, progress=False)
    trainer.start()
    cold_start = trainer.run_stage("cold_start", cfg.cold_start, COLD_START_OBJECTIVE, cfg.models.student)
    trainer.run_stage("distill", cfg.distill, cfg.objective, cold_start)
    yield trainer
    trainer.close()


@pytest.fixture
def shared_rollout(run):
    """The session's rollout engines for a test's own trainer; put back on the session run's final weights and
    version afterwards, so tests that check the `run` fixture's engines do not depend on the order of tests."""
    from rollout.types import WeightSnapshot

    yield run.rollout
    run.rollout.load_weights(WeightSnapshot(run.version, run.result.checkpoints["distill"]))
