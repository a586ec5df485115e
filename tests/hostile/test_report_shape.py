"""Class 11: what the report and the exit status say. A deadline hit with no usable path is
exit 2 (CRITICAL: "no usable path"), not 1; 500 copies of one target are one path; and
``duration_ms`` covers the whole diagnosis (signaling included), with each stage's time beside
it."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from lkice.lab.coturn import turnserver_path
from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, StunServer, StunStreamServer

STAGES = {"signal", "regions", "turn", "sfu"}


def test_deadline_with_no_usable_path_is_critical() -> None:
    password = "pw" + secrets.token_hex(12)
    with StunServer(mode="silent") as udp, StunStreamServer(mode="silent") as tcp:
        host, port = tcp.address
        outcome = run_lkice(
            ["run", udp.uri, f"turn:{host}:{port}?transport=tcp", "-u", "alice", "-p", password,
             "--udp-timeout", "5", "--timeout", "5", "--deadline", "1", "--json",
             "--quality-duration", "0"],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, "deadline_no_usable_path")
    report = outcome.report or {}
    kinds = [(p.get("error") or {}).get("kind") for p in report.get("paths") or []]
    check.that(bool(kinds) and set(kinds) == {"deadline"}, f"path error kinds {kinds}")
    check.that(outcome.status == 2, f"exit status {outcome.status} (expected 2: no usable path)")
    check.clean(secrets=[password])
    check.done()


def test_duplicate_targets_are_one_path() -> None:
    with StunServer() as server:
        outcome = run_lkice(
            ["run", *[server.uri] * 500, "--json", "--quality-duration", "0", "--udp-timeout", "1"],
            timeout=120,
        )
        requests = len(server.requests)
    check = Checks(outcome, "duplicate_targets")
    paths = (outcome.report or {}).get("paths") or []
    check.that(len(paths) == 1, f"{len(paths)} paths for 500 copies of one target (expected 1)")
    check.that(requests < 50, f"the server got {requests} requests")
    check.clean()
    check.done()


def _stage_times(report: dict[str, Any]) -> dict[str, Any] | None:
    """A top-level map of stage -> time, whatever lkice calls it (stages_ms, timings_ms...)."""
    for key, value in report.items():
        if isinstance(value, dict) and ("stage" in key or key == "timings_ms"):
            return value
    return None


def test_duration_covers_a_signaling_hang() -> None:
    token = "tok" + secrets.token_hex(16)
    with HostileLiveKit(validate="silent") as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--json", "--quality-duration", "0",
             "--deadline", "2"],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, "duration_signaling_hang")
    report = outcome.report or {}
    duration = report.get("duration_ms")
    check.that(
        isinstance(duration, int | float) and duration >= 1900,
        f"duration_ms {duration} for a 2 s signaling hang (expected >= 1900)",
    )
    stages = _stage_times(report) or {}
    signal = stages.get("signal")
    check.that(
        isinstance(signal, int | float) and signal >= 1900,
        f"no signal stage time of the hang in the report (stages: {stages or None})",
    )
    check.clean(secrets=[token])
    check.done()


@pytest.mark.skipif(turnserver_path() is None, reason="coturn (turnserver) is not installed")
def test_duration_covers_every_stage_of_the_demo() -> None:
    """``lkice demo``: signaling, regions, TURN and five SFU sessions (about 0.25 s on loopback
    since the SFU sessions use /rtc/v1 on the pion media plane); before, duration_ms was the
    TURN engine's 35-63 ms."""
    outcome = run_lkice(["demo", "--json", "--quality-duration", "0"], timeout=120)
    check = Checks(outcome, "duration_demo")
    report = outcome.report or {}
    duration = report.get("duration_ms")
    stages = _stage_times(report) or {}
    check.that(set(stages) >= STAGES, f"stage times {stages or None} lack some of {sorted(STAGES)}")
    timed = [v for v in stages.values() if isinstance(v, int | float)]
    check.that(
        isinstance(duration, int | float) and bool(timed) and duration >= max(timed),
        f"duration_ms {duration} against stages {stages or None}: none timed, or one longer "
        "than the whole",
    )
    check.that(
        isinstance(duration, int | float) and duration >= 100,
        f"duration_ms {duration} for a whole demo diagnosis (signaling, TURN, SFU sessions)",
    )
    check.clean()
    check.done()
