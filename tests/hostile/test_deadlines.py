"""Class 2: one deadline for everything. LiveKit signaling runs under ``--deadline`` like every
other probe: a server that drips its answer, stalls before each step just inside the per-step
timeout, or says nothing at all ends the whole command within the deadline + 0.5 s (plus the
interpreter's start-up), with ``signal.error.kind == "deadline"``."""

from __future__ import annotations

import secrets

import pytest

from tests.hostile.harness import STARTUP_ALLOWANCE_S, Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, ValidateMode


@pytest.mark.parametrize(
    ("mode", "deadline"),
    [("slowloris", 2.0), ("stall", 2.0), ("silent", 1.0)],
)
def test_signaling_ends_within_the_deadline(mode: ValidateMode, deadline: float) -> None:
    token = "tok" + secrets.token_hex(16)
    with HostileLiveKit(validate=mode, stall_s=4.0, drip_interval=1.0) as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--json", "--quality-duration", "0",
             "--deadline", str(deadline)],
            timeout=90,
        )  # fmt: skip
        reached = lk.seen()
    check = Checks(outcome, f"deadline[{mode}]")
    check.that(reached, "lkice never reached the server (the test proves nothing)")
    error = outcome.error() or {}
    check.that(outcome.report is not None, f"no JSON report on stdout ({outcome.json_error})")
    check.that(error.get("kind") == "deadline", f"signal.error.kind is {error.get('kind')!r}")
    limit = deadline + 0.5 + STARTUP_ALLOWANCE_S
    check.that(outcome.wall_s <= limit, f"took {outcome.wall_s:.2f} s (limit {limit:g} s)")
    check.clean(secrets=[token])
    check.done()
