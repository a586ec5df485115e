"""``lkice probe --every``: the scheduled probe as a real process against real coturn: runs on
schedule without overlapping, every run in the history, SIGHUP reloads (a broken definition is
refused and the last good one kept), SIGTERM stops cleanly, a slow run is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lkice.history import read
from tests.conftest import TurnLab, needs_coturn

pytestmark = needs_coturn


def definition(coturn: TurnLab, name: str, quality: float = 0.0) -> str:
    return f"""
[probe]
name = "{name}"
labels = {{ site = "lab" }}

[settings]
quality = {{ duration_s = {quality} }}

[credentials]
turn_username = {{ env = "TEST_TURN_USER" }}
turn_password = {{ env = "TEST_TURN_PASSWORD" }}

[[targets]]
uri = "turn:127.0.0.1:{coturn.port}?transport=udp"
"""


def start(coturn: TurnLab, config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TEST_TURN_USER": coturn.user, "TEST_TURN_PASSWORD": coturn.password}
    return subprocess.Popen(
        [sys.executable, "-m", "lkice", "probe", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def lines(path: Path) -> list[dict[str, object]]:
    return list(read(path)) if path.exists() else []


def events(stderr: str) -> list[dict[str, object]]:
    """The daemon's JSON log (stderr is not a terminal here)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_schedule_reload_and_clean_stop(coturn: TurnLab, tmp_path: Path) -> None:
    config, history = tmp_path / "office.toml", tmp_path / "history.jsonl"
    config.write_text(definition(coturn, "office"))
    proc = start(coturn, config, "--every", "1s", "--history", str(history))
    try:
        wait_until(lambda: len(lines(history)) >= 2, 30, "two scheduled runs")
        config.write_text("[probe]\nname = 'broken\n")  # a syntax error
        proc.send_signal(signal.SIGHUP)
        count = len(lines(history))
        wait_until(lambda: len(lines(history)) >= count + 2, 30, "runs after a broken reload")
        config.write_text(definition(coturn, "renamed"))
        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any(r["probe"]["name"] == "renamed" for r in lines(history)),  # type: ignore[index]
            30,
            "a run of the reloaded definition",
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    log = events(err)
    names = [e["event"] for e in log]
    assert names[0] == "started"
    assert "reload_refused" in names
    refused = next(e for e in log if e["event"] == "reload_refused")
    assert "not valid TOML" in json.dumps(refused["problems"])
    assert refused["keeping"] == "office"
    assert "reloaded" in names
    assert names[-1] == "stopped"
    runs = lines(history)
    assert all(r["verdict"] == "ok" for r in runs if not r["interrupted"])
    # The broken definition never ran: every run is office, then renamed, in that order.
    probes = [r["probe"]["name"] for r in runs]  # type: ignore[index]
    assert probes == sorted(probes, key=lambda n: n != "office")
    # Never overlapping: each run starts after the previous one ended.
    starts = [
        time.mktime(time.strptime(str(r["started_at"])[:19], "%Y-%m-%dT%H:%M:%S")) for r in runs
    ]
    assert starts == sorted(starts)
    assert coturn.password not in out + err


def test_slow_runs_are_reported_and_not_stacked(coturn: TurnLab, tmp_path: Path) -> None:
    """A 1.5 s quality train on a 1 s schedule: every run overruns; the next starts at once,
    one at a time, and the log says so."""
    config, history = tmp_path / "slow.toml", tmp_path / "history.jsonl"
    config.write_text(definition(coturn, "slow", quality=1.5))
    textfile = tmp_path / "slow.prom"
    proc = start(
        coturn,
        config,
        *("--every", "1s", "--max-runs", "3"),
        *("--history", str(history), "--textfile", str(textfile)),
    )
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    overruns = [e for e in events(err) if e["event"] == "run_overran"]
    assert len(overruns) == 3
    assert all(float(str(e["took_s"])) > 1.0 for e in overruns)
    runs = lines(history)
    assert len(runs) == 3
    assert all(float(str(r["duration_ms"])) > 1000 for r in runs)  # each longer than 1 s
    # The metrics say the same: the schedule (for the not-reporting alert) and the overruns.
    exposition = textfile.read_text()
    assert 'lkice_schedule_interval_seconds{probe="slow",site="lab"} 1.0' in exposition
    assert 'lkice_run_overruns_total{probe="slow",site="lab"} 3.0' in exposition


def test_a_missing_secret_is_a_logged_run_not_a_crash(coturn: TurnLab, tmp_path: Path) -> None:
    config, history = tmp_path / "nosecret.toml", tmp_path / "history.jsonl"
    config.write_text(definition(coturn, "nosecret").replace("TEST_TURN_USER", "LKICE_UNSET_VAR"))
    proc = start(coturn, config, "--every", "1s", "--max-runs", "2", "--history", str(history))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    failures = [e for e in events(err) if e["event"] == "run_not_started"]
    assert len(failures) == 2
    assert "LKICE_UNSET_VAR is not set" in json.dumps(failures[0]["problems"])
    assert lines(history) == []  # no report without a run


@pytest.mark.parametrize("every", ["0s", "soon", "2d"])
def test_bad_schedule_is_a_usage_error(coturn: TurnLab, tmp_path: Path, every: str) -> None:
    config = tmp_path / "p.toml"
    config.write_text(definition(coturn, "p"))
    proc = start(coturn, config, "--every", every)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "--every" in err
