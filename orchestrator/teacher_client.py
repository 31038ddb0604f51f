"""The teacher as the training loop sees it: deploy, score KD sequences, take new weights, shut down.

Owns the request policy (score format, top-k, the student's ids to ask about, τ): the teacher server only
answers what it is asked.
"""

from __future__ import annotations

import time

from learner.types import TeacherScores
from orchestrator import steps
from orchestrator.config import ScoringConfig
from teacher_server.config import TeacherConfig
from teacher_server.types import TeacherWeights


class TeacherClient:
    """State: the Serve handle while deployed, and the newest weights to score with (EMA teacher)."""

    def __init__(
        self,
        cfg: TeacherConfig,
        scoring: ScoringConfig,
        model_path: str,
        temperature: float,
        actor_options: dict | None = None,
    ):
        from teacher_server.app import deploy

        self.cfg = cfg
        self.scoring = scoring
        self.temperature = temperature
        self.deployed_at_ms = time.time() * 1000
        self.handle = deploy(model_path, cfg, actor_options)
        self.weights: TeacherWeights | None = None
        self.retries = 0  # requests sent again because the replica answering them died

    @property
    def sparse(self) -> bool:
        return self.scoring.format == "sparse"

    @property
    def student_top_k(self) -> int:
        """How many of the student's most likely ids to ask the teacher about, per position (0 = none)."""
        return self.scoring.student_top_k if self.sparse else 0

    def score(self, sequences: steps.KdSequences) -> PendingScores:
        """Sends one KD set without waiting; the teacher scores it with the newest pushed weights."""
        requests = steps.score_requests(sequences, self.scoring, self.temperature)
        return PendingScores(self, requests, self.weights)

    def send(self, requests, weights):
        return self.handle.score_many.remote(requests, weights)

    def push_weights(self, version: int, buckets_ref) -> None:
        """Every replica loads `buckets_ref` (`TeacherWeights.buckets`) before its next scoring."""
        self.weights = TeacherWeights(version, buckets=buckets_ref)

    def replica_restarts(self) -> int:
        """Replicas of this deployment that died while it was deployed (Serve replaced each of them)."""
        from ray._private.state import state  # the GCS actor table: Ray's only per-actor record without a dashboard

        prefix = f"SERVE_REPLICA::{self.cfg.app_name}#"
        dead = state.actor_table(None, actor_state_name="DEAD").values()
        return sum(1 for a in dead if a["Name"].startswith(prefix) and a["StartTime"] >= self.deployed_at_ms)

    def node_id(self) -> str:
        """The Ray node of the replica that answers (one of them, with several)."""
        return self.handle.info.remote().result()["node_id"]

    def shutdown(self) -> None:
        from ray import serve

        serve.delete(self.cfg.app_name)
        self.handle = None
        self.weights = None


class RoutedScores:
    """One KD set scored by two teachers: the rows where `routed` is true by `other`, the rest by `first`; the
    scores come back in the set's row order."""

    def __init__(self, first: TeacherClient, other: TeacherClient, sequences: steps.KdSequences, routed: list[bool]):
        self.routed = routed
        self.parts = []
        for client, flag in ((first, False), (other, True)):
            rows = [i for i, r in enumerate(routed) if r == flag]
            self.parts.append(client.score(_rows(sequences, rows)) if rows else None)

    def result(self) -> list[TeacherScores]:
        first, other = (iter(part.result() if part is not None else []) for part in self.parts)
        return [next(other) if routed else next(first) for routed in self.routed]


def _rows(sequences: steps.KdSequences, keep: list[int]) -> steps.KdSequences:
    def pick(values):
        return None if values is None else [values[i] for i in keep]

    return steps.KdSequences(
        pick(sequences.student_prompts),
        pick(sequences.teacher_prompts),
        pick(sequences.responses),
        pick(sequences.student_top_ids),
        pick(sequences.policy_versions),
    )


class TeacherFailure(RuntimeError):
    pass


class PendingScores:
    """One KD set in flight. Serve re-routes a request whose replica died and replaces the replica; what Serve
    gives up on (every replica dead or unreachable) is sent again here, with backoff, until `RETRY_WINDOW_S` has
    passed (scoring has no side effects), and counted in `TeacherClient.retries`."""

    RETRY_WINDOW_S = 180.0
    FIRST_BACKOFF_S = 1.0

    def __init__(self, client: TeacherClient, requests, weights):
        self.client, self.requests, self.weights = client, requests, weights
        self.response = client.send(requests, weights)

    def result(self) -> list[TeacherScores]:
        import ray

        deadline, backoff = time.monotonic() + self.RETRY_WINDOW_S, self.FIRST_BACKOFF_S
        while True:
            try:
                return steps.teacher_scores(self.requests, self.response.result())
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:
                if time.monotonic() > deadline:
                    raise TeacherFailure(
                        f"the teacher's replicas kept failing for {self.RETRY_WINDOW_S:.0f} s: {error}"
                    ) from None
                self.client.retries += 1
                time.sleep(backoff)
                backoff = min(2 * backoff, 10.0)
                self.response = self.client.send(self.requests, self.weights)
