"""Full WebRTC sessions to the SFU (lkice.probe.sfu) against the lab's LiveKit stand-in and a
real coturn: the direct path, forced-relay paths over TURN/UDP and TURN/TCP, and a TURN server
that refuses the credentials.

aioice gathers host candidates on every interface except 127.0.0.1, while the lab's SFU only
talks to loopback: the agent's gathering is pointed at 127.0.0.1 here (``monkeypatch``), so
every packet stays on loopback.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

import aioice.ice
import pytest

from lkice.credentials import Secret, TurnCredentials
from lkice.errors import ErrorKind, ProbeError
from lkice.lab.livekit_server import LabLiveKit
from lkice.lab.pki import LabPki
from lkice.livekit import parse_livekit_url
from lkice.probe.icetcp import IceCredentials, check_ice_tcp, ice_credentials
from lkice.probe.sfu import GivenTokens, SfuSettings, probe_sfu_paths, room_token_factory
from lkice.probe.signal import IceServer
from lkice.uri import IceUri, parse_ice_uri
from tests.conftest import TurnLab

KEY = "APIsfukey"
SECRET = "sfu-secret-0123456789abcdef0123456789abcdef"
SETTINGS = SfuSettings(duration=1.0, ice_timeout=10.0)


@pytest.fixture(autouse=True)
def loopback_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def creds(turn: TurnLab, password: str | None = None) -> TurnCredentials:
    return TurnCredentials(Secret(turn.user), Secret(password or turn.password))


def check_ok(result: dict[str, Any]) -> None:
    assert result["ok"], result["error"]
    assert result["kind"] == "sfu"
    timings = result["timings_ms"]
    assert isinstance(timings, dict)
    assert 0 < timings["ice"] <= timings["dtls"] < 10_000
    quality = result["quality"]
    assert isinstance(quality, dict)
    assert quality["samples"] > 0
    assert quality["received"] == quality["samples"]
    assert quality["loss"] == 0
    assert result["notes"]


async def test_direct_path() -> None:
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        url = parse_livekit_url(lk.url)
        results = await probe_sfu_paths(url, room_token_factory(KEY, Secret(SECRET)), [], SETTINGS)
        assert lk.stats.joins == 2
        assert lk.stats.data_forwarded > 0
    assert len(results) == 1
    result = results[0].to_dict()
    check_ok(result)
    assert (result["transport"], result["uri"], result["server"]) == ("udp", lk.url, url.server)
    assert result["quality"]["samples"] == 50


async def test_relay_paths_through_coturn(coturn: TurnLab) -> None:
    port, good = coturn.port, creds(coturn)
    servers = [
        IceServer(parse_ice_uri(f"turn:127.0.0.1:{port}?transport=udp"), good),
        IceServer(parse_ice_uri(f"turn:127.0.0.1:{port}?transport=tcp"), good),
        IceServer(parse_ice_uri(f"turn:127.0.0.1:{port}"), creds(coturn, "wrong-password")),
        # No --ca-file: aiortc verifies TURN/TLS against the system store, without the lab CA.
        IceServer(parse_ice_uri(f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"), good),
        # TURN over DTLS (lkice's URI parser refuses it; a server may still advertise it).
        IceServer(IceUri("turns", "127.0.0.1", port, "udp"), good),
        IceServer(parse_ice_uri(f"stun:127.0.0.1:{port}"), None),  # not a relay: no path
    ]
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url), room_token_factory(KEY, Secret(SECRET)), servers, SETTINGS
        )
    found = [r.to_dict() for r in results]
    for result in found:
        validate_report_path(result)
    assert [(r["transport"], r["uri"]) for r in found] == [
        ("udp", lk.url),
        ("udp", f"turn:127.0.0.1:{port}?transport=udp"),
        ("tcp", f"turn:127.0.0.1:{port}?transport=tcp"),
        ("udp", f"turn:127.0.0.1:{port}"),
        ("tls", f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"),
        ("udp", f"turns:127.0.0.1:{port}?transport=udp"),
    ]
    for result in found[:3]:
        check_ok(result)
    assert found[0]["relayed_address"] is None
    for result in found[1:3]:  # relay only: the session's candidate was coturn's relay
        assert str(result["relayed_address"]).startswith("127.0.0.1:")
    wrong = found[3]
    assert not wrong["ok"]
    assert wrong["error"]["kind"] == "auth_rejected"
    assert "401" in wrong["error"]["message"]
    assert wrong["quality"] is None
    tls = found[4]
    assert not tls["ok"]
    assert tls["error"]["kind"] == "tls_verify"
    skipped = found[5]
    assert not skipped["ok"]
    assert "not tested" in skipped["error"]["message"]


async def test_ice_tcp_candidate_answers_the_sessions_check() -> None:
    """The SFU offers UDP and a passive TCP candidate (LiveKit's 7881): the direct session is
    made over UDP, and the TCP candidate answers a STUN check carrying the session's ICE
    credentials; it is reported as its own path, saying what was not tested."""
    async with LabLiveKit(api_key=KEY, api_secret=SECRET, ice_tcp_port=0) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url), room_token_factory(KEY, Secret(SECRET)), [], SETTINGS
        )
        assert await lk.ice_tcp_accepted() == 1  # the check reached the SFU's session
        port = lk.ice_tcp_port
    assert len(results) == 2
    direct, tcp = (r.to_dict() for r in results)
    check_ok(direct)
    assert "1 ICE/TCP candidate(s)" in direct["notes"][0]
    assert tcp["ok"], tcp["error"]
    assert (tcp["kind"], tcp["transport"], tcp["relay"]) == ("sfu", "tcp", None)
    assert tcp["server"] == f"127.0.0.1:{port}"
    assert tcp["timings_ms"]["connect"] > 0
    assert tcp["timings_ms"]["binding"] > 0
    assert tcp["timings_ms"]["ice"] is None  # no ICE session over TCP: aiortc has no ICE-TCP
    assert str(tcp["mapped_address"]).startswith("127.0.0.1:")
    assert "were not tested" in tcp["notes"][0]


async def test_ice_tcp_only_when_udp_is_unusable() -> None:
    """An SFU that offers only ICE/TCP: the direct (UDP) session fails, the TCP check works."""
    settings = dataclasses.replace(SETTINGS, ice_timeout=3.0)
    async with LabLiveKit(api_key=KEY, api_secret=SECRET, ice_tcp_port=0, ice_udp=False) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url), room_token_factory(KEY, Secret(SECRET)), [], settings
        )
    direct, tcp = (r.to_dict() for r in results)
    assert not direct["ok"]
    assert direct["error"]["kind"] == "connect_timeout"
    assert tcp["ok"], tcp["error"]


async def test_ice_tcp_check_with_foreign_credentials_is_refused() -> None:
    """A check whose ufrag is not a session of this SFU is dropped, as LiveKit's TCP mux does:
    never reported as a working path."""
    async with LabLiveKit(api_key=KEY, api_secret=SECRET, ice_tcp_port=0) as lk:
        assert lk.ice_tcp_port is not None
        bogus = IceCredentials("ourufrag", "ourpassword0123456789", "nosuchufrag", "x" * 22)
        with pytest.raises(ProbeError) as caught:
            await check_ice_tcp(
                ("127.0.0.1", lk.ice_tcp_port), bogus, controlling=True, timeout=2.0
            )
    assert caught.value.kind in (ErrorKind.CONNECTION_CLOSED, ErrorKind.TCP_NO_RESPONSE)
    assert "ICE/TCP 127.0.0.1:" in caught.value.message


def test_ice_credentials_from_sdp() -> None:
    local = "v=0\r\na=ice-ufrag:LOC\r\na=ice-pwd:locpwd\r\n"
    remote = "v=0\r\na=ice-ufrag:REM\r\na=ice-pwd:rempwd\r\na=ice-ufrag:SECOND\r\n"
    creds = ice_credentials(local, remote)
    assert creds == IceCredentials("LOC", "locpwd", "REM", "rempwd")
    assert "pwd" not in repr(creds)
    assert ice_credentials(local, "v=0\r\n") is None


async def test_turns_relay_with_the_users_ca(coturn: TurnLab, pki: LabPki) -> None:
    """With --ca-file, aiortc's TURN client checks turns: against the user's CA: the session
    goes through TURN/TLS (above, without it, the same server fails verification)."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    settings = dataclasses.replace(SETTINGS, tls_context=context, custom_ca=True)
    uri = f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"
    servers = [IceServer(parse_ice_uri(uri), creds(coturn))]
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url), room_token_factory(KEY, Secret(SECRET)), servers, settings
        )
    relayed = results[1].to_dict()
    assert (relayed["transport"], relayed["relay"]) == ("tls", uri)
    check_ok(relayed)
    assert str(relayed["relayed_address"]).startswith("127.0.0.1:")


