"""The run config: one YAML file plus dotted command-line overrides, validated before anything starts.

Component configs are owned by their components and composed here. Importing this module does not
import torch, Ray or vLLM, so `dudi --help` and config errors come back at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learner.config import LearnerConfig, ObjectiveConfig
from orchestrator.presets import METHODS, apply_preset, deep_merge
from rollout.config import RolloutConfig
from teacher_server.config import TeacherConfig


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false. PyYAML follows YAML 1.1, where a bare `off`, `on`, `yes` or `no` is
    a boolean, so `routing.below_margin=off` reached the config as False and failed validation. Boolean fields
    still take on/off/yes/no: pydantic reads those strings as booleans."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


LANGUAGES = ("en", "id", "vi", "th", "ta", "tl", "ms", "my")


class ConfigError(ValueError):
    """A config problem, phrased with the dotted name of the field at fault."""


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student: str = Field(
        description="Student init: local dir or HF cache name. `{tiny_world}` expands to the tiny-world dir."
    )
    teacher: str = Field(description="Teacher: local dir or HF cache name; must share the student's vocabulary.")
    end_of_turn: str | None = Field(
        None,
        description="The token that ends an assistant turn: every response is trained to end with it and generation "
        "stops at it. None = the student tokenizer's EOS. Set it when the student is a base model whose EOS is not "
        "its chat template's end of turn (Qwen2.5 base: <|endoftext|>; the template ends turns with <|im_end|>).",
    )


class DataConfig(BaseModel):
    """Where the rows come from and which columns hold what."""

    model_config = ConfigDict(extra="forbid")

    train_path: str = Field(description="jsonl / json / parquet file, or a dir saved with `Dataset.save_to_disk`.")
    eval_path: str
    prompt_column: str = "prompt"
    response_column: str = "response"
    lang_column: str = "lang"
    prompt_en_column: str = Field(
        "prompt_en", description="English translation of the prompt (COPSD's privileged context)."
    )
    response_en_column: str = Field("response_en", description="English reference response (COPSD).")
    languages: list[str] | None = Field(None, description="Keep only these languages (None = all).")
    max_eval_per_language: int | None = Field(None, ge=1)
    strict: bool = Field(
        False,
        description="Stop at the first unusable row (file and row number) instead of skipping it and counting why.",
    )


class VerbalizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "english", "multilingual", "crosslingual", "mix", "privileged"] = Field(
        "crosslingual",
        description="How z and p_z are built (DESIGN.md); privileged = COPSD: z adds the English problem and answer.",
    )
    include_english_target: bool = Field(
        True, description="Crosslingual targets = training languages, plus English if set."
    )
    templates_path: str | None = Field(None, description="YAML of templates; None = the shipped ones.")


class StageConfig(BaseModel):
    """One training stage. `steps` wins over `epochs` when set."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    steps: int | None = Field(None, ge=1)
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1, description="Global batch (prompts per step), split over learner ranks.")
    lr: float | None = Field(None, gt=0.0, description="Overrides learner.lr for this stage.")
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Overrides learner.warmup_ratio for this stage."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] | None = Field(
        None, description="Overrides learner.lr_schedule for this stage (a decay ends at the stage's last step)."
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous rollouts: batches for the next steps are sampled and scored while the learner "
        "trains, from weights at most this many versions behind the learner's. 0 = synchronous.",
    )

    def learner_overrides(self) -> dict:
        """The learner fields this stage sets."""
        fields = {"lr": self.lr, "warmup_ratio": self.warmup_ratio, "lr_schedule": self.lr_schedule}
        return {key: value for key, value in fields.items() if value is not None}


class RecipeConfig(BaseModel):
    """Where the distillation stage's teacher and On-KD sequences come from (set by the method's preset)."""

    model_config = ConfigDict(extra="forbid")

    teacher: Literal["model", "student_start", "ema"] = Field(
        "model",
        description="model = models.teacher; student_start = the stage's frozen initial student (COPSD); "
        "ema = an EMA of the student, pushed by the learner after every step (SDFT).",
    )
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0, description="θ_ema ← d·θ_ema + (1−d)·θ for teacher=ema.")
    on_kd_responses: Literal["student", "teacher"] = Field(
        "student", description="Who writes the On-KD sequences: the student (on-policy) or the teacher (SeqKD)."
    )


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_end_of_stages: bool = True
    compare_teacher: bool = Field(
        False, description="Also evaluate the teacher (one more vLLM engine) for the final table."
    )
    max_new_tokens: int = Field(64, ge=1)
    every_steps: int = Field(
        0,
        ge=0,
        description="Also evaluate the student every N steps of each stage: eval/* metrics and results.json's "
        "curves (0: only at the end of stages).",
    )


