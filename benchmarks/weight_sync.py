"""Weight sync, learner rank 0 → a vLLM rollout worker, for each transport, against a plain memcpy of the same bytes.

    python benchmarks/weight_sync.py [--shapes tiny-world qwen2.5-0.5b] [--repeats 3]

For each model (the tiny world's student; a random float32 Qwen2 of Qwen2.5-0.5B's shape, with the tiny tokenizer)
one DeepSpeed learner rank (ZeRO-3) and one vLLM worker start on this machine, and `PolicySync` pushes the weights
and waits until the worker has them in place: through shared-memory buffers the worker maps (the same-node default),
through files in /dev/shm (the other same-node path) and through the gloo weight group (the path that crosses
nodes). A sync's time runs from the push to the worker's last byte loaded
(gather, copy-out, transfer, vLLM's in-place reload and repacking). The reference is `torch` copying one buffer of
the same size on this machine. Best of `--repeats`. Writes `benchmarks/results/weight_sync.md` and `.json`.

Then the EMA teacher's path: learner rank 0's EMA → a teacher replica's scorer, bucket by bucket through the Ray
object store (how a run sends it), against the same buckets over a gloo group into the same scorer.

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

import ray

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


def one_rank_learner(path: str, ema_decay: float | None = None):
    """One ZeRO-3 DeepSpeed rank on `path`: the sender in every measurement."""
    from learner.config import LearnerConfig, ObjectiveConfig
    from learner.group import LearnerGroup

    objective = ObjectiveConfig(cross_entropy="sft", alpha=0, kd_weight=0)
    config = LearnerConfig(zero_stage=3, lr=1e-4, objective=objective)
    return LearnerGroup(config, path, None, pad_id=0, seed=0, ema_decay=ema_decay)


def measure(shape: str, repeats: int, tmp: Path) -> dict:
    from orchestrator.config import WeightSyncConfig
    from orchestrator.weight_sync import PolicySync
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    path = model_dir(shape, tmp)
    rollout = RolloutGroup(RolloutConfig(max_model_len=256, enforce_eager=True, max_logprobs=0), path, seed=0)
    learner = one_rank_learner(path)
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
    row.update(teacher_sync(path, repeats))
    row.update(engine_floor(path, repeats))  # after the actors are gone: the engine reserves its share of memory
    return row


def teacher_sync(path: str, repeats: int) -> dict:
    """Learner rank 0's EMA → a teacher replica's scorer (SDFT's teacher), the way a run sends it (bucket by bucket
    through the Ray object store), against the same buckets over a gloo group into the same scorer. The replica is a
    plain actor running the replica's loading code: Serve routes every call to a replica of its choosing, so a
    group with one particular replica cannot be formed through it. (Over gloo the learner sends its weights, not the
    EMA: the same names, dtypes and bytes.)"""
    from teacher_server.types import TeacherWeights

    learner = one_rank_learner(path, ema_decay=0.99)
    replica = TeacherReplica.remote(path)
    row = {}
    try:
        ray.get(replica.ready.remote())
        host, port, buckets = learner.weight_group_plan()
        specs = [[(s.name, s.dtype, list(s.shape)) for s in bucket] for bucket in buckets]
        ray.get(learner.open_weight_group(host, port, 2) + [replica.join.remote(host, port, specs)])
        for name, push in (
            ("teacher_object_store_s", lambda v: replica.load.remote(TeacherWeights(v, buckets=learner.ema_buckets()))),
            ("teacher_gloo_s", lambda v: (learner.broadcast_weights(v), replica.receive.remote(v))[1]),
        ):
            best = float("inf")
            for version in range(1, repeats + 2):  # the first push warms up both ends
                started = time.perf_counter()
                ray.get(push(version))
                best = min(best, time.perf_counter() - started)
            row[name] = best
    finally:
        learner.shutdown()
        ray.kill(replica)
    return row


@ray.remote(num_cpus=0)
class TeacherReplica:
    """A teacher replica's loading code in a plain actor: the object store path is the replica's own
    (`teacher_server.app._read_weights` into `TeacherScorer.load_weights`); the gloo path streams the group's
    buckets into the same `load_weights`."""

    def __init__(self, path: str):
        from teacher_server.scorer import TeacherScorer

        self.scorer = TeacherScorer(path, num_threads=1)

    def ready(self) -> bool:
        return True

    def load(self, weights) -> None:
        from teacher_server.app import _read_weights

        self.scorer.load_weights(weights.version, _read_weights(weights))

    def join(self, host: str, port: int, buckets: list) -> None:
        from dudi_common.weight_group import open_group

        self.store, self.group = open_group(host, port, 1, 2, "gloo", own_host=host)
        self.buckets = buckets

    def receive(self, version: int) -> None:
        self.scorer.load_weights(version, self._stream())

    def _stream(self):
        import torch

        from dudi_common.flat_bucket import nbytes, views
        from dudi_common.weight_group import post_broadcast

        for bucket in self.buckets:
            buffer = torch.empty(nbytes(bucket), dtype=torch.uint8)
            post_broadcast(self.group, buffer).wait()
            yield dict(views(buffer, bucket))


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
    lines += [
        "",
        "Learner rank 0's EMA → a teacher replica's scorer (SDFT's teacher), push → last bucket loaded: the way a "
        "run sends it, bucket by bucket through the Ray object store, against the same buckets over a gloo group "
        "into the same scorer.",
        "",
        "| model | object store (s) | × memcpy | gloo group (s) | × memcpy | object store / gloo |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "teacher_object_store_s" not in r:
            continue
        memcpy, store, gloo = r["memcpy_s"], r["teacher_object_store_s"], r["teacher_gloo_s"]
        lines.append(
            f"| {r['model']} | {store:.4f} | {store / memcpy:.1f} | {gloo:.4f} | {gloo / memcpy:.1f} | "
            f"{store / gloo:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["tiny-world", "qwen2.5-0.5b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
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
