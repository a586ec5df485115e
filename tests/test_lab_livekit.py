"""The lab's LiveKit stand-in (lkice.lab.livekit_server), checked against LiveKit's own behaviour:
HTTP status and reason texts, the join response, keepalive, participant updates, and data
packets between two participants of LiveKit's official client (``livekit.rtc``), directly and
relay-only through a real coturn.

The official client's ICE gathers on every non-loopback interface and answers from there, so
tests that let it reach ICE run in a private network namespace (``unshare --net``, root only)
whose only other interface is a veth pair with a lab address: this file re-runs itself there as
a script (see ``_client_scenarios``) and reports JSON. Everything else runs in-process on
loopback, where only signaling (WebSocket, HTTP) happens.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from livekit import api
from livekit import rtc as lkrtc
from livekit.protocol import models, rtc

from lkice.lab.coturn import turnserver_path
from lkice.lab.livekit_server import LabIceServer, LabLiveKit, LabRegion, encode_join_request
from lkice.lab.sfu_pion import pion_sfu_unavailable_reason
from lkice.lab.sfu_server import CandidateInit, SfuTransport, parse_candidate_init

KEY = "APIlabkey"
SECRET = "lab-secret-0123456789abcdef0123456789abcdef"
ROOM = "lab-room"
TURN_USER, TURN_PASSWORD = "lkuser", "lk-turn-password"
NS_ADDRESS = "198.18.200.1"  # the veth address inside the private namespace
WAIT = 10.0  # seconds: bound on any single wait in these tests


def token(
    identity: str,
    *,
    room: str = ROOM,
    key: str = KEY,
    secret: str = SECRET,
    ttl: datetime.timedelta | None = None,
    room_join: bool = True,
) -> str:
    grant = api.VideoGrants(room_join=room_join, room=room)
    minted = api.AccessToken(key, secret).with_identity(identity).with_grants(grant)
    if ttl is not None:
        minted = minted.with_ttl(ttl)
    return minted.to_jwt()


def lab(**overrides: Any) -> LabLiveKit:
    options: dict[str, Any] = {
        "api_key": KEY,
        "api_secret": SECRET,
        "ice_servers": [
            LabIceServer(["turn:127.0.0.1:3478?transport=udp"], TURN_USER, TURN_PASSWORD),
            LabIceServer(["turns:turn.lab.test:443?transport=tcp"], TURN_USER, TURN_PASSWORD),
        ],
        "region": "lab-eu",
    }
    options.update(overrides)
    return LabLiveKit(**options)


@pytest.fixture
async def lk() -> AsyncIterator[LabLiveKit]:
    async with lab(
        regions=[
            LabRegion("lab-eu", "ws://127.0.0.1:7880", 12),
            LabRegion("lab-us", "ws://127.0.0.2:7880", 6400),
        ],
        force_relay=True,
    ) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


async def receive(ws: aiohttp.ClientWebSocketResponse[Any]) -> rtc.SignalResponse:
    message = await ws.receive(timeout=WAIT)
    assert message.type == aiohttp.WSMsgType.BINARY, message
    response = rtc.SignalResponse()
    response.ParseFromString(message.data)
    return response


async def receive_until(ws: aiohttp.ClientWebSocketResponse[Any], kind: str) -> rtc.SignalResponse:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        response = await receive(ws)
        if response.WhichOneof("message") == kind:
            return response
    raise AssertionError(f"no {kind} within {WAIT} s")


async def send(ws: aiohttp.ClientWebSocketResponse[Any], request: rtc.SignalRequest) -> None:
    await ws.send_bytes(request.SerializeToString())


# -- HTTP: /rtc/validate, 401 reasons, 404, regions ----------------------------------------------


async def test_validate_accepts_query_and_bearer(
    lk: LabLiveKit, http: aiohttp.ClientSession
) -> None:
    jwt = token("alice")
    async with http.get(f"{lk.http_url}/rtc/validate", params={"access_token": jwt}) as res:
        assert (res.status, await res.text()) == (200, "success")
        assert res.headers["Access-Control-Allow-Origin"] == "*"
    headers = {"Authorization": f"Bearer {jwt}"}
    async with http.get(f"{lk.http_url}/rtc/validate", headers=headers) as res:
        assert (res.status, await res.text()) == (200, "success")
    join = encode_join_request(rtc.JoinRequest(metadata="m"))
    v1 = f"{lk.http_url}/rtc/v1/validate"
    async with http.get(v1, params={"join_request": join}, headers=headers) as res:
        assert (res.status, await res.text()) == (200, "success")
    async with http.get(v1, headers=headers) as res:
        assert (res.status, await res.text()) == (400, "join_request is required")


@pytest.mark.parametrize(
    ("jwt", "header", "status", "reason"),
    [
        pytest.param(
            token("alice", secret="not-" + SECRET),
            False,
            401,
            "invalid authorization token: token signature is invalid: signature is invalid",
            id="wrong-secret",
        ),
        pytest.param(
            token("alice", ttl=datetime.timedelta(minutes=-10)),
            True,
            401,
            "invalid authorization token: token has invalid claims: token is expired",
            id="expired",
        ),
        pytest.param(
            token("alice", key="APIother"), False, 401, "invalid API key", id="unknown-key"
        ),
        pytest.param("not.a.jwt", False, 401, "invalid authorization token", id="garbage"),
        pytest.param("", False, 401, "no permissions to access the room", id="no-token"),
        pytest.param(
            token("alice", room_join=False),
            False,
            401,
            "no permissions to access the room",
            id="no-room-join",
        ),
        pytest.param(
            pyjwt.encode(
                {
                    "iss": KEY,
                    "sub": "alice",
                    "exp": int(time.time()) + 600,
                    "video": {"roomJoin": True},
                },
                SECRET,
                algorithm="HS256",
            ),
            False,
            400,
            "no room name",
            id="no-room",
        ),
    ],
)
async def test_validate_rejects_like_livekit(
    lk: LabLiveKit, http: aiohttp.ClientSession, jwt: str, header: bool, status: int, reason: str
) -> None:
    kwargs: dict[str, Any] = (
        {"headers": {"Authorization": f"Bearer {jwt}"}}
        if header
        else {"params": {"access_token": jwt}}
    )
    async with http.get(f"{lk.http_url}/rtc/validate", **kwargs) as res:
        assert res.status == status
        assert await res.text() == reason
        assert SECRET not in await res.text()


async def test_malformed_authorization_header(lk: LabLiveKit, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    async with http.get(f"{lk.http_url}/rtc/validate", headers=headers) as res:
        assert res.status == 401
        assert await res.text() == "invalid authorization header. Must start with Bearer "


async def test_unsupported_paths_are_404(lk: LabLiveKit, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{lk.http_url}/rtc/v2/validate") as res:
        assert (res.status, await res.text()) == (404, "404 page not found\n")
    # /rtc without a WebSocket upgrade: the real server answers 404 too.
    async with http.get(f"{lk.http_url}/rtc", params={"access_token": token("a")}) as res:
        assert res.status == 404
    async with lab(v1=False) as old, http.get(f"{old.http_url}/rtc/v1/validate") as res:
        assert res.status == 404


async def test_websocket_with_bad_token_refused_with_reason(
    lk: LabLiveKit, http: aiohttp.ClientSession
) -> None:
    expired = token("alice", ttl=datetime.timedelta(minutes=-10))
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Authorization": f"Bearer {expired}",
    }
    async with http.get(f"{lk.http_url}/rtc", headers=upgrade) as res:
        assert res.status == 401
        assert "token is expired" in await res.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{lk.url}/rtc", params={"access_token": expired})
    assert refused.value.status == 401
    assert lk.stats.joins == 0


async def test_official_client_surfaces_the_reason(lk: LabLiveKit) -> None:
    """Signaling only (the join is refused before any ICE), so it runs in-process."""
    room = lkrtc.Room()
    expired = token("alice", ttl=datetime.timedelta(minutes=-10))
    with pytest.raises(lkrtc.ConnectError) as refused:
        await asyncio.wait_for(
            room.connect(lk.url, expired, lkrtc.RoomOptions(connect_timeout=3)), WAIT
        )
    assert "401" in refused.value.message
    assert "token is expired" in refused.value.message


async def test_region_settings(lk: LabLiveKit, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    async with http.get(f"{lk.http_url}/settings/regions", headers=headers) as res:
        assert res.status == 200
        assert res.content_type == "application/json"
        body = json.loads(await res.text())
    assert body == {
        "regions": [
            {"region": "lab-eu", "url": "ws://127.0.0.1:7880", "distance": "12"},
            {"region": "lab-us", "url": "ws://127.0.0.2:7880", "distance": "6400"},
        ]
    }
    async with http.get(f"{lk.http_url}/settings/regions") as res:
        assert res.status == 401
    async with (
        lab() as self_hosted,
        http.get(f"{self_hosted.http_url}/settings/regions", headers=headers) as res,
    ):
        assert res.status == 404


# -- signaling --------------------------------------------------------------------------------


async def test_join_response_and_subscriber_offer(
    lk: LabLiveKit, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
    try:
        first = await receive(ws)
        assert first.WhichOneof("message") == "join"
        join = first.join
        assert join.room.name == ROOM
        assert join.room.sid.startswith("RM_")
        assert join.participant.identity == "alice"
        assert join.participant.sid.startswith("PA_")
        assert list(join.other_participants) == []
        info = join.server_info
        assert info.region == "lab-eu"
        assert info.node_id.startswith("ND_")
        assert info.edition == models.ServerInfo.Cloud  # regions configured: a Cloud-like lab
        assert info.version
        assert info.protocol > 0
        assert [list(s.urls) for s in join.ice_servers] == [
            ["turn:127.0.0.1:3478?transport=udp"],
            ["turns:turn.lab.test:443?transport=tcp"],
        ]
        assert join.ice_servers[0].username == TURN_USER
        assert join.ice_servers[0].credential == TURN_PASSWORD
        assert join.client_configuration.force_relay == models.ClientConfigSetting.ENABLED
        assert (join.ping_interval, join.ping_timeout) == (5, 15)
        assert join.subscriber_primary

        # v0: the server offers the subscriber PeerConnection, candidates trickled apart.
        offer = await receive_until(ws, "offer")
        assert offer.offer.type == "offer"
        assert "m=application" in offer.offer.sdp
        assert "a=candidate" not in offer.offer.sdp
        trickle = await receive_until(ws, "trickle")
        assert trickle.trickle.target == rtc.SUBSCRIBER
        init = parse_candidate_init(trickle.trickle.candidateInit)
        assert init.candidate.startswith("candidate:")
        assert init.candidate.split()[4] == "127.0.0.1"  # only the lab's address is offered
        assert init.sdp_mid is not None
        assert init.sdp_mline_index == 0

        await send(ws, rtc.SignalRequest(leave=rtc.LeaveRequest()))
        closed = await ws.receive(timeout=WAIT)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await ws.close()
    assert lk.stats.joins == 1


def _ufrag(sdp: str) -> str:
    return next(
        line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith("a=ice-ufrag:")
    )


@pytest.mark.parametrize("media", ["aiortc", "pion"])
async def test_resume_after_the_signal_connection_drops(
    http: aiohttp.ClientSession, media: str
) -> None:
    """A client whose WebSocket dropped comes back with ``reconnect=1&sid=...``: the same
    participant answers with a ReconnectResponse (not a new join), and the server restarts the
    subscriber's ICE (pion: a new offer with new credentials), as LiveKit does."""
    if media == "pion" and pion_sfu_unavailable_reason() is not None:
        pytest.skip(str(pion_sfu_unavailable_reason()))
    async with lab(media=media) as lk:
        first = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        join = (await receive_until(first, "join")).join
        offer = (await receive_until(first, "offer")).offer
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await client.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await client.setLocalDescription(await client.createAnswer())
            answer = rtc.SessionDescription(
                type="answer", sdp=client.localDescription.sdp, id=offer.id
            )
            await send(first, rtc.SignalRequest(answer=answer))
            await asyncio.sleep(0.2)
        finally:
            await client.close()
        await first.close()  # no leave: the participant stays, waiting for a resume
        await asyncio.sleep(0.2)
        assert lk.rooms() == {ROOM: ["alice"]}
        params = {"access_token": token("alice"), "reconnect": "1", "sid": join.participant.sid}
        second = await http.ws_connect(f"{lk.url}/rtc", params=params)
        try:
            response = await receive(second)
            assert response.WhichOneof("message") == "reconnect"
            assert [list(s.urls) for s in response.reconnect.ice_servers] == [
                ["turn:127.0.0.1:3478?transport=udp"],
                ["turns:turn.lab.test:443?transport=tcp"],
            ]
            assert response.reconnect.server_info.node_id == lk.node_id
            if media == "pion":
                restart = (await receive_until(second, "offer")).offer
                assert restart.id > offer.id
                assert _ufrag(restart.sdp) != _ufrag(offer.sdp)
            assert (lk.stats.joins, lk.stats.resumes) == (1, 1)
            assert lk.session_sid("alice") == join.participant.sid
            await send(second, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
            assert (await receive_until(second, "pong_resp")).pong_resp.last_ping_timestamp == 5
        finally:
            await second.close()
        # A resume for a participant the server no longer has: a full reconnect is asked for.
        params["sid"] = "PA_unknown00000"
        third = await http.ws_connect(f"{lk.url}/rtc", params=params)
        try:
            leave = (await receive_until(third, "leave")).leave
            assert leave.action == rtc.LeaveRequest.RECONNECT
            assert leave.reason == models.STATE_MISMATCH
        finally:
            await third.close()


async def test_switch_candidate_protocol_holds_for_the_next_join(
    http: aiohttp.ClientSession,
) -> None:
    """LiveKit's connection test switches to TCP with a SimulateScenario and then reconnects
    in full: that next join of the identity is offered ICE/TCP candidates only."""
    async with lab(ice_tcp_port=0) as lk:

        async def candidates(ws: aiohttp.ClientWebSocketResponse[Any]) -> set[str]:
            await receive_until(ws, "offer")
            found: set[str] = set()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    response = await asyncio.wait_for(receive(ws), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                if response.WhichOneof("message") == "trickle":
                    found.add(
                        parse_candidate_init(response.trickle.candidateInit).candidate.split()[2]
                    )
            return found

        ws = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        try:
            assert await candidates(ws) == {"udp", "tcp"}
            await send(
                ws,
                rtc.SignalRequest(simulate=rtc.SimulateScenario(switch_candidate_protocol=rtc.TCP)),
            )
            await asyncio.sleep(0.1)
        finally:
            await ws.close()
        ws = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        try:
            assert await candidates(ws) == {"tcp"}
        finally:
            await ws.close()
        ws = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("bob")})
        try:
            assert await candidates(ws) == {"udp", "tcp"}  # only the identity that asked
        finally:
            await ws.close()


