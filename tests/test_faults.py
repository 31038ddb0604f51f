"""Worker faults: a teacher replica killed mid-request is replaced by Serve and the request sent again; a rollout
worker killed mid-generation is restarted by Ray, given the current weights and its prompts issued again; a learner
rank killed stops the run with one message naming the checkpoint to resume from, and the resume completes it."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
from conftest import assert_planned_batches_trained_once, e2e_config

from orchestrator import steps
from orchestrator.checkpoints import RunFailure
from orchestrator.loop import Trainer
from orchestrator.metrics import read_ledger
from orchestrator.teacher_client import TeacherClient

pytestmark = pytest.mark.e2e


def test_a_teacher_replica_killed_mid_request_is_replaced_and_the_request_retried(
    run, tiny_world, serve_port, tmp_path
):
    cfg = e2e_config(tiny_world, tmp_path, serve_port, name="faults")
    teacher = cfg.teacher.model_copy(update={"app_name": "teacher-faults"})
    client = TeacherClient(teacher, cfg.scoring, str(tiny_world / "teacher"), 1.0)
    try:
        rng = random.Random(0)
        # Large enough that the replica is still scoring when it is killed (a few seconds on 2 cores).
        prompts = [[rng.randrange(3, 1000) for _ in range(40)] for _ in range(192)]
        responses = [[rng.randrange(3, 1000) for _ in range(300)] for _ in range(192)]
        sequences = steps.KdSequences(prompts, prompts, responses)
        expected = client.score(sequences).result()
        pid = client.handle.info.remote().result()["pid"]
        pending = client.score(sequences)
        os.kill(pid, signal.SIGKILL)
        scores = pending.result()  # Serve re-routes it, or the client sends it again
        assert len(scores) == len(expected)
        for got, want in zip(scores, expected, strict=True):
            assert (got.topk_ids == want.topk_ids).all()
        assert client.handle.info.remote().result()["pid"] != pid  # a new replica answers
        assert client.replica_restarts() == 1
    finally:
        client.shutdown()


def test_scores_are_sent_again_while_no_replica_can_answer(monkeypatch):
    """The client's own retry, for what Serve gives up on. The handle is replaced by a stand-in whose first two
    answers fail the way a dead deployment's do (no Ray needed to produce an exception)."""
    import numpy as np
    import ray

    from orchestrator.teacher_client import PendingScores
    from teacher_server.types import ScoreRequest, ScoreResponse

    class Failing:
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    class Answer:
        def result(self):
            return [ScoreResponse(full_logprobs=np.zeros((2, 4), np.float32), temperature=1.0)]

    class Client:
        retries = 0

        def __init__(self):
            self.answers = [
                Failing(ray.exceptions.ActorUnavailableError("replica unreachable", None)),
                Failing(ray.exceptions.RayActorError()),
                Answer(),
            ]

        def send(self, requests, weights):
            return self.answers.pop(0)

    monkeypatch.setattr(PendingScores, "FIRST_BACKOFF_S", 0.01)
    client = Client()
    scores = PendingScores(client, [ScoreRequest([1], [2, 3], top_k=None)], None).result()
    assert client.retries == 2 and scores[0].full.shape == (2, 4)


def test_a_rollout_worker_out_of_restarts_ends_the_run_with_one_line(ray_session):
    """`RolloutGroup.recover` on an actor Ray will not restart again. A plain Ray actor stands in for the vLLM
    engine: what is tested is how the group reads Ray's record of a dead actor, not vLLM."""
    import ray

    from rollout.config import RolloutConfig
    from rollout.group import RolloutFailure, RolloutGroup

    @ray.remote(num_cpus=0, max_restarts=0)
    class Worker:
        def get_policy_version(self):
            return 0

    worker = Worker.remote()
    ray.get(worker.get_policy_version.remote())
    ray.kill(worker)
    # ray.kill is asynchronous: a call sent right after it can still be served. Wait until the actor is gone, or
    # `recover` would find it alive and the test would check nothing.
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(100):
            ray.get(worker.get_policy_version.remote())
            time.sleep(0.1)
    group = RolloutGroup.__new__(RolloutGroup)  # without its vLLM engines: only `recover` is under test
    group.config, group.workers, group.restarts = RolloutConfig(max_restarts=0), [worker], 0
    group.restore_weights = None
    with pytest.raises(RolloutFailure, match=r"rollout worker 0 died and Ray will not restart it again"):
        group.recover([0])


