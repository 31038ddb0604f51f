"""Teacher scores, full vs sparse: bytes per token, tokens scored per second, and the exactness of sparse RKL.

    python benchmarks/teacher_scores.py [--student runs/demo/cold_start] [--out benchmarks/results]

1. Wire size and scoring speed of every format (full; sparse with k = 8, 32, 64, 128, each also scoring the
   student's top-64 and the realized token) on the tiny-world teacher and on a synthetic Qwen2 teacher with
   Qwen2.5's 151,936-token vocabulary and the tiny teacher's depth. Speed is the scorer as a Serve replica
   runs it (forward, formatting, Arrow encoding for HTTP), measured side by side in one process.
2. Exactness on the demo's sequences of the tiny world, On-KD (crosslingual z / p_z, ỹ sampled by vLLM from the
   student) and Off-KD (x, y): the reverse-KL loss and its gradient over all student parameters from sparse
   scores, against the same from full-vocabulary scores. The student should be a trained one (the demo's cold start);
   a random-init student spreads its mass over the whole vocabulary and is not what distillation sees.
3. Throughput of the Ray Serve app by handle with 1 and 2 replicas (sparse k = 64), many callers at once.

Writes `teacher_scores.md` and `teacher_scores.json` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

KS = (8, 32, 64, 128)
STUDENT_TOP_K = 64
BIG_VOCAB = 151_936


def synthetic_teacher(directory: Path, like: str) -> str:
    """A random Qwen2 with the tiny teacher's shape and Qwen2.5's vocabulary (only speed and size are measured)."""
    import torch
    from transformers import AutoConfig, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(like)
    config.vocab_size = BIG_VOCAB
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return str(directory)


def requests_for(sequences, k: int | None, student_top_k: int = STUDENT_TOP_K):
    """The orchestrator's own score requests for (teacher prompt, response, student top ids) triples:
    full rows when k is None, else the teacher's top-k plus the student's top ids and the realized token."""
    from orchestrator.config import ScoringConfig
    from orchestrator.steps import KdSequences, score_requests

    prompts = [prompt for prompt, _, _ in sequences]
    kd = KdSequences(prompts, prompts, [r for _, r, _ in sequences], [ids for _, _, ids in sequences])
    scoring = ScoringConfig(format="full" if k is None else "sparse", top_k=k or 1, student_top_k=student_top_k)
    return score_requests(kd, scoring, temperature=1.0)


def measure_formats(model_path: str, sequences, batch_size: int, repeats: int) -> list[dict]:
    """Per format: Arrow bytes per response token, and tokens/s of score + encode on one scorer."""
    from teacher_server.scorer import TeacherScorer
    from teacher_server.wire import encode_response

    scorer = TeacherScorer(model_path, num_threads=os.cpu_count())
    tokens = sum(len(r) for _, r, _ in sequences)
    rows = []
    formats = [("full", None)] + [("sparse", k) for k in KS]
    timings = {f: [] for f in formats}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits every format alike
        for fmt in formats:
            requests = requests_for(sequences, fmt[1])
            started = time.perf_counter()
            wire_bytes = 0
            for i in range(0, len(requests), batch_size):
                for response in scorer.score(requests[i : i + batch_size]):
                    wire_bytes += len(encode_response(response))
            timings[fmt].append(time.perf_counter() - started)
            timings[fmt + ("bytes",)] = wire_bytes
    for fmt in formats:
        best = min(timings[fmt])
        rows.append(
            {
                "format": fmt[0] if fmt[1] is None else f"sparse k={fmt[1]} (+{STUDENT_TOP_K + 1} asked)",
                "k": fmt[1],
                "bytes_per_token": timings[fmt + ("bytes",)] / tokens,
                "tokens_per_s": tokens / best,
            }
        )
    return rows


def kd_sequences(student: str, count: int, seed: int) -> dict[str, list[tuple]]:
    """The demo's two KD settings on `count` training rows, as (teacher prompt, student prompt, response,
    student top ids): On-KD (z, p_z, ỹ sampled by vLLM from the student) and Off-KD (x, x, y)."""
    from orchestrator.config import load_config
    from orchestrator.data import load_examples
    from orchestrator.startup import load_tokenizer
    from orchestrator.steps import build_prompts
    from orchestrator.verbalizer import Verbalizer
    from rollout.config import RolloutConfig
    from rollout.types import GenerationRequest, SamplingSpec, TopIdsRequest
    from rollout.worker import RolloutWorker

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    tokenizer = load_tokenizer(student)
    rows = load_examples(cfg.data, "train")[:count]
    languages = sorted({r.lang for r in rows})
    prompts = build_prompts(rows, tokenizer, Verbalizer("crosslingual", languages, seed=seed))
    worker = RolloutWorker(RolloutConfig(enforce_eager=True, max_model_len=512), student, seed)
    spec = SamplingSpec(temperature=0.9, top_k=0, top_p=1.0, max_new_tokens=48, top_ids=STUDENT_TOP_K)
    generated = worker.generate([GenerationRequest(p) for p in prompts.p_z], spec)
    ranked = worker.rank_ids([TopIdsRequest(x, y) for x, y in zip(prompts.x, prompts.y, strict=True)], STUDENT_TOP_K)
    del worker
    on_kd = [
        (z, p_z, g.response_ids, g.top_ids)
        for z, p_z, g in zip(prompts.z, prompts.p_z, generated, strict=True)
        if g.response_ids
    ]
    off_kd = list(zip(prompts.x, prompts.x, prompts.y, ranked, strict=True))
    return {"On-KD (z, ỹ)": on_kd, "Off-KD (x, y)": off_kd}


def rkl_exactness(student: str, teacher: str, settings: dict[str, list[tuple]], batch_size: int) -> list[dict]:
    """Relative error of the RKL loss and of its parameter gradient, sparse vs full, on the same sequences."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.chunked import response_states
    from learner.config import ObjectiveConfig
    from learner.losses import kd_per_token
    from learner.packing import pack, pad_teacher_scores
    from learner.types import TokenSequences
    from orchestrator.steps import teacher_scores
    from teacher_server.scorer import TeacherScorer

    scorer = TeacherScorer(teacher, num_threads=os.cpu_count())
    model = AutoModelForCausalLM.from_pretrained(student).eval()
    cfg = ObjectiveConfig(alpha=0.0, lam=1.0, divergence="rkl")
    params = [p for p in model.parameters() if p.requires_grad]
    variants = [("full", None, True)] + [
        (f"k={k}{' + student top ids' if with_student else ''}", k, with_student)
        for k in KS
        for with_student in (True, False)
    ]
    rows = []
    for setting, sequences in settings.items():
        results = {name: {"loss": 0.0, "grad": [torch.zeros_like(p) for p in params]} for name, _, _ in variants}
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            packed = pack(TokenSequences([p for _, p, _, _ in chunk], [r for _, _, r, _ in chunk]), pad_id=0)
            weight = len(chunk) / len(sequences)
            for name, k, with_student in variants:
                seqs = [(t, r, ids) for t, _, r, ids in chunk]
                # Without the student's ids only the realized token is asked for.
                requests = requests_for(seqs, k, STUDENT_TOP_K if with_student else 0)
                scores = teacher_scores(requests, scorer.score(requests))
                model.zero_grad()
                states = response_states(model, packed, chunk_size=1024)
                divergence, _ = kd_per_token(cfg, states, pad_teacher_scores(scores, packed.response_width))
                loss = divergence.mean()
                loss.backward()
                results[name]["loss"] += weight * loss.item()
                for acc, p in zip(results[name]["grad"], params, strict=True):
                    acc.add_(p.grad, alpha=weight)
        exact = results["full"]
        exact_grad = torch.cat([g.flatten() for g in exact["grad"]])
        for name, k, with_student in variants[1:]:
            grad = torch.cat([g.flatten() for g in results[name]["grad"]])
            rows.append(
                {
                    "setting": setting,
                    "k": k,
                    "asked_ids": f"student top-{STUDENT_TOP_K} + realized" if with_student else "realized only",
                    "loss_exact": exact["loss"],
                    "loss_sparse": results[name]["loss"],
                    "loss_rel_error": abs(results[name]["loss"] - exact["loss"]) / exact["loss"],
                    "grad_rel_error": float((grad - exact_grad).norm() / exact_grad.norm()),
                    "grad_cosine": float(
                        torch.nn.functional.cosine_similarity(grad.double(), exact_grad.double(), dim=0)
                    ),
                }
            )
    return rows