class ScoringConfig(BaseModel):
    """What the training loop asks the teacher for, per response position (its request policy)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["sparse", "full"] = Field(
        "sparse", description="sparse: top-k + asked-for ids + tail mass; full: whole-vocabulary log-probs (same node)."
    )
    top_k: int = Field(64, ge=1, description="Sparse format: the teacher's top-k per position.")
    student_top_k: int = Field(
        64, ge=0, description="Sparse format: also score the student's top-k ids (and always the realized token)."
    )


class WeightSyncConfig(BaseModel):
    """How new weights go from learner rank 0 to the rollout workers."""

    model_config = ConfigDict(extra="forbid")

    transport: Literal["auto", "shared", "files", "broadcast"] = Field(
        "auto",
        description="shared: buffers on the learner's node that workers map without a copy (CUDA IPC when they "
        "share the learner's GPU, shared memory on CPU); files: safetensors in /dev/shm, read by workers on the "
        "learner's node; broadcast: a process group from learner rank 0 to every engine, any node (NCCL between "
        "GPUs, gloo otherwise); auto: shared when every worker is on the learner's node and sees its GPU, files when "
        "a worker there has no GPU to take an NCCL broadcast, else broadcast.",
    )
    verify: bool = Field(
        False,
        description="After every push, wait for it and compare a sha256 of every tensor on both ends (slow).",
    )


class RoutingConfig(BaseModel):
    """Per-language teacher routing: at the start of distillation (and every `every_steps`), the teacher and the
    student are measured per language (greedy exact match on held-out training rows), and where the teacher does
    not lead the student by `min_margin` points, that language's KD terms are switched off, down-weighted,
    scored by `other_teacher` instead, or replaced by the ground truth."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    rows_per_language: int = Field(
        20, ge=1, description="Training rows per language held out for the measurement (never trained on)."
    )
    min_margin: float = Field(
        0.0, description="Exact-match points the teacher must lead the student by for full KD weight in a language."
    )
    below_margin: Literal["off", "down_weight", "other_teacher", "ground_truth"] = Field(
        "down_weight",
        description="What a language where the teacher trails gets: KD weight 0, `down_weight`, its KD "
        "sequences scored by `other_teacher` (full weight), or `ground_truth`: Off-KD's teacher replaced by the "
        "data (cross-entropy on its y, Off-KD's weight) and On-KD off (the data cannot score the student's samples).",
    )
    down_weight: float = Field(0.5, ge=0.0, le=1.0)
    other_teacher: str | None = Field(
        None,
        description="below_margin=other_teacher: a second teacher (local dir or HF cache name, same vocabulary), "
        "deployed as its own Serve app beside models.teacher.",
    )
    every_steps: int = Field(0, ge=0, description="Measure the student again every N distillation steps (0: once).")
    per_term: bool = Field(
        False,
        description="Also measure the teacher on the prompt On-KD shows it (the verbalizer's z, which holds the "
        "demonstration) and weight On-KD by that; Off-KD keeps the measurement on x. Off, or where On-KD shows "
        "the teacher x (no verbalizer, SeqKD): x sets both.",
    )

    @model_validator(mode="after")
    def _other_teacher_named(self) -> RoutingConfig:
        if self.below_margin == "other_teacher" and not self.other_teacher:
            raise ValueError("routing.below_margin=other_teacher needs routing.other_teacher (a model path)")
        return self


class CheckpointConfig(BaseModel):
    """`<run>/checkpoints/`: what `dudi train CONFIG --resume` continues from."""

    model_config = ConfigDict(extra="forbid")

    every_steps: int = Field(
        0, ge=0, description="Also checkpoint every this many steps inside a stage (0 = only at the end of stages)."
    )
    keep_last: int = Field(2, ge=1, description="Complete checkpoints kept; older ones are deleted.")


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    placement: Literal["disaggregated", "colocated"] = Field(
        "disaggregated",
        description="disaggregated: each role where its resources are (see <role>.resources); colocated: learner, "
        "rollout workers and teacher replicas on one node (a STRICT_PACK placement group).",
    )

    address: str | None = Field(None, description="None = start a local Ray; 'auto' = join the running cluster.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a local Ray (None = all cores).")
    include_dashboard: bool | None = None