async def test_ping_pong_binary_and_json(lk: LabLiveKit, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    ws = await http.ws_connect(f"{lk.url}/rtc", headers=headers)
    try:
        await receive_until(ws, "join")
        await send(ws, rtc.SignalRequest(ping=1234))
        pong = await receive_until(ws, "pong")
        assert abs(pong.pong - time.time() * 1000) < 60_000
        await send(ws, rtc.SignalRequest(ping_req=rtc.Ping(timestamp=98765, rtt=7)))
        resp = (await receive_until(ws, "pong_resp")).pong_resp
        assert resp.last_ping_timestamp == 98765
        assert resp.timestamp > 0
        # A JSON text frame is answered in JSON (protojson field names).
        await ws.send_str(json.dumps({"pingReq": {"timestamp": "42"}}))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            message = await ws.receive(timeout=WAIT)
            if message.type == aiohttp.WSMsgType.TEXT and "pongResp" in message.data:
                assert json.loads(message.data)["pongResp"]["lastPingTimestamp"] == "42"
                break
        else:
            raise AssertionError("no JSON pong_resp")
    finally:
        await ws.close()
    assert lk.stats.pings == 3


async def test_participant_updates_and_duplicate_identity(
    lk: LabLiveKit, http: aiohttp.ClientSession
) -> None:
    alice = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
    bob = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("bob")})
    try:
        await receive_until(alice, "join")
        bob_join = (await receive_until(bob, "join")).join
        assert [p.identity for p in bob_join.other_participants] == ["alice"]
        update = (await receive_until(alice, "update")).update
        assert [(p.identity, p.state) for p in update.participants] == [
            ("bob", models.ParticipantInfo.JOINED)
        ]
        assert lk.rooms() == {ROOM: ["alice", "bob"]}

        # The same identity again: the first connection is told to leave, like LiveKit does.
        bob2 = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("bob")})
        try:
            leave = (await receive_until(bob, "leave")).leave
            assert leave.reason == models.DUPLICATE_IDENTITY
            await receive_until(bob2, "join")
        finally:
            await bob2.close()
        gone = (await receive_until(alice, "update")).update.participants[0]
        while gone.state != models.ParticipantInfo.DISCONNECTED:
            gone = (await receive_until(alice, "update")).update.participants[0]
        assert gone.identity == "bob"
    finally:
        await alice.close()
        await bob.close()


