"""Prometheus metrics from reports (prometheus_client): one collector over the latest report of
each probe and its run bookkeeping, served by the daemon on /metrics, written as a
node_exporter textfile or pushed to a Pushgateway by one-shot runs.

Conventions: base units in names (``_seconds``, ``_ratio``, ``_timestamp_seconds``), ``_total``
counters, ``_info`` for one-valued facts. Labels are bounded: ``probe`` (the definition's name),
the definition's own labels (site, office, ...: at most 8), and per path ``region``, ``kind``
(stun, turn, sfu), ``transport`` (udp, tcp, tls) and ``route`` (server for STUN/TURN; direct or
relay for the SFU). No host, address or port is a label unless ``server_labels`` asks for
``server``. Paths that share a label set are aggregated: ``up`` is 1 if any works; every other
figure is that of the best working path (lowest median RTT; ties and unmeasured RTT resolved by
server and URI, so the choice never depends on the order of ``paths[]``). A figure the run did
not measure is not exported (never a made-up 0); paths that are no evidence either way
(``not_tested``, cut by the deadline or Ctrl-C) are left out. See docs/metrics.md.
"""

from __future__ import annotations

import http.client
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lkice import __version__
from lkice.findings import NOT_EVIDENCE_KINDS  # such a path is neither up nor down: left out
from lkice.report.fields import SETUP_STEPS, SIGNAL_STEPS
from lkice.report.read import PathDoc, QualityDoc, ReportDoc
from lkice.textsafe import redact_url, redact_urls, url_password, visible
from lkice.verdict import status_of

__all__ = [
    "COUNTER_NAMES",
    "METRIC_NAMES",
    "PushError",
    "ReportMetrics",
    "exposition",
    "push",
    "registry_with",
    "serve",
    "write_textfile",
]

# The steps every reader shows (a web proxy's CONNECT round trip included: it is set-up time).
SETUP_PHASES = SETUP_STEPS
SIGNAL_PHASES = SIGNAL_STEPS
# Not a "quantile" label: Prometheus reserves that for summaries (promtool rejects it on a gauge).
RTT_STATS = ("p50", "p95", "p99", "max")
PATH_LABELS = ("region", "kind", "transport", "route")
# Labels lkice sets itself; a definition label of the same name is exported as exported_<name>
# (as Prometheus does on a scrape conflict) instead of being overwritten or duplicated.
OWN_LABELS = frozenset(
    {
        *PATH_LABELS,
        "probe",
        "server",
        "measure",
        "phase",
        "stat",
        "id",
        "severity",
        "verdict",
        "result",
        "version",
        "job",
        "instance",
        "quantile",
        "le",
    }
)
MAX_PROBE_LABELS = 8
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

COUNTER_NAMES = ("lkice_runs_total", "lkice_run_overruns_total")

# Every family this module exports, by its name in the exposition, with its help text (the
# dashboard and alert tests check their queries against the names).
_HELP = {
    "lkice_build_info": "lkice version",
    "lkice_path_up": "1 if a path of this region/kind/transport/route works, else 0",
    "lkice_path_setup_seconds": "Setup time per phase of the best working path",
    "lkice_path_rtt_seconds": "Round-trip time of the best working path (stat: p50, p95, p99, max)",
    "lkice_path_jitter_seconds": "RFC 3550 interarrival jitter of the best working path",
    "lkice_path_loss_ratio": "Fraction of probes lost on the best working path",
    "lkice_path_hol_stall_seconds": "Longest head-of-line stall on the best working path (TCP/TLS)",
    "lkice_path_hol_stalled_ratio": "Fraction of probes held by head-of-line stalls (TCP/TLS)",
    "lkice_path_mos": "E-model MOS estimate of the best working path",
    "lkice_signal_up": "1 if LiveKit signaling (validate, WebSocket, join) works, else 0",
    "lkice_signal_setup_seconds": "LiveKit signaling time per step",
    "lkice_verdict": "Verdict as exit status: 0 ok, 1 degraded, 2 failed, 3 unknown",
    "lkice_verdict_info": "The verdict of the last report, as a label",
    "lkice_finding": "1 for each finding of the last report",
    "lkice_recommended_region_info": "The recommended region and transport of the last report",
    "lkice_last_run_timestamp_seconds": "When the last run ended (any result)",
    "lkice_last_success_timestamp_seconds": "When a run last ended with verdict ok or degraded",
    "lkice_run_duration_seconds": "How long the last run took",
    "lkice_schedule_interval_seconds": "The probe's schedule: seconds between run starts",
    "lkice_runs_total": "Runs by result (a verdict, interrupted, config_error or error)",
    "lkice_run_overruns_total": "Runs that took longer than the schedule's interval",
}
METRIC_NAMES = tuple(_HELP)


