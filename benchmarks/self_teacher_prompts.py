"""Can a model read the teacher prompts it is shown? Greedy exact match of the comparison's cold starts (the
self-teachers of SDFT and COPSD) and of the bench teacher, on the eval rows under each verbalizer's teacher prompt z.

    python benchmarks/self_teacher_prompts.py [--config configs/bench.yaml] [--seeds 0 1] [--out benchmarks/results]

SDFT's teacher is an EMA of the student shown an English demonstration template, COPSD's the student's frozen start
shown the English translation and English reference answer; both prompts contain the answer. A self-teacher that
reads its prompt scores far above its plain-prompt exact match under them; one that does not gives the student
nothing to learn on its own samples. The bench teacher, trained on the English and crosslingual templates, is the
reference for a model that reads them. Each seed's cold start is the checkpoint `compare_methods.py` recorded for it
(`benchmarks/results/compare/seed<N>/_cold_start.json`; retrain it with `compare_methods.py` if it is gone).

Writes `self_teacher_prompts.md` and `.json` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The teacher prompt each method shows its teacher (orchestrator/verbalizer.py); `none` is the plain prompt the
# eval uses, the student's own reading.
MODES = {
    "none": "plain prompt x (the eval's)",
    "english": "SDFT: English demonstration template",
    "privileged": "COPSD: x + English translation + English answer",
    "crosslingual": "DuDi: crosslingual template (answer in another language)",
}


def measure(cfg, model_path: str, rows, languages: list[str], seed: int) -> dict[str, dict[str, float]]:
    """{mode: {lang: exact match %, "avg": ...}} for one model, on one vLLM worker of its own."""
    from orchestrator.evaluate import evaluate_checkpoint_on
    from orchestrator.routing import as_the_teacher_sees_them
    from orchestrator.verbalizer import Verbalizer

    row_sets = {mode: as_the_teacher_sees_them(rows, Verbalizer(mode, languages), seed) for mode in MODES}
    return evaluate_checkpoint_on(cfg.rollout, model_path, row_sets, cfg.eval.max_new_tokens, seed)


def report(results: dict, languages: list[str], command: str) -> str:
    lines = [
        "# Self-teacher prompts: can the cold start read the prompt its teacher is shown?",
        "",
        "Greedy exact match (%) on the bench world's eval rows, with each row's prompt replaced by the teacher "
        "prompt z of a verbalizer mode; the reference answer is unchanged. SDFT's and COPSD's z contain the answer, "
        "so a model that reads them scores far above its plain-prompt exact match. "
        f"Command: `python benchmarks/self_teacher_prompts.py {command}`.",
        "",
        "| model | prompt | " + " | ".join(languages) + " | avg |",
        "|---|---|" + "---:|" * (len(languages) + 1),
    ]
    for model, by_mode in results["models"].items():
        for mode, scores in by_mode.items():
            cells = " | ".join(f"{scores[lang]:.1f}" for lang in languages)
            lines.append(f"| {model} | {MODES[mode]} | {cells} | {scores['avg']:.1f} |")
    lines += ["", f"{results['eval_rows']} eval rows; {results['seconds']:.0f} s on this machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--compare-dir", default=str(ROOT / "benchmarks" / "results" / "compare"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("overrides", nargs="*", help="config key=value, as for `dudi train`")
    args = parser.parse_args()

    from orchestrator.config import load_config
    from orchestrator.data import load_examples
    from orchestrator.startup import init_ray

    cfg = load_config(args.config, args.overrides)
    models = {"bench teacher": cfg.models.teacher}
    for seed in args.seeds:
        record_path = Path(args.compare_dir) / f"seed{seed}" / "_cold_start.json"
        if not record_path.is_file():
            raise SystemExit(f"--seeds {seed}: no cold start recorded at {record_path}; run compare_methods.py first")
        checkpoint = json.loads(record_path.read_text())["checkpoint"]
        if not Path(checkpoint, "config.json").is_file():
            raise SystemExit(
                f"--seeds {seed}: the recorded cold start {checkpoint} is gone; compare_methods.py retrains it"
            )
        models[f"cold start, seed {seed}"] = checkpoint
    rows = load_examples(cfg.data, "eval")
    languages = sorted({row.lang for row in rows})
    init_ray(cfg.ray)
    started = time.perf_counter()
    results = {"models": {}, "checkpoints": models, "eval_rows": len(rows)}
    for name, path in models.items():
        print(f"=== {name}: {path} ===", flush=True)
        results["models"][name] = measure(cfg, path, rows, languages, cfg.seed)
        print({mode: round(s["avg"], 1) for mode, s in results["models"][name].items()}, flush=True)
    results["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    command = " ".join(sys.argv[1:])
    (out / "self_teacher_prompts.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out / "self_teacher_prompts.md").write_text(report(results, languages, command))
    print((out / "self_teacher_prompts.md").read_text())


if __name__ == "__main__":
    main()
