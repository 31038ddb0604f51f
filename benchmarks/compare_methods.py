"""Every method of the paper on the tiny world, same budget and seed: the paper's Table 2 and Table 5, small.

    python benchmarks/compare_methods.py [--config configs/demo.yaml] [--seeds 0 1 2] [--skip-ablations] [key=value ...]

One cold start (SFT) is trained once and shared: every preset then trains `distill.steps` steps from it
with the same data order and seed, on one shared set of vLLM engines, and is evaluated greedily on the
same eval rows. Then DuDi's ablations: the verbalizer modes (Table 5, top) and the divergences (bottom).
Writes `compare_methods_seed{N}.json` per seed, then `compare_methods.md` (per-language exact match, mean over
every seed file in --out, so later invocations add seeds) and `compare_methods.png` (bar chart). Extra
`key=value` arguments override the config for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

METHOD_ORDER = ("sft", "dft", "spin", "sdft", "seqkd", "gkd", "dudi", "copsd")
ABLATIONS = {
    "verbalizer": [
        (f"dudi, verbalizer {m}", [f"verbalizer.mode={m}"]) for m in ("none", "english", "multilingual", "mix")
    ],
    "divergence": [(f"dudi, {d}", [f"learner.objective.divergence={d}"]) for d in ("fkl", "jsd")],
}
PAPER_TABLE_2 = {"dudi": 10.1, "dft": 9.7, "spin": 9.5, "gkd": 9.0, "sft": 8.6, "seqkd": 6.1, "sdft": 3.6}


def run_variant(base: Path, overrides: list[str], name: str, cold_start: str, rollout, out_dir: Path) -> dict:
    from orchestrator.config import load_config
    from orchestrator.loop import Trainer

    cfg = load_config(
        base,
        [
            *overrides,
            f"name={name.replace(' ', '_').replace(',', '')}",
            f"output_dir={out_dir}/{{name}}",
            "cold_start.enabled=false",
            "eval.compare_teacher=false",
            "eval.at_end_of_stages=true",
        ],
    )
    started = time.perf_counter()
    trainer = Trainer(cfg, progress=True, rollout=rollout)
    try:
        trainer.run_stage("distill", cfg.distill, cfg.objective, cold_start)
    finally:
        trainer.close()
    [accuracy] = trainer.result.accuracy.values()
    return {
        "name": name,
        "overrides": overrides,
        "accuracy": accuracy,
        "seconds": round(time.perf_counter() - started, 1),
        "last_metrics": trainer.result.last_metrics.get("distill", {}),
    }


def table(rows: list[dict], languages: list[str]) -> str:
    """Per-language exact match averaged over the seeds each run has; the last columns give each seed's avg."""
    head = "| run | " + " | ".join(languages) + " | avg | Δ vs cold start | avg per seed | s / run |"
    lines = [head, "|---|" + "---:|" * (len(languages) + 4)]
    base = next((r["accuracy"]["avg"] for r in rows if r["name"] == "cold start (SFT)"), None)
    for r in rows:
        acc = r["accuracy"]
        delta = "" if base is None or r["name"] in ("teacher", "cold start (SFT)") else f"{acc['avg'] - base:+.1f}"
        per_seed = " / ".join(f"{v:.1f}" for v in r["per_seed"])
        lines.append(
            f"| {r['name']} | "
            + " | ".join(f"{acc[lang]:.1f}" for lang in languages)
            + f" | **{acc['avg']:.1f}** | {delta} | {per_seed} | {r.get('seconds', '')} |"
        )
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    values = [r["accuracy"]["avg"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4))
    colors = [
        "#888888" if n in ("teacher", "cold start (SFT)") else "#d62728" if n.startswith("dudi") else "#1f77b4"
        for n in names
    ]
    ax.bar(range(len(rows)), values, color=colors)
    for i, r in enumerate(rows):  # every seed as a dot, so the spread is visible
        ax.plot([i] * len(r["per_seed"]), r["per_seed"], "k.", markersize=4)
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    ax.set_ylabel("exact match, avg over languages (%)")
    ax.set_title("Tiny world: every method from the same cold start, same budget (bars: mean, dots: seeds)")
    for i, v in enumerate(values):
        ax.text(i, v + 0.8, f"{v:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_seed(base: Path, overrides: list[str], seed: int, runs_dir: Path, skip_ablations: bool) -> dict:
    """One cold start, then every method (and DuDi's ablations) from it; returns the rows and the eval setup."""
    from orchestrator.config import load_config
    from orchestrator.loop import COLD_START_OBJECTIVE, Trainer
    from orchestrator.startup import init_ray

    overrides = [*overrides, f"seed={seed}"]
    runs_dir = runs_dir / f"seed{seed}"
    cfg = load_config(base, [*overrides, "name=cold_start", f"output_dir={runs_dir}/{{name}}", "distill.enabled=false"])
    init_ray(cfg.ray)
    # The first trainer owns the shared engines and the cold start; it also evaluates the teacher once.
    owner = Trainer(cfg, progress=True)
    rows: list[dict] = []
    try:
        owner.start()
        cold_start = owner.run_stage("cold_start", cfg.cold_start, COLD_START_OBJECTIVE, cfg.models.student)
        if "teacher" in owner.result.accuracy:
            rows.append({"name": "teacher", "accuracy": owner.result.accuracy["teacher"]})
        rows.append(
            {
                "name": "cold start (SFT)",
                "accuracy": owner.result.accuracy["cold start (SFT)"],
                "seconds": owner.result.stage_seconds["cold_start"],
            }
        )
        plan = [(m, [f"method={m}"]) for m in METHOD_ORDER]
        if not skip_ablations:
            plan += [(name, ["method=dudi", *o]) for group in ABLATIONS.values() for name, o in group]
        for i, (name, variant) in enumerate(plan, 1):
            print(f"=== seed {seed} [{i}/{len(plan)}] {name} ===", flush=True)
            rows.append(run_variant(base, [*overrides, *variant], name, cold_start, owner.rollout, runs_dir))
    finally:
        owner.close()
    return {
        "seed": seed,
        "rows": rows,
        "languages": owner.languages,
        "eval_rows": len(owner.eval_rows),
        "steps": cfg.distill.steps,
        "batch_size": cfg.distill.batch_size,
    }


def merge_seeds(results: list[dict]) -> list[dict]:
    """Rows with the same name across seeds → one row: mean accuracy per language, each seed's avg kept."""
    merged: dict[str, dict] = {}
    for result in results:
        for row in result["rows"]:
            entry = merged.setdefault(row["name"], {"name": row["name"], "runs": []})
            entry["runs"].append(row)
    out = []
    for entry in merged.values():
        runs = entry["runs"]
        keys = runs[0]["accuracy"].keys()
        accuracy = {k: sum(r["accuracy"][k] for r in runs) / len(runs) for k in keys}
        seconds = [r["seconds"] for r in runs if r.get("seconds")]
        out.append(
            {
                "name": entry["name"],
                "accuracy": accuracy,
                "per_seed": [r["accuracy"]["avg"] for r in runs],
                "seconds": round(sum(seconds) / len(seconds)) if seconds else "",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--runs-dir", default="runs/compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run every method once per seed")
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the seed files")
    parser.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    args = parser.parse_args()

    base, out, runs_dir = Path(args.config), Path(args.out), Path(args.runs_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.report_only else args.seeds:
        started = time.perf_counter()
        result = run_seed(base, args.overrides, seed, runs_dir, args.skip_ablations)
        result["wall_s"] = round(time.perf_counter() - started)
        result["command"] = " ".join(["python benchmarks/compare_methods.py", *sys.argv[1:]])
        (out / f"compare_methods_seed{seed}.json").write_text(json.dumps(result, indent=2))
    write_report(out, args.config)


def write_report(out: Path, config: str) -> None:
    """The report over every `compare_methods_seed*.json` in `out` (successive invocations add seeds)."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("compare_methods_seed*.json"))]
    languages = results[0]["languages"]
    rows = merge_seeds(results)
    methods = [r for r in rows if r["name"] in ("teacher", "cold start (SFT)", *METHOD_ORDER)]
    ablations = [r for r in rows if r["name"].startswith("dudi, ")]
    dudi = next(r for r in rows if r["name"] == "dudi")
    ranking = sorted((r for r in rows if r["name"] in PAPER_TABLE_2), key=lambda r: -r["accuracy"]["avg"])
    seeds = [r["seed"] for r in results]
    wall = ", ".join(f"seed {r['seed']}: {r['wall_s'] / 60:.0f} min" for r in results)
    text = [
        "# Every method on the tiny world",
        "",
        f"`python benchmarks/compare_methods.py --config {config} --seeds …`: per seed one cold start, then "
        f"{results[0]['steps']} steps of each method from it (batch {results[0]['batch_size']}), greedy exact match "
        f"on {results[0]['eval_rows']} eval rows. Seeds {seeds}; wall time {wall}. Cells are means over the seeds.",
        "",
        "## Methods (paper Table 2)",
        "",
        table(methods, languages),
        "",
        "Ordering here: " + " > ".join(f"{r['name']} {r['accuracy']['avg']:.1f}" for r in ranking),
        "",
        "Ordering in the paper: " + " > ".join(f"{m} {v}" for m, v in PAPER_TABLE_2.items()),
    ]
    if ablations:
        # DuDi's own row in these tables comes from the same seeds as the ablations, not from every seed.
        ablation_seeds = [r for r in results if any(row["name"].startswith("dudi, ") for row in r["rows"])]
        dudi = next(r for r in merge_seeds(ablation_seeds) if r["name"] == "dudi")
        verbalizer = [dict(dudi, name="dudi, verbalizer crosslingual")] + [
            r for r in ablations if "verbalizer" in r["name"]
        ]
        divergence = [dict(dudi, name="dudi, rkl")] + [r for r in ablations if "verbalizer" not in r["name"]]
        text += [
            "",
            f"## DuDi: verbalizer modes (paper Table 5), seeds {[r['seed'] for r in ablation_seeds]}",
            "",
            table(verbalizer, languages),
            "",
            f"## DuDi: divergences (paper Table 5), seeds {[r['seed'] for r in ablation_seeds]}",
            "",
            table(divergence, languages),
        ]
    (out / "compare_methods.md").write_text("\n".join(text) + "\n")
    bar_chart(methods + ablations, out / "compare_methods.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
