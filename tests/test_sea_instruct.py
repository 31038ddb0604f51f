"""SEA-Instruct conversion on a local copy laid out like the gated dataset (one parquet folder per language)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import DataConfig
from orchestrator.data import DataError, load_examples
from orchestrator.sea_instruct import convert, parse_conversation


def conversation(user: str, assistant: str, system: bool = False) -> str:
    """As the dataset stores it: the repr of a Python list, single quotes and None included."""
    turns = [{"role": "system", "content": "Be brief.", "name": None}] if system else []
    turns += [{"role": "user", "content": user, "name": None}, {"role": "assistant", "content": assistant}]
    return repr(turns)


def write_language(root, name: str, rows: list[dict]) -> None:
    (root / name).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / name / "train-00000-of-00001.parquet")


def row(i: int, quality: str = "Excellent", text=None, lang: str = "ms") -> dict:
    return {
        "conversations_id": f"c{i}",
        "conversations": text if text is not None else conversation(f"Soalan {lang} {i}?", f"Jawapan {i}."),
        "prompt_input_quality": quality,
        "prompt_is_coherent": True,
        "prompt_is_natural": True,
        "turn_count": 1,
    }


def test_parse_conversation_takes_one_user_and_one_assistant_turn():
    assert parse_conversation(conversation("a", "b", system=True)) == ("a", "b")
    assert parse_conversation(conversation("a", "")) == "empty prompt or response"
    assert parse_conversation("[{'role': 'user'") == "conversation not parseable"
    two_turns = repr([{"role": r, "content": "x"} for r in ("user", "assistant", "user", "assistant")])
    assert parse_conversation(two_turns) == "not one user turn and one assistant turn"


def test_convert_keeps_high_quality_single_turns_per_language_and_counts_the_rest(tmp_path):
    source = tmp_path / "SEA-Instruct-2602"
    malay = [row(i) for i in range(10)] + [row(10, quality="Good"), row(11, text="not a list")]
    write_language(source, "Malay", malay)
    write_language(source, "Thai", [row(i, lang="th") for i in range(6)])
    messages: list[str] = []
    result = convert(
        str(source),
        tmp_path / "out",
        per_language=5,
        eval_per_language=2,
        languages=["Malay", "Thai"],
        progress=messages.append,
    )
    assert result.kept == {"ms": 5, "th": 4}
    assert result.skipped == {"below Excellent, or not coherent or natural": 1, "conversation not parseable": 1}
    assert any("Thai: only 6 usable rows for 7 wanted" in m for m in messages)
    config = DataConfig(
        train_path=str(tmp_path / "out" / "train.parquet"), eval_path=str(tmp_path / "out" / "eval.parquet")
    )
    train, held_out = load_examples(config, "train"), load_examples(config, "eval")
    assert len(train) == 9 and len(held_out) == 4
    assert {e.lang for e in train} == {"ms", "th"}
    assert not {e.prompt for e in train} & {e.prompt for e in held_out}
    assert all(e.prompt.startswith(f"Soalan {e.lang} ") and e.response.startswith("Jawapan") for e in train)
    again = convert(
        str(source),
        tmp_path / "again",
        per_language=5,
        eval_per_language=2,
        languages=["Malay", "Thai"],
        progress=lambda _: None,
    )
    assert again.kept == result.kept
    assert pq.read_table(tmp_path / "again" / "train.parquet").equals(pq.read_table(tmp_path / "out" / "train.parquet"))


def test_convert_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="no folder 'Malay'"):
        convert(str(tmp_path), tmp_path / "out", languages=["Malay"], progress=lambda _: None)
    with pytest.raises(DataError, match="unknown SEA-Instruct languages"):
        convert(str(tmp_path), tmp_path / "out", languages=["Klingon"], progress=lambda _: None)
