"""SEA-Instruct (the paper's training data) → the (prompt, response, lang) parquet files a run reads.

`aisingapore/SEA-Instruct-2602` is gated and has one config per language, named in English ("Indonesian", …),
each a folder of parquet shards with a `conversations` column: the text of a Python list of
{"role", "content"} messages (single quotes, `None`: it needs `ast.literal_eval`, not JSON), plus the
annotator's tags, among them `prompt_input_quality` ("Excellent", …), `prompt_is_coherent` and
`prompt_is_natural`. The paper kept 4,000 high-quality rows per language for seven SEA languages.

    dudi data sea-instruct --source aisingapore/SEA-Instruct-2602 --out data/sea-instruct   # from the HF cache
    dudi data sea-instruct --source /data/SEA-Instruct-2602 --out data/sea-instruct         # a local copy

Rows are kept when they are one user turn and one assistant turn (an optional system turn is dropped: the
student's prompt is rendered by its own chat template), and, by default, rated Excellent, coherent and
natural. Every skipped row is counted by reason and printed.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.data import DataError

# Config (folder) names of SEA-Instruct → the ISO 639-1 codes the verbalizer and the configs use.
LANGUAGES = {
    "Indonesian": "id",
    "Vietnamese": "vi",
    "Thai": "th",
    "Tamil": "ta",
    "Filipino": "tl",
    "Malay": "ms",
    "Burmese": "my",
}


@dataclass
class Conversion:
    kept: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)


def parse_conversation(text) -> tuple[str, str] | str:
    """(prompt, response) of a one-turn conversation, or the reason it is not one."""
    if isinstance(text, list):
        messages = text
    else:
        try:
            messages = ast.literal_eval(text) if isinstance(text, str) else None
        except (ValueError, SyntaxError):
            return "conversation not parseable"
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "conversation not a list of messages"
    turns = [m for m in messages if m.get("role") != "system"]
    if [m.get("role") for m in turns] != ["user", "assistant"]:
        return "not one user turn and one assistant turn"
    prompt, response = (str(m.get("content") or "").strip() for m in turns)
    if not prompt or not response:
        return "empty prompt or response"
    return prompt, response


def high_quality(row: dict) -> bool:
    return (
        row.get("prompt_input_quality", "Excellent") == "Excellent"
        and row.get("prompt_is_coherent", True) is not False
        and row.get("prompt_is_natural", True) is not False
    )


def _language_rows(source: str, language: str):
    """The rows of one language config: a local `<source>/<Language>/*.parquet`, or a dataset in the HF cache."""
    import datasets

    local = Path(source) / language
    if local.is_dir():
        files = sorted(str(p) for p in local.rglob("*.parquet"))
        if not files:
            raise DataError(f"{local} holds no parquet files")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if Path(source).exists():
        raise DataError(f"{source!r} has no folder {language!r} (SEA-Instruct keeps one folder per language)")
    try:
        return datasets.load_dataset(source, language, split="train")
    except Exception as error:  # datasets raises many types for a name it cannot resolve offline
        raise DataError(f"cannot load {source!r} config {language!r} (from the HF cache): {error}") from None


def convert(
    source: str,
    out: Path,
    per_language: int = 4000,
    eval_per_language: int = 200,
    languages: list[str] | None = None,
    seed: int = 0,
    require_high_quality: bool = True,
    progress=print,
) -> Conversion:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = languages or list(LANGUAGES)
    unknown = [n for n in names if n not in LANGUAGES]
    if unknown:
        raise DataError(f"unknown SEA-Instruct languages {unknown}; known: {list(LANGUAGES)}")
    rng = random.Random(seed)
    result = Conversion()
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for name in names:
        rows = _language_rows(source, name)
        if "conversations" not in rows.column_names:
            raise DataError(f"{source!r} {name}: no `conversations` column (columns: {rows.column_names})")
        usable = []
        for row in rows:
            if require_high_quality and not high_quality(row):
                result.skipped["below Excellent, or not coherent or natural"] += 1
                continue
            parsed = parse_conversation(row["conversations"])
            if isinstance(parsed, str):
                result.skipped[parsed] += 1
                continue
            usable.append(parsed)
        rng.shuffle(usable)
        wanted = per_language + eval_per_language
        if len(usable) < wanted:
            progress(f"[sea-instruct] {name}: only {len(usable)} usable rows for {wanted} wanted")
        code = LANGUAGES[name]
        held_out = usable[:eval_per_language]
        training = usable[eval_per_language:wanted]
        splits["eval"] += [{"prompt": p, "response": r, "lang": code} for p, r in held_out]
        splits["train"] += [{"prompt": p, "response": r, "lang": code} for p, r in training]
        result.kept[code] = len(training)
        progress(f"[sea-instruct] {name} ({code}): {len(training)} train, {len(held_out)} eval of {len(rows)} rows")
    if not splits["train"]:
        raise DataError(f"no usable SEA-Instruct rows in {source!r} (skipped: {dict(result.skipped)})")
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), out / f"{split}.parquet")
    for reason, count in result.skipped.most_common():
        progress(f"[sea-instruct] skipped {count} rows: {reason}")
    return result