async def test_v1_join_request(lk: LabLiveKit, http: aiohttp.ClientSession) -> None:
    join_request = rtc.JoinRequest(
        connection_settings=rtc.ConnectionSettings(auto_subscribe=True),
        participant_attributes={"role": "probe"},
    )
    headers = {"Authorization": f"Bearer {token('alice')}"}
    params = {"join_request": encode_join_request(join_request)}
    ws = await http.ws_connect(f"{lk.url}/rtc/v1", params=params, headers=headers)
    try:
        join = (await receive_until(ws, "join")).join
        assert not join.subscriber_primary  # one PeerConnection: the client offers
        assert dict(join.participant.attributes) == {"role": "probe"}
    finally:
        await ws.close()
    async with lab(v1=False) as old:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{old.url}/rtc/v1", params=params, headers=headers)
        assert refused.value.status == 404  # what makes a client fall back to /rtc


async def test_reconnecting_alone_keeps_the_room(http: aiohttp.ClientSession) -> None:
    async with lab() as lk:
        first = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        second = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        try:
            await receive_until(first, "join")
            await receive_until(second, "join")
            assert (await receive_until(first, "leave")).leave.reason == models.DUPLICATE_IDENTITY
            assert lk.rooms() == {ROOM: ["alice"]}
        finally:
            await first.close()
            await second.close()


