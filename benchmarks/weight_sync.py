"""Weight sync, learner rank 0 → a vLLM rollout worker, for each transport, against a plain memcpy of the same bytes.

    python benchmarks/weight_sync.py [--shapes tiny-world qwen2.5-0.5b] [--repeats 3]

For each model (the tiny world's student; a random float32 Qwen2 of Qwen2.5-0.5B's shape, with the tiny tokenizer)
one DeepSpeed learner rank (ZeRO-3) and one vLLM worker start on this machine, and `PolicySync` pushes the weights
and waits until the worker has them in place: through files in /dev/shm (the same-node path) and through the gloo
weight group (the path that crosses nodes). A sync's time runs from the push to the worker's last byte loaded
(gather, copy-out, transfer, vLLM's in-place reload and repacking). The reference is `torch` copying one buffer of
the same size on this machine. Best of `--repeats`. Writes `benchmarks/results/weight_sync.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def model_dir(shape: str, tmp: Path) -> str:
    from orchestrator.config import tiny_world_dir

    student = tiny_world_dir() / "student"
    if shape == "tiny-world":
        return str(student)
    import torch
    from scorer_speed import build

    directory = tmp / shape
    build(shape, directory, torch.float32)
    for file in student.iterdir():
        if file.name.startswith("tokenizer") or file.name == "chat_template.jinja":
            shutil.copy(file, directory / file.name)
    return str(directory)


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return best


def measure(shape: str, repeats: int, tmp: Path) -> dict:
    import ray

    from learner.config import LearnerConfig, ObjectiveConfig
    from learner.group import LearnerGroup
    from orchestrator.config import WeightSyncConfig
    from orchestrator.weight_sync import PolicySync
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    path = model_dir(shape, tmp)
    rollout = RolloutGroup(RolloutConfig(max_model_len=256, enforce_eager=True, max_logprobs=0), path, seed=0)
    learner = LearnerGroup(
        LearnerConfig(zero_stage=3, lr=1e-4, objective=ObjectiveConfig(cross_entropy="sft", alpha=0, kd_weight=0)),
        path,
        None,
        pad_id=0,
        seed=0,
    )
    try:
        _, _, buckets = learner.weight_group_plan()
        nbytes = sum(spec.nbytes for bucket in buckets for spec in bucket)
        row = {"model": shape, "bytes": nbytes, "buckets": len(buckets), "memcpy_s": memcpy_seconds(nbytes, repeats)}
        version = 0
        for transport in ("files", "broadcast"):
            sync = PolicySync(learner, rollout, WeightSyncConfig(transport=transport))
            best = float("inf")
            for _ in range(repeats + 1):  # the first push also warms up the engine's reload path
                version += 1
                started = time.perf_counter()
                sync.push(version)
                sync.wait()
                best = min(best, time.perf_counter() - started)
            sync.close()
            row[f"{transport}_s"] = best
        started = time.perf_counter()
        ray.get(ray.put(bytearray(nbytes)))
        row["object_store_put_get_s"] = time.perf_counter() - started
        return row
    finally:
        learner.shutdown()
        rollout.shutdown()


def markdown(report: dict) -> str:
    lines = [
        "# Weight sync: learner rank 0 → vLLM worker, against memcpy",
        "",
        f"{report['machine']}; one ZeRO-3 learner rank and one vLLM worker on one node; best of {report['repeats']}; "
        f"push → last byte loaded in the engine. Command: `{report['command']}`.",
        "",
        "| model | MiB | buckets | memcpy (s) | files via /dev/shm (s) | × memcpy | gloo broadcast (s) | × memcpy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['bytes'] / 2**20:.1f} | {r['buckets']} | {r['memcpy_s']:.4f} | {r['files_s']:.4f} | "
            f"{r['files_s'] / r['memcpy_s']:.1f} | {r['broadcast_s']:.4f} | {r['broadcast_s'] / r['memcpy_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["tiny-world", "qwen2.5-0.5b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "ERROR"}})
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "repeats": args.repeats,
        "command": "python benchmarks/weight_sync.py " + " ".join(sys.argv[1:]),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            report["rows"].append(measure(shape, args.repeats, Path(tmp)))
            print(json.dumps(report["rows"][-1]), flush=True)
    ray.shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weight_sync.json").write_text(json.dumps(report, indent=2))
    (args.out / "weight_sync.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
