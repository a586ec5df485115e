"""Servers that answered and then stopped, refused with ICMP, or refused a request for a reason
of its own: each named for what it is, never "filtered" and never a firewall to open."""

from __future__ import annotations

import json
import socket

from tests.hostile.harness import Checks, run_lkice
from tests.hostile.kit import StunServer


def _findings_text(report: dict[str, object]) -> str:
    return json.dumps(report.get("findings"))


def test_a_server_that_goes_silent_after_its_401_is_not_a_firewall() -> None:
    with StunServer(after_auth="silent") as server:
        outcome = run_lkice(
            ["run", server.turn_uri("udp"), "-u", "alice", "-p", "pw", "--json",
             "--quality-duration", "0", "--udp-timeout", "1"],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, "server_silent")
    path = (outcome.report or {}).get("paths", [{}])[0]
    error = path.get("error") or {}
    check.that(error.get("kind") == "server_silent", f"error kind {error.get('kind')!r}")
    check.that("likely filtered" not in str(error.get("message")), "called filtered")
    text = _findings_text(outcome.report or {})
    check.that("silently drops" not in text, "the findings blame a firewall")
    check.that("Ask IT to allow" not in text, "the findings ask IT to open a port")
    check.clean(secrets=["pw"])
    check.done()


def test_icmp_port_unreachable_is_refused_not_blocked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = run_lkice(
        ["run", f"stun:127.0.0.1:{port}", "--json", "--quality-duration", "0"], timeout=60
    )
    check = Checks(outcome, "udp_refused")
    path = (outcome.report or {}).get("paths", [{}])[0]
    error = path.get("error") or {}
    check.that(error.get("kind") == "udp_refused", f"error kind {error.get('kind')!r}")
    text = _findings_text(outcome.report or {})
    check.that("silently drops" not in text, "an ICMP refusal called a silent drop")
    check.clean()
    check.done()


def test_a_400_with_a_reason_is_not_a_credentials_problem() -> None:
    with StunServer(after_auth="bad_request") as server:
        outcome = run_lkice(
            ["run", server.turn_uri("udp"), "-u", "alice", "-p", "pw", "--json",
             "--quality-duration", "0"],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, "400_reason")
    path = (outcome.report or {}).get("paths", [{}])[0]
    error = path.get("error") or {}
    check.that(error.get("kind") == "protocol", f"error kind {error.get('kind')!r}")
    ids = {f.get("id") for f in (outcome.report or {}).get("findings") or []}
    check.that("credentials" not in ids, f"a credentials finding for a 400 with a reason: {ids}")
    check.clean(secrets=["pw"])
    check.done()


def test_a_redirect_to_an_unusable_address_is_not_followed() -> None:
    unspecified = ("0.0.0.0", 0)  # noqa: S104 - an address in a message, never bound
    with StunServer(mode="redirect", alternate=unspecified) as server:
        outcome = run_lkice(
            ["run", server.turn_uri("udp"), "-u", "alice", "-p", "pw", "--json",
             "--quality-duration", "0"],
            timeout=60,
        )  # fmt: skip
    check = Checks(outcome, "redirect_unusable")
    paths = (outcome.report or {}).get("paths") or []
    check.that(len(paths) == 1, f"{len(paths)} paths: the redirect was followed")
    error = (paths[0].get("error") if paths else None) or {}
    check.that(error.get("kind") == "protocol", f"error kind {error.get('kind')!r}")
    check.that("not followed" in str(error.get("message")), f"message {error.get('message')!r}")
    check.that("silently drops" not in _findings_text(outcome.report or {}), "firewall blamed")
    check.clean(secrets=["pw"])
    check.done()
