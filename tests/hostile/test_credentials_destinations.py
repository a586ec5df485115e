"""Where the user's own TURN credentials go: only to the STUN/TURN URIs the user gave. A LiveKit
server that advertises a TURN server without credentials must not get the user's -u/-p sent
there (USERNAME and a MESSAGE-INTEGRITY keyed with the password can be attacked offline)."""

from __future__ import annotations

import secrets

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import HostileLiveKit, IceServerSpec, StunServer


def test_the_users_credentials_never_go_to_an_advertised_turn_server() -> None:
    token, password = "tok" + secrets.token_hex(16), "pw" + secrets.token_hex(12)
    with StunServer("127.0.0.5") as advertised, StunServer("127.0.0.1") as own:
        ice = [IceServerSpec(urls=(advertised.turn_uri("udp"),))]  # no credentials
        with HostileLiveKit(ice_servers=ice) as lk:
            outcome = run_lkice(
                ["run", lk.url, own.turn_uri("udp"), "--token", token,
                 "-u", "alice", "-p", password, "--json", "--quality-duration", "0",
                 "--deadline", "8"],
                timeout=90,
            )  # fmt: skip
        check = Checks(outcome, "credentials_destinations")
        check.that(outcome.report is not None, f"no JSON report ({outcome.json_error})")
        check.that(bool(advertised.requests), "the advertised server was never probed")
        check.that(
            not advertised.received_credentials(),
            "the user's USERNAME/MESSAGE-INTEGRITY went to a TURN server the LiveKit server named",
        )
        check.that(own.received_credentials(), "the user's own TURN URI never got its credentials")
        check.clean(secrets=[token, password])
        check.done()
