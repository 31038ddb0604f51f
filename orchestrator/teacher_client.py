"""The teacher as the training loop sees it: deploy, score KD sequences, take new weights, shut down.

Owns the request policy (score format, top-k, the student's ids to ask about, τ): the teacher server only
answers what it is asked.
"""

from __future__ import annotations

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
        self.handle = deploy(model_path, cfg, actor_options)
        self.weights: TeacherWeights | None = None

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
        return PendingScores(requests, self.handle.score_many.remote(requests, self.weights))

    def push_weights(self, version: int, state_ref) -> None:
        """Every replica loads `state_ref` ({HF name: tensor} in the object store) before its next scoring."""
        self.weights = TeacherWeights(version, state=state_ref)

    def node_id(self) -> str:
        """The Ray node of the replica that answers (one of them, with several)."""
        return self.handle.info.remote().result()["node_id"]

    def shutdown(self) -> None:
        from ray import serve

        serve.delete(self.cfg.app_name)
        self.handle = None
        self.weights = None


class PendingScores:
    def __init__(self, requests, response):
        self.requests = requests
        self.response = response

    def result(self) -> list[TeacherScores]:
        return steps.teacher_scores(self.requests, self.response.result())
