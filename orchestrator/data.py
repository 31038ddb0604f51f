"""Rows (prompt, response, lang) from a local jsonl/json/parquet file or a saved HF dataset, via `datasets`."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import LANGUAGES, DataConfig


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    lang: str
    prompt_en: str | None = None  # English translation (privileged context for COPSD), when the data has it
    response_en: str | None = None


def load_dataset_any(path: str):
    """A `datasets.Dataset` from a file or a `save_to_disk` directory."""
    import datasets

    source = Path(path)
    if not source.exists():
        raise DataError(f"data file {path!r} does not exist")
    if source.is_dir():
        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            raise DataError(f"{path!r} is a DatasetDict; point at one split, e.g. {path}/train")
        return loaded
    suffix = source.suffix.lower()
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise DataError(
            f"{path!r}: unsupported data format {suffix!r}; use .jsonl, .json, .parquet or a saved dataset dir"
        )
    return datasets.load_dataset(builder, data_files=str(source), split="train")


def _jsonl_rows(path: Path):
    """(line number, row dict or None when the line is not a JSON object), read by hand so a malformed line is
    one bad row with a line number rather than a parser traceback; invalid UTF-8 becomes U+FFFD (caught below)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield number, row if isinstance(row, dict) else None


def _numbered_rows(path: str):
    source = Path(path)
    if source.is_file() and source.suffix.lower() == ".jsonl":
        yield from _jsonl_rows(source)
        return
    yield from enumerate(load_dataset_any(path), 1)


def row_problem(row: dict | None, columns: dict[str, str]) -> str | None:
    """Why a row cannot be trained on, or None."""
    if row is None:
        return "malformed line (not a JSON object)"
    for field, column in columns.items():
        if row.get(column) is None:
            return f"missing {field} (column {column!r})"
    for field in ("prompt", "response"):
        text = str(row[columns[field]])
        if not text.strip():
            return f"empty {field}"
        if "\ufffd" in text:
            return f"undecodable text in {field}"
    lang = str(row[columns["lang"]])
    if lang not in LANGUAGES:
        return f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})"
    return None


def _too_long(row: dict, columns: dict[str, str], tokenizer, limit: int) -> str | None:
    from orchestrator.tokens import encode_prompt, encode_response

    length = len(encode_prompt(tokenizer, str(row[columns["prompt"]])))
    length += len(encode_response(tokenizer, str(row[columns["response"]])))
    return f"longer than {limit} tokens (rollout.max_model_len)" if length > limit else None


def load_examples(
    config: DataConfig, split: str, skipped: Counter | None = None, token_limit: tuple | None = None
) -> list[Example]:
    """The split's usable rows. Unusable ones are counted by reason into `skipped`, or, with `data.strict`, stop
    the run with the file and row (line) number. `token_limit` = (tokenizer, n): rows whose chat-templated prompt
    and response together exceed n tokens are unusable too."""
    path = config.train_path if split == "train" else config.eval_path
    columns = {"prompt": config.prompt_column, "response": config.response_column, "lang": config.lang_column}
    english = (config.prompt_en_column, config.response_en_column)
    skipped = skipped if skipped is not None else Counter()
    rows: list[Example] = []
    seen_columns: set[str] = set()

    def optional(row, column):
        return None if row.get(column) is None else str(row[column])

    for number, row in _numbered_rows(path):
        seen_columns.update(row or {})
        problem = row_problem(row, columns)
        if problem is None and token_limit is not None:
            problem = _too_long(row, columns, *token_limit)
        if problem is not None:
            if config.strict:
                raise DataError(f"{path}: row {number}: {problem} (data.strict is set)")
            skipped[problem] += 1
            continue
        rows.append(
            Example(
                prompt=str(row[columns["prompt"]]),
                response=str(row[columns["response"]]),
                lang=str(row[columns["lang"]]),
                prompt_en=optional(row, english[0]),
                response_en=optional(row, english[1]),
            )
        )
    if not rows and seen_columns and not set(columns.values()) <= seen_columns:
        missing = {k: v for k, v in columns.items() if v not in seen_columns}
        fields = ", ".join(f"data.{k}_column={v!r}" for k, v in missing.items())
        raise DataError(f"{path!r} has no column for {fields}; its columns are {sorted(seen_columns)}")
    if config.languages:
        rows = [r for r in rows if r.lang in config.languages]
    if split == "eval" and config.max_eval_per_language:
        kept: dict[str, int] = {}
        limited = []
        for r in rows:
            if kept.get(r.lang, 0) < config.max_eval_per_language:
                kept[r.lang] = kept.get(r.lang, 0) + 1
                limited.append(r)
        rows = limited
    if not rows:
        reasons = f"; skipped: {dict(skipped)}" if skipped else ""
        raise DataError(f"{path!r} has no usable rows for languages {config.languages or 'any'}{reasons}")
    return rows


_NUMBER = re.compile(r"-?\d+")


def final_answer(text: str) -> str | None:
    """The last integer in a response: what exact match compares."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None
