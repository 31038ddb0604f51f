"""Peak memory and time of the learner's KD loss at a real vocabulary (151,936), chunked against whole logits.

    python benchmarks/loss_memory.py --device cuda      # GPU probe: Qwen2.5-0.5B-shaped student, bf16
    python benchmarks/loss_memory.py --device cpu       # CPU: the loss alone, 256 → 2,048 response tokens

Both measure the project's own code: `learner.chunked.response_states` + `learner.losses.kd_per_token` (chunked)
against the path the learner had before chunking (one forward returning whole [B, R, V] logits, then
`learner.losses.kd_divergence`). The objective is the issue's: On-KD, reverse KL, sparse teacher scores with
k = 64 plus 65 asked ids (random, closed: support + tail sum to 1).

cuda: a random Qwen2.5-0.5B-shaped student in bf16 with gradient checkpointing; per shape (batch × response
tokens, prompts of 32 tokens) the peak memory that forward + loss + backward add above the model, and the
median time of that step. Needs only torch and transformers (plus pydantic), so it runs on a bare GPU box.

cpu: the loss alone, on hidden states of Qwen2.5-0.5B's width and its tied LM head in fp32: each point runs in a
fresh process, which resets its peak RSS (`/proc/self/clear_refs`) after building its inputs and reads it
(`VmHWM`) after the backward, so the figure is what the loss and its backward add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB, HIDDEN = 151_936, 896  # Qwen2.5-0.5B
TOP_K, ASKED = 64, 65
PROMPT_TOKENS = 32
GPU_SHAPES = [(4, 256), (8, 1024), (16, 1024), (32, 1024)]
GPU_CHUNKS = [256, 1024, 4096]
CPU_TOKENS = [256, 512, 1024, 2048]
CPU_CHUNK = 128  # below the smallest point, so every point runs several chunks (see the note)
GIB = 1 << 30


def sparse_teacher(batch: int, response: int, device):
    """Random closed sparse scores [B, R, k + e] (ids may repeat, as real asked ids do; repeats are ignored)."""
    import torch

    from learner.packing import PaddedTeacherScores

    gen = torch.Generator(device=device).manual_seed(0)
    support = TOP_K + ASKED
    ids = torch.randint(0, VOCAB, (batch, response, support), generator=gen, device=device)
    ids[..., TOP_K:] = ids[..., :ASKED]  # asked ids overlap the top-k, as the student's top ids mostly do
    # Distinct entries share the mass with the tail; repeated entries get the same log-prob (ignored anyway).
    logprobs = torch.log_softmax(torch.randn(batch, response, TOP_K + 1, generator=gen, device=device), -1)
    support_logprobs = torch.cat([logprobs[..., :TOP_K], logprobs[..., :ASKED]], -1)
    return PaddedTeacherScores(
        support_ids=ids,
        support_logprobs=support_logprobs,
        tail_logprob=logprobs[..., TOP_K],
        topk_ids=ids[..., :TOP_K],
    )


def objective_config():
    from learner.config import ObjectiveConfig

    return ObjectiveConfig(alpha=0.0, lam=1.0, divergence="rkl")


def whole_logits_loss(cfg, logits, teacher, mask):
    """The learner's loss before chunking: the divergence over whole [B, R, V] logits."""
    from learner.losses import kd_divergence
    from learner.objective import masked_mean

    return masked_mean(kd_divergence(cfg, logits, teacher), mask)


def chunked_loss(cfg, states, teacher):
    """The learner's loss now: the divergence chunk by chunk over the response positions' hidden states."""
    from learner.losses import kd_per_token

    divergence, _ = kd_per_token(cfg, states, teacher)
    return divergence.mean()