class PushError(Exception):
    """The Pushgateway could not be reached or refused the push (the message names its URL,
    with the password of its user info replaced by ``***``)."""


@dataclass
class _ProbeState:
    labels: dict[str, str] = field(default_factory=dict)
    report: ReportDoc | None = None
    runs: dict[str, int] = field(default_factory=dict)
    overruns: int = 0
    last_run: float | None = None
    last_success: float | None = None
    run_seconds: float | None = None
    interval: float | None = None


def probe_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """The definition's labels as Prometheus labels: valid names only, at most 8 (by name), and
    a name lkice sets itself renamed ``exported_<name>``."""
    out: dict[str, str] = {}
    for name in sorted(labels or {}):
        if len(out) >= MAX_PROBE_LABELS:
            break
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            continue
        value = (labels or {})[name]
        if value is None:
            continue
        out[f"exported_{name}" if name in OWN_LABELS else name] = str(value)
    return out


def _route(path: PathDoc) -> str:
    if path.get("kind") != "sfu":
        return "server"
    return "relay" if path.get("relay") else "direct"


def _p50(quality: QualityDoc | None) -> float:
    value = ((quality or {}).get("rtt_ms") or {}).get("p50")
    return math.inf if value is None else float(value)


def _best_key(path: PathDoc) -> tuple[float, float, str, str]:
    """Lower is better: the media path's median RTT (through the TURN relay) first, then the
    median RTT to the server or SFU; server and URI break ties deterministically."""
    return (
        _p50(path.get("relay_quality")),
        _p50(path.get("quality")),
        str(path.get("server")),
        str(path.get("uri")),
    )


def _measures(path: PathDoc) -> Iterator[tuple[str, QualityDoc]]:
    if quality := path.get("quality"):
        yield ("sfu_data" if path.get("kind") == "sfu" else "server"), quality
    if relay := path.get("relay_quality"):
        yield "relay_echo", relay


