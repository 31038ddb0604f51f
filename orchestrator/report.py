"""`<run>/results.png`: the loss curves of every stage beside the per-language eval table (what results.md holds)."""

from __future__ import annotations

import json
from pathlib import Path


def loss_curves(metrics_path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """stage → loss term → [(step, value)], from `metrics.jsonl`."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if not metrics_path.is_file():
        return curves
    for line in metrics_path.read_text().splitlines():
        entry = json.loads(line)
        for key, value in entry.items():
            if key.startswith("loss/"):
                curves.setdefault(entry["stage"], {}).setdefault(key, []).append((entry["step"], value))
    return curves


def write_results_png(
    run_dir: Path, accuracy: dict[str, dict[str, float]], languages: list[str], path: Path | None = None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    curves = loss_curves(run_dir / "metrics.jsonl")
    stages = list(curves)
    columns = max(1, len(stages)) + (1 if accuracy else 0)
    fig, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4.2), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=False):
        for term, points in sorted(curves[stage].items()):
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=term.removeprefix("loss/"), linewidth=2 if term == "loss/total" else 1)
        ax.set(title=f"{stage}: loss per step", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if accuracy:
        ax = axes[0][-1]
        ax.axis("off")
        header = [*languages, "avg"]
        cells = [[f"{scores.get(lang, float('nan')):.1f}" for lang in header] for scores in accuracy.values()]
        table = ax.table(cellText=cells, rowLabels=list(accuracy), colLabels=header, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1.0, 1.4)
        ax.set_title("eval: exact match (%) per language")
    fig.tight_layout()
    target = path or run_dir / "results.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