def kd_loss(mode: str, forward_hidden, head, teacher, mask, chunk: int):
    """The loss on given hidden states and head, chunked (`mode` = "chunked") or from whole logits ("whole")."""
    from learner.chunked import ResponseStates

    cfg = objective_config()
    hidden = forward_hidden()  # [B, R, H]
    if mode == "whole":
        return whole_logits_loss(cfg, head(hidden), teacher, mask)
    return chunked_loss(cfg, ResponseStates(hidden=hidden[mask], mask=mask, head=head, chunk_size=chunk), teacher)


# --- GPU: the full student -------------------------------------------------------------------------------------
def gpu_probe(repeats: int) -> list[dict]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from learner.packing import PackedSequences

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4_864,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable()
    model.train()
    cfg = objective_config()
    rows = []
    for batch, response in GPU_SHAPES:
        width = PROMPT_TOKENS + response - 1
        ids = torch.randint(0, VOCAB, (batch, width), device="cuda")
        ones = torch.ones_like(ids)
        packed = PackedSequences(
            input_ids=ids,
            attention_mask=ones,
            position_ids=torch.arange(width, device="cuda").expand(batch, -1),
            labels=torch.zeros(batch, response, dtype=torch.long, device="cuda"),
            response_mask=torch.ones(batch, response, dtype=torch.bool, device="cuda"),
        )
        teacher = sparse_teacher(batch, response, "cuda")

        variants = [("whole", None, partial(_whole_logits_loss, model, packed, teacher, cfg))]
        variants += [("chunked", c, partial(_chunked_loss, model, packed, teacher, cfg, c)) for c in GPU_CHUNKS]
        for mode, chunk, loss_fn in variants:
            row = {"batch": batch, "response_tokens": response, "mode": mode, "chunk": chunk}
            row["fp32_logits_gib"] = batch * response * VOCAB * 4 / GIB
            row.update(_measure_cuda(model, loss_fn, repeats))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _whole_logits_loss(model, packed, teacher, cfg):
    logits = model(**_inputs(packed), logits_to_keep=packed.response_width).logits
    return whole_logits_loss(cfg, logits, teacher, packed.response_mask)


def _chunked_loss(model, packed, teacher, cfg, chunk: int):
    from learner.chunked import response_states

    return chunked_loss(cfg, response_states(model, packed, chunk), teacher)


def _inputs(packed) -> dict:
    return {"input_ids": packed.input_ids, "attention_mask": packed.attention_mask, "position_ids": packed.position_ids}


def _measure_cuda(model, loss_fn, repeats: int) -> dict:
    import torch

    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    try:
        for _ in range(repeats + 1):  # the first is warm-up (kernels, allocator)
            started = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        loss = None
        torch.cuda.empty_cache()
        return {"peak_added_gib": None, "step_s": None, "out_of_memory": True}
    peak = torch.cuda.max_memory_allocated() - base
    return {"peak_added_gib": peak / GIB, "step_s": statistics.median(times[1:]), "loss": float(loss.detach())}


