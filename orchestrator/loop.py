"""The training run: stage 1 cold-start SFT, then stage 2 distillation, each step generate → score → train → sync.

Every cross-actor step is a visible call on a component group; detail lives in the actors.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from learner.config import ObjectiveConfig
from learner.group import LearnerGroup
from orchestrator import steps
from orchestrator.config import RunConfig, StageConfig
from orchestrator.data import DataError, Example, load_examples
from orchestrator.evaluate import evaluate, evaluate_checkpoint, format_table
from orchestrator.metrics import MetricsLogger
from orchestrator.startup import check_shared_vocabulary, init_ray, load_tokenizer
from orchestrator.tokens import encode_prompt
from orchestrator.verbalizer import Verbalizer, VerbalizerTemplates
from rollout.group import RolloutGroup
from rollout.types import GenerationRequest, WeightSnapshot
from teacher_server.types import TeacherWeights

COLD_START_OBJECTIVE = ObjectiveConfig(cross_entropy="sft", alpha=0.0, kd_weight=0.0)


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: dict[str, str] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_version: int = 0


def batches(rows: list[Example], batch_size: int, num_steps: int, seed: int) -> Iterator[list[Example]]:
    """Shuffled epochs, cut into full batches, until `num_steps` batches were given."""
    if batch_size > len(rows):
        raise DataError(f"batch size {batch_size} is larger than the {len(rows)} training rows")
    rng = random.Random(seed)
    given = 0
    while True:
        order = rows[:]
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if given == num_steps:
                return
            yield order[start : start + batch_size]
            given += 1


def stage_steps(stage: StageConfig, num_rows: int) -> int:
    return stage.steps or max(1, math.ceil(stage.epochs * num_rows / stage.batch_size))


class Trainer:
    """State: the run config, tokenizer, data, the live component groups and the policy version."""

    def __init__(self, cfg: RunConfig, progress: bool = True, rollout: RolloutGroup | None = None):
        """`rollout`: engines already running on this student (shared across runs, as the benchmarks do);
        the trainer then neither starts nor stops them, and loads each stage's initial weights into them."""
        self.cfg = cfg
        self.progress = progress
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(_dump_yaml(cfg))
        self.tokenizer = load_tokenizer(cfg.models.student)
        self.train_rows = load_examples(cfg.data, "train")
        self.eval_rows = load_examples(cfg.data, "eval")
        self.languages = sorted({r.lang for r in self.train_rows})
        self.metrics = MetricsLogger(self.run_dir)
        self.weights_dir = tempfile.mkdtemp(
            prefix="dudi-weights-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
        self.rollout: RolloutGroup | None = rollout
        self.owns_rollout = rollout is None
        self.rollout_weights: str | None = None  # the checkpoint the rollout engines hold (None: unknown)
        self.learner: LearnerGroup | None = None
        self.teacher = None  # Serve handle of the teacher app, while one is deployed
        self.teacher_weights: TeacherWeights | None = None  # the EMA teacher's latest weights
        self.teacher_responses: dict[str, list[int]] = {}  # SeqKD: prompt → ŷ ~ π_T(·|x)
        self.version = 0  # policy version the rollout workers hold
        self.learner_steps = 0
        self.result = RunResult(self.run_dir)

    @property
    def uses_teacher_model(self) -> bool:
        """Whether a separate teacher model (models.teacher) takes part: as the KD teacher, or in the eval table."""
        return (self.cfg.objective.uses_teacher and self.cfg.recipe.teacher == "model") or self.cfg.eval.compare_teacher

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        if cfg.distill.enabled and self.uses_teacher_model:
            check_shared_vocabulary(cfg.models.student, cfg.models.teacher)
        init_ray(cfg.ray)
        if self.owns_rollout:
            self._say(f"starting {cfg.rollout.num_workers} vLLM rollout worker(s) on {cfg.models.student}")
            self.rollout = RolloutGroup(cfg.rollout, cfg.models.student, cfg.seed, wait=False)
            self.rollout_weights = cfg.models.student
        if cfg.eval.compare_teacher:
            # The teacher's engine starts beside the student's (start-up is mostly single-threaded) and is
            # evaluated and released before training begins.
            self.result.accuracy["teacher"] = self.evaluate_model(cfg.models.teacher)
        self.rollout.wait_ready()

    def close(self) -> None:
        for group in (self.learner, self.rollout if self.owns_rollout else None):
            if group is not None:
                group.shutdown()
        self._stop_teacher()
        self.learner = self.rollout = None
        shutil.rmtree(self.weights_dir, ignore_errors=True)
        self.metrics.close()

    def run(self) -> RunResult:
        try:
            self.start()
            model_path = self.cfg.models.student
            if self.cfg.cold_start.enabled:
                model_path = self.run_stage("cold_start", self.cfg.cold_start, COLD_START_OBJECTIVE, model_path)
            if self.cfg.distill.enabled:
                self.run_stage("distill", self.cfg.distill, self.cfg.objective, model_path)
            self._write_results()
            return self.result
        finally:
            self.close()

    # --- stages ----------------------------------------------------------------------------------------------
    def run_stage(self, name: str, stage: StageConfig, objective: ObjectiveConfig, init_path: str) -> str:
        started = time.perf_counter()
        recipe = self.cfg.recipe
        if objective.uses_teacher:
            self._start_teacher(init_path)
        if objective.uses_on_kd and recipe.on_kd_responses == "teacher":
            self._generate_teacher_responses()
        ema = objective.uses_teacher and recipe.teacher == "ema"
        learner_cfg = self.cfg.learner.model_copy(
            update={"objective": objective, "ema_decay": recipe.ema_decay if ema else None}
        )
        self._say(
            f"[{name}] starting {learner_cfg.num_ranks} DeepSpeed learner rank(s) (ZeRO-{learner_cfg.zero_stage}) on {init_path}"
        )
        self.learner = LearnerGroup(
            learner_cfg,
            init_path,
            init_path if objective.uses_reference else None,
            stage.lr or learner_cfg.lr,
            self.tokenizer.pad_token_id,
            self.cfg.seed,
        )
        if objective.needs_rollouts and self.rollout_weights != init_path:
            self.rollout.load_weights(WeightSnapshot(self.version, init_path))
            self.rollout_weights = init_path
        verbalizer = self._verbalizer() if objective.uses_teacher else None
        num_steps = stage_steps(stage, len(self.train_rows))
        self._train_loop(name, stage, objective, verbalizer, num_steps)
        self._stop_teacher()
        if self.version != self.learner_steps:
            self.sync_weights()
        checkpoint = str(self.run_dir / name)
        self.learner.save_checkpoint(checkpoint)
        self.rollout_weights = checkpoint  # the sync above left the engines on exactly these weights
        self.tokenizer.save_pretrained(checkpoint)
        self.learner.shutdown()
        self.learner = None
        self.result.checkpoints[name] = checkpoint
        self.result.stage_seconds[name] = round(time.perf_counter() - started, 1)
        if self.cfg.eval.at_end_of_stages:
            label = "cold start (SFT)" if name == "cold_start" else f"{self.cfg.method} student"
            self.result.accuracy[label] = self._evaluate_rollout()
            self._say(f"[{name}] eval avg exact match: {self.result.accuracy[label]['avg']:.1f}%")
        return checkpoint

    def _train_loop(self, name, stage, objective, verbalizer, num_steps: int) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=num_steps,
            desc=f"[{name}] {'sft' if name == 'cold_start' else self.cfg.method}",
            unit="step",
            disable=not self.progress,
            mininterval=1.0,
        )
        for step, rows in enumerate(
            batches(self.train_rows, stage.batch_size, num_steps, self.cfg.seed + zlib.crc32(name.encode())), 1
        ):
            metrics = self.train_step(rows, objective, verbalizer)
            self.metrics.log(name, step, metrics)
            self.result.last_metrics[name] = metrics
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items() if k.startswith("loss/")})
        bar.close()

    # --- one step: generate → rank → score → train → sync -----------------------------------------------------
    def train_step(
        self, rows: list[Example], objective: ObjectiveConfig, verbalizer: Verbalizer | None
    ) -> dict[str, float]:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            timings[f"time/{name}_s"] = time.perf_counter() - clock
            clock = time.perf_counter()

        prompts = steps.build_prompts(rows, self.tokenizer, verbalizer)
        rejected: list = []
        generated: list = []
        rollout_stats: dict[str, float] = {}
        student_writes = self.cfg.recipe.on_kd_responses == "student"
        sparse = self.cfg.teacher.score_format == "sparse"
        to_generate = steps.generation_requests(prompts, objective, student_writes)
        if to_generate:
            spec = self.rollout.sampling_spec(top_ids=self.cfg.teacher.student_top_k if sparse else 0)
            rejected, generated = steps.split_generations(self.rollout.generate(to_generate, spec), prompts, objective)
            rollout_stats = steps.rollout_metrics(rejected, generated)
            lap("generate")
        kd_sets = {}
        if objective.uses_off_kd:
            kd_sets["off"] = steps.ground_truth_sequences(prompts)
        if objective.uses_on_kd:
            kd_sets["on"] = (
                steps.on_policy_sequences(prompts, generated)
                if student_writes
                else steps.teacher_written_sequences(prompts, [self.teacher_responses[r.prompt] for r in rows])
            )
        scored = self._rank_and_score(kd_sets, objective, sparse, lap)
        batch = steps.assemble_batch(prompts, rejected, scored.get("off"), scored.get("on"))
        if batch.policy_versions:
            rollout_stats["rollout/staleness"] = self.version - min(batch.policy_versions)
        metrics = self.learner.train_step(batch)
        self.learner_steps += 1
        lap("train")
        if objective.needs_rollouts:  # on-policy: the next batch must be sampled from these weights
            self.sync_weights()
            lap("sync")
        if self.learner.config.ema_decay is not None:
            self._push_ema_teacher()
            lap("teacher_sync")
        return {**metrics, **rollout_stats, **timings, "policy_version": float(self.version)}

    def _rank_and_score(self, kd_sets: dict, objective: ObjectiveConfig, sparse: bool, lap) -> dict:
        """Teacher scores for each KD set: {name: (sequences, [TeacherScores])}.

        Scoring overlaps ranking: sets that already carry the student's top ids go to the teacher first, while
        the rollout engine ranks the others (sequences the student did not sample) with a prefill.
        """
        needs_rank = sparse and self.cfg.teacher.student_top_k > 0
        unranked = {k: s for k, s in kd_sets.items() if needs_rank and s.student_top_ids is None}
        pending = {k: self._score(s, objective) for k, s in kd_sets.items() if k not in unranked}
        if unranked:
            ranked = self.rollout.rank_ids(
                [r for s in unranked.values() for r in s.rank_requests()], self.cfg.teacher.student_top_k
            )
            for s in unranked.values():
                s.student_top_ids, ranked = ranked[: len(s.responses)], ranked[len(s.responses) :]
            lap("rank")
            pending.update({k: self._score(s, objective) for k, s in unranked.items()})
        scored = {
            k: (kd_sets[k], steps.teacher_scores(requests, future.result()))
            for k, (requests, future) in pending.items()
        }
        if pending:
            lap("score")
        return scored

    def _score(self, sequences: steps.KdSequences, objective: ObjectiveConfig):
        """Sends one KD set to the teacher without waiting: (its requests, the pending response)."""
        requests = steps.score_requests(sequences, self.cfg.teacher, objective.kd_temperature)
        return requests, self.teacher.score_many.remote(requests, self.teacher_weights)

    def sync_weights(self) -> None:
        """Learner → rollout: rank 0 writes the weights once, every worker reloads them in place.

        The policy version is the number of optimizer steps behind the weights.
        """
        previous, self.version = self.version, self.learner_steps
        published = self.learner.publish_weights(self.version, self.weights_dir)
        self.rollout.load_weights(WeightSnapshot(published.version, published.path))
        self.rollout_weights = None  # the learner's, not a checkpoint's
        shutil.rmtree(Path(self.weights_dir) / f"v{previous}", ignore_errors=True)
        self.result.policy_version = self.version

    # --- helpers ---------------------------------------------------------------------------------------------
    def _start_teacher(self, init_path: str) -> None:
        """Deploys the stage's teacher: models.teacher, or the stage's initial student (frozen, or its EMA)."""
        from teacher_server.app import deploy

        kind = self.cfg.recipe.teacher
        model_path = self.cfg.models.teacher if kind == "model" else init_path
        self._say(
            f"deploying the teacher server (Ray Serve, {self.cfg.teacher.num_replicas} replica(s), "
            f"{self.cfg.teacher.score_format} scores) on {model_path} [{kind}]"
        )
        self.teacher = deploy(model_path, self.cfg.teacher)
        self.teacher_weights = None

    def _stop_teacher(self) -> None:
        if self.teacher is not None:
            from ray import serve

            serve.delete(self.cfg.teacher.app_name)
        self.teacher = None
        if self.teacher_weights is not None:
            shutil.rmtree(self.teacher_weights.path, ignore_errors=True)
            self.teacher_weights = None

    def _push_ema_teacher(self) -> None:
        """The learner writes its EMA; the next scoring call hands the teacher replicas the new version."""
        previous = self.teacher_weights
        published = self.learner.publish_weights(self.learner_steps, self.weights_dir, ema=True)
        self.teacher_weights = TeacherWeights(published.version, published.path)
        if previous is not None:
            # A replica reads a version when it next scores; older files are never asked for again.
            shutil.rmtree(previous.path, ignore_errors=True)

    def _generate_teacher_responses(self) -> None:
        """SeqKD: one ŷ ~ π_T(·|x) per training prompt, sampled once by a vLLM engine on the teacher."""
        if self.teacher_responses:
            return
        prompts = sorted({r.prompt for r in self.train_rows})
        self._say(f"generating SeqKD responses with the teacher (vLLM) for {len(prompts)} prompts")
        engine = RolloutGroup(self.cfg.rollout, self.cfg.models.teacher, self.cfg.seed + 7919, num_workers=1)
        try:
            requests = [GenerationRequest(encode_prompt(self.tokenizer, p)) for p in prompts]
            results = engine.generate(requests, engine.sampling_spec())
        finally:
            engine.shutdown()
        empty = [p for p, r in zip(prompts, results, strict=True) if not r.response_ids]
        if empty:
            raise RuntimeError(f"the teacher generated an empty response for {len(empty)} prompts, e.g. {empty[0]!r}")
        self.teacher_responses = {p: r.response_ids for p, r in zip(prompts, results, strict=True)}

    def _verbalizer(self) -> Verbalizer:
        v = self.cfg.verbalizer
        templates = VerbalizerTemplates.load(v.templates_path)
        return Verbalizer(v.mode, self.languages, v.include_english_target, templates, seed=self.cfg.seed)

    def _evaluate_rollout(self) -> dict[str, float]:
        return evaluate(self.rollout, self.tokenizer, self.eval_rows, self.cfg.eval.max_new_tokens)

    def evaluate_model(self, model_path: str) -> dict[str, float]:
        """Greedy eval of another checkpoint on a fresh single vLLM worker."""
        self._say(f"evaluating {model_path}")
        return evaluate_checkpoint(
            self.cfg.rollout, model_path, self.eval_rows, self.cfg.eval.max_new_tokens, self.cfg.seed
        )

    def _write_results(self) -> None:
        import json

        summary = {
            "checkpoints": self.result.checkpoints,
            "accuracy": self.result.accuracy,
            "stage_seconds": self.result.stage_seconds,
            "policy_version": self.result.policy_version,
        }
        (self.run_dir / "results.json").write_text(json.dumps(summary, indent=2))
        if self.result.accuracy:
            table = format_table(self.result.accuracy, self.languages)
            (self.run_dir / "results.md").write_text(table + "\n")

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)


def _dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def train(cfg: RunConfig, progress: bool = True) -> RunResult:
    return Trainer(cfg, progress).run()
