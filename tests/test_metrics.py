"""Prometheus metrics from reports (lkice.metrics): names, labels, aggregation and values from the
recorded reports; nothing unmeasured is exported; no host or address as a label unless asked;
counters, textfile and push. And what packaging/ builds on them: alert rules and dashboard
queries that are valid PromQL naming only exported metrics (and alerts that fire, by promtool's
rule unit tests), systemd units that parse and verify."""

from __future__ import annotations

import base64
import configparser
import copy
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lkice.metrics import (
    COUNTER_NAMES,
    METRIC_NAMES,
    PushError,
    ReportMetrics,
    exposition,
    push,
    registry_with,
    write_textfile,
)
from tests.conftest import as_doc

DATA = Path(__file__).parent / "data"
PACKAGING = Path(__file__).parent.parent / "packaging"
ALERTS = PACKAGING / "prometheus" / "lkice-alerts.yml"
DASHBOARD = PACKAGING / "grafana" / "lkice-dashboard.json"
SYSTEMD = PACKAGING / "systemd"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool absent (Debian package prometheus)"
)

Found = list[tuple[str, dict[str, str], float]]


def report(name: str = "report-udp-blocked.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    data["probe"] = {"name": "office", "labels": {"site": "hh"}, "definition": "x.toml"}
    return data


def text_of(metrics: ReportMetrics) -> str:
    return exposition(registry_with(metrics)).decode()


def samples(metrics: ReportMetrics) -> Found:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text_of(metrics))
        for s in family.samples
    ]


def pick(found: Found, name: str, **labels: str) -> list[float]:
    return [v for n, lb, v in found if n == name and all(lb.get(k) == w for k, w in labels.items())]


def path_of(data: dict[str, Any], transport: str, server: str | None = None) -> dict[str, Any]:
    return next(
        p
        for p in data["paths"]
        if p["transport"] == transport and p["kind"] == "turn" and server in (None, p["server"])
    )


def full_metrics(*, server_labels: bool = False) -> ReportMetrics:
    """Both recorded reports, every kind of run: every family the module can export."""
    metrics = ReportMetrics(server_labels=server_labels)
    metrics.update(as_doc(report()), run_seconds=6.0, now=1000.0, interval_seconds=300)
    html = report("report-html.json")
    html["probe"] = {"name": "hq", "labels": {"site": "ber", "office": "3"}, "definition": "y"}
    metrics.update(as_doc(html), run_seconds=7.5, overran=True, now=1300.0)
    metrics.update(None, probe="hq", run_seconds=0.1, result="config_error", now=1600.0)
    return metrics


def exported_names() -> set[str]:
    return {name for name, _, _ in samples(full_metrics())}


# -- values from the recorded reports ------------------------------------------------------------


def test_paths_verdict_and_runs() -> None:
    metrics = ReportMetrics()
    metrics.update(as_doc(report()), run_seconds=6.0, now=1000.0)  # probe name from the report
    found = samples(metrics)
    # UDP is blocked in this report: both UDP groups (stun, turn) are down; TCP and TLS up.
    assert pick(found, "lkice_path_up", kind="turn", transport="udp", route="server") == [0.0]
    assert pick(found, "lkice_path_up", kind="stun", transport="udp") == [0.0]
    assert pick(found, "lkice_path_up", kind="turn", transport="tcp") == [1.0]
    assert pick(found, "lkice_verdict", probe="office", site="hh") == [1.0]
    assert pick(found, "lkice_verdict_info", verdict="degraded") == [1.0]
    assert pick(found, "lkice_runs_total", result="degraded") == [1.0]
    assert pick(found, "lkice_last_run_timestamp_seconds") == [1000.0]
    assert pick(found, "lkice_last_success_timestamp_seconds") == [1000.0]
    assert pick(found, "lkice_run_duration_seconds") == [6.0]
    # Stalls, in seconds, from the report's max_stall_ms: the TCP path's relay echo ...
    tcp = path_of(report(), "tcp")
    assert pick(found, "lkice_path_hol_stall_seconds", transport="tcp", measure="relay_echo") == [
        tcp["relay_quality"]["hol"]["max_stall_ms"] / 1000
    ]
    # ... and the TLS group's (its best path: 5349, lower median RTT through the relay).
    tls = path_of(report(), "tls", "turn.eu.lab.test:5349")
    assert pick(found, "lkice_path_hol_stall_seconds", transport="tls", measure="server") == [
        tls["quality"]["hol"]["max_stall_ms"] / 1000
    ]
    assert pick(found, "lkice_path_hol_stalled_ratio", transport="tls", measure="relay_echo") == [
        tls["relay_quality"]["hol"]["stalled_fraction"]
    ]
    rtt = tls["relay_quality"]["rtt_ms"]
    assert pick(found, "lkice_path_rtt_seconds", transport="tls", measure="relay_echo") == [
        rtt[s] / 1000 for s in ("p50", "p95", "p99", "max")
    ]
    assert pick(found, "lkice_path_setup_seconds", transport="tcp", phase="allocate") == [
        tcp["timings_ms"]["allocate"] / 1000
    ]
    assert pick(found, "lkice_path_mos", transport="tcp", measure="relay_echo") == [
        tcp["relay_quality"]["mos"]
    ]
    assert pick(found, "lkice_path_loss_ratio", transport="tcp", measure="relay_echo") == [0.0]
    assert pick(found, "lkice_build_info")[0] == 1.0


