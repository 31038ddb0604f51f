"""Teacher scoring speed and wire size per format on a synthetic model of a real shape (GPU or CPU).

    python benchmarks/scorer_speed.py --shape qwen2.5-0.5b --dtype bfloat16     # on a GPU machine
    python benchmarks/scorer_speed.py --shape tiny                              # smoke run on CPU

Needs only torch, transformers, numpy and pyarrow (no Ray or vLLM), so it runs on a bare GPU box. Builds a
random Qwen2 of the named shape, scores random (prompt, response) sequences with `TeacherScorer` in every
format, the way a Serve replica does (forward, formatting, Arrow encoding), and times the learner's KD loss
(forward + backward of D on [B, R, V] student logits) from full and from sparse scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHAPES = {
    # name: (vocab, hidden, layers, heads, kv heads, intermediate)
    "tiny": (1_600, 192, 4, 4, 2, 512),
    "qwen2.5-0.5b": (151_936, 896, 24, 14, 2, 4_864),
    "qwen2.5-1.5b": (151_936, 1_536, 28, 12, 2, 8_960),
}
KS = (8, 32, 64, 128)
ASKED = 65  # the student's top-64 and the realized token


def build(shape: str, directory: Path, dtype) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab, hidden, layers, heads, kv, inter = SHAPES[shape]
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(dtype).save_pretrained(directory)
    return str(directory)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the report (JSON + Markdown) here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from learner.objective import masked_mean, sparse_token_divergence, token_divergence
    from teacher_server.scorer import TeacherScorer
    from teacher_server.types import ScoreRequest
    from teacher_server.wire import encode_response

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab = SHAPES[args.shape][0]
    rng = np.random.default_rng(0)
    sequences = [
        (rng.integers(0, vocab, args.prompt_len).tolist(), rng.integers(0, vocab, args.response_len).tolist())
        for _ in range(args.batch)
    ]
    asked = [rng.integers(0, vocab, (args.response_len, ASKED)).tolist() for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        scorer = TeacherScorer(build(args.shape, Path(tmp) / "m", dtype), dtype=args.dtype, max_seq_len=4096)
    formats = [("full", None)] + [("sparse", k) for k in KS]
    tokens = args.batch * args.response_len
    rows = []
    for name, k in formats:
        requests = [
            ScoreRequest(p, r, top_k=k, extra_ids=a if k else None) for (p, r), a in zip(sequences, asked, strict=True)
        ]
        scorer.score(requests[:2])  # warm-up (kernels, allocator)
        times, wire = [], 0
        for _ in range(args.repeats):
            sync()
            started = time.perf_counter()
            responses = scorer.score(requests)
            wire = sum(len(encode_response(x)) for x in responses)
            sync()
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "format": name if k is None else f"sparse k={k}",
                "bytes_per_token": wire / tokens,
                "tokens_per_s": tokens / min(times),
            }
        )
        print(rows[-1], flush=True)

    # The learner side: D and its gradient on [B, R, V] student logits from full vs sparse scores.
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (max(1, args.batch // 4), args.response_len, vocab)
    student = torch.randn(shape, device=device, generator=gen) * 2
    teacher = torch.log_softmax(torch.randn(shape, device=device, generator=gen) * 2, -1)
    mask = torch.ones(shape[:2], dtype=torch.bool, device=device)
    loss_rows = []
    for _name, k in formats:
        if k is not None:
            top = teacher.topk(k, -1)
            ids = torch.cat([top.indices, student.topk(ASKED, -1).indices], -1)
            picked = teacher.gather(-1, ids)
            inside = torch.zeros_like(teacher, dtype=torch.bool).scatter_(-1, ids, True)
            tail = torch.logsumexp(teacher.masked_fill(inside, -float("inf")), -1)
        times = []
        for _ in range(args.repeats):
            logits = student.clone().requires_grad_(True)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            started = time.perf_counter()
            if k is None:
                per_token = token_divergence(logits, teacher, "rkl")
            else:
                per_token = sparse_token_divergence(logits, ids, picked, tail, "rkl")
            masked_mean(per_token, mask).backward()
            sync()
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        loss_rows.append({"format": rows[len(loss_rows)]["format"], "loss_ms": 1000 * min(times), "peak_gib": peak})
        print(loss_rows[-1], flush=True)

    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [
        f"# Teacher scoring per format: {args.shape} ({vocab:,} vocab), {args.dtype}, {gpu}",
        "",
        f"{args.batch} sequences × (prompt {args.prompt_len} + response {args.response_len}); sparse formats also "
        f"score {ASKED} asked-for ids per position; best of {args.repeats}.",
        "",
        "| format | bytes / token | tokens / s (score + encode) | vs full | KD loss fwd+bwd (ms) | loss peak GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r, lr in zip(rows, loss_rows, strict=True):
        lines.append(
            f"| {r['format']} | {r['bytes_per_token']:,.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}× | {lr['loss_ms']:.1f} | {lr['peak_gib']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"scorer_speed_{args.shape}_{args.dtype}_{'gpu' if device == 'cuda' else 'cpu'}"
        (out / f"{stem}.md").write_text(text)
        (out / f"{stem}.json").write_text(json.dumps({"scoring": rows, "loss": loss_rows}, indent=2))


if __name__ == "__main__":
    main()
