"""`dudi`: the command line. Parses and validates first; torch, Ray and vLLM load only after that.

dudi tiny-world [--seed N] [--out DIR] [--force]
dudi train CONFIG.yaml [key.sub=value ...]
dudi eval CHECKPOINT [--data PATH]
dudi teacher serve CONFIG.yaml [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dudi", description="Multilingual on-policy distillation (DuDi) on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("tiny-world", help="build the tiny models and data (cached)")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument(
        "--size",
        choices=("demo", "bench"),
        default="demo",
        help="demo: the embedded default's world (minutes); bench: more data and a longer-trained teacher for "
        "benchmarks/compare_methods.py (built once, cached apart)",
    )
    world.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: $DUDI_TINY_WORLD or ~/.cache/dudi/tiny-world-seed<N> (bench: tiny-world-bench-seed<N>)",
    )
    world.add_argument(
        "--teacher-steps", type=int, default=None, help="teacher SFT steps (default: TinyWorldSpec.teacher_steps)"
    )
    world.add_argument("--force", action="store_true", help="rebuild even if cached")

    train = sub.add_parser("train", help="one run: cold-start SFT, then distillation")
    train.add_argument("config", type=Path)
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint of the run's output_dir"
    )
    train.add_argument(
        "overrides",
        nargs="*",
        help="overlay YAML files (merged in order, e.g. configs/plans/gpus-4.yaml), then dotted overrides, "
        "e.g. learner.lr=1e-4 distill.steps=10",
    )

    evaluation = sub.add_parser("eval", help="per-language exact match of a checkpoint (greedy, vLLM)")
    evaluation.add_argument("checkpoint")
    evaluation.add_argument(
        "--data", default=None, help="eval jsonl/parquet/dataset dir (default: the tiny world's eval split)"
    )
    evaluation.add_argument("--max-new-tokens", type=int, default=64)
    evaluation.add_argument("--prompt-column", default="prompt")
    evaluation.add_argument("--response-column", default="response")
    evaluation.add_argument("--lang-column", default="lang")

    data = sub.add_parser("data", help="prepare training data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    sea = data_sub.add_parser("sea-instruct", help="SEA-Instruct (the paper's data) → train/eval parquet")
    sea.add_argument("--source", required=True, help="a local copy (one folder per language) or the HF dataset id")
    sea.add_argument("--out", type=Path, default=Path("data/sea-instruct"))
    sea.add_argument("--per-language", type=int, default=4000, help="training rows per language (the paper's)")
    sea.add_argument("--eval-per-language", type=int, default=200)
    sea.add_argument("--languages", nargs="*", default=None, help="config names, e.g. Indonesian Thai (default: 7)")
    sea.add_argument("--seed", type=int, default=0)
    sea.add_argument("--all-quality", action="store_true", help="keep rows below Excellent / incoherent / unnatural")

    teacher = sub.add_parser("teacher", help="the teacher server alone")
    teacher_sub = teacher.add_subparsers(dest="teacher_command", required=True)
    serve = teacher_sub.add_parser("serve", help="serve the config's teacher over HTTP until interrupted")
    serve.add_argument("config", type=Path)
    serve.add_argument("overrides", nargs="*")
    return parser


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM unwind the command (its `finally` blocks release actors and the teacher), even where the
    shell started it with SIGINT ignored (a background job); a second signal leaves at once."""
    import os
    import signal

    received: list[int] = []

    def interrupt(signum, _frame):
        received.append(signum)
        if len(received) > 1:
            _stop_ray()
            os._exit(130)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _stop_ray() -> None:
    """Stops the Ray this process started (a local one: its processes go with it); leaves a cluster it joined."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from orchestrator.checkpoints import ResumeError, RunFailure
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.startup import StartupError

    _stop_on_signals()
    try:
        return _dispatch(args)
    except (ConfigError, DataError, StartupError, ResumeError) as error:
        print(f"dudi: {error}", file=sys.stderr)
        return 2
    except RunFailure as error:
        print(f"dudi: {error}", file=sys.stderr)
        _stop_ray()
        return 1
    except KeyboardInterrupt:
        print("dudi: interrupted; stopping", file=sys.stderr)
        _stop_ray()
        return 130


def _dispatch(args) -> int:
    if args.command == "tiny-world":
        from orchestrator.commands import tiny_world

        return tiny_world(args.seed, args.out, args.teacher_steps, args.force, args.size)
    if args.command == "train":
        from orchestrator.commands import train

        return train(args.config, args.overrides, resume=args.resume)
    if args.command == "eval":
        from orchestrator.commands import evaluate_checkpoint

        return evaluate_checkpoint(args)
    if args.command == "data":
        from orchestrator.sea_instruct import convert

        result = convert(
            args.source,
            args.out,
            args.per_language,
            args.eval_per_language,
            args.languages,
            args.seed,
            require_high_quality=not args.all_quality,
        )
        print(f"[sea-instruct] wrote {args.out}/train.parquet and eval.parquet: {result.kept}")
        return 0
    from orchestrator.commands import serve_teacher

    return serve_teacher(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