def _number(value: Any) -> float | None:
    """A measured number, or None (absent, null, or not a finite number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class ReportMetrics(Collector):
    """The latest report of each probe, plus its run counters; thread-safe (the HTTP server
    collects from its own thread while the scheduler updates)."""

    def __init__(self, *, server_labels: bool = False) -> None:
        self.server_labels = server_labels
        self._probes: dict[str, _ProbeState] = {}
        self._lock = threading.Lock()

    def update(
        self,
        report: ReportDoc | None,
        *,
        run_seconds: float,
        overran: bool = False,
        probe: str | None = None,
        result: str | None = None,
        labels: Mapping[str, str] | None = None,
        interval_seconds: float | None = None,
        now: float | None = None,
    ) -> None:
        """Record one run that ended ``now``. ``report`` is None when the run could not start
        (``result`` says why: config_error, error); ``probe`` defaults to the report's
        ``probe.name``, ``labels`` to its ``probe.labels``; ``result`` to ``interrupted`` or the
        verdict. ``interval_seconds``: the schedule, for the not-reporting alert."""
        now = time.time() if now is None else now
        meta: Mapping[str, Any] = (report or {}).get("probe") or {}
        if probe is None:
            probe = meta.get("name")
        if not probe:
            raise ValueError("a probe name is needed: pass probe= or a report with probe.name")
        if result is None:
            if report is None:
                result = "error"
            else:
                result = "interrupted" if report.get("interrupted") else str(report.get("verdict"))
        with self._lock:
            state = self._probes.setdefault(probe, _ProbeState())
            if labels is not None:
                state.labels = probe_labels(labels)
            elif report is not None and meta:
                state.labels = probe_labels(meta.get("labels"))
            state.runs[result] = state.runs.get(result, 0) + 1
            state.overruns += bool(overran)
            state.last_run = now
            state.run_seconds = run_seconds
            if interval_seconds is not None:
                state.interval = interval_seconds
            if report is not None:
                state.report = report.copy()
                if report.get("verdict") in ("ok", "degraded") and not report.get("interrupted"):
                    state.last_success = now

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            probes = {
                name: replace(s, labels=dict(s.labels), runs=dict(s.runs))
                for name, s in self._probes.items()
            }
        families = _Families(self.server_labels)
        families.gauge("lkice_build_info", {"version": __version__}, 1)
        for name, state in sorted(probes.items()):
            families.add_probe(name, state)
        return families.all()


def _label_values(labels: Mapping[str, str]) -> dict[str, str]:
    """Label values with control characters made visible: a server name or region holding a
    lone surrogate could not even be encoded (the whole exposition failed), and a scrape read
    by a person should not carry escape codes either."""
    return {name: visible(value) for name, value in labels.items()}


class _Families:
    """Families built per collect; a family's samples may carry different probe labels (each
    probe has its own), hence ``Metric.add_sample`` rather than fixed label names."""

    def __init__(self, server_labels: bool) -> None:
        self.server_labels = server_labels
        self.families: dict[str, Metric] = {}

    def _family(self, name: str, counter: bool) -> Metric:
        family = self.families.get(name)
        if family is None:
            if counter:
                family = CounterMetricFamily(name.removesuffix("_total"), _HELP[name])
            else:
                family = GaugeMetricFamily(name, _HELP[name])
            self.families[name] = family
        return family

    def gauge(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._family(name, False).add_sample(name, _label_values(labels), float(value))

    def counter(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._family(name, True).add_sample(name, _label_values(labels), float(value))

    def all(self) -> list[Metric]:
        return list(self.families.values())

    def add_probe(self, name: str, state: _ProbeState) -> None:
        base = {**state.labels, "probe": name}

        for result, count in sorted(state.runs.items()):
            self.counter("lkice_runs_total", {**base, "result": result}, count)
        self.counter("lkice_run_overruns_total", base, state.overruns)
        if state.last_run is not None:
            self.gauge("lkice_last_run_timestamp_seconds", base, state.last_run)
        if state.last_success is not None:
            self.gauge("lkice_last_success_timestamp_seconds", base, state.last_success)
        if state.run_seconds is not None:
            self.gauge("lkice_run_duration_seconds", base, state.run_seconds)
        if state.interval is not None:
            self.gauge("lkice_schedule_interval_seconds", base, state.interval)
        report = state.report
        if report is None:
            return
        verdict = str(report.get("verdict"))
        # The run's exit status, as lkice itself exits with it (a rejected token, nothing
        # testable, an interrupted run: unknown).
        self.gauge("lkice_verdict", base, int(status_of(report)))
        self.gauge("lkice_verdict_info", {**base, "verdict": verdict}, 1)
        findings = {
            (str(f.get("id")), str(f.get("severity"))) for f in report.get("findings") or []
        }
        for fid, severity in sorted(findings):
            self.gauge("lkice_finding", {**base, "id": fid, "severity": severity}, 1)
        rec = report.get("recommendation")
        if rec and (transport := rec.get("transport")):
            labels = {**base, "region": str(rec.get("region") or ""), "transport": transport}
            self.gauge("lkice_recommended_region_info", labels, 1)
        signal = report.get("signal")
        if signal and (signal.get("error") or {}).get("kind") not in NOT_EVIDENCE_KINDS:
            self.gauge("lkice_signal_up", base, 1 if signal.get("ok") else 0)
            timings = signal.get("timings_ms") or {}
            for phase in SIGNAL_PHASES:
                value = _number(timings.get(phase))
                if value is not None:
                    self.gauge("lkice_signal_setup_seconds", {**base, "phase": phase}, value / 1000)
        self.add_paths(base, report.get("paths") or [])

    def add_paths(self, base: Mapping[str, str], paths: list[PathDoc]) -> None:
        groups: dict[tuple[str, ...], list[PathDoc]] = {}
        for path in paths:
            if (path.get("error") or {}).get("kind") in NOT_EVIDENCE_KINDS:
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
        names = (*PATH_LABELS, "server") if self.server_labels else PATH_LABELS
        for group, members in sorted(groups.items()):
            labels = {**base, **dict(zip(names, group, strict=True))}
            working = [p for p in members if p.get("ok")]
            self.gauge("lkice_path_up", labels, 1 if working else 0)
            if working:
                self.add_best(labels, min(working, key=_best_key))

    def add_best(self, labels: Mapping[str, str], best: PathDoc) -> None:
        timings = best.get("timings_ms") or {}
        for phase in SETUP_PHASES:
            value = _number(timings.get(phase))
            if value is not None:
                self.gauge("lkice_path_setup_seconds", {**labels, "phase": phase}, value / 1000)
        for measure, q in _measures(best):
            m = {**labels, "measure": measure}
            rtt = q.get("rtt_ms") or {}
            for stat in RTT_STATS:
                value = _number(rtt.get(stat))
                if value is not None:
                    self.gauge("lkice_path_rtt_seconds", {**m, "stat": stat}, value / 1000)
            jitter = _number(q.get("jitter_ms"))
            if jitter is not None:
                self.gauge("lkice_path_jitter_seconds", m, jitter / 1000)
            loss = _number(q.get("loss"))
            if loss is not None and q.get("samples"):
                self.gauge("lkice_path_loss_ratio", m, loss)
            mos = _number(q.get("mos"))
            if mos is not None:
                self.gauge("lkice_path_mos", m, mos)
            hol = q.get("hol")
            if hol:  # measured (TCP/TLS); null on UDP, where there is no head-of-line blocking
                stall = _number(hol.get("max_stall_ms")) if hol.get("detected") else 0.0
                if stall is not None:  # no stall detected: a measured 0
                    self.gauge("lkice_path_hol_stall_seconds", m, stall / 1000)
                stalled = _number(hol.get("stalled_fraction"))
                if stalled is not None:
                    self.gauge("lkice_path_hol_stalled_ratio", m, stalled)


def registry_with(metrics: ReportMetrics) -> CollectorRegistry:
    """A registry holding only ``metrics`` (no process/platform collectors): the same one serves
    /metrics, a textfile and a push."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) of ``registry``."""
    return generate_latest(registry)


