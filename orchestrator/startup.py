"""Start-up checks and shared set-up: Ray, tokenizer, vocabulary compatibility of teacher and student."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import RayConfig


class StartupError(RuntimeError):
    pass


def load_tokenizer(model_path: str, end_of_turn: str | None = None):
    """The student's tokenizer; with `end_of_turn`, that token becomes its EOS (what ends every response)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if end_of_turn is not None:
        if end_of_turn not in tokenizer.get_vocab():
            raise StartupError(f"models.end_of_turn {end_of_turn!r} is not a token of {model_path!r}")
        tokenizer.eos_token = end_of_turn
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise StartupError(f"the tokenizer of {model_path!r} has no chat template")
    return tokenizer


def check_model(path: str, field: str) -> None:
    """A local model directory, or an HF name already in the cache: caught here rather than inside a Ray actor."""
    local = Path(path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise StartupError(f"{field} {path!r} is not a model directory (no config.json)")
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # not a valid repo id either
        cached = None
    if not isinstance(cached, str):
        raise StartupError(f"{field} {path!r} is neither a local directory nor a model in the HF cache")


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise StartupError(f"output_dir {str(path)!r} cannot be written: {error.strerror or error}") from None


def check_port_free(host: str, port: int, field: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StartupError(f"{field} {port} on {host} is in use; pick another (e.g. {field}=8322)") from None


def check_shared_vocabulary(student_path: str, teacher_path: str, end_of_turn: str | None = None) -> None:
    """Token-level distillation compares distributions id by id: ids and special tokens must agree.

    A base student and an instruct teacher name different EOS tokens (Qwen2.5: <|endoftext|> vs <|im_end|>);
    with `end_of_turn` set, responses end with that token for both, so only the pad tokens are compared."""
    from transformers import AutoConfig, AutoTokenizer

    student, teacher = AutoTokenizer.from_pretrained(student_path), AutoTokenizer.from_pretrained(teacher_path)
    problems = []
    if student.get_vocab() != teacher.get_vocab():
        problems.append(f"token ids differ ({len(student)} vs {len(teacher)} tokens)")
    for attr in ("pad_token",) if end_of_turn is not None else ("eos_token", "pad_token"):
        if getattr(student, attr) != getattr(teacher, attr):
            hint = "; set models.end_of_turn to the chat template's end of turn" if attr == "eos_token" else ""
            problems.append(f"{attr} differs ({getattr(student, attr)!r} vs {getattr(teacher, attr)!r}){hint}")
    student_vocab = AutoConfig.from_pretrained(student_path).vocab_size
    teacher_vocab = AutoConfig.from_pretrained(teacher_path).vocab_size
    if student_vocab != teacher_vocab:
        problems.append(f"logit width differs (vocab_size {student_vocab} vs {teacher_vocab})")
    if problems:
        raise StartupError(
            f"student {student_path!r} and teacher {teacher_path!r} do not share a vocabulary: " + "; ".join(problems)
        )


def init_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address)
        return
    ray.init(
        # "local": a Ray of its own even where `ray start` left a cluster on this machine (ray.address=auto joins).
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        # vLLM logs at INFO, and warns at every in-place reload that the rotary embedding and a tied LM head
        # have no weights to load (true, and harmless): either would drown the progress bars of a local run.
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false"}},
    )
