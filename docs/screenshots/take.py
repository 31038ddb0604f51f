"""Maintainer script: the screenshots in docs/ of a real run's metrics.

Starts a one-node Ray cluster (`ray start --head`, token authentication on, the dashboard on loopback), a
Prometheus that scrapes Ray's metrics endpoint, submits a short demo run through `deploy/submit.sh`, then takes
headless-browser screenshots of Prometheus's graphs of the run's `ray_dudi_*` metrics and of the Ray dashboard's
job page. Needs, besides the project: `prometheus` and `chromium` on PATH (Debian: `apt install prometheus
chromium`) and `pip install playwright` (it drives the system chromium; no browser download).

    python docs/screenshots/take.py            # writes docs/screenshots/*.png
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent

PANELS = [
    ("ray_dudi_loss_total", "ray_dudi_loss_on_kd", "ray_dudi_loss_off_kd", "ray_dudi_loss_spin"),
    ("ray_dudi_rollout_worker_tokens_per_s", "ray_dudi_rollout_tokens_per_s"),
    ("ray_dudi_teacher_latency_s", "ray_dudi_time_sync_s", "ray_dudi_time_learner_wait_fraction"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    venv_bin = Path(os.environ.get("DUDI_VENV", ROOT / ".venv")) / "bin"
    ports = {k: free_port() for k in ("gcs", "dashboard", "metrics", "prometheus", "teacher")}
    token = secrets.token_hex(32)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{venv_bin}:{os.environ['PATH']}")
    work = Path(tempfile.mkdtemp(prefix="dudi-shots-"))
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s}\n"
        f"scrape_configs:\n  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{ports['metrics']}']}}]\n"
    )
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    str(venv_bin / "ray"),
                    "start",
                    "--head",
                    "--block",
                    "--num-cpus=2",
                    "--disable-usage-stats",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--port={ports['gcs']}",
                    f"--dashboard-port={ports['dashboard']}",
                    f"--metrics-export-port={ports['metrics']}",
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                ],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        address = f"http://127.0.0.1:{ports['dashboard']}"
        while (
            subprocess.run(
                [str(venv_bin / "ray"), "job", "list", "--address", address], env=env, capture_output=True
            ).returncode
            != 0
        ):
            time.sleep(2)
        started = time.time()
        job = f"dudi-shots-{secrets.token_hex(3)}"
        overrides = [
            "cold_start.steps=30",
            "distill.steps=20",
            "eval.compare_teacher=false",
            f"teacher.http_port={ports['teacher']}",
            f"output_dir={work / 'run'}",
        ]
        subprocess.run(
            ["bash", "deploy/submit.sh", "configs/demo.yaml", *overrides],
            cwd=ROOT,
            check=True,
            env=dict(env, RAY_ADDRESS=address, SUBMIT_ARGS=f"--submission-id {job}"),
        )
        time.sleep(8)  # one more scrape after the last step
        minutes = max(5, int((time.time() - started) / 60) + 2)
        shoot(ports, token, job, minutes)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def shoot(ports: dict, token: str, job: str, minutes: int) -> None:
    from playwright.sync_api import sync_playwright

    query = {}
    for i, names in enumerate(PANELS):
        query.update(
            {
                f"g{i}.expr": '{__name__=~"' + "|".join(names) + '"}',
                f"g{i}.tab": "0",
                f"g{i}.range_input": f"{minutes}m",
                f"g{i}.show_exemplars": "0",
            }
        )
    with sync_playwright() as browser_kit:
        browser = browser_kit.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1900})
        page.goto(f"http://127.0.0.1:{ports['prometheus']}/graph?{urlencode(query)}")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(OUT / "prometheus_dudi_metrics.png"), full_page=True)
        # The Ray dashboard asks for the cluster's token; the browser sends it as Ray's own login would.
        context = browser.new_context(
            viewport={"width": 1500, "height": 1000}, extra_http_headers={"Authorization": f"Bearer {token}"}
        )
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{ports['dashboard']}/#/jobs/{job}")
        page.wait_for_timeout(8000)
        page.screenshot(path=str(OUT / "ray_dashboard_job.png"), full_page=True)
        browser.close()
    print("wrote", *sorted(p.name for p in OUT.glob("*.png")))


if __name__ == "__main__":
    sys.exit(main())