def test_livekit_report_signal_sfu_findings_and_recommendation() -> None:
    metrics = ReportMetrics()
    metrics.update(as_doc(report("report-html.json")), run_seconds=7.0, now=5.0)
    found = samples(metrics)
    assert pick(found, "lkice_signal_up", probe="office") == [1.0]
    assert pick(found, "lkice_signal_setup_seconds", phase="join") == [0.1269]
    assert pick(found, "lkice_finding", id="udp-blocked", severity="critical") == [1.0]
    assert len(pick(found, "lkice_finding")) == 3
    assert pick(found, "lkice_recommended_region_info", region="eu", transport="tcp") == [1.0]
    # The SFU session forced through TURN/TCP: route relay, ICE and DTLS set-up times.
    sfu = {"kind": "sfu", "region": "eu", "transport": "tcp", "route": "relay"}
    assert pick(found, "lkice_path_up", **sfu) == [1.0]
    assert pick(found, "lkice_path_setup_seconds", phase="ice", **sfu) == [0.4125]
    assert pick(found, "lkice_path_setup_seconds", phase="dtls", **sfu) == [0.49825]
    assert pick(found, "lkice_path_rtt_seconds", stat="p50", measure="sfu_data", **sfu) == [
        0.040573
    ]
    # hol is null on that SFU path: not measured, so no stall series (not a 0).
    assert pick(found, "lkice_path_hol_stall_seconds", **sfu) == []


def test_two_paths_with_one_label_set_are_one_deterministic_series() -> None:
    data = report()
    tls_5349 = path_of(data, "tls", "turn.eu.lab.test:5349")
    tls_443 = path_of(data, "tls", "turn.eu.lab.test:443")

    def tls_values(d: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
        metrics = ReportMetrics()
        metrics.update(as_doc(d), run_seconds=1.0, now=1.0)
        found = samples(metrics)
        return (
            pick(found, "lkice_path_up", transport="tls"),
            pick(found, "lkice_path_setup_seconds", transport="tls", phase="tls"),
            pick(found, "lkice_path_rtt_seconds", transport="tls", stat="p50", measure="server"),
        )

    # Both work: one series; figures of the best (lowest median RTT through the relay: 5349).
    assert tls_values(data) == (
        [1.0],
        [tls_5349["timings_ms"]["tls"] / 1000],
        [tls_5349["quality"]["rtt_ms"]["p50"] / 1000],
    )
    # The order of paths[] does not matter.
    reordered = copy.deepcopy(data)
    reordered["paths"].reverse()
    metrics_a, metrics_b = ReportMetrics(), ReportMetrics()
    metrics_a.update(as_doc(data), run_seconds=1.0, now=1.0)
    metrics_b.update(as_doc(reordered), run_seconds=1.0, now=1.0)
    assert text_of(metrics_a) == text_of(metrics_b)
    # The best one fails: up is still 1 (max), the figures are now 443's.
    one_down = copy.deepcopy(data)
    path_of(one_down, "tls", "turn.eu.lab.test:5349")["ok"] = False
    assert tls_values(one_down) == (
        [1.0],
        [tls_443["timings_ms"]["tls"] / 1000],
        [tls_443["quality"]["rtt_ms"]["p50"] / 1000],
    )
    # Both fail: down, and no figures at all.
    for p in one_down["paths"]:
        if p["transport"] == "tls":
            p["ok"] = False
    assert tls_values(one_down) == ([0.0], [], [])


def test_a_web_proxys_connect_round_trip_is_a_set_up_phase() -> None:
    data = report()
    path_of(data, "tls")["timings_ms"]["proxy"] = 12.5
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=1.0, now=1.0)
    found = samples(metrics)
    assert pick(found, "lkice_path_setup_seconds", transport="tls", phase="proxy") == [0.0125]
    assert pick(found, "lkice_path_setup_seconds", transport="tcp", phase="proxy") == []


