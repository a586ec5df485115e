"""Class 7: WebSocket bombs after the upgrade. A frame header announcing 2^62 bytes, or small
non-final fragments without end, is a ``protocol`` error naming the size or the fragments (not
``join_timeout``), found within the deadline, with the child's memory bounded."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.hostile.harness import STARTUP_ALLOWANCE_S, Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, WebSocketMode

DEADLINE = 5.0
RSS_LIMIT_MIB = 200
NAMED = re.compile(
    r"size|too (large|big|long)|larger|limit|exceed|fragment|frames|bytes|[KMG]i?B\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("mode", ["giant_frame", "fragment_bomb"])
def test_websocket_bomb_is_a_named_protocol_error(mode: WebSocketMode) -> None:
    token = "tok" + secrets.token_hex(16)
    with HostileLiveKit(websocket=mode, bomb_bytes=1024 * 1024 * 1024) as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--json", "--quality-duration", "0",
             "--deadline", str(DEADLINE)],
            timeout=60,
        )  # fmt: skip
        upgraded = any(r.path.endswith("/rtc") for r in lk.requests)
    check = Checks(outcome, f"websocket_bomb[{mode}]")
    check.that(upgraded, "lkice never asked for the WebSocket upgrade")
    error = outcome.error() or {}
    check.that(outcome.report is not None, f"no JSON report on stdout ({outcome.json_error})")
    check.that(error.get("kind") == "protocol", f"signal.error.kind is {error.get('kind')!r}")
    check.that(
        bool(NAMED.search(str(error.get("message")))),
        f"the message names no size or fragment limit: {error.get('message')!r}",
    )
    limit = DEADLINE + 0.5 + STARTUP_ALLOWANCE_S
    check.that(outcome.wall_s <= limit, f"took {outcome.wall_s:.2f} s (limit {limit:g} s)")
    check.that(
        outcome.peak_rss_mib < RSS_LIMIT_MIB,
        f"peak RSS {outcome.peak_rss_mib:.0f} MiB (limit {RSS_LIMIT_MIB} MiB)",
    )
    check.clean(secrets=[token])
    check.done()
