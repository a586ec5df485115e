"""Class 12: input that must be a usage error (exit 3, a clear message, no traceback, never
"internal error" or silent acceptance): non-ASCII digits and absurd ports, NaN and infinite
durations; and tokens whose payload no encoder would write (``exp`` 1e400 or -Infinity, 30,000
levels of nesting), which are either a usage error or left to the server (exit 2 or 3)."""

from __future__ import annotations

import pytest

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, closed_port, fake_jwt

PORT = closed_port()
GOOD = f"stun:127.0.0.1:{PORT}"

USAGE_ERRORS = {
    "superscript-port": ["run", "stun:127.0.0.1:\u00b3"],
    "fullwidth-port": ["run", "stun:127.0.0.1:\uff13\uff14\uff17\uff18"],
    "5000-digit-port": ["run", "stun:127.0.0.1:" + "1" * 5000],
    "quality-duration-nan": ["run", GOOD, "--quality-duration", "nan"],
    "udp-timeout-nan": ["run", GOOD, "--udp-timeout", "nan", "--quality-duration", "0"],
    "deadline-nan": ["run", GOOD, "--deadline", "nan", "--quality-duration", "0", "--json"],
    "deadline-inf": ["run", GOOD, "--deadline", "inf", "--quality-duration", "0"],
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_bad_input_is_a_usage_error(case: str) -> None:
    outcome = run_lkice(USAGE_ERRORS[case], timeout=60)
    check = Checks(outcome, f"usage[{case}]")
    check.that(outcome.status == 3, f"exit status {outcome.status} (expected 3: usage error)")
    check.that("error" in outcome.stderr.lower(), f"no error message on stderr: {outcome.stderr!a}")
    check.that(outcome.wall_s < 10, f"took {outcome.wall_s:.1f} s: the input was acted on")
    check.that("NaN" not in outcome.stdout, "NaN was written into the output")
    check.clean()
    check.done()


DEEP = '{"sub": "x", "a": ' + "[" * 30_000 + "]" * 30_000 + "}"
TOKENS = {
    "exp-1e400": '{"sub": "x", "exp": 1e400}',
    "exp-minus-infinity": '{"sub": "x", "exp": -Infinity}',
    "30000-deep": DEEP,
}


@pytest.mark.parametrize("case", list(TOKENS))
def test_hostile_token_payload(case: str) -> None:
    token = fake_jwt(TOKENS[case], signature="sig" + case)
    with HostileLiveKit(validate="reject") as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--quality-duration", "0", "--deadline", "5"],
            timeout=60,
        )
    check = Checks(outcome, f"token[{case}]")
    check.that(outcome.status in (2, 3), f"exit status {outcome.status} (expected 2 or 3)")
    check.clean(secrets=[token.rsplit(".", 1)[-1]])
    check.done()