@pytest.mark.parametrize("media", ["aiortc", "pion"])
async def test_ice_tcp_candidate_and_listener(http: aiohttp.ClientSession, media: str) -> None:
    if media == "pion" and pion_sfu_unavailable_reason() is not None:
        pytest.skip(str(pion_sfu_unavailable_reason()))
    async with lab(ice_tcp_port=0, ice_udp=False, media=media) as lk:
        assert lk.media_plane == media
        assert lk.ice_tcp_port
        ws = await http.ws_connect(f"{lk.url}/rtc", params={"access_token": token("alice")})
        try:
            await receive_until(ws, "offer")
            trickle = (await receive_until(ws, "trickle")).trickle
            fields = parse_candidate_init(trickle.candidateInit).candidate.split()
            # foundation component transport priority address port typ host tcptype passive
            assert fields[2] == "tcp"
            assert fields[4:6] == ["127.0.0.1", str(lk.ice_tcp_port)]
            assert fields[-2:] == ["tcptype", "passive"]
            if media == "pion":
                return  # the rest is the aiortc listener's own bookkeeping
            # A connection whose first frame is not a check for a known session is dropped.
            for frame in (b"not stun", _binding_request("unknown:ufrag")):
                reader, writer = await asyncio.open_connection("127.0.0.1", lk.ice_tcp_port)
                try:
                    writer.write(len(frame).to_bytes(2, "big") + frame)
                    assert await asyncio.wait_for(reader.read(), WAIT) == b""
                finally:
                    writer.close()
                    await writer.wait_closed()
            assert lk.ice_tcp is not None
            assert lk.ice_tcp.accepted == 0
        finally:
            await ws.close()


