"""Co-sign latency and refusals by code, kept in the hot HSM for the operator console.

The hot HSM serves no HTTP of its own but its RPC; the console reads these through `health`
(`docs/hsm-pair.md`) and republishes them as Prometheus metrics. prometheus_client's histogram
does the bucketing; it lives in a private registry so nothing here is served directly.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

COSIGN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceStats:
    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self._cosign = Histogram(
            "cosign_seconds",
            "sign_send from request to both signatures",
            buckets=COSIGN_BUCKETS,
            registry=self._registry,
        )
        self._lock = threading.Lock()
        self._refusals: Counter[int] = Counter()

    def observe_cosign(self, seconds: float) -> None:
        self._cosign.observe(seconds)

    def refused(self, code: int) -> None:
        with self._lock:
            self._refusals[code] += 1

    def snapshot(self) -> dict[str, Any]:
        """{"cosign": {"buckets": [[le, cumulative count], ...], "sum", "count"}, "refusals"}."""
        buckets: list[list[float]] = []
        total = count = 0.0
        for metric in self._registry.collect():
            for s in metric.samples:
                if s.name.endswith("_bucket"):
                    le = s.labels["le"]
                    buckets.append([float("inf") if le == "+Inf" else float(le), s.value])
                elif s.name.endswith("_sum"):
                    total = s.value
                elif s.name.endswith("_count"):
                    count = s.value
        with self._lock:
            refusals = {str(code): n for code, n in sorted(self._refusals.items())}
        finite = [[le, n] for le, n in buckets if le != float("inf")]
        return {"cosign": {"buckets": finite, "sum": total, "count": count}, "refusals": refusals}
