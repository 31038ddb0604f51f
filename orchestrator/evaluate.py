"""Per-language exact match of the final answer, greedy, through vLLM rollout workers."""

from __future__ import annotations

from collections import defaultdict

from orchestrator.data import Example, final_answer
from orchestrator.startup import load_tokenizer
from orchestrator.tokens import encode_prompt
from rollout.config import RolloutConfig
from rollout.group import RolloutGroup
from rollout.types import GenerationRequest


def evaluate(rollout: RolloutGroup, tokenizer, rows: list[Example], max_new_tokens: int) -> dict[str, float]:
    """{lang: accuracy in %, ..., "avg": mean over languages}."""
    requests = [GenerationRequest(encode_prompt(tokenizer, row.prompt)) for row in rows]
    spec = rollout.sampling_spec(greedy=True, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,))
    results = rollout.generate(requests, spec)
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, result in zip(rows, results, strict=True):
        text = tokenizer.decode(result.response_ids, skip_special_tokens=True)
        predicted = final_answer(text)
        hits[row.lang].append(predicted is not None and predicted == final_answer(row.response))
    scores = {lang: 100.0 * sum(v) / len(v) for lang, v in hits.items()}
    scores["avg"] = sum(scores.values()) / len(scores)
    return scores


def evaluate_checkpoint(
    config: RolloutConfig, model_path: str, rows: list[Example], max_new_tokens: int, seed: int = 0
) -> dict[str, float]:
    """Greedy eval of any HF checkpoint on a single vLLM worker of its own, released afterwards."""
    return evaluate_checkpoint_on(config, model_path, {"rows": rows}, max_new_tokens, seed)["rows"]


def evaluate_checkpoint_on(
    config: RolloutConfig, model_path: str, row_sets: dict[str, list[Example]], max_new_tokens: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{name: scores} for several sets of rows on one engine: an engine costs 20-40 s to start on CPU."""
    group = RolloutGroup(config, model_path, seed, num_workers=1)
    try:
        tokenizer = load_tokenizer(model_path)
        return {name: evaluate(group, tokenizer, rows, max_new_tokens) for name, rows in row_sets.items()}
    finally:
        group.shutdown()


def format_table(results: dict[str, dict[str, float]], languages: list[str]) -> str:
    """Markdown table: one row per model, one column per language, then the average."""
    header = "| model | " + " | ".join(languages) + " | avg |"
    rule = "|---|" + "---:|" * (len(languages) + 1)
    lines = [header, rule]
    for name, scores in results.items():
        cells = " | ".join(f"{scores.get(lang, float('nan')):.1f}" for lang in languages)
        lines.append(f"| {name} | {cells} | {scores['avg']:.1f} |")
    return "\n".join(lines)
