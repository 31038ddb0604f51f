"""The training run: stage 1 cold-start SFT, then stage 2 distillation.

A step is three calls: prepare a batch (rollout workers sample, the teacher scores), train on it (learner), push
the new weights (learner → rollout). With `max_staleness = s > 0` the batches for the next s steps are prepared in
a background thread while the learner trains, from weights at most s versions old (`_train_loop`).
"""

from __future__ import annotations

import math
import random
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ray

from learner.config import ObjectiveConfig
from learner.group import LearnerGroup
from learner.types import TrainBatch
from orchestrator import checkpoints, routing, steps
from orchestrator.config import RunConfig, StageConfig
from orchestrator.data import DataError, load_examples
from orchestrator.evaluate import evaluate, evaluate_checkpoint, evaluate_checkpoint_on, format_table
from orchestrator.metrics import Ledger, MetricsLogger, read_ledger
from orchestrator.placement import Placement
from orchestrator.report import write_results_png
from orchestrator.startup import (
    check_model,
    check_output_dir,
    check_shared_vocabulary,
    init_ray,
    load_tokenizer,
)
from orchestrator.teacher_client import RoutedScores, TeacherClient, TeacherFailure
from orchestrator.tokens import encode_prompt
from orchestrator.verbalizer import Verbalizer, VerbalizerTemplates
from orchestrator.weight_sync import PolicySync
from rollout.group import RolloutFailure, RolloutGroup
from rollout.types import GenerationRequest, WeightSnapshot

COLD_START_OBJECTIVE = ObjectiveConfig(cross_entropy="sft", alpha=0.0, kd_weight=0.0)


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: dict[str, str] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_version: int = 0
    # Seconds from the start of the run until each was ready: ray, teacher, rollout, learner, first_step.
    startup: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # stage → role → Ray node ids
    weight_sync: dict[str, dict] = field(default_factory=dict)  # stage → transport, pushes, verified pushes
    checkpoint_seconds: dict[str, float] = field(default_factory=dict)  # checkpoint → seconds to write it
    # stage → [{"step": n, lang: exact match, ..., "avg": …}] from eval.every_steps, ending with the stage's final eval
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)


@dataclass
class PreparedBatch:
    """A train batch with where it came from: the ids of its rows (for the ledger) and how long each part took."""

    batch: TrainBatch
    sample_ids: list[int]
    metrics: dict[str, float]


def batches(rows: list, batch_size: int, num_steps: int, seed: int) -> Iterator[list]:
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


class StalenessError(RuntimeError):
    pass