def _binding_request(username: str) -> bytes:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    return bytes(request)


def test_sync_api_runs_in_a_thread() -> None:
    with lab() as lk:
        assert lk.url.startswith("ws://127.0.0.1:")
        url = f"{lk.http_url}/rtc/validate?access_token={token('alice')}"
        with urllib.request.urlopen(url, timeout=WAIT) as res:  # noqa: S310 (loopback lab URL)
            assert res.read() == b"success"
        bad = f"{lk.http_url}/rtc/validate?access_token=x.y.z"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=WAIT)  # noqa: S310
        assert refused.value.code == 401
        refused.value.close()
    lk.stop_thread()  # idempotent


async def test_remote_candidates_outside_the_lab_are_ignored() -> None:
    transport = SfuTransport(0, ["127.0.0.1"], [ipaddress.ip_network("127.0.0.0/8")])
    try:
        lines = {
            "candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host": False,
            "candidate:2 1 udp 2122260223 3f2a6c1e-peer.local 50001 typ host": False,
            "candidate:3 1 udp 2122260223 127.0.0.1 50002 typ host": True,
        }
        for line, allowed in lines.items():
            assert await transport.add_candidate(CandidateInit(line, "0", 0)) is allowed
        assert len(transport.ignored_candidates) == 2
    finally:
        await transport.close()


# -- the official client, in a private network namespace -----------------------------------------


def _can_unshare() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


