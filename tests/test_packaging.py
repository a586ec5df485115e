"""What packaging/ ships: alert rules promtool accepts, a dashboard and rules whose queries
only name metrics lkice exports, systemd units that parse, and a dashboard file in step with
its generator."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lkice.metrics import METRIC_NAMES

PACKAGING = Path(__file__).parent.parent / "packaging"
COUNTERS = {"lkice_runs_total", "lkice_run_overruns_total"}


def exported() -> set[str]:
    return set(METRIC_NAMES) | COUNTERS


def names_in(text: str) -> set[str]:
    return set(re.findall(r"\blkice_[a-z_]+\b", text))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent")
def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", str(PACKAGING / "prometheus" / "lkice-alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout


def test_alert_rules_name_only_exported_metrics() -> None:
    text = (PACKAGING / "prometheus" / "lkice-alerts.yml").read_text()
    exprs = "\n".join(re.findall(r"expr: (?:\|\n)?((?:.+\n?)+?)\s+(?:for|labels):", text))
    used = names_in(exprs)
    assert used, "no lkice metric in the rules' expressions"
    assert used <= exported(), used - exported()


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dashboard = json.loads((PACKAGING / "grafana" / "lkice-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    used = names_in("\n".join(exprs))
    assert {"lkice_path_up", "lkice_verdict", "lkice_path_hol_stall_seconds"} <= used
    assert used <= exported(), used - exported()
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"


def test_dashboard_matches_its_generator(tmp_path: Path) -> None:
    shipped = (PACKAGING / "grafana" / "lkice-dashboard.json").read_text()
    copy = tmp_path / "make_dashboard.py"
    copy.write_text((PACKAGING / "grafana" / "make_dashboard.py").read_text())
    subprocess.run([sys.executable, str(copy)], check=True)
    assert (tmp_path / "lkice-dashboard.json").read_text() == shipped


@pytest.mark.parametrize(
    ("unit", "sections"),
    [
        ("lkice-probe@.service", {"Unit", "Service", "Install"}),
        ("lkice-oneshot@.service", {"Unit", "Service"}),
        ("lkice-oneshot@.timer", {"Unit", "Timer", "Install"}),
    ],
)
def test_systemd_units_parse(unit: str, sections: set[str]) -> None:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(PACKAGING / "systemd" / unit)
    assert set(parser.sections()) == sections
    if "Service" in sections:
        start = parser["Service"]["ExecStart"]
        assert start.startswith("/usr/local/bin/lkice probe --config /etc/lkice/%i.toml")
        assert parser["Service"]["DynamicUser"] == "yes"
