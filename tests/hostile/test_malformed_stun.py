"""Class 6: malformed STUN over UDP. A Binding answer with a wrong-length attribute, random
garbage or a truncated message from the server is a ``protocol`` error saying what was wrong,
never ``udp_no_response`` ("likely filtered": a wrong diagnosis), and no traceback."""

from __future__ import annotations

import re

import pytest

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import StunMode, StunServer

WHAT_WAS_WRONG = re.compile(
    r"length|attribute|malformed|invalid|not (a )?STUN|garbage|truncat|pars|corrupt|decode",
    re.IGNORECASE,
)


@pytest.mark.parametrize("mode", ["xor_mapped_len2", "lifetime_len2", "garbage", "truncated"])
def test_malformed_stun_reply_is_a_protocol_error(mode: StunMode) -> None:
    with StunServer(mode=mode) as server:
        outcome = run_lkice(
            ["run", server.uri, "--json", "--quality-duration", "0", "--udp-timeout", "1",
             "--deadline", "4"],
            timeout=60,
        )  # fmt: skip
        answered = bool(server.requests)
    check = Checks(outcome, f"malformed_stun[{mode}]")
    check.that(answered, "lkice sent nothing to the server")
    paths = (outcome.report or {}).get("paths") or []
    check.that(len(paths) == 1, f"{len(paths)} paths (expected 1)")
    error = (paths[0].get("error") if paths else None) or {}
    check.that(error.get("kind") == "protocol", f"path error.kind is {error.get('kind')!r}")
    check.that(
        bool(WHAT_WAS_WRONG.search(str(error.get("message")))),
        f"the message does not say what was wrong: {error.get('message')!r}",
    )
    check.clean()
    check.done()
