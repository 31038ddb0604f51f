"""Rows (prompt, response, lang) from a local jsonl/json/parquet file or a saved HF dataset, via `datasets`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import DataConfig


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


def load_examples(config: DataConfig, split: str) -> list[Example]:
    path = config.train_path if split == "train" else config.eval_path
    dataset = load_dataset_any(path)
    columns = {"prompt": config.prompt_column, "response": config.response_column, "lang": config.lang_column}
    missing = {k: v for k, v in columns.items() if v not in dataset.column_names}
    if missing:
        fields = ", ".join(f"data.{k}_column={v!r}" for k, v in missing.items())
        raise DataError(f"{path!r} has no column for {fields}; its columns are {dataset.column_names}")
    english = [c if c in dataset.column_names else None for c in (config.prompt_en_column, config.response_en_column)]

    def optional(row, column):
        return None if column is None or row[column] is None else str(row[column])

    rows = [
        Example(
            prompt=str(row[columns["prompt"]]),
            response=str(row[columns["response"]]),
            lang=str(row[columns["lang"]]),
            prompt_en=optional(row, english[0]),
            response_en=optional(row, english[1]),
        )
        for row in dataset
    ]
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
        raise DataError(f"{path!r} has no rows for languages {config.languages}")
    return rows


_NUMBER = re.compile(r"-?\d+")


def final_answer(text: str) -> str | None:
    """The last integer in a response: what exact match compares."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None