@pytest.fixture(scope="module")
def client_results() -> dict[str, Any]:
    """Run every official-client scenario once, in one private namespace, and hand out the
    results; one subprocess keeps the client's start-up cost to once per module."""
    if not _can_unshare():
        pytest.skip("needs root: the official client runs in a private network namespace")
    process = subprocess.Popen(
        ["unshare", "--net", sys.executable, str(Path(__file__).resolve()), "scenarios"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=10)
        pytest.fail(f"official-client scenarios timed out: {err.decode(errors='replace')[-2000:]}")
    if process.returncode != 0:
        pytest.fail(
            f"official-client scenarios failed ({process.returncode}): "
            f"{err.decode(errors='replace')[-3000:]}"
        )
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    results: dict[str, Any] = json.loads(lines[-1])
    return results


def _check_delivery(result: dict[str, Any]) -> None:
    assert result.get("error") is None, result.get("error")
    assert result["received"] == [
        {"data": "reliable hello", "kind": "reliable", "from": "alice"},
        {"data": "lossy hello", "kind": "lossy", "from": "alice"},
    ]
    assert result["remote_participants"] == ["alice"]
    assert result["elapsed"] < WAIT


@pytest.mark.root
@pytest.mark.parametrize("scenario", ["v0-direct", "v1-direct"])
def test_official_client_data_direct(client_results: dict[str, Any], scenario: str) -> None:
    result = client_results[scenario]
    _check_delivery(result)
    # ICE went straight to the SFU's UDP host candidate on the lab address.
    if result["media"] == "pion":
        # pion learns the client as peer-reflexive when its check beats the trickle (as on a
        # real LiveKit): the addresses say it was direct.
        assert len(result["server_pairs"]) >= 2  # v0: a subscriber each, a publisher for alice
        for pair in result["server_pairs"]:
            assert (pair["local_protocol"], pair["local_type"]) == ("udp", "host")
            assert pair["local_address"].startswith(NS_ADDRESS + ":")
            assert pair["remote_type"] in ("host", "prflx")
            assert pair["remote_address"].startswith(NS_ADDRESS + ":")
    else:
        assert {tuple(pair) for pair in result["server_selected"]} == {("udp", "host")}


@pytest.mark.root
@pytest.mark.parametrize(
    ("scenario", "paths"),
    [
        ("v0-direct", {"/rtc": 2}),
        ("v1-direct", {"/rtc/v1": 2}),
        ("v1-absent", {"/rtc": 2}),  # the client fell back to v0 on the 404
    ],
)
def test_official_client_signal_path(
    client_results: dict[str, Any], scenario: str, paths: dict[str, int]
) -> None:
    result = client_results[scenario]
    _check_delivery(result)
    assert result["paths"] == paths


@pytest.mark.root
@pytest.mark.parametrize("scenario", ["v0-relay", "v1-force-relay"])
def test_official_client_data_relay_only(client_results: dict[str, Any], scenario: str) -> None:
    if client_results.get(scenario) is None:
        pytest.skip("coturn (turnserver) is not installed: apt-get install coturn")
    result = client_results[scenario]
    _check_delivery(result)
    # Every nominated pair's remote end was a coturn relay address: the lab's TURN was used.
    assert result["server_selected"]
    if result["media"] == "pion":
        assert len(result["server_pairs"]) >= 2  # v0: a subscriber each, a publisher for alice
        for pair in result["server_pairs"]:
            assert pair["remote_type"] in ("relay", "prflx")
            # coturn relays from 127.0.0.1: the client itself is at NS_ADDRESS.
            assert pair["remote_address"].startswith("127.0.0.1:")
    else:
        assert {tuple(pair) for pair in result["server_selected"]} == {("udp", "relay")}


@pytest.mark.root
@pytest.mark.parametrize("scenario", ["v0-ice-tcp", "v1-ice-tcp"])
def test_official_client_data_over_ice_tcp(client_results: dict[str, Any], scenario: str) -> None:
    """RFC 6544: the client connects to the SFU's passive TCP candidate (LiveKit's 7881) and
    ICE checks, DTLS and SCTP all travel in RFC 4571 frames on it."""
    result = client_results[scenario]
    _check_delivery(result)
    assert result["server_selected"]
    assert {pair[0] for pair in result["server_selected"]} == {"tcp"}
    if result["media"] == "pion":
        assert {p["local_type"] for p in result["server_pairs"]} == {"host"}
    else:
        assert result["ice_tcp_accepted"] >= len(result["server_selected"])


@pytest.mark.root
@pytest.mark.parametrize("scenario", ["v0-media", "v1-media"])
def test_official_client_media_is_forwarded(client_results: dict[str, Any], scenario: str) -> None:
    """pion forwards alice's audio and her simulcast video to bob, who is subscribed by the
    SFU (dual PeerConnections: a subscriber offer; one PeerConnection: the client's next
    offer, asked for with a MediaSectionsRequirement)."""
    if scenario not in client_results:
        pytest.skip(str(pion_sfu_unavailable_reason()))
    result = client_results[scenario]
    assert result.get("error") is None, result.get("error")
    assert result["subscribed"] == ["audio", "video"]
    assert result["published"] == [lkrtc.TrackKind.KIND_AUDIO, lkrtc.TrackKind.KIND_VIDEO]
    assert result["received"]["audio"] > 100
    assert result["loud_audio_frames"] > 0  # the tone itself arrived, not only silence
    assert result["received"]["video"] > 10
    assert result["stats"]["rtp_out"] > 0


# -- scenario runner (inside the private namespace) -----------------------------------------------


def _setup_namespace() -> None:
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "lkv0", "type", "veth", "peer", "name", "lkv1"],
        ["ip", "addr", "add", f"{NS_ADDRESS}/24", "dev", "lkv0"],
        ["ip", "link", "set", "lkv0", "up"],
        ["ip", "link", "set", "lkv1", "up"],
    ):
        subprocess.run(argv, check=True, timeout=10)


