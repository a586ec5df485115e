"""Metrics into a real Prometheus: the scheduled probe serving /metrics and a one-shot run
pushing to a real Pushgateway, both against a real coturn; Prometheus' HTTP API must show the
series with plausible values. Also the node_exporter textfile, checked by promtool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lkice.lab.server import free_port
from tests.conftest import TurnLab, needs_coturn
from tests.support.prometheus import Prometheus, Pushgateway, ScrapeJob, prometheus_binaries

MISSING = prometheus_binaries()
pytestmark = [
    needs_coturn,
    pytest.mark.skipif(MISSING is not None, reason=f"Prometheus unavailable: {MISSING}"),
]


def definition(coturn: TurnLab, name: str) -> str:
    return f"""
[probe]
name = "{name}"
labels = {{ site = "lab" }}
[settings]
quality = {{ duration_s = 0.5 }}
[credentials]
turn_username = {{ env = "T_USER" }}
turn_password = {{ env = "T_PASS" }}
[[targets]]
uri = "turn:127.0.0.1:{coturn.port}"
"""


def lkice(coturn: TurnLab, *args: str) -> list[str]:
    return [sys.executable, "-m", "lkice", "probe", *args]


def env(coturn: TurnLab) -> dict[str, str]:
    return {**os.environ, "T_USER": coturn.user, "T_PASS": coturn.password}


def test_daemon_and_push_reach_prometheus(coturn: TurnLab, tmp_path: Path) -> None:
    office, oneshot = tmp_path / "office.toml", tmp_path / "oneshot.toml"
    office.write_text(definition(coturn, "office"))
    oneshot.write_text(definition(coturn, "oneshot"))
    port = free_port()
    with Pushgateway() as gateway:
        daemon = subprocess.Popen(
            lkice(coturn, "--config", str(office), "--every", "1s",
                  "--metrics-listen", f"127.0.0.1:{port}"),
            env=env(coturn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            jobs = [ScrapeJob("lkice", [f"127.0.0.1:{port}"]), gateway.scrape_job()]
            with Prometheus(jobs, scrape_interval=1.0) as prom:
                push = subprocess.run(
                    lkice(coturn, "--config", str(oneshot), "--push", gateway.url),
                    env=env(coturn), capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert push.returncode == 0, push.stderr
                up = prom.wait_for(
                    'lkice_path_up{probe="office",transport="udp"}',
                    lambda r: len(r) == 1 and r[0]["value"] == 1,
                    timeout=30,
                )
                assert up[0]["metric"]["site"] == "lab"
                assert up[0]["metric"]["job"] == "lkice"
                rtt = prom.wait_for(
                    'lkice_path_rtt_seconds{probe="office",stat="p50"}', bool, timeout=30
                )
                assert all(0 < s["value"] < 0.5 for s in rtt)  # loopback: well under 500 ms
                last = prom.wait_for(
                    'lkice_last_success_timestamp_seconds{probe="office"}', bool, timeout=30
                )
                assert abs(last[0]["value"] - time.time()) < 120
                verdict = prom.wait_for('lkice_verdict{probe="office"}', bool, timeout=30)
                assert verdict[0]["value"] == 0  # ok
                pushed = prom.wait_for('lkice_path_up{probe="oneshot"}', bool, timeout=30)
                assert {s["metric"]["transport"] for s in pushed} == {"udp", "tcp"}
                assert all(s["value"] == 1 for s in pushed)
                runs = prom.wait_for('lkice_runs_total{probe="office"}', bool, timeout=30)
                assert sum(s["value"] for s in runs) >= 1
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert coturn.password not in err


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent")
def test_textfile_for_node_exporter(coturn: TurnLab, tmp_path: Path) -> None:
    config, textfile = tmp_path / "desk.toml", tmp_path / "lkice.prom"
    config.write_text(definition(coturn, "desk"))
    run = subprocess.run(
        lkice(coturn, "--config", str(config), "--textfile", str(textfile)),
        env=env(coturn), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = textfile.read_text()
    assert "lkice_path_up{" in text
    assert 'probe="desk"' in text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