def validate_report_path(result: dict[str, Any]) -> None:
    """The report schema's path entry, but for what lkice.report/1 does not know yet: the
    "sfu" kind and the "ice"/"dtls" timings."""
    assert set(result["timings_ms"]) >= {"ice", "dtls"}
    assert result["transport"] in ("udp", "tcp", "tls")
    assert result["error"] is None or set(result["error"]) == {"kind", "message", "phase"}


async def test_bad_token_fails_cleanly() -> None:
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url),
            room_token_factory(KEY, Secret("not-the-secret-0123456789abcdef0123")),
            [],
            SETTINGS,
        )
    result = results[0].to_dict()
    assert not result["ok"]
    assert result["error"]["kind"] == "token_rejected"
    assert result["timings_ms"]["ice"] is None


async def test_echoes_the_agent_held_are_left_out_of_the_sfu_figures() -> None:
    """lkice's loop is blocked 60 ms of every 200 ms while the session runs (a busy agent):
    echoes read after such a block carry the block, not the network; they are left out of the
    SFU train's jitter (``excluded``), as on the TURN trains."""
    import asyncio
    import time

    async def busy() -> None:
        for _ in range(100):  # bounded: 20 s at most, cancelled when the session ends
            await asyncio.sleep(0.14)
            time.sleep(0.06)  # noqa: ASYNC251 - the point: the agent's loop is held

    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        url = parse_livekit_url(lk.url)
        blocker = asyncio.ensure_future(busy())
        try:
            results = await probe_sfu_paths(
                url, room_token_factory(KEY, Secret(SECRET)), [], SETTINGS
            )
        finally:
            blocker.cancel()
    result = results[0].to_dict()
    check_ok(result)
    assert result["quality"]["excluded"] > 0, result["quality"]


