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
from learner.types import TokenSequences, TrainBatch
from orchestrator import steps
from orchestrator.config import RunConfig, StageConfig
from orchestrator.data import DataError, Example, load_examples
from orchestrator.evaluate import evaluate, evaluate_checkpoint, format_table
from orchestrator.metrics import MetricsLogger
from orchestrator.startup import check_shared_vocabulary, init_ray, load_tokenizer
from orchestrator.verbalizer import Verbalizer, VerbalizerTemplates
from rollout.group import RolloutGroup
from rollout.types import WeightSnapshot


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

    def __init__(self, cfg: RunConfig, progress: bool = True):
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
        self.rollout: RolloutGroup | None = None
        self.learner: LearnerGroup | None = None
        self.teacher = None
        self.version = 0  # policy version the rollout workers hold
        self.learner_steps = 0
        self.result = RunResult(self.run_dir)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        if cfg.distill.enabled and cfg.objective.uses_teacher:
            check_shared_vocabulary(cfg.models.student, cfg.models.teacher)
        init_ray(cfg.ray)
        self._say(f"starting {cfg.rollout.num_workers} vLLM rollout worker(s) on {cfg.models.student}")
        self.rollout = RolloutGroup(cfg.rollout, cfg.models.student, cfg.seed, wait=False)
        if cfg.eval.compare_teacher:
            # The teacher's engine starts beside the student's (start-up is mostly single-threaded) and is
            # evaluated and released before training begins.
            self.result.accuracy["teacher"] = self.evaluate_model(cfg.models.teacher)
        self.rollout.wait_ready()

    def close(self) -> None:
        for group in (self.learner, self.rollout):
            if group is not None:
                group.shutdown()
        if self.teacher is not None:
            from ray import serve

            serve.delete(self.cfg.teacher.app_name)
        self.learner = self.rollout = self.teacher = None
        shutil.rmtree(self.weights_dir, ignore_errors=True)
        self.metrics.close()

    def run(self) -> RunResult:
        try:
            self.start()
            model_path = self.cfg.models.student
            if self.cfg.cold_start.enabled:
                model_path = self.run_stage(
                    "cold_start", self.cfg.cold_start, ObjectiveConfig(method="sft"), model_path
                )
            if self.cfg.distill.enabled:
                self.run_stage("distill", self.cfg.distill, self.cfg.objective, model_path)
            self._write_results()
            return self.result
        finally:
            self.close()

    # --- stages ----------------------------------------------------------------------------------------------
    def run_stage(self, name: str, stage: StageConfig, objective: ObjectiveConfig, init_path: str) -> str:
        started = time.perf_counter()
        if objective.uses_teacher and self.teacher is None:
            self.teacher = self._deploy_teacher()
        learner_cfg = self.cfg.learner.model_copy(update={"objective": objective})
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
        verbalizer = self._verbalizer() if objective.uses_teacher else None
        num_steps = stage_steps(stage, len(self.train_rows))
        self._train_loop(name, stage, objective, verbalizer, num_steps)
        if self.version != self.learner_steps:
            self.sync_weights()
        checkpoint = str(self.run_dir / name)
        self.learner.save_checkpoint(checkpoint)
        self.tokenizer.save_pretrained(checkpoint)
        self.learner.shutdown()
        self.learner = None
        self.result.checkpoints[name] = checkpoint
        self.result.stage_seconds[name] = round(time.perf_counter() - started, 1)
        if self.cfg.eval.at_end_of_stages:
            label = "cold start (SFT)" if name == "cold_start" else f"{objective.method} student"
            self.result.accuracy[label] = self._evaluate_rollout()
            self._say(f"[{name}] eval avg exact match: {self.result.accuracy[label]['avg']:.1f}%")
        return checkpoint

    def _train_loop(self, name, stage, objective, verbalizer, num_steps: int) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=num_steps,
            desc=f"[{name}] {objective.method}",
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

    # --- one step: generate → score → train → sync -------------------------------------------------------------
    def train_step(
        self, rows: list[Example], objective: ObjectiveConfig, verbalizer: Verbalizer | None
    ) -> dict[str, float]:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        prompts = steps.build_prompts(rows, self.tokenizer, verbalizer)
        if objective.method == "sft":
            batch = TrainBatch(chosen=TokenSequences(prompts.x, prompts.y))
            rollout_stats: dict[str, float] = {}
        else:
            results = self.rollout.generate(steps.generation_requests(prompts, objective), self.rollout.sampling_spec())
            rejected, on_policy = steps.split_generations(results, prompts, objective)
            timings["time/generate_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            scores = self.teacher.score_many.remote(steps.score_requests(prompts, on_policy, objective)).result()
            timings["time/score_s"] = time.perf_counter() - clock
            batch = steps.assemble_batch(prompts, rejected, on_policy, [s.logprobs for s in scores], objective)
            rollout_stats = steps.rollout_metrics(rejected, on_policy)
            rollout_stats["rollout/staleness"] = self.version - min(batch.policy_versions)
        clock = time.perf_counter()
        metrics = self.learner.train_step(batch)
        self.learner_steps += 1
        timings["time/train_s"] = time.perf_counter() - clock
        if objective.method != "sft":  # on-policy: the next batch must be sampled from these weights
            clock = time.perf_counter()
            self.sync_weights()
            timings["time/sync_s"] = time.perf_counter() - clock
        return {**metrics, **rollout_stats, **timings, "policy_version": float(self.version)}

    def sync_weights(self) -> None:
        """Learner → rollout: rank 0 writes the weights once, every worker reloads them in place.

        The policy version is the number of optimizer steps behind the weights.
        """
        previous, self.version = self.version, self.learner_steps
        published = self.learner.publish_weights(self.version, self.weights_dir)
        self.rollout.load_weights(WeightSnapshot(published.version, published.path))
        shutil.rmtree(Path(self.weights_dir) / f"v{previous}", ignore_errors=True)
        self.result.policy_version = self.version

    # --- helpers ---------------------------------------------------------------------------------------------
    def _deploy_teacher(self):
        from teacher_server.app import deploy

        self._say(
            f"deploying the teacher server (Ray Serve, {self.cfg.teacher.num_replicas} replica(s)) on {self.cfg.models.teacher}"
        )
        return deploy(self.cfg.models.teacher, self.cfg.teacher)

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
