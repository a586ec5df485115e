"""LiveKit's own browser connection test (livekit-client 2.23.0's ``ConnectionCheck``) in headless
Chromium, as the client of the network lab, against the lab LiveKit server: what LiveKit's own
test says of the lab, next to what lkice says (tests/bench/connection_check.py).

The lab tests need root, Chromium, playwright and the npm install of livekit-client
(tests/support/connection_check.py, cached); they skip saying which is missing. The pure tests
check the harness itself (the pin, the page server, the pair classification).

Every check is expected to pass: the lab SFU is pion/webrtc (LiveKit's media stack), with
resume, simulcast, transport-cc and the switch of candidate protocol the checks rely on.
"""

from __future__ import annotations

import functools
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lkice.lab.netlab import NetLab, prerequisites
from tests.support import connection_check as cc

API_KEY = "APIlkicecc"
MISSING = prerequisites()

# -- pure: the harness ----------------------------------------------------------------------------


def test_livekit_client_is_pinned_exactly() -> None:
    package = json.loads((cc.PAGE_DIR / "package.json").read_text())
    assert package["dependencies"] == {"livekit-client": cc.LIVEKIT_CLIENT}
    lock = json.loads((cc.PAGE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/livekit-client"]["version"] == cc.LIVEKIT_CLIENT
    assert not (cc.PAGE_DIR / "node_modules").exists()  # installed into the cache, not the tree


def test_page_server_serves_the_page_and_modules_only(tmp_path: Path) -> None:
    modules = tmp_path / "node_modules"
    (modules / "pkg").mkdir(parents=True)
    (modules / "pkg" / "x.mjs").write_text("export const x = 1;\n")
    (tmp_path / "secret.txt").write_text("not served\n")
    with cc.serve(cc.PAGE_DIR, modules) as origin:
        assert origin.startswith("http://127.0.0.1:")
        get = functools.partial(urllib.request.urlopen, timeout=5)
        with get(origin + "/check.mjs") as r:
            assert r.headers["Content-Type"] == "text/javascript"  # module scripts need it
        with get(origin + "/node_modules/pkg/x.mjs") as r:
            assert r.read() == b"export const x = 1;\n"
        for outside in ("/node_modules/../secret.txt", "/node_modules/%2e%2e/secret.txt"):
            with pytest.raises(urllib.error.HTTPError) as err:
                get(origin + outside)
            assert err.value.code == 404
            err.value.close()  # the error holds the response's socket


def test_pairs_are_classified_by_the_clients_leg() -> None:
    def pair(local: dict[str, Any]) -> dict[str, Any]:
        remote = {"type": "host", "protocol": "udp", "address": "198.19.0.4", "port": 1}
        return {"local": local, "remote": remote}

    assert cc.path_of(pair({"type": "host", "protocol": "udp"})) == "udp"
    assert cc.path_of(pair({"type": "prflx", "protocol": "tcp"})) == "ice/tcp"
    assert cc.path_of(pair({"type": "relay", "protocol": "udp", "relay_protocol": "tls"})) == (
        "turn/tls"
    )
    shown = cc.describe_pair(pair({"type": "relay", "relay_protocol": "tcp", "address": "a"}))
    assert shown.startswith("turn/tcp a:None -> host/udp 198.19.0.4:1")


# -- in the lab ---------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., None])


def in_lab(func: F) -> F:
    """Root (namespaces), servers (coturn, the lab LiveKit) and Chromium."""
    skip = pytest.mark.skipif(
        bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)
    )
    for mark in (skip, pytest.mark.chromium, pytest.mark.servers, pytest.mark.root):
        func = mark(func)
    return func


def run_in_lab(profile: str) -> Iterator[dict[str, Any]]:
    """One lab, one full ConnectionCheck run; the results with the lab's addresses and the lab
    LiveKit's log (secrets masked)."""
    reason = cc.unavailable_reason()  # installs livekit-client on first use (cached)
    if reason is not None:
        pytest.skip(f"LiveKit ConnectionCheck unavailable: {reason}")
    api_secret = secrets.token_urlsafe(32)
    from livekit import api

    token = (
        api.AccessToken(API_KEY, api_secret)
        .with_identity("connection-check")
        .with_grants(api.VideoGrants(room_join=True, room="connection-check"))
        .to_jwt()
    )
    with NetLab(regions=("eu",), profile=profile) as lab:
        url = lab.start_livekit("eu", API_KEY, api_secret)
        results = cc.run_connection_check(lab, url, token, secrets=[api_secret])
        results["lab"] = {"turn_ip": lab.server_ip("eu"), "sfu_ip": lab.signal_ip("eu")}
        results["livekit_log"] = cc.livekit_log(lab, "eu", [api_secret, token])
    text = json.dumps(results)
    assert token not in text
    assert api_secret not in text
    yield results


@pytest.fixture(scope="module")
def open_results() -> Iterator[dict[str, Any]]:
    yield from run_in_lab("open")


@pytest.fixture(scope="module")
def udp_blocked_results() -> Iterator[dict[str, Any]]:
    yield from run_in_lab("udp-blocked")


def explain(results: dict[str, Any], name: str) -> str:
    """A failing check's logs, its SDK warnings and the server's log, for the assertion."""
    check = cc.by_name(results).get(name, {})
    sdk = [e for e in results.get("sdk_logs", []) if e.get("check") == name]
    return json.dumps(
        {"check": check, "sdk_logs": sdk, "livekit_log": results.get("livekit_log", "")[-2000:]},
        indent=1,
    )


def assert_passed(results: dict[str, Any], name: str) -> dict[str, Any]:
    assert results["timed_out"] is False, explain(results, name)
    check = cc.by_name(results)[name]
    assert check["status"] == "SUCCESS", explain(results, name)
    assert not [log for log in check["logs"] if log["level"] == "error"], explain(results, name)
    return check


EVERY_CHECK = [name for name in cc.CHECKS if name != "cloudRegion"]  # LiveKit Cloud only


@in_lab
@pytest.mark.parametrize("name", EVERY_CHECK)
def test_open_every_check_passes(open_results: dict[str, Any], name: str) -> None:
    check = assert_passed(open_results, name)
    if name != "websocket":  # the others connect a Room: each had a selected pair
        assert cc.selected_pairs(check), explain(open_results, name)


@in_lab
@pytest.mark.parametrize("name", EVERY_CHECK)
def test_udp_blocked_every_check_passes_without_udp(
    udp_blocked_results: dict[str, Any], name: str
) -> None:
    check = assert_passed(udp_blocked_results, name)
    for pair in cc.selected_pairs(check):
        # UDP from the client is dropped: media goes by ICE/TCP to the SFU or a TURN relay
        # reached over TCP or TLS (the relay's own leg to the SFU may well be UDP).
        assert cc.path_of(pair) in ("ice/tcp", "turn/tcp", "turn/tls"), cc.describe_pair(pair)


@in_lab
def test_open_pairs_and_logs(open_results: dict[str, Any]) -> None:
    checks = cc.by_name(open_results)
    lab = open_results["lab"]
    assert open_results["livekit_client"] == cc.LIVEKIT_CLIENT
    assert checks["cloudRegion"]["status"] == "NOT_RUN"  # not LiveKit Cloud
    messages = [log["message"] for log in checks["websocket"]["logs"]]
    assert "Server is insecure, clients may block connections to it" in messages  # ws://
    # The SFU offers a public-looking UDP candidate and ICE/TCP (7881): no warning about either.
    webrtc = [log["message"] for log in checks["webrtc"]["logs"]]
    assert f"tcp {lab['sfu_ip']}:7881 host (passive)" in webrtc
    assert not [log for log in checks["webrtc"]["logs"] if log["level"] == "warning"]
    for pair in cc.selected_pairs(checks["webrtc"]):  # open network: straight UDP to the SFU
        assert cc.path_of(pair) == "udp", cc.describe_pair(pair)
        assert pair["remote"]["address"] == lab["sfu_ip"]
    # TURN: relay-only, through the region's TURN server; TURN/TLS is offered (no warning).
    assert not checks["turn"]["logs"], explain(open_results, "turn")
    turn_pairs = cc.selected_pairs(checks["turn"])
    assert turn_pairs, explain(open_results, "turn")
    for pair in turn_pairs:
        assert pair["local"]["type"] == "relay", cc.describe_pair(pair)
        assert pair["local"]["address"] == lab["turn_ip"]
    policies = {pc["ice_transport_policy"] for pc in checks["turn"]["peer_connections"]}
    assert policies == {"relay"}


@in_lab
def test_open_connection_protocol_really_tries_tcp(open_results: dict[str, Any]) -> None:
    # The check's second half asks the server (simulate switch_candidate_protocol) for TCP: a
    # server that honours it restarts ICE onto its ICE/TCP candidate.
    pairs = cc.selected_pairs(cc.by_name(open_results)["connectionProtocol"])
    paths = [cc.path_of(p) for p in pairs]
    shown = [cc.describe_pair(p) for p in pairs]
    assert "udp" in paths, shown
    assert "ice/tcp" in paths, shown


@in_lab
def test_udp_blocked_turn_goes_over_tcp_or_tls(udp_blocked_results: dict[str, Any]) -> None:
    checks = cc.by_name(udp_blocked_results)
    lab = udp_blocked_results["lab"]
    assert checks["websocket"]["status"] == "SUCCESS"
    turn = assert_passed(udp_blocked_results, "turn")
    pairs = cc.selected_pairs(turn)
    assert pairs, explain(udp_blocked_results, "turn")
    for pair in pairs:
        assert cc.path_of(pair) in ("turn/tcp", "turn/tls"), cc.describe_pair(pair)
        assert pair["local"]["address"] == lab["turn_ip"]
    webrtc = assert_passed(udp_blocked_results, "webrtc")
    for pair in cc.selected_pairs(webrtc):
        if cc.path_of(pair) == "ice/tcp":  # straight to the SFU's ICE/TCP port
            assert (pair["remote"]["address"], pair["remote"]["port"]) == (lab["sfu_ip"], 7881)