class Trainer:
    """State: the run config, tokenizer, data, the live component groups and the policy version."""

    def __init__(
        self, cfg: RunConfig, progress: bool = True, rollout: RolloutGroup | None = None, resume: bool = False
    ):
        """`rollout`: engines already running on this student (shared across runs, as the benchmarks do);
        the trainer then neither starts nor stops them, and loads each stage's initial weights into them.
        `resume`: continue from the newest complete checkpoint under `<run>/checkpoints`."""
        self.started = time.perf_counter()
        self.cfg = cfg
        self.progress = progress
        self.run_dir = cfg.run_dir
        # Mistakes a user can make are caught here, before Ray or any model starts.
        check_output_dir(self.run_dir)
        check_model(cfg.models.student, "models.student")
        if self.uses_teacher_model:
            check_model(cfg.models.teacher, "models.teacher")
        if self.routes_to_other_teacher:
            check_model(cfg.routing.other_teacher, "routing.other_teacher")
        self.resume_from: tuple[Path, checkpoints.RunState] | None = None
        if resume:
            self.resume_from = checkpoints.latest(self.run_dir)
            checkpoints.check_same_config(self.run_dir, cfg.model_dump(mode="json"))
            state = self.resume_from[1]
            # What the crashed run logged after its checkpoint is logged again by the resumed one.
            checkpoints.truncate_lines(self.run_dir / "metrics.jsonl", state.metrics_lines)
            checkpoints.truncate_lines(self.run_dir / "ledger.jsonl", state.ledger_lines)
        else:
            earlier = checkpoints.set_aside_earlier_run(self.run_dir, time.strftime("%Y%m%d-%H%M%S"))
            if earlier is not None:
                self._say(
                    f"[run] {self.run_dir} held an earlier run: its logs and checkpoints are now in {earlier} "
                    "(continue a run with --resume instead)"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(_dump_yaml(cfg))
        self.tokenizer = load_tokenizer(cfg.models.student, cfg.models.end_of_turn)
        limit = (self.tokenizer, cfg.rollout.max_model_len)
        skipped: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
        self.train_rows = load_examples(cfg.data, "train", skipped["train"], limit)
        self.eval_rows = load_examples(cfg.data, "eval", skipped["eval"], limit)
        for split, reasons in skipped.items():
            if reasons:
                counts = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
                self._say(f"[data] {split}: skipped {sum(reasons.values())} rows: {counts} (data.strict stops instead)")
        self.languages = sorted({r.lang for r in self.train_rows})
        self.routing_rows: list = []  # held out of training to measure teacher and student per language
        if cfg.routing.enabled:
            self.train_rows, self.routing_rows = routing.hold_out(
                self.train_rows, cfg.routing.rows_per_language, cfg.seed
            )
        self.route: routing.Decision | None = None  # per-language routing, once measured
        # The teacher's exact match on the held-out rows as Off-KD shows them (x) and, with routing.per_term,
        # as On-KD does (z); measured once per run.
        self._routing_teacher: tuple[dict[str, float], dict[str, float] | None] | None = None
        self.metrics = MetricsLogger(self.run_dir, resume_after=self._steps_kept_on_resume(), run_name=cfg.name)
        self.ledger = Ledger(self.run_dir)
        self.samples_trained = sum(len(e["samples"]) for e in read_ledger(self.ledger.path))  # > 0 on a resume
        self.placement: Placement | None = None
        self.rollout: RolloutGroup | None = rollout
        self.owns_rollout = rollout is None
        self.rollout_weights: str | None = None  # the checkpoint the rollout engines hold (None: unknown)
        self.learner: LearnerGroup | None = None
        self.policy_sync: PolicySync | None = None
        self.teacher: TeacherClient | None = None
        self.other_teacher: TeacherClient | None = None  # routing.below_margin=other_teacher
        self.teacher_responses: dict[str, list[int]] = {}  # SeqKD: prompt → ŷ ~ π_T(·|x)
        self.version = 0  # the newest policy version pushed to the rollout workers
        self._stage_first_version = 0
        self._stage_steps_done = 0
        self.learner_steps = 0
        # Held while the learner steps and pushes, so a restarted rollout worker is given weights of a known version.
        self._learner_busy = threading.Lock()
        self.result = RunResult(self.run_dir)
        self.finished: dict[str, str] = {}  # stage → its final HF checkpoint
        if self.resume_from is not None:
            state = self.resume_from[1]
            self.finished = dict(state.finished)
            self.teacher_responses = dict(state.teacher_responses)
            self.result.checkpoints.update(state.finished)
            self.result.accuracy.update(state.result.get("accuracy", {}))
            self.result.stage_seconds.update(state.result.get("stage_seconds", {}))
            self.result.curves.update(state.result.get("curves", {}))

    def _steps_kept_on_resume(self) -> dict[str, int]:
        """Per unfinished stage, the steps a resume keeps from the crashed run (the rest are trained again)."""
        if self.resume_from is None:
            return {}
        state = self.resume_from[1]
        return {
            stage: state.stage_step if stage == state.stage and not state.stage_done else 0
            for stage in ("cold_start", "distill")
            if stage not in state.finished
        }

    @property
    def needs_engines(self) -> bool:
        """Whether rollout engines take part: distillation samples or ranks with them, and evals generate with them
        (a cold start alone without evals trains on the data as it is)."""
        return self.cfg.distill.enabled or self.cfg.eval.at_end_of_stages

    @property
    def uses_teacher_model(self) -> bool:
        """Whether a separate teacher model (models.teacher) takes part: as the KD teacher, or in the eval table."""
        return (self.cfg.objective.uses_teacher and self.cfg.recipe.teacher == "model") or self.cfg.eval.compare_teacher

    @property
    def routes_to_other_teacher(self) -> bool:
        routing = self.cfg.routing
        return self.cfg.distill.enabled and routing.enabled and routing.below_margin == "other_teacher"

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Ray, the placement, and the rollout engines, which keep starting in the background: the first stage
        waits for them only after its learner and teacher are on their way."""
        cfg = self.cfg
        if cfg.distill.enabled and self.uses_teacher_model:
            check_shared_vocabulary(cfg.models.student, cfg.models.teacher, cfg.models.end_of_turn)
        if self.routes_to_other_teacher:
            check_shared_vocabulary(cfg.models.student, cfg.routing.other_teacher, cfg.models.end_of_turn)
        init_ray(cfg.ray)
        self._mark("ray")
        self.placement = Placement(cfg)
        if self.owns_rollout and self.needs_engines:
            self._say(f"starting {cfg.rollout.num_workers} vLLM rollout worker(s) on {cfg.models.student}")
            self.rollout = RolloutGroup(
                cfg.rollout, cfg.models.student, cfg.seed, wait=False, actor_options=self.placement.rollout_options()
            )
            self.rollout_weights = cfg.models.student
        if cfg.eval.compare_teacher:
            # The teacher's engine starts beside the student's (start-up is mostly single-threaded) and is
            # evaluated and released before training begins.
            self.result.accuracy["teacher"] = self.evaluate_model(cfg.models.teacher)

    def close(self) -> None:
        try:
            if self.policy_sync is not None:
                self.policy_sync.close()
        finally:
            if self.rollout is not None and not self.owns_rollout:
                self.rollout.restore_weights = None  # borrowed engines outlive this trainer
            for group in (self.learner, self.rollout if self.owns_rollout else None):
                if group is not None:
                    group.shutdown()
            self._stop_teacher()
            if self.placement is not None:
                self.placement.close()
            self.learner = self.rollout = self.policy_sync = self.placement = None
            self.metrics.close()
            self.ledger.close()

    def run(self) -> RunResult:
        try:
            self.start()
            model_path = self.cfg.models.student
            stages = (("cold_start", self.cfg.cold_start, COLD_START_OBJECTIVE), ("distill", self.cfg.distill, None))
            for name, stage, objective in stages:
                if not stage.enabled:
                    continue
                if name in self.finished:  # a resumed run: this stage ended before the checkpoint
                    self._say(f"[{name}] finished before the checkpoint: {self.finished[name]}")
                    model_path = self.finished[name]
                    continue
                model_path = self.run_stage(name, stage, objective or self.cfg.objective, model_path)
            self._write_results()
            return self.result
        except (RolloutFailure, TeacherFailure) as error:  # restarts and retries ran out
            raise self._failure(_first_line(error)) from None
        except ray.exceptions.RayActorError as error:  # an actor Ray does not restart (a learner rank, mid-push)
            raise self._failure(f"a component died ({_first_line(error)})") from None
        finally:
            self.close()

    # --- stages ----------------------------------------------------------------------------------------------
    def run_stage(self, name: str, stage: StageConfig, objective: ObjectiveConfig, init_path: str) -> str:
        started = time.perf_counter()
        if name == "distill" and self.cfg.routing.enabled:
            self._measure_routing_teacher()  # its engine is gone before the stage's learner and teachers claim CPUs
        verbalizer = self.begin_stage(name, objective, init_path, stage)
        first_step = self._restore(name, objective) + 1
        if name == "distill" and self.cfg.routing.enabled:
            self._route(name)
        self._train_loop(name, stage, objective, verbalizer, stage_steps(stage, len(self.train_rows)), first_step)
        checkpoint = self.end_stage(name)
        self.result.stage_seconds[name] = round(time.perf_counter() - started, 1)
        if self.cfg.eval.at_end_of_stages:
            label = "cold start (SFT)" if name == "cold_start" else f"{self.cfg.method} student"
            self.result.accuracy[label] = self._evaluate_rollout()
            self._say(f"[{name}] eval avg exact match: {self.result.accuracy[label]['avg']:.1f}%")
            if name in self.result.curves:
                self.result.curves[name].append({"step": self._stage_steps_done, **self.result.accuracy[label]})
        self.finished[name] = checkpoint
        self._write_checkpoint(name, self._stage_steps_done, stage_done=True)  # its eval included
        return checkpoint

    def begin_stage(
        self, name: str, objective: ObjectiveConfig, init_path: str, stage: StageConfig | None = None
    ) -> Verbalizer | None:
        """Teacher, learner ranks on `init_path`, rollout workers on the same weights, the weight sync between
        them; the stage's lr settings override the learner's. Returns the verbalizer the stage's batches are
        built with."""
        if self.placement is None:  # a stage run without start(), on engines someone else started
            init_ray(self.cfg.ray)
            self.placement = Placement(self.cfg)
        recipe = self.cfg.recipe
        ema = objective.uses_teacher and recipe.teacher == "ema"
        stage = stage or StageConfig()
        learner_cfg = self.cfg.learner.model_copy(update={"objective": objective, **stage.learner_overrides()})
        self._say(
            f"[{name}] starting {learner_cfg.num_ranks} DeepSpeed learner rank(s) (ZeRO-{learner_cfg.zero_stage}) on {init_path}"
        )
        # Learner ranks, teacher replicas and rollout engines start side by side; each is waited for last.
        self.learner = LearnerGroup(
            learner_cfg,
            init_path,
            init_path if objective.uses_reference else None,
            self.tokenizer.pad_token_id,
            self.cfg.seed,
            ema_decay=recipe.ema_decay if ema else None,
            actor_options=self.placement.learner_options(),
            wait=False,
            total_steps=stage_steps(stage, len(self.train_rows)),
        )
        if objective.uses_teacher:
            self._start_teacher(init_path, objective)
            self._mark("teacher")
        if objective.uses_on_kd and recipe.on_kd_responses == "teacher":
            self._generate_teacher_responses()
        if self.rollout is not None:
            self.rollout.wait_ready()
            # Engines outlive a run (the comparison runs every method of a seed on one set): each stage samples
            # from its seed as on fresh engines, not from where the run before it left the sampler.
            self.rollout.reseed(self.cfg.seed)
            self._mark("rollout")
        self.learner.wait_ready()
        self._mark("learner")
        self.result.nodes[name] = {"learner": [self.learner.node_id()], "rollout": []}
        if self.rollout is not None:
            if objective.needs_rollouts and self.rollout_weights != init_path:
                self.rollout.load_weights(WeightSnapshot(self.version, init_path))
                self.rollout_weights = init_path
            self.policy_sync = PolicySync(self.learner, self.rollout, self.cfg.weight_sync)
            self.rollout.restore_weights = self._restore_workers
            self.result.nodes[name]["rollout"] = self.rollout.node_ids()
        if self.teacher is not None:
            self.result.nodes[name]["teacher"] = [self.teacher.node_id()]
        self._stage_first_version = self.version
        return self._verbalizer() if objective.uses_teacher else None

    def end_stage(self, name: str) -> str:
        """Pushes the final weights, saves the checkpoint (HF format), releases learner and teacher."""
        self._stop_teacher()
        checkpoint = str(self.run_dir / name)
        if self.policy_sync is not None:
            if self.version != self.learner_steps:
                self._push_policy()
            self.policy_sync.wait()
            self.result.weight_sync[name] = {
                "transport": self.policy_sync.transport,
                "pushes": self.version - self._stage_first_version,
                "verified": self.policy_sync.verified,
            }
            self.policy_sync.close()
            self.policy_sync = None
            self.rollout.restore_weights = None
            self.rollout_weights = checkpoint  # the sync above left the engines on exactly these weights
            self.rollout.weights_source = WeightSnapshot(self.learner_steps, checkpoint)  # for a later restart
        self.learner.save_checkpoint(checkpoint)
        self.tokenizer.save_pretrained(checkpoint)
        self.learner.shutdown()
        self.learner = None
        self.result.checkpoints[name] = checkpoint
        return checkpoint

    def _train_loop(self, name, stage, objective, verbalizer, num_steps: int, first_step: int = 1) -> None:
        """Steps 1..n, each on batch j of the stage's data order. Batch j may be prepared once the weights of
        version (stage start + j − 1 − s) are pushed, so with s = 0 it waits for the previous step (synchronous)
        and with s > 0 it is prepared while up to s earlier steps train."""
        from tqdm import tqdm

        bar = tqdm(
            total=num_steps,
            initial=first_step - 1,
            desc=f"[{name}] {'sft' if name == 'cold_start' else self.cfg.method}",
            unit="step",
            disable=not self.progress,
            mininterval=1.0,
        )
        plan = self.data_order(name, stage.batch_size, num_steps)
        max_staleness = stage.max_staleness if objective.needs_rollouts else 0
        pending: dict = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as preparer:

            def prepare_ahead(trained: int) -> None:
                # Step k may be prepared once version (stage start + k − 1 − s) is pushed: k ≤ trained + 1 + s.
                while len(pending) <= max_staleness and trained + len(pending) < num_steps:
                    step = trained + len(pending) + 1
                    pending[step] = preparer.submit(self.prepare, plan[step - 1], objective, verbalizer)

            prepare_ahead(first_step - 1)
            for step in range(first_step, num_steps + 1):
                waited = time.perf_counter()
                prepared = pending.pop(step).result()  # rollout workers + teacher
                wait_s = time.perf_counter() - waited
                with self._learner_busy:
                    metrics = self.learn(prepared, max_staleness)  # learner
                    if objective.needs_rollouts:
                        metrics["time/sync_s"] = self._push_policy()  # learner → rollout workers
                if self._eval_due(name, step, num_steps):
                    metrics.update(self._evaluate_during(name, step))
                metrics["time/wait_s"] = wait_s
                learner_time = wait_s + metrics["time/train_s"] + metrics.get("time/sync_s", 0.0)
                metrics["time/learner_wait_fraction"] = wait_s / learner_time if learner_time > 0 else 0.0
                self.samples_trained += len(prepared.sample_ids)
                metrics["samples/trained"] = float(self.samples_trained)
                metrics.update(self.route.metrics if self.route is not None else {})
                self.metrics.log(name, step, metrics)
                self.ledger.record(
                    name, step, self.learner_steps - 1, prepared.sample_ids, prepared.batch.policy_versions
                )
                self.result.last_metrics[name] = metrics
                if "first_step" not in self.result.startup:
                    self._mark("first_step")
                    self._say("ready after (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.result.startup.items()))
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items() if k.startswith("loss/")})
                self._stage_steps_done = step
                again = self.cfg.routing.every_steps
                if self.cfg.routing.enabled and again and step % again == 0 and step < num_steps:
                    self._route(name)  # batches already prepared keep the weights they were given
                every = self.cfg.checkpoint.every_steps
                if every and step % every == 0 and step < num_steps:
                    # Batches prepared ahead are not part of it: a resume prepares them again from the same rows.
                    self._write_checkpoint(name, step)
                prepare_ahead(step)
        bar.close()

    def data_order(self, stage_name: str, batch_size: int, num_steps: int) -> list[list[int]]:
        """Row ids of every step's batch: shuffled epochs, fixed by the seed and the stage's name."""
        seed = self.cfg.seed + zlib.crc32(stage_name.encode())
        return list(batches(list(range(len(self.train_rows))), batch_size, num_steps, seed))

    # --- one step: prepare (rollout, teacher) → learn (learner) → push (learner → rollout) ---------------------
    def prepare(self, row_ids: list[int], objective: ObjectiveConfig, verbalizer: Verbalizer | None) -> PreparedBatch:
        """Sample (student), rank (the student's top ids where it did not sample), score (teacher): the batch."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            timings[f"time/{name}_s"] = time.perf_counter() - clock
            clock = time.perf_counter()

        rows = [self.train_rows[i] for i in row_ids]
        if verbalizer is not None:
            verbalizer.reseed(zlib.crc32(f"{self.cfg.seed}:{row_ids}".encode()))
        prompts = steps.build_prompts(rows, self.tokenizer, verbalizer)
        rejected: list = []
        generated: list = []
        rollout_stats: dict[str, float] = {}
        student_writes = self.cfg.recipe.on_kd_responses == "student"
        to_generate = steps.generation_requests(prompts, objective, student_writes)
        if to_generate:
            top_ids = self.teacher.student_top_k if self.teacher is not None else 0
            spec = self.rollout.sampling_spec(
                top_ids=top_ids, sampling=self.cfg.rollout.sampling, stop_token_ids=(self.tokenizer.eos_token_id,)
            )
            rejected, generated = steps.split_generations(self.rollout.generate(to_generate, spec), prompts, objective)
            rollout_stats = steps.rollout_metrics(rejected, generated)
            tokens = sum(len(g.response_ids) for g in rejected + generated)
            lap("generate")
            rollout_stats["rollout/tokens_per_s"] = tokens / max(timings["time/generate_s"], 1e-9)
        kd = steps.KdSets()
        if objective.uses_off_kd:
            kd.off = steps.ground_truth_sequences(prompts)
        if objective.uses_on_kd:
            kd.on = (
                steps.on_policy_sequences(prompts, generated)
                if student_writes
                else steps.teacher_written_sequences(prompts, [self.teacher_responses[r.prompt] for r in rows])
            )
        scores = self._rank_and_score(kd, lap, [r.lang for r in rows])
        batch = steps.assemble_batch(prompts, rejected, kd, scores)
        if self.route is not None and objective.uses_teacher:
            batch.off_kd_weights = [self.route.weights["off"].get(r.lang, 1.0) for r in rows]
            batch.on_kd_weights = [self.route.weights["on"].get(r.lang, 1.0) for r in rows]
            if self.route.ground_truth and objective.uses_off_kd:
                batch.ground_truth_weights = [float(r.lang in self.route.ground_truth) for r in rows]
        if self.teacher is not None:
            timings["teacher/retries"] = float(self.teacher.retries)  # so far in the stage
            timings["teacher/replica_restarts"] = float(self.teacher.replica_restarts())
        if self.rollout is not None:
            timings["rollout/restarts"] = float(self.rollout.restarts)  # so far in the run
        return PreparedBatch(batch, row_ids, {**rollout_stats, **timings})

    def _rank_and_score(self, kd: steps.KdSets, lap, languages: list[str]) -> dict:
        """The teacher's scores of each KD set, by name (one sequence per row, rows in `languages`' order).

        Scoring overlaps ranking: sets that already carry the student's top ids go to the teacher first, while
        the rollout engine ranks the others (sequences the student did not sample) with a prefill. Rows of
        languages routed to the other teacher are scored by it.
        """
        if not kd.items():
            return {}
        top_k = self.teacher.student_top_k

        def score(term: str, sequences: steps.KdSequences):
            to_other = self.route.to_other[term] if self.route is not None else set()
            routed = [lang in to_other for lang in languages]
            if self.other_teacher is None or not any(routed):
                return self.teacher.score(sequences)
            return RoutedScores(self.teacher, self.other_teacher, sequences, routed)

        unranked = {k: s for k, s in kd.items() if top_k > 0 and s.student_top_ids is None}
        pending = {k: score(k, s) for k, s in kd.items() if k not in unranked}
        if unranked:
            ranked = self.rollout.rank_ids([r for s in unranked.values() for r in s.rank_requests()], top_k)
            for s in unranked.values():
                s.student_top_ids, ranked = ranked[: len(s.responses)], ranked[len(s.responses) :]
            lap("rank")
            pending.update({k: score(k, s) for k, s in unranked.items()})
        scores = {k: p.result() for k, p in pending.items()}
        lap("score")
        return scores

    def learn(self, prepared: PreparedBatch, max_staleness: int) -> dict[str, float]:
        """One optimizer step on a prepared batch, refusing samples older than the staleness bound."""
        versions = prepared.batch.policy_versions
        metrics = dict(prepared.metrics)
        if versions:
            staleness = [self.learner_steps - v for v in versions]
            if max(staleness) > max_staleness:
                raise StalenessError(
                    f"a sample of policy version {min(versions)} reached learner version {self.learner_steps}: "
                    f"staleness {max(staleness)} > max_staleness {max_staleness}"
                )
            metrics["rollout/staleness"] = float(max(staleness))
            metrics["rollout/staleness_mean"] = sum(staleness) / len(staleness)
        clock = time.perf_counter()
        try:
            metrics.update(self.learner.train_step(prepared.batch))
        except ray.exceptions.RayActorError as error:
            raise self._learner_failure(error) from None
        self.learner_steps += 1
        metrics["time/train_s"] = time.perf_counter() - clock
        if self.learner.ema_decay is not None:
            clock = time.perf_counter()
            buckets = self.learner.ema_buckets()
            # Rank 0 puts the buckets before it takes the next step either way: waiting here costs the learner
            # nothing and makes the metric rank 0's time, not the call's. Replicas load them at their next score.
            ray.wait([buckets])
            self.teacher.push_weights(self.learner_steps, buckets)
            metrics["time/teacher_sync_s"] = time.perf_counter() - clock
        metrics["policy_version"] = float(self.learner_steps)
        return metrics

    def _push_policy(self) -> float:
        """Learner → rollout workers; the policy version is the number of optimizer steps behind the weights.
        Returns the seconds the learner side took (the workers load when they get to it)."""
        clock = time.perf_counter()
        self.version = self.learner_steps
        self.policy_sync.push(self.version)
        self.rollout_weights = None  # the learner's, not a checkpoint's
        self.result.policy_version = self.version
        return time.perf_counter() - clock

    def _route(self, stage: str) -> None:
        """Measures the teacher (once) and the student on the held-out rows per language, and sets each language's
        weight for each KD term by `routing`'s rule."""
        self._measure_routing_teacher()
        student = evaluate(self.rollout, self.tokenizer, self.routing_rows, self.cfg.eval.max_new_tokens)
        teacher_on_x, teacher_on_z = self._routing_teacher
        self.route = routing.decide(teacher_on_x, student, self.cfg.routing, teacher_on_z)

        def term(name: str, lang: str, teacher: dict[str, float]) -> str:
            other = " → other teacher" if lang in self.route.to_other[name] else ""
            if name == "off" and lang in self.route.ground_truth:
                other = " → ground truth"
            return f"{self.route.weights[name][lang]:g}{other} ({teacher[lang]:.0f} vs {student[lang]:.0f})"

        if teacher_on_z is None:
            said = [f"{lang} {term('off', lang, teacher_on_x)}" for lang in self.route.weights["off"]]
            what = "KD weight, teacher vs student exact match"
        else:
            said = [
                f"{lang} {term('off', lang, teacher_on_x)} / {term('on', lang, teacher_on_z)}"
                for lang in self.route.weights["off"]
            ]
            what = "Off-KD / On-KD weight, teacher on x / on z vs student exact match"
        self._say(f"[{stage}] routing ({what}): " + ", ".join(said))

    def _measure_routing_teacher(self) -> None:
        """The teacher's exact match on the held-out rows, once per run, on a vLLM engine of its own: on x, and with
        `routing.per_term` also on the z On-KD shows it (its random choices fixed by the run's seed)."""
        if self._routing_teacher is not None:
            return
        row_sets = {"x": self.routing_rows}
        if self._on_kd_shows_the_teacher_z():
            row_sets["z"] = routing.as_the_teacher_sees_them(self.routing_rows, self._verbalizer(), self.cfg.seed)
        self._say(
            f"[routing] measuring the teacher on {len(self.routing_rows)} held-out rows ({' and '.join(row_sets)})"
        )
        scores = evaluate_checkpoint_on(
            self.cfg.rollout, self.cfg.models.teacher, row_sets, self.cfg.eval.max_new_tokens, self.cfg.seed
        )
        self._routing_teacher = (scores["x"], scores.get("z"))

    def _on_kd_shows_the_teacher_z(self) -> bool:
        """Whether On-KD's teacher prompt differs from x, so that `routing.per_term` has a second prompt to measure."""
        cfg = self.cfg
        return (
            cfg.routing.per_term
            and cfg.objective.uses_on_kd
            and cfg.recipe.on_kd_responses == "student"
            and cfg.verbalizer.mode != "none"
        )

    def _restore_workers(self, lost: list[int]) -> None:
        """Restarted rollout workers take the newest pushed weights (between two learner steps)."""
        with self._learner_busy:
            self._say(f"restoring rollout worker(s) {lost} after a restart, policy version {self.version}")
            self.policy_sync.restore(lost, self.version)

    def _learner_failure(self, error: Exception) -> checkpoints.RunFailure:
        """A dead learner rank ends the run: its optimizer state is gone, so only a checkpoint can continue it."""
        return self._failure(
            f"a learner rank died during optimizer step {self.learner_steps + 1} ({_first_line(error)})"
        )

    def _failure(self, what: str) -> checkpoints.RunFailure:
        """One line: what ended the run, and where a resume would continue from."""
        found = checkpoints.complete(self.run_dir)
        where = (
            f"continue from {found[-1].name} with `dudi train CONFIG --resume`"
            if found
            else "no checkpoint was written yet (checkpoint.every_steps)"
        )
        return checkpoints.RunFailure(f"{what}; {where}")

    # --- checkpoints -----------------------------------------------------------------------------------------
    def _write_checkpoint(self, stage: str, step: int, stage_done: bool = False) -> None:
        """Inside a stage: the learner's DeepSpeed state and an HF export; at its end: the stage's HF checkpoint,
        already written, is recorded as finished."""
        clock = time.perf_counter()
        state = checkpoints.RunState(
            stage=stage,
            stage_step=step,
            stage_done=stage_done,
            learner_steps=self.learner_steps,
            finished=dict(self.finished),
            teacher_responses=self.teacher_responses,
            metrics_lines=checkpoints.count_lines(self.run_dir / "metrics.jsonl"),
            ledger_lines=checkpoints.count_lines(self.run_dir / "ledger.jsonl"),
            result={
                "accuracy": self.result.accuracy,
                "stage_seconds": self.result.stage_seconds,
                "curves": self.result.curves,
            },
        )

        def payload(directory: Path) -> None:
            if stage_done:
                return
            self.learner.save_state(str(directory / "learner"))
            self.learner.save_checkpoint(str(directory / "student"))
            self.tokenizer.save_pretrained(str(directory / "student"))

        path = checkpoints.write(self.run_dir, state, payload, self.cfg.checkpoint.keep_last)
        seconds = time.perf_counter() - clock
        self.result.checkpoint_seconds[path.name] = round(seconds, 3)
        self._say(f"[{stage}] checkpoint {path.name} ({seconds:.2f} s)")

    def _restore(self, name: str, objective: ObjectiveConfig) -> int:
        """On a resumed run's interrupted stage: the learner's state from the checkpoint, the rollout workers and
        an EMA teacher on the same weights. Returns the steps of the stage already trained (0 otherwise)."""
        self._stage_steps_done = 0
        if self.resume_from is None or self.resume_from[1].stage != name or self.resume_from[1].stage_done:
            return 0
        directory, state = self.resume_from
        self.resume_from = None
        self._say(f"[{name}] resuming after step {state.stage_step} from {directory}")
        self.learner.load_state(str(directory / "learner"))
        self.learner_steps = state.learner_steps
        if objective.needs_rollouts:
            self._push_policy()
            self.policy_sync.wait()
        self._stage_first_version = self.version
        if self.learner.ema_decay is not None:
            self.teacher.push_weights(self.learner_steps, self.learner.ema_buckets())
        self._stage_steps_done = state.stage_step
        return state.stage_step

    # --- helpers ---------------------------------------------------------------------------------------------
    def _start_teacher(self, init_path: str, objective: ObjectiveConfig) -> None:
        """Deploys the stage's teacher: models.teacher, or the stage's initial student (frozen, or its EMA)."""
        kind = self.cfg.recipe.teacher
        model_path = self.cfg.models.teacher if kind == "model" else init_path
        self._say(
            f"deploying the teacher server (Ray Serve, {self.cfg.teacher.num_replicas} replica(s), "
            f"{self.cfg.scoring.format} scores) on {model_path} [{kind}]"
        )
        self.teacher = TeacherClient(
            self.cfg.teacher, self.cfg.scoring, model_path, objective.kd_temperature, self.placement.pinned_options()
        )
        if self.routes_to_other_teacher and kind == "model":
            other = self.cfg.routing.other_teacher
            self._say(f"deploying the other teacher for routed languages on {other}")
            # Its own Serve app and HTTP route beside the first; the request policy is the run's.
            app = self.cfg.teacher.model_copy(
                update={
                    "app_name": f"{self.cfg.teacher.app_name}-other",
                    "route_prefix": f"{self.cfg.teacher.route_prefix}-other",
                }
            )
            self.other_teacher = TeacherClient(
                app, self.cfg.scoring, other, objective.kd_temperature, self.placement.pinned_options()
            )

    def _stop_teacher(self) -> None:
        for client in (self.teacher, self.other_teacher):
            if client is not None:
                client.shutdown()
        self.teacher = self.other_teacher = None

    def _generate_teacher_responses(self) -> None:
        """SeqKD: one ŷ ~ π_T(·|x) per training prompt, sampled once by a vLLM engine on the teacher."""
        if self.teacher_responses:
            return
        prompts = sorted({r.prompt for r in self.train_rows})
        self._say(f"generating SeqKD responses with the teacher (vLLM) for {len(prompts)} prompts")
        engine = RolloutGroup(
            self.cfg.rollout,
            self.cfg.models.teacher,
            self.cfg.seed + 7919,
            num_workers=1,
            actor_options=[self.placement.pinned_options()],
        )
        try:
            requests = [GenerationRequest(encode_prompt(self.tokenizer, p)) for p in prompts]
            results = engine.generate(requests, engine.sampling_spec(stop_token_ids=(self.tokenizer.eos_token_id,)))
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

    def _eval_due(self, stage: str, step: int, num_steps: int) -> bool:
        every = self.cfg.eval.every_steps
        return self.rollout is not None and every > 0 and step % every == 0 and step < num_steps

    def _evaluate_during(self, stage: str, step: int) -> dict[str, float]:
        """The student as of this step, on the rollout workers (methods that never sample push for it)."""
        with self._learner_busy:
            if self.version != self.learner_steps:
                self._push_policy()
        scores = self._evaluate_rollout()
        curve = self.result.curves.setdefault(stage, [])
        curve[:] = [point for point in curve if point["step"] < step]  # a resumed run measures these again
        curve.append({"step": step, **scores})
        self._say(f"[{stage}] step {step}: eval avg exact match {scores['avg']:.1f}%")
        return {f"eval/{key}": value for key, value in scores.items()}

    def _evaluate_rollout(self) -> dict[str, float]:
        return evaluate(self.rollout, self.tokenizer, self.eval_rows, self.cfg.eval.max_new_tokens)

    def evaluate_model(self, model_path: str) -> dict[str, float]:
        """Greedy eval of another checkpoint on a fresh single vLLM worker."""
        self._say(f"evaluating {model_path}")
        return self.evaluate_model_on(model_path, self.eval_rows)

    def evaluate_model_on(self, model_path: str, rows: list) -> dict[str, float]:
        return evaluate_checkpoint(self.cfg.rollout, model_path, rows, self.cfg.eval.max_new_tokens, self.cfg.seed)

    def _write_results(self) -> None:
        import json

        summary = {
            "checkpoints": self.result.checkpoints,
            "accuracy": self.result.accuracy,
            "stage_seconds": self.result.stage_seconds,
            "policy_version": self.result.policy_version,
            "first_step_seconds": self.result.startup.get("first_step"),
            "startup": self.result.startup,
            "weight_sync": self.result.weight_sync,
            "checkpoint_seconds": self.result.checkpoint_seconds,
            "curves": self.result.curves,
            "nodes": self.result.nodes,
        }
        (self.run_dir / "results.json").write_text(json.dumps(summary, indent=2))
        if self.result.accuracy:
            table = format_table(self.result.accuracy, self.languages)
            (self.run_dir / "results.md").write_text(table + "\n")
        write_results_png(self.run_dir, self.result.accuracy, self.languages)

    def _mark(self, event: str) -> float:
        """Seconds from the start of the run until `event` first happened (the start-up profile)."""
        return self.result.startup.setdefault(event, round(time.perf_counter() - self.started, 1))

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def train(cfg: RunConfig, progress: bool = True, resume: bool = False) -> RunResult:
    return Trainer(cfg, progress, resume=resume).run()
