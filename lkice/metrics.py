"""Prometheus metrics from reports (prometheus_client): one collector over the latest report of
each probe and its run bookkeeping, served by the daemon on /metrics, written as a
node_exporter textfile or pushed to a Pushgateway by one-shot runs.

Conventions: base units in names (``_seconds``, ``_ratio``), ``_total`` counters, ``_info`` for
one-valued facts. Labels are bounded: ``probe`` (the definition's name), the definition's own
labels (site, office, ...: at most 8), and per path ``region``, ``kind`` (stun, turn, sfu),
``transport`` (udp, tcp, tls) and ``route`` (server for STUN/TURN; direct or relay for the SFU).
No host, address or port is a label unless ``server_labels`` asks for ``server``. Paths that
share a label set are aggregated: ``up`` is 1 if any works; every other figure is that of the
best working path (lowest median RTT, else the first that works). A figure the run did not
measure is not exported (never a made-up 0). See docs/metrics.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lkice import __version__

__all__ = [
    "METRIC_NAMES",
    "PushError",
    "ReportMetrics",
    "exposition",
    "push",
    "registry_with",
    "serve",
    "write_textfile",
]

VERDICT_STATUS = {"ok": 0, "degraded": 1, "failed": 2}
SETUP_PHASES = ("dns", "connect", "tls", "binding", "allocate", "ice", "dtls")
SIGNAL_PHASES = ("dns", "connect", "tls", "validate", "websocket", "join")
# Not a "quantile" label: Prometheus reserves that for summaries (promtool rejects it).
RTT_STATS = ("p50", "p95", "p99", "max")
# Every family this module exports (the dashboard and alert tests check against it).
METRIC_NAMES = (
    "lkice_build_info",
    "lkice_path_up",
    "lkice_path_setup_seconds",
    "lkice_path_rtt_seconds",
    "lkice_path_jitter_seconds",
    "lkice_path_loss_ratio",
    "lkice_path_hol_stall_seconds",
    "lkice_path_hol_stalled_ratio",
    "lkice_path_mos",
    "lkice_signal_up",
    "lkice_signal_setup_seconds",
    "lkice_verdict",
    "lkice_verdict_info",
    "lkice_finding",
    "lkice_recommended_region_info",
    "lkice_last_run_timestamp_seconds",
    "lkice_last_success_timestamp_seconds",
    "lkice_run_duration_seconds",
    "lkice_runs_total",
    "lkice_run_overruns_total",
)
PATH_LABELS = ("region", "kind", "transport", "route")


class PushError(Exception):
    """The Pushgateway could not be reached or refused the push."""


@dataclass
class _ProbeState:
    labels: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    runs: dict[str, int] = field(default_factory=dict)
    overruns: int = 0
    last_run: float | None = None
    last_success: float | None = None
    run_seconds: float | None = None


def _route(path: Mapping[str, Any]) -> str:
    if path.get("kind") != "sfu":
        return "server"
    return "relay" if path.get("relay") else "direct"


def _p50(path: Mapping[str, Any]) -> float:
    for source in ("relay_quality", "quality"):
        q = path.get(source) or {}
        value = (q.get("rtt_ms") or {}).get("p50")
        if value is not None:
            return float(value)
    return float("inf")


def _measures(path: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if path.get("quality"):
        yield ("sfu_data" if path.get("kind") == "sfu" else "server"), path["quality"]
    if path.get("relay_quality"):
        yield "relay_echo", path["relay_quality"]


class ReportMetrics(Collector):
    """The latest report of each probe, plus its run counters; thread-safe (the HTTP server
    collects from its own thread)."""

    def __init__(self, *, server_labels: bool = False) -> None:
        self.server_labels = server_labels
        self._probes: dict[str, _ProbeState] = {}
        self._lock = threading.Lock()

    def update(
        self,
        report: Mapping[str, Any] | None,
        *,
        probe: str,
        run_seconds: float,
        overran: bool = False,
        result: str | None = None,
        labels: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> None:
        """Record one run: ``report`` None when it could not start (``result`` says why)."""
        now = time.time() if now is None else now
        if result is None:
            result = "error" if report is None else str(report.get("verdict"))
        with self._lock:
            state = self._probes.setdefault(probe, _ProbeState())
            if labels is not None:
                state.labels = dict(labels)
            elif report is not None and report.get("probe"):
                state.labels = dict(report["probe"].get("labels") or {})
            state.runs[result] = state.runs.get(result, 0) + 1
            state.overruns += bool(overran)
            state.last_run = now
            state.run_seconds = run_seconds
            if report is not None:
                state.report = dict(report)
                if report.get("verdict") in ("ok", "degraded") and not report.get("interrupted"):
                    state.last_success = now

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            probes = {name: _ProbeState(**vars(s)) for name, s in self._probes.items()}
        build = GaugeMetricFamily("lkice_build_info", "lkice version", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        families = _Families(self.server_labels)
        for name, state in sorted(probes.items()):
            families.add_probe(name, state)
        yield from families.all()


class _Families:
    def __init__(self, server_labels: bool) -> None:
        self.server_labels = server_labels
        self.gauges: dict[str, GaugeMetricFamily] = {}
        self.counters: dict[str, CounterMetricFamily] = {}
        self.help = {
            "lkice_path_up": "1 if a path of this kind/transport/route works, else 0",
            "lkice_path_setup_seconds": "Setup time per phase of the best working path",
            "lkice_path_rtt_seconds": "Round-trip time of the best working path (stat: p50..max)",
            "lkice_path_jitter_seconds": "RFC 3550 interarrival jitter",
            "lkice_path_loss_ratio": "Fraction of probes lost",
            "lkice_path_hol_stall_seconds": "Longest head-of-line stall (TCP/TLS)",
            "lkice_path_hol_stalled_ratio": "Fraction of probes held by head-of-line stalls",
            "lkice_path_mos": "E-model MOS estimate",
            "lkice_signal_up": "1 if LiveKit signaling (validate, WebSocket, join) works",
            "lkice_signal_setup_seconds": "LiveKit signaling time per step",
            "lkice_verdict": "Verdict as exit status: 0 ok, 1 degraded, 2 failed, 3 unknown",
            "lkice_verdict_info": "The verdict of the last run, as a label",
            "lkice_finding": "1 for each finding of the last run",
            "lkice_recommended_region_info": "The recommended region and transport",
            "lkice_last_run_timestamp_seconds": "When the last run ended",
            "lkice_last_success_timestamp_seconds": "When a run last ended ok or degraded",
            "lkice_run_duration_seconds": "How long the last run took",
        }

    def gauge(self, name: str, labels: Mapping[str, str], value: float) -> None:
        family = self.gauges.get(name)
        if family is None:
            family = self.gauges[name] = GaugeMetricFamily(name, self.help[name], labels=[])
        family.samples.append(_sample(name, labels, value))

    def counter(self, name: str, doc: str, labels: Mapping[str, str], value: float) -> None:
        family = self.counters.get(name)
        if family is None:
            family = self.counters[name] = CounterMetricFamily(name, doc, labels=[])
        family.samples.append(_sample(f"{name}_total", labels, value))

    def all(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from self.counters.values()

    def add_probe(self, name: str, state: _ProbeState) -> None:
        base = {**state.labels, "probe": name}

        for result, count in sorted(state.runs.items()):
            self.counter("lkice_runs", "Runs by result", {**base, "result": result}, count)
        self.counter("lkice_run_overruns", "Runs longer than the schedule", base, state.overruns)
        if state.last_run is not None:
            self.gauge("lkice_last_run_timestamp_seconds", base, state.last_run)
        if state.last_success is not None:
            self.gauge("lkice_last_success_timestamp_seconds", base, state.last_success)
        if state.run_seconds is not None:
            self.gauge("lkice_run_duration_seconds", base, state.run_seconds)
        report = state.report
        if report is None:
            return
        verdict = str(report.get("verdict"))
        status = 3 if report.get("interrupted") else VERDICT_STATUS.get(verdict, 3)
        self.gauge("lkice_verdict", base, status)
        self.gauge("lkice_verdict_info", {**base, "verdict": verdict}, 1)
        for finding in report.get("findings") or []:
            labels = {**base, "id": str(finding["id"]), "severity": str(finding["severity"])}
            self.gauge("lkice_finding", labels, 1)
        rec = report.get("recommendation")
        if rec and rec.get("transport"):
            labels = {**base, "region": str(rec.get("region") or ""), "transport": rec["transport"]}
            self.gauge("lkice_recommended_region_info", labels, 1)
        signal = report.get("signal")
        if signal:
            self.gauge("lkice_signal_up", base, 1 if signal.get("ok") else 0)
            for phase in SIGNAL_PHASES:
                value = (signal.get("timings_ms") or {}).get(phase)
                if value is not None:
                    self.gauge("lkice_signal_setup_seconds", {**base, "phase": phase}, value / 1000)
        self.add_paths(base, report.get("paths") or [])

    def add_paths(self, base: Mapping[str, str], paths: list[Mapping[str, Any]]) -> None:
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for path in paths:
            error = path.get("error") or {}
            if error.get("kind") == "not_tested":
                continue  # not a measurement of this network
            key: tuple[str, ...] = (
                str(path.get("region") or ""),
                str(path.get("kind")),
                str(path.get("transport")),
                _route(path),
            )
            if self.server_labels:
                key += (str(path.get("server")),)
            groups.setdefault(key, []).append(path)
        names: tuple[str, ...] = (*PATH_LABELS, "server") if self.server_labels else PATH_LABELS
        for group, members in sorted(groups.items()):
            labels = {**base, **dict(zip(names, group, strict=True))}
            working = [p for p in members if p.get("ok")]
            self.gauge("lkice_path_up", labels, 1 if working else 0)
            if not working:
                continue
            best = min(working, key=_p50)
            timings = best.get("timings_ms") or {}
            for phase in SETUP_PHASES:
                value = timings.get(phase)
                if value is not None:
                    self.gauge("lkice_path_setup_seconds", {**labels, "phase": phase}, value / 1000)
            for measure, q in _measures(best):
                m = {**labels, "measure": measure}
                rtt = q.get("rtt_ms") or {}
                for stat in RTT_STATS:
                    if rtt.get(stat) is not None:
                        self.gauge("lkice_path_rtt_seconds", {**m, "stat": stat}, rtt[stat] / 1000)
                if q.get("jitter_ms") is not None:
                    self.gauge("lkice_path_jitter_seconds", m, q["jitter_ms"] / 1000)
                if q.get("loss") is not None and q.get("samples"):
                    self.gauge("lkice_path_loss_ratio", m, q["loss"])
                if q.get("mos") is not None:
                    self.gauge("lkice_path_mos", m, q["mos"])
                hol = q.get("hol")
                if hol is not None:  # measured on TCP/TLS: no stall is a real 0
                    stall = hol.get("max_stall_ms") if hol.get("detected") else 0.0
                    self.gauge("lkice_path_hol_stall_seconds", m, float(stall or 0) / 1000)
                    self.gauge(
                        "lkice_path_hol_stalled_ratio", m, float(hol.get("stalled_fraction") or 0)
                    )


def _sample(name: str, labels: Mapping[str, str], value: float) -> Any:
    from prometheus_client.samples import Sample

    return Sample(name, dict(labels), float(value), None, None)


def registry_with(metrics: ReportMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def write_textfile(path: Path | str, registry: CollectorRegistry) -> None:
    """Atomically (a temporary file renamed over ``path``), as node_exporter expects."""
    write_to_textfile(str(path), registry)


def push(url: str, job: str, registry: CollectorRegistry, grouping_key: dict[str, str]) -> None:
    try:
        push_to_gateway(url, job=job, registry=registry, grouping_key=grouping_key, timeout=10)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise PushError(f"push to {url} failed: {exc}") from None


def serve(host: str, port: int, registry: CollectorRegistry) -> None:
    """http://host:port/metrics from a background thread (prometheus_client's server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry)