async def _scenario(
    name: str,
    single_pc: bool | None,
    relay: str | None,
    turn: LabIceServer | None,
    **lab_options: Any,
) -> dict[str, Any]:
    """alice publishes one reliable and one lossy packet; bob must receive both."""
    rtc_config = None
    if relay == "client":
        rtc_config = lkrtc.RtcConfiguration(
            ice_transport_type=lkrtc.IceTransportType.TRANSPORT_RELAY
        )
    options = lkrtc.RoomOptions(
        single_peer_connection=single_pc, connect_timeout=5, rtc_config=rtc_config
    )
    server = lab(
        ice_servers=[turn] if turn is not None else [],
        ice_addresses=[NS_ADDRESS],
        force_relay=relay == "server",
        **lab_options,
    )
    result: dict[str, Any] = {"scenario": name}
    async with server:
        alice, bob = lkrtc.Room(), lkrtc.Room()
        received: asyncio.Queue[lkrtc.DataPacket] = asyncio.Queue()
        bob.on("data_received", received.put_nowait)
        started = time.monotonic()
        try:
            await asyncio.wait_for(alice.connect(server.url, token("alice"), options), WAIT)
            await asyncio.wait_for(bob.connect(server.url, token("bob"), options), WAIT)
            result["remote_participants"] = sorted(bob.remote_participants)
            await alice.local_participant.publish_data(b"reliable hello", reliable=True)
            packets = [await asyncio.wait_for(received.get(), WAIT)]
            await alice.local_participant.publish_data(b"lossy hello", reliable=False)
            packets.append(await asyncio.wait_for(received.get(), WAIT))
            result["elapsed"] = time.monotonic() - started
            result["received"] = [
                {
                    "data": p.data.decode(),
                    "kind": "reliable" if p.kind == lkrtc.DataPacketKind.KIND_RELIABLE else "lossy",
                    "from": p.participant.identity if p.participant else None,
                }
                for p in packets
            ]
            result["server_selected"] = [
                list(pair) for who in ("alice", "bob") for pair in server.selected_pairs(who)
            ]
            result["ice_tcp_accepted"] = server.ice_tcp.accepted if server.ice_tcp else 0
            result["media"] = server.media_plane
            result["server_pairs"] = [
                p for who in ("alice", "bob") for p in server.pair_details(who)
            ]
            result["paths"] = server.stats.paths
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await alice.disconnect()
            await bob.disconnect()
    return result


