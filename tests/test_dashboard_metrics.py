"""The run's metrics reach the Ray dashboard: after the session's DuDi run, every metric the issue names is on
this node's Prometheus endpoint (Ray's metrics agent) with a plausible value, and the shipped Grafana dashboard
asks only for metrics a run exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import METRICS_PORT

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# metric → the range its values must fall in (each name carries Ray's `ray_` prefix on the endpoint).
EXPECTED = {
    "dudi_loss_total": (0.0, 100.0),
    "dudi_loss_on_kd": (0.0, 100.0),  # KL per term: on-policy ...
    "dudi_loss_off_kd": (0.0, 100.0),  # ... and off-policy
    "dudi_loss_spin": (0.0, 100.0),
    "dudi_diag_topk_overlap_on": (0.0, 1.0),
    "dudi_diag_topk_overlap_off": (0.0, 1.0),
    "dudi_rollout_tokens_per_s": (1e-3, 1e7),
    "dudi_rollout_worker_tokens_per_s": (1e-3, 1e7),
    "dudi_time_sync_s": (0.0, 600.0),
    "dudi_rollout_staleness": (0.0, 10.0),
    "dudi_rollout_staleness_mean": (0.0, 10.0),
    "dudi_time_learner_wait_fraction": (0.0, 1.0),
    "dudi_samples_trained": (1.0, 1e9),
    "dudi_rollout_restarts": (0.0, 100.0),
    "dudi_teacher_retries": (0.0, 1e4),
    "dudi_teacher_replica_restarts": (0.0, 100.0),
}
# Per teacher replica, kept while the replica lives: a run deletes its teacher at the end of each stage, so these are
# checked on a live replica (tests/test_teacher_server.py).
TEACHER_METRICS = {"dudi_teacher_latency_s": (1e-6, 600.0), "dudi_teacher_batch_size": (1.0, 1e5)}
# Dashboard panels for terms other presets log (SFT, DFT, the EMA teacher's sync).
OTHER_PRESETS = {"dudi_loss_sft", "dudi_loss_dft", "dudi_time_teacher_sync_s"}


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    import requests

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in requests.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"].startswith("ray_dudi_"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.setdefault(match["name"].removeprefix("ray_"), []).append((labels, float(match["value"])))
    return samples


def test_every_run_metric_is_on_the_prometheus_endpoint(run):
    samples: dict = {}
    deadline = time.time() + 60  # Ray's agent exports every few seconds
    while time.time() < deadline:
        samples = scrape()
        if set(EXPECTED) <= set(samples):
            break
        time.sleep(3)
    assert set(EXPECTED) <= set(samples), f"missing: {sorted(set(EXPECTED) - set(samples))}"
    for name, (low, high) in EXPECTED.items():
        values = [value for _, value in samples[name]]
        assert all(low <= v <= high for v in values), (name, values)
    # Tagged with the run and the stage. The session's run is still open, so its last values are kept on the
    # endpoint however long ago it trained; closed runs of other tests age out.
    tagged = {(labels.get("run"), labels.get("stage")) for labels, _ in samples["dudi_loss_total"]}
    assert all(run_name and stage in ("cold_start", "distill") for run_name, stage in tagged), tagged
    assert {(run.cfg.name, "cold_start"), (run.cfg.name, "distill")} <= tagged, tagged
    workers = {labels.get("worker") for labels, _ in samples["dudi_rollout_worker_tokens_per_s"]}
    assert "0" in workers
    # Every step metric of the run is exported, not only the ones listed above.
    logged = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    missing = [
        k for k in logged if k not in ("stage", "step", "time") and "dudi_" + re.sub(r"\W", "_", k) not in samples
    ]
    assert not missing


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.time()
    while not condition():
        assert time.time() - started < timeout_s, f"{what} after {timeout_s:.0f} s"
        time.sleep(1)
    return time.time() - started


def test_a_kept_gauge_outlives_rays_own_until_closed(ray_session):
    """Ray drops a gauge about 20 s after its last set (the control below shows it on this Ray); KeptGauges keeps
    the last value on the endpoint until closed, then lets it age out the same way."""
    from ray.util.metrics import Gauge

    from dudi_common.gauges import KeptGauges

    kept = KeptGauges(refresh_s=1.0)
    kept.set("dudi_test_kept", 2.5, {"run": "kept"})
    Gauge("dudi_test_plain", description="set once, without KeptGauges", tag_keys=("run",)).set(
        1.5, tags={"run": "plain"}
    )
    wait_for(lambda: {"dudi_test_kept", "dudi_test_plain"} <= set(scrape()), 60, "not both on the endpoint")
    wait_for(lambda: "dudi_test_plain" not in scrape(), 90, "Ray kept a gauge set once")
    assert [(labels["run"], value) for labels, value in scrape()["dudi_test_kept"]] == [("kept", 2.5)]
    kept.close()
    wait_for(lambda: "dudi_test_kept" not in scrape(), 90, "a closed KeptGauges still on the endpoint")


def test_the_grafana_dashboard_asks_for_metrics_a_run_exports():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dudi-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"dudi_\w+", target["expr"])
    }
    exported = set(EXPECTED) | set(TEACHER_METRICS)
    assert exported <= asked, sorted(exported - asked)
    assert asked <= exported | OTHER_PRESETS, sorted(asked - exported - OTHER_PRESETS)