# --- CPU: the loss alone, one fresh process per point ---------------------------------------------------------
def cpu_point(mode: str, tokens: int, chunk: int) -> dict:
    """Runs in its own process (see `cpu_probe`)."""
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden_leaf = torch.randn(1, tokens, HIDDEN, requires_grad=True)
    mask = torch.ones(1, tokens, dtype=torch.bool)
    teacher = sparse_teacher(1, tokens, "cpu")
    # What the loss adds is measured from here: peak RSS is reset to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    started = time.perf_counter()
    loss = kd_loss(mode, lambda: hidden_leaf * 1.0, head, teacher, mask, chunk)
    loss.backward()
    elapsed = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    return {
        "mode": mode,
        "response_tokens": tokens,
        "chunk": chunk if mode == "chunked" else None,
        "peak_added_gib": (peak - base) / (1 << 20),
        "fp32_logits_gib": tokens * VOCAB * 4 / GIB,
        "step_s": elapsed,
        "loss": float(loss),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def cpu_probe(threads: int) -> list[dict]:
    rows = []
    for tokens in CPU_TOKENS:
        for mode in ("whole", "chunked"):
            command = [sys.executable, __file__, "--cpu-point", mode, str(tokens), str(CPU_CHUNK)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def report(rows: list[dict], device: str, note: str) -> str:
    lines = [f"# KD loss memory at vocabulary {VOCAB:,} ({device})", "", note, ""]
    if device == "cuda":
        lines += [
            "| batch × response tokens | fp32 logits | whole logits: peak added | step s | "
            + " | ".join(f"chunk {c}: peak added | step s" for c in GPU_CHUNKS)
            + " |",
            "|---|---:|---:|---:|" + "---:|---:|" * len(GPU_CHUNKS),
        ]
        for batch, response in GPU_SHAPES:
            cells = [f"{batch} × {response:,}"]
            same = [r for r in rows if r["batch"] == batch and r["response_tokens"] == response]
            cells.append(f"{same[0]['fp32_logits_gib']:.1f} GiB")
            for row in same:
                if row.get("out_of_memory"):
                    cells += ["out of memory", "–"]
                else:
                    cells += [f"{row['peak_added_gib']:.1f} GiB", f"{row['step_s']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines += [
            "| response tokens | fp32 logits | whole logits: peak added | s | "
            f"chunk {CPU_CHUNK}: peak added | s | chunked / whole |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for tokens in CPU_TOKENS:
            whole = next(r for r in rows if r["response_tokens"] == tokens and r["mode"] == "whole")
            chunked = next(r for r in rows if r["response_tokens"] == tokens and r["mode"] == "chunked")
            lines.append(
                f"| {tokens:,} | {whole['fp32_logits_gib']:.2f} GiB | {whole['peak_added_gib']:.2f} GiB | "
                f"{whole['step_s']:.2f} | {chunked['peak_added_gib']:.2f} GiB | {chunked['step_s']:.2f} | "
                f"{chunked['peak_added_gib'] / whole['peak_added_gib']:.2f} |"
            )
        chunked = [r["peak_added_gib"] for r in rows if r["mode"] == "chunked"]
        lines += [
            "",
            f"Chunked peak, largest over smallest from {CPU_TOKENS[0]} to {CPU_TOKENS[-1]} tokens: "
            f"{max(chunked) / min(chunked):.2f}×.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point on the GPU, after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per CPU point")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--cpu-point", nargs=3, metavar=("MODE", "TOKENS", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_point:
        mode, tokens, chunk = args.cpu_point
        print(json.dumps(cpu_point(mode, int(tokens), int(chunk))))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda needs a CUDA GPU")
        name = torch.cuda.get_device_name()
        rows = gpu_probe(args.repeats)
        note = (
            f"{name}, torch {torch.__version__}. Random Qwen2.5-0.5B-shaped student in bf16 with gradient "
            f"checkpointing; prompts of {PROMPT_TOKENS} tokens; On-KD, reverse KL, sparse scores k = {TOP_K} + "
            f"{ASKED} asked ids. Peak added = peak allocated during forward + loss + backward minus the memory "
            f"before it (weights); step = median of {args.repeats} after one warm-up. "
            "Command: `python benchmarks/loss_memory.py --device cuda`."
        )
    else:
        rows = cpu_probe(args.threads)
        note = (
            f"The loss alone on {HIDDEN}-wide hidden states and an fp32 LM head (one sequence), {args.threads} "
            "threads, each point in a fresh process; peak added = VmHWM after backward minus VmRSS before the "
            "loss. Command: `python benchmarks/loss_memory.py --device cpu`. Chunked, the floor is about two LM-head "
            "gradients (2 × V × H × 4 B = 1.1 GB: autograd sums each chunk's contribution into the head's gradient), "
            "where whole logits hold one; above it only one chunk's logits live at a time. On 2 CPU cores the chunk's "
            "loss, computed twice (forward, then recomputed in backward), costs 1.6-2.7× the time."
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"loss_memory_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"note": note, "rows": rows}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(report(rows, args.device, note))
    print(report(rows, args.device, note))


if __name__ == "__main__":
    main()