def check_ice_rtt(result: dict[str, Any]) -> None:
    """The selected pair's RTT from ICE checks: answered, and consistent."""
    rtt = result["sfu"]["ice_rtt"]
    assert rtt is not None, result["sfu"]
    assert rtt["sent"] == SETTINGS.ice_checks
    assert rtt["received"] > 0, rtt
    assert 0 < rtt["min_ms"] <= rtt["p50_ms"] <= rtt["max_ms"]


async def test_setup_only_is_one_data_round_trip_not_a_train() -> None:
    """duration 0 (--quality-duration 0): ICE, DTLS, the data channels and one data packet
    through the SFU and back; no quality train, so no quality figures."""
    settings = dataclasses.replace(SETTINGS, duration=0.0)
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        url = parse_livekit_url(lk.url)
        results = await probe_sfu_paths(url, room_token_factory(KEY, Secret(SECRET)), [], settings)
        assert lk.stats.joins == 2
        forwarded = lk.stats.data_forwarded
    result = results[0].to_dict()
    assert result["ok"], result["error"]
    assert result["quality"] is None
    session = result["sfu"]
    assert (session["participants"], session["channels_open"]) == (2, True)
    assert session["data_round_trip"] == "measured"
    assert session["data_rtt_ms"] > 0
    assert 2 <= forwarded < 2 * 100  # warm-up probes until the first echo: not a train
    check_ice_rtt(result)
    assert "one data packet" in result["notes"][0]