def test_unmeasured_values_are_absent_not_zero() -> None:
    data = report()
    tcp = path_of(data, "tcp")
    tcp["relay_quality"]["jitter_ms"] = None
    tcp["relay_quality"]["mos"] = None
    tcp["timings_ms"]["connect"] = None
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=1.0, now=1.0)
    found = samples(metrics)
    tcp_relay = {"transport": "tcp", "measure": "relay_echo"}
    assert pick(found, "lkice_path_jitter_seconds", **tcp_relay) == []
    assert pick(found, "lkice_path_mos", **tcp_relay) == []
    assert pick(found, "lkice_path_setup_seconds", transport="tcp", phase="connect") == []
    # still measured: the server train's jitter and the other phases
    assert len(pick(found, "lkice_path_jitter_seconds", transport="tcp", measure="server")) == 1
    assert len(pick(found, "lkice_path_setup_seconds", transport="tcp", phase="allocate")) == 1
    # The UDP paths measured nothing but their failure; no signaling in this report.
    for name in ("lkice_path_rtt_seconds", "lkice_path_loss_ratio", "lkice_path_setup_seconds"):
        assert pick(found, name, transport="udp") == []
    assert pick(found, "lkice_signal_up") == []
    assert pick(found, "lkice_recommended_region_info") == []
    # A run that produced no report: counted, but no verdict or path invented.
    empty = ReportMetrics()
    empty.update(None, probe="desk", run_seconds=0.2, result="config_error", now=9.0)
    found = samples(empty)
    assert pick(found, "lkice_runs_total", probe="desk", result="config_error") == [1.0]
    assert pick(found, "lkice_verdict") == []
    assert pick(found, "lkice_path_up") == []
    assert pick(found, "lkice_last_success_timestamp_seconds") == []


def test_paths_that_are_no_evidence_are_left_out() -> None:
    data = report()
    for p in data["paths"]:
        if p["transport"] == "udp":
            p["error"] = {"kind": "deadline", "message": "overall deadline", "phase": "binding"}
    path_of(data, "tcp")["error"] = {"kind": "not_tested", "message": "-", "phase": None}
    path_of(data, "tcp")["ok"] = False
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=1.0, now=1.0)
    found = samples(metrics)
    assert pick(found, "lkice_path_up", transport="udp") == []  # not "down"
    assert pick(found, "lkice_path_up", transport="tcp") == []
    assert pick(found, "lkice_path_up", transport="tls") == [1.0]


def test_the_verdict_gauge_is_the_exit_status_lkice_gave() -> None:
    """A rejected token is a configuration error: lkice exits 3, and the gauge says 3, not
    the 2 its "failed" verdict alone would map to."""
    from lkice.verdict import status_of

    data = report()
    data["verdict"] = "failed"
    data["signal"] = {"ok": False, "error": {"kind": "token_rejected", "message": "-"}}
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=1.0, now=1.0)
    found = samples(metrics)
    assert int(status_of(data)) == 3
    assert pick(found, "lkice_verdict") == [3.0]
    assert pick(found, "lkice_verdict_info", verdict="failed") == [1.0]


def test_interrupted_run_is_unknown_and_not_a_success() -> None:
    data = report()
    data["interrupted"] = True
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=2.0, now=50.0)
    found = samples(metrics)
    assert pick(found, "lkice_verdict") == [3.0]
    assert pick(found, "lkice_runs_total", result="interrupted") == [1.0]
    assert pick(found, "lkice_last_success_timestamp_seconds") == []
    assert pick(found, "lkice_last_run_timestamp_seconds") == [50.0]