def serve_throughput(teacher: str, sequences, replicas: int, callers: int, batch_size: int) -> dict:
    import ray
    from ray import serve

    from teacher_server.app import deploy
    from teacher_server.config import TeacherConfig

    cpus = os.cpu_count() or 2
    config = TeacherConfig(
        num_replicas=replicas,
        num_threads=max(1, cpus // replicas),
        num_cpus_per_replica=cpus / replicas / 2,
        max_seq_len=512,
        app_name=f"bench-{replicas}",
        route_prefix=f"/bench-{replicas}",
    )
    handle = deploy(teacher, config)
    requests = requests_for(sequences, 64)
    batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    handle.score_many.remote(batches[0]).result()  # warm-up
    tokens = sum(len(q.response_ids) for q in requests) * callers
    started = time.perf_counter()
    futures = [handle.score_many.remote(b) for _ in range(callers) for b in batches]
    for f in futures:
        f.result()
    elapsed = time.perf_counter() - started
    serve.delete(config.app_name)
    del ray
    return {"replicas": replicas, "threads_per_replica": config.num_threads, "tokens_per_s": tokens / elapsed}


def markdown(report: dict) -> str:
    lines = ["# Teacher scores: full vs sparse", ""]
    for model, rows in report["formats"].items():
        lines += [
            f"## Wire size and scoring speed: {model}",
            "",
            "| format | bytes / token | tokens / s | vs full |",
            "|---|---:|---:|---:|",
        ]
        full = rows[0]["tokens_per_s"]
        for r in rows:
            lines.append(
                f"| {r['format']} | {r['bytes_per_token']:,.0f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / full:.2f}× |"
            )
        lines.append("")
    lines += ["## Sparse reverse KL against the exact full-vocabulary one (tiny world, demo sequences)", ""]
    lines += [
        "| sequences | k | ids asked for | loss (exact) | loss (sparse) | loss rel. error | grad rel. error | grad cosine |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["exactness"]:
        lines.append(
            f"| {r['setting']} | {r['k']} | {r['asked_ids']} | {r['loss_exact']:.5f} | {r['loss_sparse']:.5f} | "
            f"{100 * r['loss_rel_error']:.3f}% | {100 * r['grad_rel_error']:.3f}% | {r['grad_cosine']:.6f} |"
        )
    lines += [
        "",
        "## Ray Serve throughput by handle (sparse k=64)",
        "",
        "| replicas | threads each | tokens / s |",
        "|---:|---:|---:|",
    ]
    for r in report["serve"]:
        lines.append(f"| {r['replicas']} | {r['threads_per_replica']} | {r['tokens_per_s']:,.0f} |")
    lines += ["", f"Setup: {report['setup']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    from orchestrator.config import tiny_world_dir

    world = tiny_world_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_student = "runs/demo/cold_start" if Path("runs/demo/cold_start").is_dir() else str(world / "student")
    parser.add_argument("--student", default=default_student, help="a trained student (default: the demo's cold start)")
    parser.add_argument("--teacher", default=str(world / "teacher"))
    parser.add_argument("--rollouts", type=int, default=64, help="on-policy rollouts for the exactness check")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.teacher).is_dir():
        raise SystemExit(f"no teacher at {args.teacher}: run `dudi tiny-world` first")
    started = time.perf_counter()
    print(f"[1/4] sampling {args.rollouts} on-policy rollouts from {args.student} (vLLM)", flush=True)
    settings = kd_sequences(args.student, args.rollouts, seed=0)
    on_kd = next(iter(settings.values()))
    tokens = sum(len(r) for _, _, r, _ in on_kd)
    print(f"      {len(on_kd)} rollouts, {tokens} response tokens", flush=True)
    report = {"formats": {}, "setup": ""}
    sequences = [(z, r, ids) for z, _, r, ids in on_kd]
    print("[2/4] wire size and scoring speed per format", flush=True)
    report["formats"]["tiny-world teacher"] = measure_formats(args.teacher, sequences, args.batch_size, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        big = synthetic_teacher(Path(tmp) / "big", args.teacher)
        few = sequences[: max(1, len(sequences) // 4)]
        report["formats"][f"synthetic Qwen2, {BIG_VOCAB:,}-token vocabulary"] = measure_formats(
            big, few, args.batch_size // 2 or 1, args.repeats
        )
    print("[3/4] sparse vs exact reverse KL (loss and gradient)", flush=True)
    report["exactness"] = rkl_exactness(args.student, args.teacher, settings, args.batch_size)
    print("[4/4] Ray Serve throughput with 1 and 2 replicas", flush=True)
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        report["serve"] = [
            serve_throughput(args.teacher, sequences, r, callers=4, batch_size=args.batch_size) for r in (1, 2)
        ]
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    report["setup"] = (
        f"{os.cpu_count()} CPU cores, student {args.student}, teacher {args.teacher}, {len(on_kd)} rollouts "
        f"({tokens} tokens), batch {args.batch_size}, best of {args.repeats}; wall time {time.perf_counter() - started:.0f} s"
    )
    (out / "teacher_scores.json").write_text(json.dumps(report, indent=2))
    (out / "teacher_scores.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