def test_a_learner_rank_killed_stops_the_run_with_a_resume_hint(
    run, shared_rollout, tiny_world, serve_port, tmp_path, monkeypatch
):
    import ray

    models = {"student": run.result.checkpoints["cold_start"], "teacher": str(tiny_world / "teacher")}
    stage = {"steps": 3, "batch_size": 8, "lr": 1e-2}
    cfg = e2e_config(
        tiny_world,
        tmp_path,
        serve_port,
        name="learner-dies",
        models=models,
        cold_start={"enabled": False},
        distill=stage,
        checkpoint={"every_steps": 1},
    )
    original = Trainer.learn

    def learn(self, prepared, max_staleness):
        if self.learner_steps == 1:
            ray.kill(self.learner.ranks[0], no_restart=True)  # as if its process or node died
        return original(self, prepared, max_staleness)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "learn", learn)
        with pytest.raises(RunFailure, match=r"learner rank died during optimizer step 2 .*distill-000001.*--resume"):
            Trainer(cfg, False, shared_rollout).run()
    Trainer(cfg, False, shared_rollout, resume=True).run()
    assert [e["step"] for e in read_ledger(cfg.run_dir / "ledger.jsonl")] == [1, 2, 3]


# Broadcast only (each variant restarts a vLLM engine, about 40 s): its restore opens a new group around the
# restarted worker, while a shared or files restore is a same-node push sent to that worker only
# (`tests/test_weight_transports.py` restores a live worker through each).
@pytest.mark.parametrize("transport", ["broadcast"])
def test_a_rollout_worker_killed_mid_generation_is_restarted_with_the_current_weights(
    run, shared_rollout, tiny_world, serve_port, tmp_path, transport
):
    """The worker's process is killed (SIGKILL) while the trainer's generate call is in flight; Ray restarts it,
    the trainer gives it the newest pushed weights and issues the prompts again: every planned batch is trained
    once, and the restart is counted."""
    import threading

    models = {"student": run.result.checkpoints["cold_start"], "teacher": str(tiny_world / "teacher")}
    cfg = e2e_config(
        tiny_world,
        tmp_path,
        serve_port,
        name=f"rollout-dies-{transport}",
        models=models,
        cold_start={"enabled": False},
        distill={"steps": 2, "batch_size": 16, "lr": 1e-2},
        weight_sync={"transport": transport, "verify": transport == "broadcast"},
        rollout={"max_model_len": 384, "enforce_eager": True, "sampling": {"max_new_tokens": 64}},
    )
    trainer = Trainer(cfg, False, shared_rollout)
    original = shared_rollout.generate
    calls, killed = [], []

    def generate(requests, spec):
        calls.append(len(requests))
        in_flight = threading.Event()
        if len(calls) == 2:  # the second step's rollouts: after a push, so the weights to restore are new ones
            pid = shared_rollout.pids()[0]

            def kill():
                if in_flight.is_set():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            threading.Timer(0.05, kill).start()
        in_flight.set()
        try:
            return original(requests, spec)
        finally:
            in_flight.clear()

    restarts_before = shared_rollout.restarts
    shared_rollout.generate = generate
    try:
        trainer.run()
    finally:
        del shared_rollout.generate
    assert killed, "the kill came after the generate call had returned: nothing was tested"
    assert shared_rollout.restarts == restarts_before + 1
    assert shared_rollout.pids()[0] != killed[0]
    planned = trainer.data_order("distill", 16, 2)
    assert_planned_batches_trained_once(read_ledger(cfg.run_dir / "ledger.jsonl"), planned)
    logged = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout/restarts"] for m in logged if m["stage"] == "distill"][-1] == restarts_before + 1
    if transport == "broadcast":  # the restored worker holds exactly the learner's bytes
        assert trainer.result.weight_sync["distill"]["verified"] == 2
