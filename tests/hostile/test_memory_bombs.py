"""Class 1: memory bombs on ``/rtc/validate``. Every read from the network has a cap sized to
what a real LiveKit sends; a bigger answer is a ``protocol`` error naming the limit, found
within the deadline, with the child's memory bounded (before: 1.2 GB RSS)."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.hostile.harness import STARTUP_ALLOWANCE_S, Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, ValidateMode

DEADLINE = 3.0
RSS_LIMIT_MIB = 200
SIZE_WORDS = re.compile(
    r"limit|too (large|big|long)|larger|more than|exceed|size|bytes|[KMG]i?B\b", re.IGNORECASE
)


@pytest.mark.parametrize("mode", ["chunked_bomb", "huge_length"])
def test_validate_body_bomb_is_a_named_protocol_error(mode: ValidateMode) -> None:
    token = "tok" + secrets.token_hex(16)
    with HostileLiveKit(validate=mode) as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--json", "--quality-duration", "0",
             "--deadline", str(DEADLINE)],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, f"memory_bomb[{mode}]")
    error = outcome.error() or {}
    check.that(outcome.report is not None, f"no JSON report on stdout ({outcome.json_error})")
    check.that(error.get("kind") == "protocol", f"signal.error.kind is {error.get('kind')!r}")
    check.that(
        bool(SIZE_WORDS.search(str(error.get("message")))),
        f"the message names no size limit: {error.get('message')!r}",
    )
    limit = DEADLINE + 0.5 + STARTUP_ALLOWANCE_S
    check.that(outcome.wall_s <= limit, f"took {outcome.wall_s:.2f} s (limit {limit:g} s)")
    check.that(
        outcome.peak_rss_mib < RSS_LIMIT_MIB,
        f"peak RSS {outcome.peak_rss_mib:.0f} MiB (limit {RSS_LIMIT_MIB} MiB)",
    )
    check.clean(secrets=[token])
    check.done()
