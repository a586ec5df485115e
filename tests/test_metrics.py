"""Prometheus metrics from reports (lkice.metrics): names, labels, aggregation and values from a
recorded lab report; nothing unmeasured is exported; no host or address as a label unless
asked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lkice.metrics import ReportMetrics, exposition, registry_with, write_textfile

DATA = Path(__file__).parent / "data"


def lab_report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads((DATA / "report-udp-blocked.json").read_text())
    report["probe"] = {"name": "office", "labels": {"site": "hh"}, "definition": "x.toml"}
    return report


def samples(metrics: ReportMetrics) -> list[tuple[str, dict[str, str], float]]:
    text = exposition(registry_with(metrics)).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def pick(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> list[float]:
    return [v for n, lb, v in found if n == name and all(lb.get(k) == w for k, w in labels.items())]


def test_paths_verdict_and_runs() -> None:
    metrics = ReportMetrics()
    metrics.update(lab_report(), probe="office", run_seconds=6.0, now=1000.0)
    found = samples(metrics)
    # UDP is blocked in this report: both UDP groups (stun, turn) are down; TCP and TLS up.
    assert pick(found, "lkice_path_up", kind="turn", transport="udp") == [0.0]
    assert pick(found, "lkice_path_up", kind="stun", transport="udp") == [0.0]
    assert pick(found, "lkice_path_up", kind="turn", transport="tcp") == [1.0]
    # Two TLS servers (5349 and 443) share one label set: one series, up.
    assert pick(found, "lkice_path_up", kind="turn", transport="tls") == [1.0]
    assert pick(found, "lkice_verdict", probe="office", site="hh") == [1.0]
    assert pick(found, "lkice_runs_total", result="degraded") == [1.0]
    assert pick(found, "lkice_last_success_timestamp_seconds") == [1000.0]
    # Stall of the TCP path's relay echo, in seconds, from the report's max_stall_ms.
    tcp = next(p for p in lab_report()["paths"] if p["transport"] == "tcp")
    expected = tcp["relay_quality"]["hol"]["max_stall_ms"] / 1000
    assert pick(found, "lkice_path_hol_stall_seconds", transport="tcp", measure="relay_echo") == [
        expected
    ]
    # Nothing was measured on the UDP paths: no RTT, no loss for them (never a made-up 0).
    assert pick(found, "lkice_path_rtt_seconds", transport="udp") == []
    assert pick(found, "lkice_path_loss_ratio", transport="udp") == []
    # Neither host names nor addresses are labels.
    label_values = " ".join(v for _, labels, _ in found for v in labels.values())
    assert not re.search(r"\d+\.\d+\.\d+\.\d+|lab\.test", label_values)


def test_server_labels_on_request() -> None:
    metrics = ReportMetrics(server_labels=True)
    metrics.update(lab_report(), probe="office", run_seconds=6.0)
    servers = {lb.get("server") for n, lb, _ in samples(metrics) if n == "lkice_path_up"}
    assert "turn.eu.lab.test:443" in servers
    assert "turn.eu.lab.test:5349" in servers


def test_runs_accumulate_and_a_run_without_report_counts() -> None:
    metrics = ReportMetrics()
    metrics.update(lab_report(), probe="office", run_seconds=6.0, now=1000.0)
    metrics.update(None, probe="office", run_seconds=0.1, result="config_error", now=1300.0)
    metrics.update(lab_report(), probe="office", run_seconds=9.0, overran=True, now=1600.0)
    found = samples(metrics)
    assert pick(found, "lkice_runs_total", result="degraded") == [2.0]
    assert pick(found, "lkice_runs_total", result="config_error") == [1.0]
    assert pick(found, "lkice_run_overruns_total") == [1.0]
    assert pick(found, "lkice_last_run_timestamp_seconds") == [1600.0]
    assert pick(found, "lkice_run_duration_seconds") == [9.0]


def test_textfile_is_the_exposition(tmp_path: Path) -> None:
    metrics = ReportMetrics()
    metrics.update(lab_report(), probe="office", run_seconds=6.0, now=1.0)
    registry = registry_with(metrics)
    path = tmp_path / "lkice.prom"
    write_textfile(path, registry)
    assert path.read_bytes() == exposition(registry)
    assert list(tmp_path.iterdir()) == [path]  # written via a temporary file, renamed
