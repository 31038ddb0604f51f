"""The comparison benchmark's report: seeds merged per run, the tables and the chart written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_file(out: Path, seed: int, scores: dict[str, float]) -> None:
    rows = [
        {"name": name, "accuracy": {"en": v, "th": v + 2, "avg": v + 1}, "seconds": 10} for name, v in scores.items()
    ]
    result = {"seed": seed, "rows": rows, "languages": ["en", "th"], "eval_rows": 4, "steps": 3, "batch_size": 2}
    (out / f"compare_methods_seed{seed}.json").write_text(json.dumps({**result, "wall_s": 60}))


def test_report_averages_seeds_and_keeps_each_seed(compare, tmp_path):
    names = ["teacher", "cold start (SFT)", *compare.METHOD_ORDER, "dudi, verbalizer none", "dudi, jsd"]
    seed_file(tmp_path, 0, {n: 10.0 + i for i, n in enumerate(names)})
    seed_file(tmp_path, 1, {n: 20.0 + i for i, n in enumerate(names)})
    compare.write_report(tmp_path, "configs/demo.yaml")
    report = (tmp_path / "compare_methods.md").read_text()
    dudi_index = names.index("dudi")
    # dudi: seeds give avg 11+i and 21+i → mean 16+i; en 10+i and 20+i → 15+i.
    row = next(line for line in report.splitlines() if line.startswith("| dudi |"))
    assert f"**{16.0 + dudi_index:.1f}**" in row and f"{15.0 + dudi_index:.1f}" in row
    assert f"{11.0 + dudi_index:.1f} / {21.0 + dudi_index:.1f}" in row
    assert "verbalizer modes" in report and "divergences" in report and "Ordering in the paper" in report
    assert (tmp_path / "compare_methods.png").stat().st_size > 1000