async def _media_scenario(name: str, single_pc: bool) -> dict[str, Any]:
    """alice publishes a microphone track (a 440 Hz tone) and a camera track (simulcast, the
    client's default); bob is subscribed by the SFU and counts what he receives."""
    import math

    options = lkrtc.RoomOptions(single_peer_connection=single_pc, connect_timeout=5)
    server = lab(ice_servers=[], ice_addresses=[NS_ADDRESS])
    result: dict[str, Any] = {"scenario": name, "media": server.media_plane}
    async with server:
        alice, bob = lkrtc.Room(), lkrtc.Room()
        counts = {"audio": 0, "video": 0}
        loud = {"audio": 0}
        subscribed: list[str] = []
        tasks: list[asyncio.Task[None]] = []

        async def count(track: lkrtc.Track, kind: str) -> None:
            stream: Any = lkrtc.AudioStream(track) if kind == "audio" else lkrtc.VideoStream(track)
            async for event in stream:
                counts[kind] += 1
                if kind == "audio" and max(event.frame.data, default=0) > 1000:
                    loud["audio"] += 1

        def on_subscribed(track: lkrtc.Track, *_: Any) -> None:
            kind = "audio" if track.kind == lkrtc.TrackKind.KIND_AUDIO else "video"
            subscribed.append(kind)
            tasks.append(asyncio.create_task(count(track, kind)))

        bob.on("track_subscribed", on_subscribed)
        try:
            await asyncio.wait_for(alice.connect(server.url, token("alice"), options), WAIT)
            await asyncio.wait_for(bob.connect(server.url, token("bob"), options), WAIT)
            audio = lkrtc.AudioSource(48000, 1)
            video = lkrtc.VideoSource(640, 360)
            await alice.local_participant.publish_track(
                lkrtc.LocalAudioTrack.create_audio_track("mic", audio),
                lkrtc.TrackPublishOptions(source=lkrtc.TrackSource.SOURCE_MICROPHONE),
            )
            await alice.local_participant.publish_track(
                lkrtc.LocalVideoTrack.create_video_track("cam", video),
                lkrtc.TrackPublishOptions(source=lkrtc.TrackSource.SOURCE_CAMERA, simulcast=True),
            )
            frame = bytes([0x40, 0x80, 0xC0, 0xFF]) * (640 * 360)
            tone = [int(8000 * math.sin(2 * math.pi * 440 * i / 48000)) for i in range(480)]
            samples = b"".join(v.to_bytes(2, "little", signed=True) for v in tone)
            deadline = time.monotonic() + WAIT
            # Bounded in count and time: 10 ms of audio and a video frame every ~33 ms.
            for i in range(1500):
                if time.monotonic() > deadline or (counts["audio"] > 100 and counts["video"] > 10):
                    break
                audio_frame = lkrtc.AudioFrame.create(48000, 1, 480)
                memoryview(audio_frame.data).cast("B")[:] = samples
                await audio.capture_frame(audio_frame)
                if i % 3 == 0:
                    video.capture_frame(
                        lkrtc.VideoFrame(640, 360, lkrtc.VideoBufferType.RGBA, frame)
                    )
            result["subscribed"] = sorted(subscribed)
            result["received"] = dict(counts)
            result["loud_audio_frames"] = loud["audio"]
            result["published"] = sorted(
                t.kind
                for p in bob.remote_participants.values()
                for t in p.track_publications.values()
            )
            assert server.media is not None
            result["stats"] = await server.media.stats()
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await alice.disconnect()
            await bob.disconnect()
    return result


async def _scenarios() -> dict[str, Any]:
    from lkice.lab.coturn import Coturn, CoturnConfig

    results: dict[str, Any] = {}
    results["v0-direct"] = await _scenario("v0-direct", False, None, None)
    results["v1-direct"] = await _scenario("v1-direct", True, None, None)
    # The client's default (v1 first) against a server without /rtc/v1: 404, then /rtc.
    results["v1-absent"] = await _scenario("v1-absent", None, None, None, v1=False)
    if pion_sfu_unavailable_reason() is None:
        results["v0-media"] = await _media_scenario("v0-media", False)
        results["v1-media"] = await _media_scenario("v1-media", True)
    # UDP to the SFU "blocked": only the passive ICE/TCP candidate is offered.
    for name, single_pc in (("v0-ice-tcp", False), ("v1-ice-tcp", True)):
        results[name] = await _scenario(name, single_pc, None, None, ice_tcp_port=0, ice_udp=False)
    if turnserver_path() is not None:
        with Coturn(CoturnConfig(users={TURN_USER: TURN_PASSWORD})) as turn:
            ice = LabIceServer(
                [f"turn:127.0.0.1:{turn.port}?transport=udp"], TURN_USER, TURN_PASSWORD
            )
            results["v0-relay"] = await _scenario("v0-relay", False, "client", ice)
            results["v1-force-relay"] = await _scenario("v1-force-relay", True, "server", ice)
    return results


if __name__ == "__main__" and sys.argv[1:] == ["scenarios"]:
    _setup_namespace()
    print(json.dumps(asyncio.run(_scenarios())), flush=True)