async def test_one_token_tests_every_path_with_one_participant(
    coturn: TurnLab, pki: LabPki
) -> None:
    """A single given token (--token): every path (direct UDP, ICE/TCP, TURN/UDP, TURN/TCP,
    TURN/TLS) gets ICE, DTLS and the data channels with one participant, one path after
    another (the token's identity can be in the room once); the selected pair's RTT comes from
    ICE checks; each session says the data round trip was not tested and what it needs."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    settings = dataclasses.replace(SETTINGS, tls_context=context, custom_ca=True)
    port, good = coturn.port, creds(coturn)
    servers = [
        IceServer(parse_ice_uri(f"turn:127.0.0.1:{port}?transport=udp"), good),
        IceServer(parse_ice_uri(f"turn:127.0.0.1:{port}?transport=tcp"), good),
        IceServer(parse_ice_uri(f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"), good),
    ]
    token = room_token_factory(KEY, Secret(SECRET), room="one-token")("the-user")
    async with LabLiveKit(api_key=KEY, api_secret=SECRET, ice_tcp_port=0) as lk:
        results = await probe_sfu_paths(
            parse_livekit_url(lk.url), GivenTokens(token), servers, settings
        )
        assert lk.stats.joins == 1 + len(servers)  # one participant per session
        assert lk.stats.data_forwarded == 0
    found = [r.to_dict() for r in results]
    assert [(r["transport"], r["relay"]) for r in found] == [
        ("udp", None),
        ("tcp", None),  # the ICE/TCP check, with the direct session's credentials
        *((("tls" if s.uri.secure else s.uri.transport), str(s.uri)) for s in servers),
    ]
    for result in found:
        assert result["ok"], result["error"]
    for result in (found[0], *found[2:]):
        session = result["sfu"]
        assert session["participants"] == 1
        assert session["channels_open"] is True
        assert session["data_round_trip"] == "not_tested"
        assert session["data_rtt_ms"] is None
        assert result["quality"] is None
        check_ice_rtt(result)
        assert any("needs a second participant" in n for n in result["notes"]), result["notes"]
        assert 0 < result["timings_ms"]["ice"] <= result["timings_ms"]["dtls"]
    for result in found[2:]:
        assert str(result["relayed_address"]).startswith("127.0.0.1:")
    assert found[1]["sfu"] is None  # an ICE/TCP check, not a session
    assert token.reveal() not in repr(found)


async def test_two_given_tokens_run_the_data_round_trip() -> None:
    """--token and --token2: two participants per path, the data round trip through the SFU
    measured as with minted tokens."""
    mint = room_token_factory(KEY, Secret(SECRET), room="two-tokens")
    tokens = GivenTokens(mint("first-user"), mint("second-user"))
    async with LabLiveKit(api_key=KEY, api_secret=SECRET) as lk:
        results = await probe_sfu_paths(parse_livekit_url(lk.url), tokens, [], SETTINGS)
        assert lk.stats.joins == 2
        assert lk.stats.data_forwarded > 0
    result = results[0].to_dict()
    check_ok(result)
    assert result["sfu"]["participants"] == 2
    assert result["sfu"]["data_round_trip"] == "measured"
    check_ice_rtt(result)


@pytest.mark.parametrize("v1", [True, False])
async def test_signaling_v1_first_then_v0(v1: bool) -> None:
    """As LiveKit's clients do: /rtc/v1 (one PeerConnection, the agent offers) first; a server
    without it answers 404 and the same path is made over /rtc, saying so."""
    async with LabLiveKit(api_key=KEY, api_secret=SECRET, v1=v1) as lk:
        url = parse_livekit_url(lk.url)
        results = await probe_sfu_paths(url, room_token_factory(KEY, Secret(SECRET)), [], SETTINGS)
        paths = dict(lk.stats.paths)
        rejected = dict(lk.stats.rejected)
    result = results[0].to_dict()
    check_ok(result)
    if v1:
        assert paths == {"/rtc/v1": 2}
        assert "signaling on /rtc/v1 (one PeerConnection" in result["notes"][0]
    else:
        assert paths == {"/rtc": 2}  # after a 404 each from /rtc/v1
        assert "signaling on /rtc (v0: the server has no /rtc/v1" in result["notes"][0]
    assert rejected == {}
