"""Writes lkice-dashboard.json (importable Grafana dashboard) next to this script.

    python3 packaging/grafana/make_dashboard.py

Kept as code so every panel's query is reviewed in one place; tests/test_packaging.py and
tests/test_metrics.py check that the queries are valid PromQL naming only metrics lkice exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEL = 'probe=~"$probe", site=~"$site"'
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def panel(
    pid: int,
    title: str,
    kind: str,
    targets: list[tuple[str, str]],
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    unit: str | None = None,
    extra: dict[str, Any] | None = None,
    mappings: dict[str, dict[str, Any]] | None = None,
    instant: bool = False,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit} if unit else {}
    if mappings:
        defaults["mappings"] = [{"type": "value", "options": mappings}]
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [
                {"color": options["color"], "value": None if i == 0 else float(value)}
                for i, (value, options) in enumerate(sorted(mappings.items()))
            ],
        }
        defaults["color"] = {"mode": "thresholds"}
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {
                "refId": chr(65 + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                **({"instant": True, "range": False, "format": "table"} if instant else {}),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
        **(extra or {}),
    }


VERDICTS = {
    "0": {"text": "ok", "color": "green", "index": 0},
    "1": {"text": "degraded", "color": "orange", "index": 1},
    "2": {"text": "failed", "color": "red", "index": 2},
    "3": {"text": "unknown", "color": "purple", "index": 3},
}
UP = {
    "0": {"text": "down", "color": "red", "index": 0},
    "1": {"text": "up", "color": "green", "index": 1},
}
PATH = f'{SEL}, region=~"$region"'


def by_path(metric: str, extra: str = "", agg: str = "max") -> str:
    return f"{agg} by (region, kind, transport, route, measure) ({metric}{{{PATH}{extra}}})"


def main() -> None:
    legend = "{{region}} {{kind}} {{transport}} {{route}} {{measure}}"
    panels = [
        panel(
            1,
            "Verdict per probe",
            "stat",
            [(f"max by (probe, site) (lkice_verdict{{{SEL}}})", "{{site}} {{probe}}")],
            0,
            0,
            w=8,
            h=5,
            mappings=VERDICTS,
        ),
        panel(
            2,
            "Recommended region",
            "table",
            [(f"max by (probe, region, transport) (lkice_recommended_region_info{{{SEL}}})", "")],
            8,
            0,
            w=8,
            h=5,
            instant=True,
        ),
        panel(
            3,
            "Since last successful run",
            "stat",
            [
                (
                    f"time() - max by (probe) (lkice_last_success_timestamp_seconds{{{SEL}}})",
                    "{{probe}}",
                )
            ],
            16,
            0,
            w=8,
            h=5,
            unit="s",
        ),
        panel(
            4,
            "Paths up by region and transport",
            "state-timeline",
            [
                (
                    f"max by (region, transport, kind, route) (lkice_path_up{{{PATH}}})",
                    "{{region}} {{kind}} {{transport}} {{route}}",
                )
            ],
            0,
            5,
            w=24,
            h=8,
            mappings=UP,
        ),
        panel(
            5,
            "Setup time per phase (best working path)",
            "timeseries",
            [
                (
                    f"max by (region, kind, transport, route, phase) "
                    f"(lkice_path_setup_seconds{{{PATH}}})",
                    "{{region}} {{kind}} {{transport}} {{route}} {{phase}}",
                ),
                (
                    f"max by (phase) (lkice_signal_setup_seconds{{{SEL}}})",
                    "signaling {{phase}}",
                ),
            ],
            0,
            13,
            unit="s",
        ),
        panel(
            6,
            "Round-trip time (p50, p95, p99)",
            "timeseries",
            [
                (by_path("lkice_path_rtt_seconds", f', stat="{stat}"'), f"{stat} {legend}")
                for stat in ("p50", "p95", "p99")
            ],
            12,
            13,
            unit="s",
        ),
        panel(
            7,
            "Jitter",
            "timeseries",
            [(by_path("lkice_path_jitter_seconds"), legend)],
            0,
            21,
            unit="s",
        ),
        panel(
            8,
            "Loss",
            "timeseries",
            [(by_path("lkice_path_loss_ratio"), legend)],
            12,
            21,
            unit="percentunit",
        ),
        panel(
            9,
            "Head-of-line stall (longest) on TCP/TLS",
            "timeseries",
            [(by_path("lkice_path_hol_stall_seconds"), legend)],
            0,
            29,
            unit="s",
        ),
        panel(
            10,
            "MOS (E-model estimate)",
            "timeseries",
            [(by_path("lkice_path_mos", agg="min"), legend)],
            12,
            29,
        ),
        panel(
            11,
            "Current findings",
            "table",
            [(f"max by (probe, id, severity) (lkice_finding{{{SEL}}})", "")],
            0,
            37,
            instant=True,
        ),
        panel(
            12,
            "Runs by result, overruns",
            "timeseries",
            [
                (f"sum by (result) (increase(lkice_runs_total{{{SEL}}}[1h]))", "{{result}}"),
                (f"sum(increase(lkice_run_overruns_total{{{SEL}}}[1h]))", "overruns"),
            ],
            12,
            37,
        ),
    ]
    variables = [
        {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": query,
            "refresh": 2,
            "includeAll": True,
            # Series without the label (a probe with no site, a target with no region) match.
            "allValue": ".*",
            "multi": True,
            "sort": 1,
            "current": {"text": "All", "value": "$__all"},
        }
        for name, query in (
            ("probe", "label_values(lkice_verdict, probe)"),
            ("site", 'label_values(lkice_verdict{probe=~"$probe"}, site)'),
            ("region", 'label_values(lkice_path_up{probe=~"$probe"}, region)'),
        )
    ]
    dashboard = {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes lkice (or node_exporter's textfiles)",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *(
                {"type": "panel", "id": kind, "name": kind, "version": ""}
                for kind in ("stat", "state-timeline", "table", "timeseries")
            ),
        ],
        "title": "lkice: LiveKit connectivity by site",
        "description": "lkice probe metrics (docs/metrics.md); alerts: lkice-alerts.yml",
        "uid": "lkice-probes",
        "tags": ["lkice", "livekit", "webrtc"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }
    out = Path(__file__).with_name("lkice-dashboard.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()
