"""Builds the tiny world: data, tokenizer, a trained teacher and an untrained student (same vocabulary).

The teacher is an instruction follower in miniature: besides (x → y) in every language it learns the
verbalized prompts (z → y in l_z, and p_z → y in l_z), as a real instruct teacher would follow them.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from orchestrator.tiny_world.task import (
    LANGUAGES,
    Problem,
    chance_exact_match,
    load_templates,
    make_rows,
    render_response,
    split_problems,
)
from orchestrator.verbalizer import VerbalizerTemplates, render

FORMAT_VERSION = 3


@dataclass(frozen=True)
class TinyWorldSpec:
    """The demo's world by default; `spec_for("bench")` is the comparison's."""

    seed: int = 0
    train_per_language: int = 600
    eval_per_language: int = 40
    vocab_size: int = 2048
    teacher_steps: int = 1500
    teacher_batch_size: int = 32
    teacher_lr: float = 2e-3
    teacher_hidden: int = 192
    # The demo's teacher has three layers: over the same 1,500 steps it learnt the task sooner than four (61% exact
    # match at step 1,000, 80% at the end, transformers greedy on the eval rows; four layers: 71% at the end, via
    # vLLM) at 0.27 s a step instead of 0.33. It learns the task in a late, sharp jump: a 1,200-step schedule
    # stayed at 16%. The bench keeps four.
    teacher_layers: int = 3
    student_hidden: int = 128
    # Two layers stalled at 25-28% exact match under SFT on this task (the bench cold start's curve: 24.9% at
    # 300 steps, 22-28% up to 700); four learnt it (61.5% after 600 steps of 32 at lr 3e-3, cosine).
    student_layers: int = 4
    # The paper's teacher is weak in Burmese; here by construction: it learns every Burmese problem with the
    # operation read the wrong way round (gives ↔ takes), in every kind of prompt. The student's data is correct.
    # (Showing it only 5% of the Burmese problems was not enough: it still scored 99.5% there.)
    weak_language: str | None = "my"
    # The teacher's loss through transformers' own head over every position, instead of the head on response
    # positions only (`response_loss`). Same value, other float rounding, so after thousands of steps another
    # teacher: the bench world keeps the loss its comparison results were measured on (rebuilt with it, the
    # teacher's final loss matched the recorded one to every digit; with the response-only head it did not).
    teacher_loss_every_position: bool = False


def spec_for(size: str, seed: int = 0) -> TinyWorldSpec:
    """demo: built in minutes on two cores for `make demo`. bench: 200 eval rows per language (±7 points per
    language at 50%), more training problems and a teacher trained 2.5× longer; built once (about 20 minutes)."""
    if size == "demo":
        return TinyWorldSpec(seed=seed)
    if size == "bench":
        return TinyWorldSpec(
            seed=seed,
            train_per_language=1500,
            eval_per_language=200,
            teacher_steps=3000,
            teacher_layers=4,
            teacher_loss_every_position=True,
        )
    raise ValueError(f"tiny world size {size!r} is not demo or bench")


def qwen2_config(vocab_size: int, hidden: int, layers: int, tokenizer):
    from transformers import Qwen2Config

    heads = hidden // 64  # vLLM's CPU attention needs head_dim 64
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def teacher_examples(
    problems: list[tuple[Problem, str]],
    rng: random.Random,
    templates: dict,
    verbalizer: VerbalizerTemplates,
    misread_language: str | None = None,
):
    """(prompt, response) pairs: the plain task plus its verbalized teacher and student prompts. In
    `misread_language` every response, demonstration included, is computed with the other operation."""
    pairs = []
    for row, (problem, lang) in zip(make_rows(problems, templates), problems, strict=True):
        seen = misread(problem) if lang == misread_language else problem
        response = render_response(templates, seen, lang)
        pairs.append((row["prompt"], response))
        target = rng.choice(LANGUAGES)
        verbalized = render(verbalizer, row["prompt"], response, lang, target)
        target_response = render_response(templates, seen, target)
        pairs.append((verbalized.teacher_prompt, target_response))
        pairs.append((verbalized.student_prompt, target_response))
        english = verbalizer.sdft_english_teacher.format(question=row["prompt"], demonstration=response)
        pairs.append((english, response))
    return pairs


def misread(problem: Problem) -> Problem:
    """The problem with its operation word read the wrong way round (gives ↔ takes)."""
    return replace(problem, op="sub" if problem.op == "add" else "add")


def build(out: Path, spec: TinyWorldSpec, progress=print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.tiny_world.tokenizer import train_tokenizer

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    templates = load_templates()
    verbalizer = VerbalizerTemplates.load()

    train_problems, eval_problems = split_problems(spec.seed, spec.train_per_language, spec.eval_per_language)
    train_rows, eval_rows = make_rows(train_problems, templates), make_rows(eval_problems, templates)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        with open(data_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    progress(f"[tiny-world] data: {len(train_rows)} train / {len(eval_rows)} eval rows in {len(LANGUAGES)} languages")

    pairs = teacher_examples(train_problems, rng, templates, verbalizer, spec.weak_language)
    tokenizer = train_tokenizer((text for pair in pairs for text in pair), spec.vocab_size)
    vocab_size = len(tokenizer)
    progress(f"[tiny-world] tokenizer: byte-level BPE, {vocab_size} tokens")

    teacher_cfg = qwen2_config(vocab_size, spec.teacher_hidden, spec.teacher_layers, tokenizer)
    student_cfg = qwen2_config(vocab_size, spec.student_hidden, spec.student_layers, tokenizer)
    teacher = AutoModelForCausalLM.from_config(teacher_cfg)
    student = AutoModelForCausalLM.from_config(student_cfg)
    final_loss = train_teacher(teacher, tokenizer, pairs, spec, rng, progress)

    for name, model in (("teacher", teacher), ("student", student)):
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "vocab_size": vocab_size,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_final_loss": final_loss,
        "teacher_misreads": spec.weak_language,
        # In %: the best constant answer, over the task's distribution and over this eval set.
        "chance_exact_match": round(100 * chance_exact_match(), 2),
        "chance_exact_match_eval_set": round(100 * chance_exact_match([row["answer"] for row in eval_rows]), 2),
        "build_seconds": round(time.perf_counter() - started, 1),
        "built_on": machine_facts(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def machine_facts() -> dict:
    """What decides the build's arithmetic besides the spec. One kind of CPU repeats a build bit for bit; another
    does not: torch picks its kernels (MKL, oneDNN, its own vector code) by instruction set and vendor, and 3000
    teacher steps carry the last-bit differences into a different teacher (seen: final loss 0.000196 on the CPU the
    comparison's records were written on, 0.000308 on an AVX2-only AMD EPYC, same spec and code)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def train_teacher(model, tokenizer, pairs, spec: TinyWorldSpec, rng: random.Random, progress) -> float:
    import torch
    from tqdm import tqdm

    from orchestrator.tokens import encode_prompt, encode_response

    encoded = [(encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)) for prompt, response in pairs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.teacher_lr, weight_decay=0.0)
    warmup = max(1, spec.teacher_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / spec.teacher_steps)))
    )
    # Batches of similar length: padding to the longest verbalized prompt would triple the compute.
    encoded.sort(key=lambda pair: len(pair[0]) + len(pair[1]))
    size = spec.teacher_batch_size
    batches = [encoded[i : i + size] for i in range(0, len(encoded) - size + 1, size)]
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(spec.teacher_steps), desc="[tiny-world] teacher SFT", unit="step", mininterval=2.0)
    for _ in bar:
        batch = rng.choice(batches)
        input_ids, labels = _pad_for_lm(batch, tokenizer.pad_token_id)
        if spec.teacher_loss_every_position:
            attention_mask = input_ids != tokenizer.pad_token_id
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        else:
            loss = response_loss(model, input_ids, labels, tokenizer.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return loss_value


def response_loss(model, input_ids, labels, pad_id: int):
    """The causal-LM loss on the response tokens, with the LM head applied to those positions only: the same
    value as `model(..., labels=labels).loss`, but the prompts (most of each sequence) skip the vocabulary
    projection, about a fifth of the teacher's compute."""
    import torch.nn.functional as F

    hidden = model.model(input_ids=input_ids, attention_mask=input_ids != pad_id).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.lm_head(hidden[:, :-1][scored])
    return F.cross_entropy(logits.float(), targets[scored])


def _pad_for_lm(batch, pad_id: int):
    import torch

    longest = max(len(p) + len(r) for p, r in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    for i, (p, r) in enumerate(batch):
        ids = p + r
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, len(p) : len(ids)] = torch.tensor(r)
    return input_ids, labels
