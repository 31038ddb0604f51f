"""Weight sync, learner rank 0 → a vLLM rollout worker, for each transport, against a plain memcpy of the same bytes.

    python benchmarks/weight_sync.py [--shapes tiny-world qwen2.5-0.5b] [--repeats 3]

For each model (the tiny world's student; a random float32 Qwen2 of Qwen2.5-0.5B's shape, with the tiny tokenizer)
one DeepSpeed learner rank (ZeRO-3) and one vLLM worker start on this machine, and `PolicySync` pushes the weights
and waits until the worker has them in place: through shared-memory buffers the worker maps (the same-node default),
through files in /dev/shm (the other same-node path) and through the gloo weight group (the path that crosses
nodes). A sync's time runs from the push to the worker's last byte loaded
(gather, copy-out, transfer, vLLM's in-place reload and repacking). The reference is `torch` copying one buffer of
the same size on this machine. Best of `--repeats`. Writes `benchmarks/results/weight_sync.md` and `.json`.

The floor no transport can go under: after the transports, one vLLM engine in this process reloads the same weights
from tensors already in its worker's memory (vLLM's in-place reload, the tied head re-tied as the rollout worker
does), profiled to split the time into vLLM's CPU GEMM weight repacking (oneDNN handlers) and copies.
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


def engine_floor(path: str, repeats: int) -> dict:
    """Best in-place reload of `path`'s weights from the worker's own memory, and where its time goes."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process, as in a rollout actor
    from vllm import LLM

    from rollout.config import RolloutConfig

    config = RolloutConfig()
    llm = LLM(
        model=path,
        dtype=config.dtype,
        max_model_len=256,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enforce_eager=True,
        max_logprobs=0,
        worker_extension_cls="rollout.weight_receiver.WeightReceiver",
        use_tqdm_on_load=False,
    )
    try:
        return llm.collective_rpc(_reload_from_memory, args=(path, repeats))[0]
    finally:
        del llm
        import gc

        gc.collect()


def _reload_from_memory(worker, path: str, repeats: int) -> dict:
    """Runs in vLLM's worker (`worker` is its `self`): the weights in memory first, then timed reloads."""
    import torch
    from safetensors.torch import load_file

    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update({name: tensor.clone() for name, tensor in load_file(str(file)).items()})
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        worker.model_runner.reload_weights(weights_iterator=iter(state.items()))
        worker._after_reload()
        best = min(best, time.perf_counter() - started)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        worker.model_runner.reload_weights(weights_iterator=iter(state.items()))
        worker._after_reload()
    self_us = {event.key: event.self_cpu_time_total for event in profile.key_averages()}
    total_us = sum(self_us.values())
    repack_us = sum(us for key, us in self_us.items() if "onednn" in key or "dnnl" in key or "weight_packed" in key)
    return {
        "engine_floor_s": best,
        "engine_floor_repack_share": repack_us / total_us,
        "engine_floor_copy_share": self_us.get("aten::copy_", 0.0) / total_us,
    }


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
        for transport in ("shared", "files", "broadcast"):
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
    finally:
        learner.shutdown()
        rollout.shutdown()
    row.update(engine_floor(path, repeats))  # after the actors are gone: the engine reserves its share of memory
    return row


def markdown(report: dict) -> str:
    lines = [
        "# Weight sync: learner rank 0 → vLLM worker, against memcpy",
        "",
        f"{report['machine']}; one ZeRO-3 learner rank and one vLLM worker on one node; best of {report['repeats']}; "
        f"push → last byte loaded in the engine. Command: `{report['command']}`. Engine floor: vLLM's in-place "
        "reload from tensors already in the worker's memory (no transport at all); repack: its share spent building "
        "the CPU GEMM kernels' packed weights (oneDNN), copy: its share in tensor copies.",
        "",
        "| model | MiB | buckets | memcpy (s) | shared memory (s) | × memcpy | files via /dev/shm (s) | × memcpy "
        "| gloo broadcast (s) | × memcpy | engine floor (s) | × memcpy | repack | copy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        memcpy = r["memcpy_s"]
        lines.append(
            f"| {r['model']} | {r['bytes'] / 2**20:.1f} | {r['buckets']} | {memcpy:.4f} | {r['shared_s']:.4f} | "
            f"{r['shared_s'] / memcpy:.1f} | {r['files_s']:.4f} | "
            f"{r['files_s'] / memcpy:.1f} | {r['broadcast_s']:.4f} | {r['broadcast_s'] / memcpy:.1f} | "
            f"{r['engine_floor_s']:.4f} | {r['engine_floor_s'] / memcpy:.1f} | "
            f"{r['engine_floor_repack_share']:.0%} | {r['engine_floor_copy_share']:.0%} |"
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
