"""Class 5: 300 Try Alternate. The TURN server at 127.0.0.1 redirects the unauthenticated
Allocate to 127.0.0.5 (another host, as far as the user knows): lkice follows it once (the
alternate's own redirect to 127.0.0.6 is not followed) and, if it handed the alternate its
credentials (USERNAME, MESSAGE-INTEGRITY), the path's notes say that host was named by the
server, not by the user."""

from __future__ import annotations

import json
import secrets
from contextlib import ExitStack

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import StunServer


def test_try_alternate_is_followed_once_and_named() -> None:
    password = "pw" + secrets.token_hex(16)
    user = "user" + secrets.token_hex(6)
    with ExitStack() as stack:
        third = stack.enter_context(StunServer("127.0.0.6"))
        alternate = stack.enter_context(
            StunServer("127.0.0.5", after_auth="redirect", alternate=third.address)
        )
        primary = stack.enter_context(
            StunServer("127.0.0.1", mode="redirect", alternate=alternate.address)
        )
        outcome = run_lkice(
            ["run", primary.turn_uri("udp"), "-u", user, "-p", password, "--json",
             "--quality-duration", "0", "--udp-timeout", "1", "--deadline", "5"],
            timeout=60,
        )  # fmt: skip
        followed = bool(alternate.requests)
        credentials = alternate.received_credentials()
        third_contacted = bool(third.requests)
    check = Checks(outcome, "try_alternate")
    report = outcome.report or {}
    check.that(outcome.report is not None, f"no JSON report on stdout ({outcome.json_error})")
    check.that(followed, "the redirect to 127.0.0.5 was not followed")
    check.that(not third_contacted, "a second redirect (to 127.0.0.6) was followed too")
    at_alternate = [
        p for p in report.get("paths") or [] if str(p.get("address", "")).startswith("127.0.0.5")
    ]
    notes = json.dumps([p.get("notes") for p in at_alternate])
    check.that(bool(at_alternate) or not followed, "no path in the report for the alternate")
    if credentials:
        check.that(
            "named by" in notes,
            "credentials went to the alternate and its path's notes do not say it was named "
            f"by the server: {notes[:300]}",
        )
    check.clean(secrets=[password])
    check.done()
