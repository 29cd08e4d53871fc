"""`/metrics`: the console's snapshot as Prometheus metric families, built at scrape time.

Counts that live in other processes (the hot HSM's co-sign latencies and refusals, the link's
and the SIMs' counters) reach the console through the hot HSM's `health` and the cold HSM's
`status`, so a scrape needs no metrics port on any HSM: the cold HSM stays reachable by its
serial link and SMS only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from custody.operator.snapshot import Part

LINK_FAILURE_KEYS = ("retransmits", "timeouts", "gave up", "unauthenticated", "stale", "rejected")


class ConsoleCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Part]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        parts = self.snapshot()
        yield from self._processes(parts["processes"])
        yield from self._accounts(parts["accounts"])
        yield from self._hsms(parts["hsms"], parts["link"])
        yield from self._sms(parts["sms"])
        yield from self._chain(parts["chain"])
        yield from self._alerts(parts["alerts"])
        journal = GaugeMetricFamily("cc_journal_verified", "1 when the journal's hash chain holds")
        journal.add_metric([], 1.0 if parts["journal"].data.get("verified") else 0.0)
        yield journal
        up = GaugeMetricFamily(
            "cc_part_readable", "1 when the console could read the part", labels=["part"]
        )
        for name, part in parts.items():
            up.add_metric([name], 0.0 if part.error else 1.0)
        yield up

    @staticmethod
    def _processes(part: Part) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "cc_process_ready", "1 when the process is ready", labels=["process"]
        )
        restarts = CounterMetricFamily(
            "cc_process_restarts", "restarts by the supervisor", labels=["process"]
        )
        for r in part.data.get("rows", []):
            up.add_metric([r["name"]], 1.0 if r.get("state") == "ready" else 0.0)
            restarts.add_metric([r["name"]], float(r.get("restarts", 0)))
        yield up
        yield restarts

    @staticmethod
    def _accounts(part: Part) -> Iterator[Any]:
        sends = GaugeMetricFamily("cc_sends", "sends by state", labels=["state"])
        for state, n in sorted(part.data.get("sends_by_state", {}).items()):
            sends.add_metric([state], float(n))
        yield sends
        frozen = GaugeMetricFamily(
            "cc_account_frozen", "1 when the account is frozen", labels=["account"]
        )
        balance = GaugeMetricFamily(
            "cc_balance_satoshi", "confirmed balance", labels=["account", "wallet"], unit=""
        )
        deposits = CounterMetricFamily(
            "cc_deposits", "transactions that paid the account", labels=["account"]
        )
        stuck = GaugeMetricFamily(
            "cc_sends_stuck", "sends older than the stuck threshold", labels=["account"]
        )
        for row in part.data.get("rows", []):
            acct = str(row["id"])
            frozen.add_metric([acct], 1.0 if row["frozen"] else 0.0)
            balance.add_metric([acct, "cold"], float(row["cold_balance"]))
            balance.add_metric([acct, "hot"], float(row["hot_balance"]))
            deposits.add_metric([acct], float(row["deposits"]))
            stuck.add_metric([acct], float(sum(1 for s in row["sends"] if s["stuck"])))
        yield from (frozen, balance, deposits, stuck)

    @staticmethod
    def _hsms(hsms: Part, link: Part) -> Iterator[Any]:
        cosign = hsms.data.get("cosign")
        if cosign:
            hist = HistogramMetricFamily("cc_cosign_seconds", "sign_send latency in the hot HSM")
            buckets = [(str(le), float(n)) for le, n in cosign.get("buckets", [])]
            buckets.append(("+Inf", float(cosign.get("count", 0))))
            hist.add_metric([], buckets, sum_value=float(cosign.get("sum", 0.0)))
            yield hist
        refusals = CounterMetricFamily(
            "cc_hsm_refusals", "refusals by HSM and code", labels=["hsm", "code"]
        )
        for code, n in sorted(hsms.data.get("hot_refusals", {}).items()):
            refusals.add_metric(["hot", str(code)], float(n))
        for code, n in sorted(hsms.data.get("cold", {}).get("refusals", {}).items()):
            refusals.add_metric(["cold", str(code)], float(n))
        yield refusals
        events = CounterMetricFamily(
            "cc_link_events", "serial link counters (hot side)", labels=["event"]
        )
        for key, n in sorted(link.data.get("stats", {}).items()):
            if isinstance(n, int | float):
                events.add_metric([key], float(n))
        yield events
        failures = CounterMetricFamily(
            "cc_link_failures", "retransmits, timeouts and refused frames", labels=["kind"]
        )
        for key, n in sorted(link.data.get("stats", {}).items()):
            if isinstance(n, int | float) and any(k in key for k in LINK_FAILURE_KEYS):
                failures.add_metric([key], float(n))
        yield failures

    @staticmethod
    def _sms(part: Part) -> Iterator[Any]:
        msgs = CounterMetricFamily(
            "cc_sms_messages", "SMS by SIM and direction", labels=["modem", "result"]
        )
        signal = GaugeMetricFamily("cc_sms_signal_dbm", "signal strength", labels=["modem"])
        for m in part.data.get("modems", []):
            for result in ("sent", "received", "failed"):
                msgs.add_metric([m["name"], result], float(m.get(result, 0)))
            if m.get("dbm") is not None:
                signal.add_metric([m["name"]], float(m["dbm"]))
        queued = GaugeMetricFamily("cc_sms_queued", "SMS waiting in the cold HSM's outbox")
        queued.add_metric([], float(part.data.get("queued", 0)))
        yield from (msgs, signal, queued)

    @staticmethod
    def _chain(part: Part) -> Iterator[Any]:
        watcher = GaugeMetricFamily("cc_watcher_height", "the watcher's best block")
        node = GaugeMetricFamily("cc_node_height", "the node's tip")
        lag = GaugeMetricFamily("cc_watcher_lag_blocks", "blocks the watcher is behind")
        rate = GaugeMetricFamily("cc_watcher_blocks_per_second", "the watcher's catch-up rate")
        if "blocks_per_s" in part.data:
            rate.add_metric([], float(part.data["blocks_per_s"]))
        if part.data.get("watcher_height") is not None:
            watcher.add_metric([], float(part.data["watcher_height"]))
        if "node_tip" in part.data:
            node.add_metric([], float(part.data["node_tip"]))
            lag.add_metric([], float(part.data["behind"]))
        yield from (watcher, node, lag, rate)

    @staticmethod
    def _alerts(part: Part) -> Iterator[Any]:
        alerts = CounterMetricFamily("cc_alerts", "operator alerts by kind", labels=["kind"])
        for kind, n in sorted(part.data.get("by_kind", {}).items()):
            alerts.add_metric([kind], float(n))
        yield alerts