# -- labels --------------------------------------------------------------------------------------

ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+|\[?[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*\]?|:\d+$|\.test\b")


def test_no_host_address_or_port_in_labels_unless_asked() -> None:
    values = {v for _, labels, _ in samples(full_metrics()) for v in labels.values()}
    assert values, "no label values"
    assert not {v for v in values if ADDRESS.search(v)}
    # The reports do hold addresses and host names: the check above could fail.
    raw = json.dumps(report("report-html.json")["paths"])
    assert ADDRESS.search(raw)

    servers = {lb.get("server") for n, lb, _ in samples(full_metrics(server_labels=True))}
    assert {"turn.eu.lab.test:443", "turn.eu.lab.test:5349"} <= servers


def test_server_labels_split_the_aggregated_paths() -> None:
    metrics = ReportMetrics(server_labels=True)
    metrics.update(as_doc(report()), run_seconds=6.0, now=1.0)
    found = samples(metrics)
    assert pick(found, "lkice_path_up", transport="tls", server="turn.eu.lab.test:443") == [1.0]
    assert len(pick(found, "lkice_path_up", transport="tls")) == 2


def test_definition_labels_are_bounded_and_never_clash() -> None:
    data = report()
    labels = {f"l{i}": str(i) for i in range(10)}
    labels |= {"phase": "p", "bad-name": "x", "__meta": "y"}
    data["probe"]["labels"] = labels
    metrics = ReportMetrics()
    metrics.update(as_doc(data), run_seconds=1.0, now=1.0)
    found = samples(metrics)
    verdict_labels = next(lb for n, lb, _ in found if n == "lkice_verdict")
    names = set(verdict_labels) - {"probe"}
    assert len(names) == 8
    assert "bad-name" not in names
    assert "__meta" not in names
    # A definition label named like one of lkice's own is kept under another name.
    data["probe"]["labels"] = {"phase": "p", "site": "hh"}
    metrics.update(as_doc(data), run_seconds=1.0, now=2.0)
    found = samples(metrics)
    setup = pick(found, "lkice_path_setup_seconds", exported_phase="p", phase="tls", site="hh")
    assert len(setup) == 1


# -- run bookkeeping, textfile, push -------------------------------------------------------------


def test_counters_grow_across_updates() -> None:
    metrics = ReportMetrics()
    metrics.update(as_doc(report()), run_seconds=6.0, now=1000.0, interval_seconds=300)
    first = samples(metrics)
    metrics.update(None, probe="office", run_seconds=0.1, result="config_error", now=1300.0)
    metrics.update(as_doc(report()), run_seconds=9.0, overran=True, now=1600.0)
    found = samples(metrics)
    assert pick(first, "lkice_runs_total", result="degraded") == [1.0]
    assert pick(found, "lkice_runs_total", result="degraded") == [2.0]
    assert pick(found, "lkice_runs_total", result="config_error") == [1.0]
    assert pick(first, "lkice_run_overruns_total") == [0.0]
    assert pick(found, "lkice_run_overruns_total") == [1.0]
    assert pick(found, "lkice_last_run_timestamp_seconds") == [1600.0]
    assert pick(found, "lkice_last_success_timestamp_seconds") == [1600.0]
    assert pick(found, "lkice_run_duration_seconds") == [9.0]
    assert pick(found, "lkice_schedule_interval_seconds") == [300.0]
    families = {f.name: f.type for f in text_string_to_metric_families(text_of(metrics))}
    assert families["lkice_runs"] == "counter"
    assert families["lkice_run_overruns"] == "counter"
    assert families["lkice_path_up"] == "gauge"


def test_update_needs_a_probe_name() -> None:
    with pytest.raises(ValueError, match="probe name"):
        ReportMetrics().update(None, run_seconds=1.0)


def test_textfile_is_the_exposition_written_atomically(tmp_path: Path) -> None:
    metrics = ReportMetrics()
    metrics.update(as_doc(report()), run_seconds=6.0, now=1.0)
    registry = registry_with(metrics)
    path = tmp_path / "lkice.prom"
    path.write_text("old\n")
    reader = os.open(path, os.O_RDONLY)  # a reader (node_exporter) holding the old file
    try:
        old_inode = os.fstat(reader).st_ino
        write_textfile(path, registry)
        assert os.read(reader, 100) == b"old\n"  # untouched: replaced by rename, not rewritten
    finally:
        os.close(reader)
    assert path.stat().st_ino != old_inode
    assert path.read_bytes() == exposition(registry)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A loopback HTTP server standing in for a Pushgateway: records every request."""
    received: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(("PUT", self.path, body))
            self.send_response(200 if self.path.startswith("/metrics/job/") else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_push_puts_the_exposition(gateway: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, received = gateway
    metrics = ReportMetrics()
    metrics.update(as_doc(report()), run_seconds=6.0, now=1.0)
    registry = registry_with(metrics)
    push(url, "lkice", registry, {"probe": "office"})
    assert received == [("PUT", "/metrics/job/lkice/probe/office", exposition(registry))]


def test_push_failures_name_the_gateway() -> None:
    registry = registry_with(ReportMetrics())
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(PushError, match=re.escape(f"push to {url} failed")):
        push(url, "lkice", registry, {"probe": "x"}, timeout=5)

    # Something that is not HTTP at all answers.
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(PushError, match=re.escape(url)):
            push(url, "lkice", registry, {"probe": "x"}, timeout=5)
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.fixture
def auth_gateway() -> Iterator[tuple[int, list[str | None]]]:
    """A loopback Pushgateway behind HTTP Basic auth: records each request's Authorization."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            good = "Basic " + base64.b64encode(b"alice:p@ss/w:rd").decode()
            self.send_response(200 if seen[-1] == good else 401)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_push_sends_user_info_as_basic_auth(auth_gateway: tuple[int, list[str | None]]) -> None:
    """urllib would look ``alice:...@127.0.0.1`` up as a host name (the password in a DNS
    query); the user info goes as an Authorization header instead."""
    port, seen = auth_gateway
    registry = registry_with(ReportMetrics())
    push(f"http://alice:p%40ss%2Fw%3Ard@127.0.0.1:{port}", "lkice", registry, {"probe": "x"})
    push(f"alice:p%40ss%2Fw%3Ard@127.0.0.1:{port}", "lkice", registry, {"probe": "x"})
    assert len(seen) == 2
    with pytest.raises(PushError) as info:
        push(f"http://alice:wrong-secret@127.0.0.1:{port}", "lkice", registry, {"probe": "x"})
    assert str(info.value).startswith(f"push to http://alice:***@127.0.0.1:{port} failed: ")
    assert "401" in str(info.value)
    assert "wrong-secret" not in str(info.value)


def test_push_errors_never_show_the_password() -> None:
    registry = registry_with(ReportMetrics())
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (
        f"http://bob:s3cret-pw@127.0.0.1:{port}",
        f"bob:s3cret-pw@127.0.0.1:{port}",
        "gopher://bob:s3cret-pw@127.0.0.1/",  # a scheme urllib refuses, quoting the URL
        "http://bob:s3cret-pw@[::1",  # not a URL at all
    ):
        with pytest.raises(PushError) as info:
            push(url, "lkice", registry, {"probe": "x"}, timeout=5)
        message = str(info.value)
        assert "s3cret-pw" not in message, message
        assert "bob:***@" in message, message


def test_push_failed_log_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    """issue 12: ``--push http://user:pass@...`` was printed verbatim in push_failed."""
    import logging

    import structlog

    from lkice import logs
    from lkice.daemon import Sinks, record

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = logging.getLogger("lkice")
    saved = root.handlers[:], root.level, root.propagate
    try:
        for json_output in (None, True):
            if json_output is None:
                logs.configure_plain()
            else:
                logs.configure(json_output=True)
            for url in (
                f"http://carol:pw-8e1f@127.0.0.1:{port}",
                f"carol:pw-8e1f@127.0.0.1:{port}",
            ):
                sinks = Sinks(metrics=ReportMetrics(), push=url)
                record(as_doc(report()), sinks, job="office", run_seconds=1.0)
                out = capsys.readouterr()
                assert "push_failed" in out.err
                assert "carol:***@127.0.0.1" in out.err
                assert "pw-8e1f" not in out.err + out.out
                assert out.out == ""  # logs never go where the report goes
    finally:
        root.handlers[:], root.level, root.propagate = saved
        structlog.reset_defaults()


def test_label_values_from_a_report_are_always_encodable() -> None:
    """Found by tests/test_fuzz_render.py: a lone surrogate in a server name (valid JSON, valid
    against the schema) made generate_latest raise UnicodeEncodeError for every probe."""
    bad = report()
    bad["paths"][0]["server"] = "turn\ud800\x1b[2J:3478"
    bad["paths"][0]["region"] = "eu\u202e"
    metrics = ReportMetrics(server_labels=True)
    metrics.update(as_doc(bad), run_seconds=1.0, labels={"site": "o\nffice"})
    text = exposition(registry_with(metrics)).decode("utf-8")
    assert 'server="turn\\\\ud800\\\\x1b[2J:3478"' in text  # visible, then Prometheus-escaped
    assert 'region="eu\\\\u202e"' in text
    assert 'site="o\\\\nffice"' in text


# -- promtool ------------------------------------------------------------------------------------


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
@pytest.mark.parametrize("server_labels", [False, True])
def test_exposition_passes_promtool(server_labels: bool) -> None:
    text = text_of(full_metrics(server_labels=server_labels))
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_promtool_would_catch_a_bad_exposition() -> None:
    # The check above can fail: a gauge with a "quantile" label (why RTT uses "stat").
    bad = '# HELP x_seconds x\n# TYPE x_seconds gauge\nx_seconds{quantile="0.5"} 1\n'
    assert promtool("check", "metrics", stdin=bad).returncode != 0


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    check = promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # As recording rules, promtool parses every query (Grafana's variables given a value).
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$probe", ".*").replace("$site", ".*").replace("$region", ".*")
        # A variable's label_values(SELECTOR, label) is Grafana's, not PromQL: check SELECTOR.
        expr = re.sub(r"^label_values\((.+), *[a-z_]+\)$", r"\1", expr)
        lines += [f"      - record: lkice:dashboard_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard.yml"
    rules.write_text("\n".join(lines) + "\n")
    check = promtool("check", "rules", str(rules))
    assert check.returncode == 0, check.stdout + check.stderr


def alert_rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML absent: cannot read the alert rules")
    data = yaml.safe_load(ALERTS.read_text())
    rules: list[dict[str, Any]] = [r for group in data["groups"] for r in group["rules"]]
    return rules


ALERT_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # office: UDP lost to eu (TCP still up), head-of-line stalls on TLS
      - series: 'lkice_path_up{probe="office",site="hh",region="eu",kind="turn",transport="udp",route="server"}'
        values: '0x40'
      - series: 'lkice_path_up{probe="office",site="hh",region="eu",kind="turn",transport="tcp",route="server"}'
        values: '1x40'
      - series: 'lkice_path_hol_stall_seconds{probe="office",site="hh",region="eu",kind="turn",transport="tls",route="server",measure="relay_echo"}'
        values: '0.35x40'
      - series: 'lkice_path_hol_stall_seconds{probe="office",site="hh",region="eu",kind="turn",transport="tcp",route="server",measure="relay_echo"}'
        values: '0.05x40'
      # hq: region us unreachable, signaling down
      - series: 'lkice_path_up{probe="hq",site="ber",region="us",kind="turn",transport="tls",route="server"}'
        values: '0x40'
      - series: 'lkice_signal_up{probe="hq",site="ber"}'
        values: '0x40'
      # fast (every minute) and slow (5 minutes, no interval exported): both stop after 10 min
      - series: 'lkice_last_run_timestamp_seconds{probe="fast",site="x"}'
        values: '0+60x10 stale'
      - series: 'lkice_schedule_interval_seconds{probe="fast",site="x"}'
        values: '60x10 stale'
      - series: 'lkice_last_run_timestamp_seconds{probe="slow",site="y"}'
        values: '0+60x10 stale'
    alert_rule_test:
      - eval_time: 5m
        alertname: LkiceUdpLostAtSite
        exp_alerts: []
      - eval_time: 15m
        alertname: LkiceUdpLostAtSite
        exp_alerts:
          - exp_labels: {severity: warning, probe: office, site: hh, region: eu}
      - eval_time: 20m
        alertname: LkiceHeadOfLineStalls
        exp_alerts:
          - exp_labels: {severity: warning, probe: office, site: hh, region: eu, transport: tls}
      - eval_time: 20m
        alertname: LkiceRegionDegraded
        exp_alerts:
          - exp_labels: {severity: warning, probe: hq, site: ber, region: us}
      - eval_time: 15m
        alertname: LkiceSignalingDown
        exp_alerts:
          - exp_labels: {severity: critical, probe: hq, site: ber}
      - eval_time: 10m
        alertname: LkiceProbeNotReporting
        exp_alerts: []
      - eval_time: 20m
        alertname: LkiceProbeNotReporting
        exp_alerts:
          - exp_labels: {severity: warning, probe: fast, site: x}
      - eval_time: 40m
        alertname: LkiceProbeNotReporting
        exp_alerts:
          - exp_labels: {severity: warning, probe: fast, site: x}
          - exp_labels: {severity: warning, probe: slow, site: y}
"""


@needs_promtool
def test_alerts_fire_as_intended(tmp_path: Path) -> None:
    """promtool's rule unit tests on synthetic series (annotations stripped: labels are what
    routes an alert)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML absent: cannot rewrite the alert rules")
    data = yaml.safe_load(ALERTS.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(data))
    tests = tmp_path / "tests.yml"
    tests.write_text(ALERT_TESTS.replace("RULES", str(rules)))
    check = promtool("test", "rules", str(tests))
    assert check.returncode == 0, check.stdout + check.stderr


# -- packaging names only what lkice exports -----------------------------------------------------


def names_in(text: str) -> set[str]:
    return set(re.findall(r"\blkice_[a-z_]+\b", text))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs + [v["query"] for v in dashboard["templating"]["list"]]


def test_metric_names_list_what_the_collector_exports() -> None:
    assert exported_names() == set(METRIC_NAMES)
    assert set(COUNTER_NAMES) <= set(METRIC_NAMES)


def test_alert_rules_name_only_exported_metrics() -> None:
    rules = alert_rules()
    assert len(rules) == 7
    used: set[str] = set()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        used |= names_in(rule["expr"])
    assert {"lkice_path_up", "lkice_signal_up", "lkice_path_hol_stall_seconds"} <= used
    assert used <= exported_names(), used - exported_names()


def test_dashboard_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = names_in("\n".join(dashboard_exprs()))
    assert used <= exported_names(), used - exported_names()
    wanted = {
        "lkice_verdict",
        "lkice_path_up",
        "lkice_path_setup_seconds",
        "lkice_path_rtt_seconds",
        "lkice_path_jitter_seconds",
        "lkice_path_loss_ratio",
        "lkice_path_hol_stall_seconds",
        "lkice_path_mos",
        "lkice_recommended_region_info",
        "lkice_last_success_timestamp_seconds",
    }
    assert wanted <= used, wanted - used
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"probe", "site", "region"}
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


