"""A scheduled probe through outages, in the namespace lab (root): the TURN server stopped and
restarted, DNS failing, the client's link cut. The daemon keeps running, records each outage
as a report (data, not a crash) and recovers by itself when the network does."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lkice.history import read
from lkice.lab.netlab import NetLab, prerequisites

MISSING = prerequisites()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)),
]


def runs(history: Path) -> list[dict[str, Any]]:
    return list(read(history)) if history.exists() else []


def next_run(history: Path, after: int, timeout: float = 60) -> dict[str, Any]:
    """The first run recorded after the first ``after`` ones (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = runs(history)
        if len(found) > after:
            return found[after]
        time.sleep(0.2)
    raise AssertionError(f"no run recorded after {after} within {timeout} s")


def settle(history: Path, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Skip the run that may have straddled the change; the following one must show it."""
    start = len(runs(history))
    next_run(history, start)
    run = next_run(history, start + 1)
    assert check(run), (
        f"{what}: {json.dumps([(p['transport'], p['ok'], p['error']) for p in run['paths']])}"
    )
    return run


def kinds(run: dict[str, Any]) -> set[str]:
    return {p["error"]["kind"] for p in run["paths"] if p["error"]}


def test_outages_are_data_and_the_probe_recovers(tmp_path: Path) -> None:
    with NetLab(regions=("eu",), profile="open") as lab:
        config, history = tmp_path / "office.toml", tmp_path / "history.jsonl"
        uris = ", ".join(f'"{u}"' for u in lab.turn_uris("eu"))
        config.write_text(
            f"""
[probe]
name = "office"
labels = {{ site = "lab" }}
[settings]
udp_timeout_s = 1
timeout_s = 1
deadline_s = 4
ca_files = ["{lab.ca_file}"]
quality = {{ duration_s = 0 }}
[credentials]
turn_username = {{ env = "T_USER" }}
turn_password = {{ env = "T_PASS" }}
[[regions]]
name = "eu"
uris = [{uris}]
"""
        )
        daemon = lab.popen_in_client(
            ["python3", "-m", "lkice", "probe", "--config", str(config), "--every", "1s",
             "--history", str(history)],
            env={"T_USER": lab.turn_user, "T_PASS": lab.turn_password},
        )  # fmt: skip
        try:
            first = next_run(history, 0)
            assert first["verdict"] == "ok", first["findings"]

            lab.stop_turn("eu")
            down = settle(history, lambda r: r["verdict"] == "failed", "TURN server stopped")
            assert kinds(down) <= {"udp_no_response", "udp_refused", "connect_refused"}
            lab.start_turn("eu")
            settle(history, lambda r: r["verdict"] == "ok", "TURN server back")

            lab.stop_dns()
            no_dns = settle(history, lambda r: kinds(r) == {"dns"}, "DNS stopped")
            assert no_dns["verdict"] == "failed"
            lab.start_dns()
            settle(history, lambda r: r["verdict"] == "ok", "DNS back")

            lab.cut_client_link()
            cut = settle(history, lambda r: r["verdict"] == "failed", "link cut")
            assert all(not p["ok"] for p in cut["paths"])
            lab.cut_client_link(cut=False)
            settle(history, lambda r: r["verdict"] == "ok", "link back")

            assert daemon.poll() is None  # ran through all of it
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.communicate()
    assert daemon.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "run_crashed" not in events
    assert events[-1] == "stopped"
    assert lab.turn_password not in err
