"""End-to-end distillation throughput against TRL's GKDTrainer on exactly the same work, side by side in one run.

    pip install -r benchmarks/requirements-trl.txt
    python benchmarks/vs_trl.py [--steps 20] [--batch-size 32] [--new-tokens 48] [--variants default-sync ...]

The work: the tiny world's student and teacher (`dudi tiny-world`), its training prompts, pure on-policy
distillation (λ = 1: every step samples from the student), generalized JSD β = 0.5, sampling temperature 0.9,
`--new-tokens` new tokens, `--batch-size` prompts per step, `--steps` steps. TRL runs with its best settings here
(2 torch threads, gradient checkpointing off so generation keeps its KV cache); this project runs as a user runs it,
`dudi train configs/demo.yaml` with the overrides below, in a fresh process each (Ray, vLLM, Serve, DeepSpeed
start-up included). Reported per system: steady-state samples/s (batch / median step time after 3 warm-up steps),
samples/s including start-up (all samples / time from process launch to the end of the last step), the share of
wall time the learner waited for data, and the ratio to TRL.
Writes `benchmarks/results/vs_trl.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 3

# name → overrides of configs/demo.yaml (on top of the common ones in `ours_overrides`).
VARIANTS = {
    "default-sync": [],
    "default-async": ["distill.max_staleness=1"],
    "full-zero0-sync": ["scoring.format=full", "learner.zero_stage=0"],
    "full-zero0-async": ["scoring.format=full", "learner.zero_stage=0", "distill.max_staleness=1"],
    # vLLM's CPU worker binds itself to core 0: one thread each for learner and teacher keeps them off each other.
    "full-zero0-async-1thread": [
        "scoring.format=full",
        "learner.zero_stage=0",
        "distill.max_staleness=1",
        "learner.num_threads=1",
        "teacher.num_threads=1",
    ],
}


def ours_overrides(args, out_dir: Path) -> list[str]:
    return [
        "method=gkd",
        "learner.objective.lam=1",
        "cold_start.enabled=false",
        f"distill.steps={args.steps}",
        f"distill.batch_size={args.batch_size}",
        "distill.lr=1e-3",
        f"rollout.sampling.max_new_tokens={args.new_tokens}",
        "rollout.sampling.temperature=0.9",
        "eval.compare_teacher=false",
        "eval.at_end_of_stages=false",
        f"output_dir={out_dir}/{{name}}",
    ]


def step_stats(launched: float, step_ends: list[float], batch: int) -> dict:
    durations = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)]
    steady = statistics.median(durations[WARMUP - 1 :])
    return {
        "steps": len(step_ends),
        "median_step_s": round(steady, 4),
        "samples_per_s_steady": round(batch / steady, 2),
        "samples_per_s_with_startup": round(batch * len(step_ends) / (step_ends[-1] - launched), 2),
        "first_step_s": round(step_ends[0] - launched, 1),
    }


def run_ours(args, name: str, overrides: list[str], tmp: Path) -> dict:
    out_dir = tmp / name
    command = [sys.executable, "-m", "orchestrator", "train", "configs/demo.yaml", *ours_overrides(args, out_dir)]
    command += [*overrides, f"name={name}"]
    launched = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in lines if line["stage"] == "distill"]
    stats = step_stats(launched, [line["time"] for line in lines], args.batch_size)
    steady = lines[WARMUP:]
    wall = sum(line["time/train_s"] + line["time/wait_s"] + line.get("time/sync_s", 0.0) for line in steady) or float(
        "nan"
    )
    stats["learner_wait_share"] = round(sum(line["time/wait_s"] for line in steady) / wall, 3)
    stats["phases_s"] = {
        key: round(statistics.median(line[key] for line in steady), 4)
        for key in sorted(steady[0])
        if key.startswith("time/")
    }
    stats["staleness_max"] = max(line.get("rollout/staleness", 0.0) for line in lines)
    return {"system": f"dudi-dist {name}", "overrides": overrides, **stats}


def run_trl(args, tmp: Path) -> dict:
    out = tmp / "trl.json"
    launched = time.time()
    command = [sys.executable, __file__, "--trl-child", str(out), "--threads", str(args.trl_threads)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens)]
    subprocess.run(command, cwd=ROOT, check=True)
    step_ends = json.loads(out.read_text())["step_ends"]
    return {
        "system": f"TRL GKDTrainer ({args.trl_threads} threads)",
        **step_stats(launched, step_ends, args.batch_size),
    }


def trl_child(args) -> None:
    """TRL's GKDTrainer on the tiny world: pure on-policy (lmbda = 1), JSD β = 0.5, its best settings here."""
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from orchestrator.config import tiny_world_dir

    world = tiny_world_dir()
    rows = [json.loads(line) for line in (world / "data" / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            for r in rows
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(world / "student")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(time.time())

    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-3,
            lmbda=1.0,
            beta=0.5,
            temperature=0.9,
            max_new_tokens=args.new_tokens,
            gradient_checkpointing=False,  # TRL's default (on) disables the KV cache in generation
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            max_length=512,
            seed=0,
        )
        trainer = GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(world / "student"),
            teacher_model=AutoModelForCausalLM.from_pretrained(world / "teacher"),
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    Path(args.trl_child).write_text(json.dumps({"step_ends": step_ends}))


def markdown(report: dict) -> str:
    trl = report["results"][0]
    lines = [
        "# Distillation throughput: DuDi-Dist vs TRL's GKDTrainer (same work, one run)",
        "",
        f"{report['machine']}. Work: tiny-world student ← teacher, pure on-policy (λ = 1), JSD β = 0.5, T = 0.9, "
        f"{report['new_tokens']} new tokens, batch {report['batch_size']}, {report['steps']} steps; steady = median "
        f"step after {WARMUP} warm-up steps; with start-up = all samples / (launch → last step). "
        f"Command: `{report['command']}`.",
        "",
        "| system | samples/s steady | × TRL | samples/s with start-up | × TRL | first step (s) | learner waits |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        wait = f"{100 * r['learner_wait_share']:.0f} %" if "learner_wait_share" in r else "–"
        lines.append(
            f"| {r['system']} | {r['samples_per_s_steady']:.1f} | "
            f"{r['samples_per_s_steady'] / trl['samples_per_s_steady']:.2f} | {r['samples_per_s_with_startup']:.1f} | "
            f"{r['samples_per_s_with_startup'] / trl['samples_per_s_with_startup']:.2f} | {r['first_step_s']:.1f} | "
            f"{wait} |"
        )
    lines += ["", "Median seconds per phase and step (ours):", ""]
    for r in report["results"][1:]:
        phases = ", ".join(f"{k.removeprefix('time/').removesuffix('_s')} {v:.3f}" for k, v in r["phases_s"].items())
        lines.append(f"- {r['system']}: {phases}; max staleness {r['staleness_max']:.0f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--trl-threads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--trl-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        trl_child(args)
        return
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "command": "python benchmarks/vs_trl.py " + " ".join(sys.argv[1:]),
        "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["results"].append(run_trl(args, Path(tmp)))
        print(json.dumps(report["results"][-1]), flush=True)
        for name in args.variants:
            report["results"].append(run_ours(args, name, VARIANTS[name], Path(tmp)))
            print(json.dumps(report["results"][-1]), flush=True)
    (args.out / "vs_trl.json").write_text(json.dumps(report, indent=2))
    (args.out / "vs_trl.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
