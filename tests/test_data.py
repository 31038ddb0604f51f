import json

import pytest

from orchestrator.config import DataConfig
from orchestrator.data import DataError, final_answer, load_examples

ROWS = [
    {"q": "1 + 2?", "a": "1 + 2 = 3. The answer is 3.", "language": "en"},
    {"q": "2 + 2?", "a": "2 + 2 = 4. Jawabannya 4.", "language": "id"},
    {"q": "3 + 2?", "a": "3 + 2 = 5. Jawabannya 5.", "language": "id"},
]


def config(path, **kw):
    return DataConfig(
        train_path=str(path), eval_path=str(path), prompt_column="q", response_column="a", lang_column="language", **kw
    )


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_jsonl_with_configured_columns(jsonl):
    rows = load_examples(config(jsonl), "train")
    assert [(r.prompt, r.lang) for r in rows] == [(r["q"], r["language"]) for r in ROWS]


def test_parquet_and_saved_dataset_give_the_same_rows(tmp_path, jsonl):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    expected = load_examples(config(jsonl), "train")
    assert load_examples(config(tmp_path / "rows.parquet"), "train") == expected
    assert load_examples(config(tmp_path / "saved"), "train") == expected


def test_language_filter_and_eval_cap(jsonl):
    assert {r.lang for r in load_examples(config(jsonl, languages=["id"]), "train")} == {"id"}
    assert len(load_examples(config(jsonl, max_eval_per_language=1), "eval")) == 2


def test_missing_column_names_the_field_and_the_columns(jsonl):
    cfg = DataConfig(train_path=str(jsonl), eval_path=str(jsonl), prompt_column="question")
    with pytest.raises(DataError) as error:
        load_examples(cfg, "train")
    assert "data.prompt_column='question'" in str(error.value) and "'q'" in str(error.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(config(tmp_path / "nope.jsonl"), "train")
    (tmp_path / "rows.csv").write_text("q,a\n")
    with pytest.raises(DataError, match="unsupported data format"):
        load_examples(config(tmp_path / "rows.csv"), "train")


def test_final_answer_is_the_last_integer():
    assert final_answer("7 - 3 = 4. Jawabannya adalah 4.") == "4"
    assert final_answer("no number") is None


def test_tiny_world_rows_are_complete(tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "data" / "train.jsonl").read_text().splitlines()]
    assert {r["lang"] for r in rows} == {"en", "id", "vi", "th", "ta", "tl", "ms", "my"}
    for row in rows:
        assert final_answer(row["response"]) == row["answer"] == final_answer(row["response_en"])
        assert row["prompt_en"] and row["response_en"]
    assert all(r["prompt"] == r["prompt_en"] for r in rows if r["lang"] == "en")
    cfg = DataConfig(
        train_path=str(tiny_world / "data" / "train.jsonl"), eval_path=str(tiny_world / "data" / "eval.jsonl")
    )
    train, evaluation = load_examples(cfg, "train"), load_examples(cfg, "eval")
    assert not {(r.prompt, r.lang) for r in train} & {(r.prompt, r.lang) for r in evaluation}


def test_batches_cover_epochs_and_refuse_a_batch_larger_than_the_data():
    from orchestrator.data import Example
    from orchestrator.loop import batches

    rows = [Example(str(i), str(i), "en") for i in range(10)]
    given = list(batches(rows, 4, 5, seed=0))
    assert len(given) == 5 and all(len(b) == 4 for b in given)
    assert len({r.prompt for b in given[:2] for r in b}) == 8, "no row repeats within an epoch"
    with pytest.raises(DataError, match="larger than the 10 training rows"):
        next(batches(rows, 11, 1, seed=0))


def test_unusable_rows_are_skipped_and_counted_or_stop_a_strict_run(tmp_path):
    from collections import Counter

    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines += [
        '{"q": "4 + 2?", "a": "6", "language": "id"',  # cut off: not JSON
        json.dumps({"q": "5 + 2?", "language": "id"}),  # no response
        json.dumps({"q": "6 + 2?", "a": "   ", "language": "id"}),
        json.dumps({"q": "7 + 2?", "a": "9", "language": "xx"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"q": "8 + 2?", "a": "\xff\xfe", "language": "id"}\n')
    skipped = Counter()
    rows = load_examples(config(path), "train", skipped)
    assert [r.prompt for r in rows] == [r["q"] for r in ROWS]
    assert skipped == {
        "malformed line (not a JSON object)": 1,
        "missing response (column 'a')": 1,
        "empty response": 1,
        "unknown language 'xx' (known: en, id, vi, th, ta, tl, ms, my)": 1,
        "undecodable text in response": 1,
    }
    with pytest.raises(DataError, match=r"mixed.jsonl: row 4: malformed line .*data.strict"):
        load_examples(config(path, strict=True), "train")


def test_rows_longer_than_the_limit_are_skipped(jsonl, tiny_world):
    from collections import Counter

    from orchestrator.startup import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_world / "student"))
    skipped = Counter()
    assert len(load_examples(config(jsonl), "train", skipped, (tokenizer, 10_000))) == 3 and not skipped
    with pytest.raises(DataError, match="no usable rows.*longer than 8 tokens"):
        load_examples(config(jsonl), "train", skipped, (tokenizer, 8))
