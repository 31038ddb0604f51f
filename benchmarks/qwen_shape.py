"""A few DuDi steps at real scale on this machine: random Qwen2.5-0.5B-shaped student and teacher (vocabulary
151,936, Qwen2.5's chat template, base student + instruct teacher) through Ray, vLLM, Ray Serve and DeepSpeed,
with the peak memory of every process.

    python benchmarks/qwen_shape.py                   # builds the world once (~/.cache/dudi/qwen-shape, 4 GB)
    python benchmarks/qwen_shape.py distill.steps=3   # extra overrides go to `dudi train configs/qwen-shape.yaml`

Runs `dudi train` in a subprocess and samples every descendant process's peak RSS (`VmHWM`) twice a second;
writes `benchmarks/results/qwen_shape.{json,md}`. The weights are random: the run checks plumbing, memory and
time at Qwen's shapes, not learning.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 1 << 30


def children_of(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def title_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def role_of(titles: set[str]) -> str:
    """A readable role from the titles a process had: Ray and vLLM rename their processes as they go (a vLLM
    worker starts as a multiprocessing child, a Ray worker turns `ray::IDLE` when its actor is gone)."""

    def rank(title: str) -> tuple[int, str]:
        if title.startswith("VLLM::"):
            return 0, title.split()[0]
        if title.startswith("ray::ServeReplica"):
            return 0, "ray::ServeReplica (teacher)"
        if title.startswith("ray::") and not title.startswith("ray::IDLE"):
            return 1, "ray::" + re.split(r"[.:\s]", title.removeprefix("ray::"), maxsplit=1)[0]
        if " orchestrator train " in f" {title} ":
            return 1, "driver (dudi train)"
        for known in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
            if known in title:
                return 2, f"Ray system ({known.removesuffix('.py')})"
        return 3, "other: " + title[:40]

    return min(rank(t) for t in titles)[1]


class PeakSampler(threading.Thread):
    """Polls VmHWM (peak RSS) of every process under `root`; a process's last reading is its peak."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, int] = {}
        self.titles: dict[int, set[str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in children_of(self.root):
                title = title_of(pid)
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                match = re.search(r"VmHWM:\s+(\d+) kB", status)
                if match and title:
                    self.titles.setdefault(pid, set()).add(title)
                    self.peaks[pid] = max(self.peaks.get(pid, 0), int(match.group(1)) << 10)
            time.sleep(self.interval)

    def by_role(self) -> list[tuple[str, float, int]]:
        roles: dict[str, list[float]] = {}
        for pid, peak in self.peaks.items():
            roles.setdefault(role_of(self.titles[pid]), []).append(peak / GIB)
        return sorted(((r, max(p), len(p)) for r, p in roles.items()), key=lambda row: -row[1])


def main() -> None:
    from orchestrator.config import qwen_shape_dir
    from orchestrator.tiny_world.build import TinyWorldSpec, build
    from orchestrator.tiny_world.qwen_shape import ensure_qwen_shape

    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as scratch:
        # Only the tiny world's text is needed (data and the BPE's merges): its smallest build.
        if not (qwen_shape_dir() / "world.json").is_file():
            build(Path(scratch), TinyWorldSpec(train_per_language=24, eval_per_language=3, teacher_steps=1), print)
        started = time.perf_counter()
        world = ensure_qwen_shape(Path(scratch))
        print(f"[qwen-shape] world at {world} ({time.perf_counter() - started:.0f} s)")
    run_dir = Path(tempfile.mkdtemp(prefix="qwen-shape-run-"))
    command = [sys.executable, "-m", "orchestrator", "train", str(ROOT / "configs" / "qwen-shape.yaml")]
    command += [f"output_dir={run_dir}", *overrides]
    print("[qwen-shape] " + " ".join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    sampler = PeakSampler(process.pid)
    sampler.start()
    code = process.wait()
    sampler.done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"dudi train exited with {code}")
    results = json.loads(next(run_dir.rglob("results.json")).read_text())
    rows = sampler.by_role()
    report = {
        "wall_s": wall,
        "startup": results.get("startup"),
        "stage_seconds": results.get("stage_seconds"),
        "processes": [{"role": r, "peak_rss_gib": p, "count": n} for r, p, n in rows],
        "overrides": overrides,
    }
    out = ROOT / "benchmarks" / "results"
    (out / "qwen_shape.json").write_text(json.dumps(report, indent=1) + "\n")
    text = write_report(report, out / "qwen_shape.md")
    print(text)


def write_report(report: dict, path: Path) -> str:
    command = " ".join(["python benchmarks/qwen_shape.py", *report["overrides"]])
    lines = [
        "# Qwen2.5-0.5B shapes end to end on CPU",
        "",
        "Random student and teacher of Qwen2.5-0.5B's shape (494M parameters, vocabulary 151,936, Qwen2.5's chat "
        "template, base student + instruct teacher, `models.end_of_turn: <|im_end|>`), fp32, through Ray, vLLM, "
        "Ray Serve and DeepSpeed (ZeRO-0, one rank; the vLLM engine in bf16), a cold-start step and two DuDi steps "
        f"of 4 prompts: `configs/qwen-shape.yaml`. Command: `{command}`. Peak RSS = the process's VmHWM "
        "(file-backed pages included: a model loaded from safetensors is mapped, not copied); the largest process "
        "of each role, and how many there were (each stage starts its own learner).",
        "",
        f"Wall time {report['wall_s']:.0f} s; start-up (s): {json.dumps(report['startup'])}; "
        f"stages (s): {json.dumps(report['stage_seconds'])}.",
        "",
        "| process | peak RSS | processes |",
        "|---|---:|---:|",
    ]
    for row in report["processes"]:
        if row["peak_rss_gib"] >= 0.1:
            role = " ".join(row["role"].split())
            lines.append(f"| {role} | {row['peak_rss_gib']:.2f} GiB | {row['count']} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


if __name__ == "__main__":
    main()