# -- systemd -------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with (SYSTEMD / name).open() as f:
        parser.read_file(f)
    return parser


def test_daemon_unit() -> None:
    parser = unit("lkice-probe@.service")
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    service = parser["Service"]
    start = service["ExecStart"].split()
    assert start[:4] == ["/usr/local/bin/lkice", "probe", "--config", "/etc/lkice/%i.toml"]
    for option in ("--every", "--metrics-listen", "--history"):
        assert option in start
    assert start[start.index("--history") + 1] == "/var/lib/lkice/%i.jsonl"
    assert "LKICE_METRICS_LISTEN=127.0.0.1:9469" in service["Environment"].split()
    assert service["EnvironmentFile"] == "-/etc/lkice/%i.env"
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["StateDirectory"] == "lkice"
    assert service["CapabilityBoundingSet"] == ""
    assert service["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_oneshot_unit_and_timer() -> None:
    service = unit("lkice-oneshot@.service")
    assert set(service.sections()) == {"Unit", "Service"}
    assert service["Service"]["Type"] == "oneshot"
    start = service["Service"]["ExecStart"].split()
    textfile = start[start.index("--textfile") + 1]
    assert textfile == "/var/lib/node_exporter/textfile_collector/lkice-%i.prom"
    assert "--every" not in start
    assert "--metrics-listen" not in start
    assert service["Service"]["ReadWritePaths"].lstrip("-") == str(Path(textfile).parent)
    assert service["Service"]["CapabilityBoundingSet"] == ""
    timer = unit("lkice-oneshot@.timer")
    assert set(timer.sections()) == {"Unit", "Timer", "Install"}
    assert timer["Timer"]["OnUnitActiveSec"] == "5min"  # what the not-reporting alert assumes
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # Instances of the templates, with lkice replaced by a program that exists here.
    for path in SYSTEMD.glob("lkice-*@.*"):
        text = path.read_text().replace("/usr/local/bin/lkice", shutil.which("true") or "/bin/true")
        (tmp_path / path.name).write_text(text)
    names = ["lkice-probe@office.service", "lkice-oneshot@office.service"]
    names.append("lkice-oneshot@office.timer")
    for name in names:
        check = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "lkice" not in check.stderr, check.stderr  # unknown keys are only warned about
