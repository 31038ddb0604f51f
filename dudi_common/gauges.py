"""Ray gauges that stay on the node's Prometheus endpoint between sets.

Ray's core worker exports a gauge only in the report interval after it was set, and the metrics agent drops a
series two intervals later (measured on Ray 2.60: a gauge set once is scraped for about 20 s, then never again).
A metric set once per training step, per eval or per scoring call would blink in and out of Grafana as soon as
steps take longer than that, and a finished stage would vanish. `KeptGauges` sets every series' last value again
every few seconds, from a daemon thread, until it is closed.
"""

from __future__ import annotations

import threading

# One Gauge object per metric name for the whole process, shared by every KeptGauges in it (each sets its own tags),
# rather than a fresh registration of the same name per run.
_GAUGES: dict = {}
_GAUGES_LOCK = threading.Lock()

# Below Ray's default report interval (10 s), so every export carries each series.
REFRESH_S = 5.0


def _gauge(name: str, description: str, tag_keys: tuple[str, ...]):
    from ray.util.metrics import Gauge

    with _GAUGES_LOCK:
        if name not in _GAUGES:
            _GAUGES[name] = Gauge(name, description=description, tag_keys=tag_keys)
        return _GAUGES[name]


class KeptGauges:
    """State: the last value of each (gauge, tags) series set through it, and the thread that sets them again."""

    def __init__(self, refresh_s: float = REFRESH_S):
        self.refresh_s = refresh_s
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, name: str, value: float, tags: dict[str, str], description: str = "") -> None:
        gauge = _gauge(name, description or name, tuple(sorted(tags)))
        gauge.set(float(value), tags=tags)
        with self._lock:
            self._last[(name, tuple(sorted(tags.items())))] = float(value)
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._refresh, name="dudi-kept-gauges", daemon=True)
                self._thread.start()

    def _refresh(self) -> None:
        while not self._closed.wait(self.refresh_s):
            with self._lock:
                series = list(self._last.items())
            for (name, tags), value in series:
                _GAUGES[name].set(value, tags=dict(tags))

    def close(self) -> None:
        """Stops refreshing: the series age out of the endpoint about 20 s later."""
        self._closed.set()
