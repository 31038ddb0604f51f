"""What each `dudi` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from orchestrator.config import DataConfig, RayConfig, load_config, tiny_world_dir


def tiny_world(seed: int, out: Path | None, teacher_steps: int | None, force: bool, size: str = "demo") -> int:
    from dataclasses import replace

    from orchestrator.tiny_world.build import FORMAT_VERSION, build, spec_for

    out = out or tiny_world_dir(seed, size)
    spec = spec_for(size, seed)
    if teacher_steps is not None:
        spec = replace(spec, teacher_steps=teacher_steps)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") == FORMAT_VERSION and manifest.get("spec") == asdict(spec):
            print(f"[tiny-world] cached at {out} (use --force to rebuild)")
            return 0
        print(f"[tiny-world] {out} was built by another version or spec; rebuilding")
    manifest = build(out, spec)
    print(
        f"[tiny-world] built {out} in {manifest['build_seconds']} s: teacher {manifest['teacher_parameters'] / 1e6:.2f}M params "
        f"(final loss {manifest['teacher_final_loss']:.3f}), student {manifest['student_parameters'] / 1e6:.2f}M params; "
        f"chance (best constant answer) {manifest['chance_exact_match']:.1f}%"
    )
    return 0


def train(config_path: Path, overrides: list[str], resume: bool = False) -> int:
    cfg = load_config(config_path, overrides)
    _check_local_teacher_port(cfg)
    from orchestrator.evaluate import format_table
    from orchestrator.loop import train as run_training

    started = time.perf_counter()
    result = run_training(cfg, resume=resume)
    print(f"\nrun finished in {time.perf_counter() - started:.0f} s; stages: {result.stage_seconds}")
    for name, path in result.checkpoints.items():
        print(f"checkpoint {name}: {path}")
    if result.accuracy:
        languages = [k for k in next(iter(result.accuracy.values())) if k != "avg"]
        print("\nexact match on the eval split (%), greedy:\n")
        print(format_table(result.accuracy, sorted(languages)))
    return 0


def evaluate_checkpoint(args) -> int:
    from orchestrator.data import load_examples
    from orchestrator.evaluate import evaluate_checkpoint as evaluate_model
    from orchestrator.evaluate import format_table
    from orchestrator.startup import check_model, init_ray
    from rollout.config import RolloutConfig

    data_path = args.data or str(tiny_world_dir() / "data" / "eval.jsonl")
    data = DataConfig(
        train_path=data_path,
        eval_path=data_path,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        lang_column=args.lang_column,
    )
    check_model(args.checkpoint, "checkpoint")
    rows = load_examples(data, "eval")
    init_ray(RayConfig())
    scores = evaluate_model(RolloutConfig(), args.checkpoint, rows, args.max_new_tokens)
    print(format_table({args.checkpoint: scores}, sorted(k for k in scores if k != "avg")))
    return 0


def _check_local_teacher_port(cfg) -> None:
    """Serve's HTTP proxy starts on this machine only when Ray does (no `ray.address`)."""
    from orchestrator.startup import check_port_free

    if cfg.ray.address is None:
        check_port_free(cfg.teacher.http_host, cfg.teacher.http_port, "teacher.http_port")


def serve_teacher(config_path: Path, overrides: list[str]) -> int:
    cfg = load_config(config_path, overrides)
    from orchestrator.startup import check_model

    check_model(cfg.models.teacher, "models.teacher")
    _check_local_teacher_port(cfg)
    from orchestrator.startup import init_ray
    from teacher_server.app import deploy

    init_ray(cfg.ray)
    deploy(cfg.models.teacher, cfg.teacher)
    t = cfg.teacher
    try:  # from the first line the user reads, Ctrl-C shuts the server down
        print(
            f"teacher {cfg.models.teacher} serving on http://{t.http_host}:{t.http_port}{t.route_prefix} (Ctrl-C stops it)\n"
            'POST JSON {"prompt_ids": [...], "response_ids": [...], "top_k": 64, "extra_ids": [[...], ...], '
            '"temperature": 1.0} (top_k null = full rows) → Arrow IPC; decode with teacher_server.wire.decode_response'
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        print("stopping the teacher server", flush=True)
        serve.shutdown()
        return 0
