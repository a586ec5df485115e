"""Writes lkice-dashboard.json (importable Grafana dashboard) next to this script.

    python3 packaging/grafana/make_dashboard.py

Kept as code so every panel's query is reviewed in one place; tests/test_packaging.py checks
that the queries name only metrics lkice exports.
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
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit} if unit else {}
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        **(extra or {}),
    }


def main() -> None:
    panels = [
        panel(
            1,
            "Verdict (0 ok, 1 degraded, 2 failed, 3 unknown)",
            "stat",
            [(f"max by (probe, site) (lkice_verdict{{{SEL}}})", "{{site}} {{probe}}")],
            0,
            0,
            w=8,
            h=5,
        ),
        panel(
            2,
            "Recommended region",
            "table",
            [(f"lkice_recommended_region_info{{{SEL}}}", "{{region}} over {{transport}}")],
            8,
            0,
            w=8,
            h=5,
        ),
        panel(
            3,
            "Since last successful run",
            "stat",
            [(f"time() - lkice_last_success_timestamp_seconds{{{SEL}}}", "{{probe}}")],
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
                    f'max by (region, transport, kind, route) (lkice_path_up{{{SEL}, region=~"$region"}})',
                    "{{region}} {{kind}} {{transport}} {{route}}",
                )
            ],
            0,
            5,
            w=24,
            h=8,
        ),
        panel(
            5,
            "Setup time per phase",
            "timeseries",
            [
                (
                    f'max by (region, transport, phase) (lkice_path_setup_seconds{{{SEL}, region=~"$region"}})',
                    "{{region}} {{transport}} {{phase}}",
                )
            ],
            0,
            13,
            unit="s",
        ),
        panel(
            6,
            "Round-trip time (median, p95)",
            "timeseries",
            [
                (
                    f'max by (region, transport, measure) (lkice_path_rtt_seconds{{{SEL}, region=~"$region", stat="p50"}})',
                    "p50 {{region}} {{transport}} {{measure}}",
                ),
                (
                    f'max by (region, transport, measure) (lkice_path_rtt_seconds{{{SEL}, region=~"$region", stat="p95"}})',
                    "p95 {{region}} {{transport}} {{measure}}",
                ),
            ],
            12,
            13,
            unit="s",
        ),
        panel(
            7,
            "Jitter",
            "timeseries",
            [
                (
                    f'max by (region, transport, measure) (lkice_path_jitter_seconds{{{SEL}, region=~"$region"}})',
                    "{{region}} {{transport}} {{measure}}",
                )
            ],
            0,
            21,
            unit="s",
        ),
        panel(
            8,
            "Loss",
            "timeseries",
            [
                (
                    f'max by (region, transport, measure) (lkice_path_loss_ratio{{{SEL}, region=~"$region"}})',
                    "{{region}} {{transport}} {{measure}}",
                )
            ],
            12,
            21,
            unit="percentunit",
        ),
        panel(
            9,
            "Head-of-line stall (longest) on TCP/TLS",
            "timeseries",
            [
                (
                    f'max by (region, transport, measure) (lkice_path_hol_stall_seconds{{{SEL}, region=~"$region"}})',
                    "{{region}} {{transport}} {{measure}}",
                )
            ],
            0,
            29,
            unit="s",
        ),
        panel(
            10,
            "MOS (E-model)",
            "timeseries",
            [
                (
                    f'min by (region, transport, measure) (lkice_path_mos{{{SEL}, region=~"$region"}})',
                    "{{region}} {{transport}} {{measure}}",
                )
            ],
            12,
            29,
        ),
        panel(
            11,
            "Current findings",
            "table",
            [(f"lkice_finding{{{SEL}}}", "{{severity}} {{id}}")],
            0,
            37,
            w=12,
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
            "type": "query",
            "datasource": DS,
            "query": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
        }
        for name, query in (
            ("probe", "label_values(lkice_verdict, probe)"),
            ("site", "label_values(lkice_verdict, site)"),
            ("region", "label_values(lkice_path_up, region)"),
        )
    ]
    dashboard = {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "title": "lkice: LiveKit connectivity by site",
        "uid": "lkice-probes",
        "tags": ["lkice", "livekit", "webrtc"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }
    out = Path(__file__).with_name("lkice-dashboard.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()