class RunConfig(BaseModel):
    """A whole run: stage 1 (cold-start SFT) then stage 2 (distillation, π_ref = stage 1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "dudi"
    method: Literal[METHODS] = Field("dudi", description="The preset that fills in the objective and recipe.")  # type: ignore[valid-type]
    output_dir: str = "runs/{name}"
    seed: int = 0
    models: ModelsConfig
    data: DataConfig
    verbalizer: VerbalizerConfig = Field(default_factory=VerbalizerConfig)
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    cold_start: StageConfig = Field(default_factory=StageConfig)
    distill: StageConfig = Field(default_factory=StageConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        for stage_name in ("cold_start", "distill"):
            stage: StageConfig = getattr(self, stage_name)
            if stage.batch_size % self.learner.num_ranks:
                raise ValueError(
                    f"{stage_name}.batch_size ({stage.batch_size}) must be divisible by learner.num_ranks ({self.learner.num_ranks})"
                )
        if self.eval.max_new_tokens >= self.rollout.max_model_len:
            raise ValueError("eval.max_new_tokens must be smaller than rollout.max_model_len")
        if self.rollout.sampling.max_new_tokens >= self.rollout.max_model_len:
            raise ValueError("rollout.sampling.max_new_tokens must be smaller than rollout.max_model_len")
        if self.recipe.on_kd_responses == "teacher" and not self.objective.uses_on_kd:
            raise ValueError("recipe.on_kd_responses=teacher needs On-KD (learner.objective.kd_weight > 0, lam > 0)")
        if self.recipe.on_kd_responses == "teacher" and self.verbalizer.mode != "none":
            raise ValueError(
                "recipe.on_kd_responses=teacher (SeqKD) scores the teacher's own x → ŷ; use verbalizer.mode=none"
            )
        if self.recipe.teacher == "ema" and not self.objective.uses_teacher:
            raise ValueError("recipe.teacher=ema needs a distillation term (learner.objective.kd_weight > 0)")
        if self.scoring.format == "sparse" and self.scoring.student_top_k > self.rollout.max_logprobs:
            raise ValueError(
                f"scoring.student_top_k ({self.scoring.student_top_k}) is above rollout.max_logprobs "
                f"({self.rollout.max_logprobs}), the most ids a vLLM engine ranks"
            )
        if self.routing.enabled and not (self.objective.uses_teacher and self.recipe.teacher == "model"):
            raise ValueError(
                "routing.enabled measures models.teacher against the student: it needs a KD term "
                "(learner.objective.kd_weight > 0) and recipe.teacher=model"
            )
        if self.routing.enabled and self.routing.below_margin == "ground_truth" and not self.objective.uses_off_kd:
            raise ValueError(
                "routing.below_margin=ground_truth puts the data in Off-KD's place, and this objective has no Off-KD "
                f"(learner.objective.lam={self.objective.lam:g}); use below_margin=off"
            )
        if self.data.languages:
            unknown = sorted(set(self.data.languages) - set(LANGUAGES))
            if unknown:
                raise ValueError(f"data.languages has unsupported codes {unknown}; supported: {list(LANGUAGES)}")
        return self

    @property
    def objective(self) -> ObjectiveConfig:
        return self.learner.objective

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


TINY_WORLD_SIZES = ("demo", "bench")


def tiny_world_dir(seed: int = 0, size: str = "demo") -> Path:
    """Where `dudi tiny-world [--size bench]` caches its models and data (outside git); `DUDI_TINY_WORLD`
    (`DUDI_TINY_WORLD_BENCH`) overrides it."""
    if size not in TINY_WORLD_SIZES:
        raise ValueError(f"tiny world size {size!r} is not one of {TINY_WORLD_SIZES}")
    variable = "DUDI_TINY_WORLD" if size == "demo" else "DUDI_TINY_WORLD_BENCH"
    if os.environ.get(variable):
        return Path(os.environ[variable])
    root = os.environ.get("DUDI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dudi")
    return Path(root) / (f"tiny-world-seed{seed}" if size == "demo" else f"tiny-world-bench-seed{seed}")


def qwen_shape_dir() -> Path:
    """Where the Qwen2.5-0.5B-shaped world is cached (benchmarks/qwen_shape.py); `DUDI_QWEN_SHAPE_WORLD` overrides it."""
    if os.environ.get("DUDI_QWEN_SHAPE_WORLD"):
        return Path(os.environ["DUDI_QWEN_SHAPE_WORLD"])
    root = os.environ.get("DUDI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dudi")
    return Path(root) / "qwen-shape"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`learner.lr=1e-4` → (['learner', 'lr'], 1e-4); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    return key.split("."), load_yaml(raw) if raw != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _expand_placeholders(raw: Any, values: dict[str, str]) -> Any:
    if isinstance(raw, dict):
        return {k: _expand_placeholders(v, values) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_expand_placeholders(v, values) for v in raw]
    if isinstance(raw, str):
        for name, value in values.items():
            raw = raw.replace("{" + name + "}", value)
    return raw


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {field}: {item['msg'].removeprefix('Value error, ')}")
    return "invalid run config:\n" + "\n".join(lines)


def read_config_file(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; `base: other.yaml` (relative to this file) is read first and overridden by this one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} is its own base")
    try:
        loaded = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{str(path)!r}: base must be a path to another config file")
    return deep_merge(read_config_file(path.parent / base, (*seen, path.resolve())), loaded)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (and its `base`), merge overlay YAML files, apply `key.sub=value` overrides, fill in the method's preset under both,
    expand `{tiny_world}`, `{tiny_world_bench}` and `{qwen_shape}`, validate."""
    raw: dict[str, Any] = read_config_file(path) if path is not None else {}
    # Overlay files (a resource plan, say) merge in the order given, before the dotted overrides.
    overrides = list(overrides or [])
    for overlay in [o for o in overrides if "=" not in o and o.endswith((".yaml", ".yml"))]:
        raw = deep_merge(raw, read_config_file(overlay))
    raw = apply_overrides(raw, [o for o in overrides if "=" in o or not o.endswith((".yaml", ".yml"))])
    try:
        raw = apply_preset(raw)
    except ValueError as error:
        raise ConfigError(f"  method: {error}") from None
    places = {
        "tiny_world": str(tiny_world_dir()),
        "tiny_world_bench": str(tiny_world_dir(size="bench")),
        "qwen_shape": str(qwen_shape_dir()),
    }
    raw = _expand_placeholders(raw, places)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