def write_textfile(path: Path | str, registry: CollectorRegistry) -> None:
    """Atomically (a temporary file in the same directory renamed over ``path``), as
    node_exporter's textfile collector expects; never over a device or a pipe's place (see
    lkice.files). Raises OSError."""
    from lkice.files import write_atomic

    write_atomic(path, generate_latest(registry).decode("utf-8"))


def push(
    url: str,
    job: str,
    registry: CollectorRegistry,
    grouping_key: Mapping[str, str],
    *,
    timeout: float = 10.0,
) -> None:
    """Replace this job/grouping key's metrics on the Pushgateway at ``url`` (HTTP PUT).
    User info in the URL (``http://user:password@host:9091``) is sent as HTTP Basic auth.
    Any failure (unreachable, refused, not a Pushgateway, a malformed URL) is a PushError."""
    try:
        gateway, handler = _gateway_and_handler(url)
        push_to_gateway(
            gateway,
            job=job,
            registry=registry,
            grouping_key=dict(grouping_key),
            timeout=timeout,
            handler=handler,
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError and HTTPError are OSErrors; a non-HTTP answer is an HTTPException.
        detail = _without_password(str(exc), url)
        close = getattr(exc, "close", None)  # an HTTPError holds the refused response open
        if callable(close):
            close()
        raise PushError(f"push to {redact_url(url)} failed: {detail}") from None


def _gateway_and_handler(url: str) -> tuple[str, Any]:
    """The URL without its user info, and the handler that sends it as Basic auth. urllib does
    not read credentials from a URL: left in, ``user:password@host`` is looked up in DNS as a
    host name, password and all."""
    from urllib.parse import unquote, urlsplit

    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is None:
        return url, default_handler
    username, password = unquote(parts.username), unquote(parts.password or "")
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    def handler(url: str, method: str, timeout: float | None, headers: Any, data: bytes) -> Any:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


def _without_password(text: str, url: str) -> str:
    """An error's text with ``url``'s password hidden, however the text quotes the URL
    (urllib's "unknown url type: 'user:pass@host/...'" has no scheme to recognise it by)."""
    password = url_password(url)
    if password:
        text = text.replace(password, "***")
    return redact_urls(text)


def serve(host: str, port: int, registry: CollectorRegistry) -> None:
    """http://host:port/metrics from a background thread (prometheus_client's server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry)
