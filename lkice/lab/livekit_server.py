"""A protocol-faithful LiveKit stand-in for the lab: signaling, token checks, region settings and
a data-only SFU, so the agent (and LiveKit's own clients) can be tested end to end without a
LiveKit server binary.

What it serves, as LiveKit's server does (see ``shared/reference/livekit.md``):

- ``GET /rtc`` (protocol v0: a *subscriber* PeerConnection the server offers and a *publisher*
  PeerConnection the client offers) and ``GET /rtc/v1`` (one PeerConnection the client offers;
  the join request arrives as ``join_request`` = base64url(WrappedJoinRequest), gzip or not).
  WebSocket, one protobuf ``SignalRequest`` per client message and one ``SignalResponse`` per
  server message; JSON text frames are accepted and answered in kind. The first message is
  ``join``; then ``offer``/``answer``/``trickle``, ``ping``/``ping_req`` (answered with
  ``pong``/``pong_resp``), ``leave``; participant ``update`` messages on join/active/leave.
- ``GET /rtc/validate`` and ``/rtc/v1/validate``: 200 ``success``, or the real server's status
  and plain-text reason (401 ``invalid authorization token: token has invalid claims: token is
  expired``, 401 ``invalid API key``, 401 ``no permissions to access the room``, ...).
  A WebSocket upgrade that fails validation gets the same status and body, so a client's
  fallback to ``/validate`` (or the upgrade error itself) can show the reason. Unknown paths:
  404 ``404 page not found``, like Go's mux. Tokens come from ``access_token`` or
  ``Authorization: Bearer``, checked with :class:`livekit.api.TokenVerifier`.
- ``GET /settings/regions`` (LiveKit Cloud only; 404 when the lab has no ``regions``, like the
  open-source server): ``{"regions":[{"region":..,"url":..,"distance":"123"}]}`` (protojson,
  int64 as a string) for a valid bearer token.
- The SFU (:mod:`lkice.lab.sfu_server`, aiortc): data packets (``livekit.protocol.models.DataPacket``)
  published on a participant's ``_reliable``/``_lossy`` channels are forwarded to every other
  participant of the room (or the ``destination_identities``) over the SFU's own ``_reliable``/
  ``_lossy`` channels, with ``participant_sid``/``participant_identity`` asserted by the server
  as LiveKit does, so official clients raise ``data_received`` with the sender known.
- ICE/TCP (RFC 6544), opt-in (``ice_tcp_port``): one shared TCP port with a ``tcptype
  passive`` candidate per session, like LiveKit's ``rtc.tcp_port`` 7881; checks, DTLS and SCTP
  travel in RFC 4571 frames, so a client whose UDP is blocked (``ice_udp=False`` simulates it)
  really connects over TCP, as the official client does against the lab.

Both signaling protocols are served and tested with LiveKit's official Python client
(``livekit.rtc``, libwebrtc underneath): its default tries ``/rtc/v1`` (one PeerConnection)
and falls back to ``/rtc`` on a 404 (``v1=False`` makes the lab answer that 404);
``RoomOptions(single_peer_connection=False)`` goes to ``/rtc`` directly.

The SFU's ICE addresses (``ice_addresses``, default the listen host) are the only candidates it
offers, and it sends connectivity checks only into ``peer_networks`` (default: loopback plus the
ICE addresses) — checks from elsewhere are dropped unanswered, peer-reflexive ones included.
LiveKit's official clients (libwebrtc) never gather loopback and check from their non-loopback
address, so run them and the lab in a network namespace with a lab address (as the tests do).

Fidelity gaps: no media forwarding (``add_track`` is acknowledged, tracks are never routed), no
ICE restarts, resume or reconnect (``reconnect=1`` joins are treated as new joins), no built-in
TURN (the lab's coturn plays that part via ``ice_servers``), no room service API, no
``simulate`` (ignored), one node, no ``refresh_token``, no speaker/quality updates, data tracks
(``_data_track``) not routed. The ICE agent is aiortc's full ICE, where LiveKit's is ICE-lite by
default; the ICE/TCP candidate's peer is learnt as peer-reflexive (the client's active candidate
carries port 9), so the server-side pair reads ``("tcp", "prflx")``.

Usage, asynchronous (the server runs on the caller's loop)::

    async with LabLiveKit(api_key="devkey", api_secret=secret,
                          ice_servers=[LabIceServer(["turn:127.0.0.1:3478?transport=udp"],
                                                 "alice", password)]) as lk:
        connect_to(lk.url)            # "ws://127.0.0.1:PORT"

or synchronous, for the CLI and scripts (the server runs on its own loop in a daemon thread)::

    with LabLiveKit(api_key="devkey", api_secret=secret) as lk:
        ...

Secrets: the API secret, tokens and TURN credentials are never logged, and no access log is
kept (query strings carry tokens); error bodies carry only the reason text the real server
would send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import gzip
import ipaddress
import json
import logging
import secrets
import socket
import string
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.api import TokenVerifier
from livekit.api.access_token import Claims, VideoGrants
from livekit.protocol import models, rtc

from lkice.lab.server import LabError
from lkice.lab.sfu_server import (
    LOSSY_LABEL,
    RELIABLE_LABEL,
    IceTcpListener,
    IpNetwork,
    SfuTransport,
    parse_candidate_init,
)

__all__ = ["LabIceServer", "LabLiveKit", "LabRegion"]

log = logging.getLogger(__name__)

# The protocol version a current LiveKit server reports in ServerInfo.protocol.
SERVER_PROTOCOL = 16
DEFAULT_SERVER_VERSION = "1.9.1"
# Texts of the real server's errors (pkg/service/auth.go, pkg/rtc/errors.go, golang-jwt v5).
ERR_MISSING_AUTHORIZATION = "invalid authorization header. Must start with Bearer "
ERR_INVALID_TOKEN = "invalid authorization token"  # noqa: S105 (an error text)
ERR_INVALID_API_KEY = "invalid API key"
ERR_PERMISSION_DENIED = "no permissions to access the room"
ERR_NO_ROOM_NAME = "no room name"
ERR_IDENTITY_EMPTY = "identity cannot be empty"
ERR_NOT_FOUND = "404 page not found\n"
MAX_JOIN_REQUEST = 1 << 20  # bytes after decompression, like http.DefaultMaxHeaderBytes
MAX_SIGNAL_MESSAGE = 1 << 20
OUTGOING_QUEUE = 1024

_SID_ALPHABET = string.ascii_letters + string.digits


def _sid(prefix: str) -> str:
    """LiveKit-style ids (``PA_``, ``RM_``, ``TR_``, ``ND_`` + 12 base62 characters): the Rust
    client rejects a participant sid without its prefix."""
    return prefix + "".join(secrets.choice(_SID_ALPHABET) for _ in range(12))


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class LabIceServer:
    """One ``JoinResponse.ice_servers`` entry (the lab's coturn, typically)."""

    urls: Sequence[str]
    username: str = ""
    credential: str = field(default="", repr=False)

    def to_proto(self) -> rtc.ICEServer:
        return rtc.ICEServer(
            urls=list(self.urls), username=self.username, credential=self.credential
        )


@dataclass(frozen=True)
class LabRegion:
    """One entry of ``/settings/regions`` (LiveKit Cloud's region list)."""

    region: str
    url: str
    distance: int = 0


@dataclass
class LabStats:
    """What the lab saw, for tests and ``lkice demo`` ground truth."""

    joins: int = 0
    paths: dict[str, int] = field(default_factory=dict)  # "/rtc" or "/rtc/v1" -> joins
    rejected: dict[int, int] = field(default_factory=dict)
    data_forwarded: int = 0
    pings: int = 0

    def reject(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1


class _HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Grant:
    claims: Claims
    video: VideoGrants


@dataclass
class _JoinParams:
    room: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    video: VideoGrants
    single_pc: bool
    join_request: rtc.JoinRequest | None
    auto_subscribe: bool


def _flag(value: bool | None, default: bool = True) -> bool:
    """A grant left unset means allowed, as in LiveKit's ClaimGrants."""
    return default if value is None else value


def _bool_param(value: str | None) -> bool:
    return value in ("1", "true")


def _decode_join_request(param: str) -> rtc.JoinRequest:
    """``join_request`` of ``/rtc/v1``: base64url(WrappedJoinRequest), maybe gzip inside."""
    try:
        raw = base64.urlsafe_b64decode(param + "=" * (-len(param) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _HttpError(400, "cannot base64 decode wrapped join request") from exc
    wrapped = rtc.WrappedJoinRequest()
    try:
        wrapped.ParseFromString(raw)
    except DecodeError as exc:
        raise _HttpError(400, "cannot unmarshal wrapped join request") from exc
    body = wrapped.join_request
    if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, MAX_JOIN_REQUEST + 1)
        except zlib.error as exc:
            raise _HttpError(400, "cannot read decompressed join request") from exc
    if len(body) > MAX_JOIN_REQUEST:
        raise _HttpError(400, "join request too large")
    request = rtc.JoinRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise _HttpError(400, "cannot unmarshal join request") from exc
    return request


def encode_join_request(request: rtc.JoinRequest, compress: bool = True) -> str:
    """The ``join_request`` query value a v1 client sends (for tests and probes)."""
    body = request.SerializeToString()
    wrapped = rtc.WrappedJoinRequest(join_request=body)
    if compress:
        wrapped = rtc.WrappedJoinRequest(
            join_request=gzip.compress(body), compression=rtc.WrappedJoinRequest.GZIP
        )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()


class _Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sid = _sid("RM_")
        self.created = time.time()
        self.sessions: dict[str, _Session] = {}

    def info(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=300,
            departure_timeout=20,
            creation_time=int(self.created),
            creation_time_ms=int(self.created * 1000),
            num_participants=len(self.sessions),
        )

    def others(self, session: _Session) -> list[_Session]:
        return [s for s in self.sessions.values() if s is not session]

    def broadcast_update(self, session: _Session) -> None:
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[session.info()]))
        for other in self.others(session):
            other.send(update)


class _Session:
    """One participant: its signal WebSocket and its SFU PeerConnection(s)."""

    def __init__(
        self, lab: LabLiveKit, room: _Room, ws: web.WebSocketResponse, params: _JoinParams
    ) -> None:
        self.lab = lab
        self.room = room
        self.ws = ws
        self.params = params
        self.sid = _sid("PA_")
        self.identity = params.identity
        self.joined = time.time()
        self.state: models.ParticipantInfo.State = models.ParticipantInfo.JOINED
        self.version = 1
        self.json_mode = False
        self.closed = False
        self._outgoing: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue(OUTGOING_QUEUE)
        udp = lab.ice_addresses if lab.ice_udp else []
        self.publisher = SfuTransport(
            rtc.PUBLISHER,
            udp,
            lab.peer_networks,
            on_data=self._on_data,
            on_state=self._publisher_state,
            ice_tcp=lab.ice_tcp,
        )
        self.subscriber: SfuTransport | None = None
        if not params.single_pc:
            self.subscriber = SfuTransport(
                rtc.SUBSCRIBER,
                udp,
                lab.peer_networks,
                on_state=self._subscriber_state,
                ice_tcp=lab.ice_tcp,
            )

    # -- participant info -------------------------------------------------------------------

    @property
    def subscriber_primary(self) -> bool:
        return self.subscriber is not None and self.lab.subscriber_primary

    def info(self) -> models.ParticipantInfo:
        video = self.params.video
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.params.name,
            metadata=self.params.metadata,
            attributes=self.params.attributes,
            state=self.state,
            joined_at=int(self.joined),
            joined_at_ms=int(self.joined * 1000),
            version=self.version,
            kind=models.ParticipantInfo.STANDARD,
            region=self.lab.region,
            permission=models.ParticipantPermission(
                can_subscribe=_flag(video.can_subscribe),
                can_publish=_flag(video.can_publish),
                can_publish_data=_flag(video.can_publish_data),
                hidden=_flag(video.hidden, False),
            ),
        )

    def _set_state(self, state: models.ParticipantInfo.State) -> None:
        if self.state == state or self.closed:
            return
        self.state = state
        self.version += 1
        self.room.broadcast_update(self)

    def _publisher_state(self, state: str) -> None:
        if state == "connected" and not self.subscriber_primary:
            self._set_state(models.ParticipantInfo.ACTIVE)

    def _subscriber_state(self, state: str) -> None:
        if state == "connected" and self.subscriber_primary:
            self._set_state(models.ParticipantInfo.ACTIVE)

    def join_response(self) -> rtc.SignalResponse:
        lab = self.lab
        force_relay = (
            models.ClientConfigSetting.ENABLED
            if lab.force_relay
            else models.ClientConfigSetting.UNSET
        )
        join = rtc.JoinResponse(
            room=self.room.info(),
            participant=self.info(),
            other_participants=[s.info() for s in self.room.others(self)],
            server_version=lab.server_version,
            server_region=lab.region,
            ice_servers=[server.to_proto() for server in lab.ice_servers],
            subscriber_primary=self.subscriber_primary,
            client_configuration=models.ClientConfiguration(force_relay=force_relay),
            ping_timeout=lab.ping_timeout,
            ping_interval=lab.ping_interval,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Cloud if lab.cloud else models.ServerInfo.Standard,
                version=lab.server_version,
                protocol=SERVER_PROTOCOL,
                region=lab.region,
                node_id=lab.node_id,
            ),
        )
        return rtc.SignalResponse(join=join)

    # -- signal I/O -------------------------------------------------------------------------

    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        try:
            self._outgoing.put_nowait(response)
        except asyncio.QueueFull:
            log.warning("signal queue of %s full: closing", self.identity)
            self.lab._spawn(self.close())

    async def _write_loop(self) -> None:
        while True:
            response = await self._outgoing.get()
            if response is None:
                return
            try:
                if self.json_mode:
                    await self.ws.send_str(json_format.MessageToJson(response, indent=None))
                else:
                    await self.ws.send_bytes(response.SerializeToString())
            except (ConnectionError, RuntimeError):
                return

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            self.send(self.join_response())
            self.room.broadcast_update(self)
            if self.subscriber is not None:
                await self._offer_subscriber()
            request = self.params.join_request
            if request is not None and request.HasField("publisher_offer"):
                await self._on_offer(request.publisher_offer)
            await self._read_loop()
        finally:
            await self.close()
            with contextlib.suppress(asyncio.QueueFull):
                self._outgoing.put_nowait(None)
            try:
                await asyncio.wait_for(writer, timeout=2.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def _read_loop(self) -> None:
        timeout = float(self.lab.ping_timeout)
        while not self.closed:
            try:
                message = await self.ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                log.info(
                    "%s: no message within ping timeout (%g s): closing", self.identity, timeout
                )
                return
            if message.type == WSMsgType.BINARY:
                request = rtc.SignalRequest()
                try:
                    request.ParseFromString(message.data)
                except DecodeError:
                    log.debug("%s: undecodable signal message", self.identity)
                    continue
            elif message.type == WSMsgType.TEXT:
                request = rtc.SignalRequest()
                try:
                    json_format.Parse(message.data, request, ignore_unknown_fields=True)
                except json_format.ParseError:
                    log.debug("%s: undecodable JSON signal message", self.identity)
                    continue
                self.json_mode = True
            else:
                return  # close, closing, error
            try:
                if not await self._handle(request):
                    return
            except Exception:
                log.exception("%s: signal request failed", self.identity)

    async def _handle(self, request: rtc.SignalRequest) -> bool:
        """One client message; False ends the session."""
        kind = request.WhichOneof("message")
        if kind == "ping":
            self.lab.stats.pings += 1
            self.send(rtc.SignalResponse(pong=_now_ms()))
        elif kind == "ping_req":
            self.lab.stats.pings += 1
            self.send(
                rtc.SignalResponse(
                    pong_resp=rtc.Pong(
                        last_ping_timestamp=request.ping_req.timestamp, timestamp=_now_ms()
                    )
                )
            )
        elif kind == "offer":
            await self._on_offer(request.offer)
        elif kind == "answer":
            if self.subscriber is not None:
                await self.subscriber.accept_answer(request.answer.sdp)
        elif kind == "trickle":
            await self._on_trickle(request.trickle)
        elif kind == "add_track":
            add = request.add_track
            track = models.TrackInfo(sid=_sid("TR_"), name=add.name, type=add.type, muted=add.muted)
            self.send(
                rtc.SignalResponse(
                    track_published=rtc.TrackPublishedResponse(cid=add.cid, track=track)
                )
            )
        elif kind == "leave":
            return False
        else:
            log.debug("%s: ignoring %s", self.identity, kind)
        return True

    async def _offer_subscriber(self) -> None:
        assert self.subscriber is not None
        sdp, candidates = await self.subscriber.create_offer()
        self.send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1)))
        for candidate in candidates:
            self.send(
                rtc.SignalResponse(
                    trickle=rtc.TrickleRequest(
                        candidateInit=candidate.to_json(), target=rtc.SUBSCRIBER
                    )
                )
            )

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        sdp, candidates = await self.publisher.answer(offer.sdp)
        if self.subscriber is None:
            # Single PeerConnection: the SFU's own data channels live on the client's PC.
            self.publisher.open_sfu_channels()
        self.send(
            rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id))
        )
        for candidate in candidates:
            self.send(
                rtc.SignalResponse(
                    trickle=rtc.TrickleRequest(
                        candidateInit=candidate.to_json(), target=rtc.PUBLISHER
                    )
                )
            )

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = parse_candidate_init(trickle.candidateInit)
        except ValueError:
            log.debug("%s: undecodable trickle", self.identity)
            return
        if trickle.target == rtc.SUBSCRIBER and self.subscriber is not None:
            await self.subscriber.add_candidate(init)
        else:
            await self.publisher.add_candidate(init)

    # -- data -------------------------------------------------------------------------------

    def _on_data(self, label: str, payload: bytes) -> None:
        """A data packet the participant published: assert its sender and forward it, as the
        SFU does (participant.go onReceivedDataMessage, room.go BroadcastDataPacketForRoom)."""
        if label == RELIABLE_LABEL:
            kind = models.DataPacket.RELIABLE
        elif label == LOSSY_LABEL:
            kind = models.DataPacket.LOSSY
        else:
            return  # e.g. "_data_track": data tracks are not routed by the lab
        if self.closed or not _flag(self.params.video.can_publish_data):
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(payload)
        except DecodeError:
            log.debug("%s: undecodable data packet", self.identity)
            return
        hidden = _flag(self.params.video.hidden, False)
        packet.participant_sid = self.sid
        packet.kind = kind
        if packet.HasField("user"):
            user = packet.user
            user.participant_sid = "" if hidden else self.sid
            user.participant_identity = "" if hidden else self.identity
            if packet.destination_identities:
                del user.destination_identities[:]
                user.destination_identities.extend(packet.destination_identities)
            else:
                packet.destination_identities.extend(user.destination_identities)
        packet.participant_identity = "" if hidden else self.identity
        destinations = set(packet.destination_identities)
        destination_sids = set(packet.user.destination_sids) if packet.HasField("user") else set()
        data = packet.SerializeToString()
        for other in self.room.others(self):
            if (destinations or destination_sids) and not (
                other.identity in destinations or other.sid in destination_sids
            ):
                continue
            if other.deliver(label, data):
                self.lab.stats.data_forwarded += 1

    def deliver(self, label: str, data: bytes) -> bool:
        transport = self.subscriber if self.subscriber is not None else self.publisher
        return transport.send(label, data)

    # -- teardown ---------------------------------------------------------------------------

    async def leave(self, reason: models.DisconnectReason) -> None:
        """Server-initiated disconnect (duplicate identity, shutdown)."""
        self.send(
            rtc.SignalResponse(
                leave=rtc.LeaveRequest(
                    can_reconnect=False, reason=reason, action=rtc.LeaveRequest.DISCONNECT
                )
            )
        )
        with contextlib.suppress(asyncio.QueueFull):
            self._outgoing.put_nowait(None)
        await asyncio.sleep(0)
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.state = models.ParticipantInfo.DISCONNECTED
        self.version += 1
        if self.room.sessions.get(self.identity) is self:
            self.room.broadcast_update(self)
            del self.room.sessions[self.identity]
            if not self.room.sessions:
                self.lab._rooms.pop(self.room.name, None)
        self.closed = True
        self.lab._sessions.discard(self)
        await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        with contextlib.suppress(Exception):
            await self.ws.close()


class LabLiveKit:
    """The lab's LiveKit server. Construct, then ``async with`` (or ``await start()`` /
    ``await stop()``) on the caller's loop, or ``with`` / :meth:`start_in_thread` /
    :meth:`stop_thread` to run it on a private loop in a daemon thread (for the CLI).

    - ``api_key``/``api_secret``: the only key the lab accepts (as LiveKit's ``keys:``).
    - ``ice_servers``: ``JoinResponse.ice_servers`` verbatim (point them at the lab's coturn).
    - ``host``/``port``: the signaling listener (port 0: a free one; :attr:`url` tells).
    - ``region``: ``server_info.region``; ``regions`` enables ``/settings/regions`` and, unless
      ``cloud`` says otherwise, reports the Cloud edition.
    - ``force_relay``: ``client_configuration.force_relay`` (clients then use TURN only).
    - ``subscriber_primary``, ``ping_interval``/``ping_timeout`` (seconds, positive),
      ``server_version``: as in the join response.
    - ``v1=False``: ``/rtc/v1`` answers 404, like a server older than the single-PeerConnection
      protocol (clients fall back to ``/rtc``).
    - ``ice_addresses``: the only addresses the SFU offers as UDP candidates (default: the
      listen host); ``peer_networks``: the only networks it sends connectivity checks to or
      answers them from (default: loopback plus the ICE addresses).
    - ``ice_tcp_port``: also offer a passive ICE/TCP candidate on this shared port (0: a free
      one; :attr:`ice_tcp_port` tells), like LiveKit's 7881; ``ice_udp=False`` offers it alone.

    Observing it: :attr:`url`, :attr:`http_url`, :attr:`stats` (joins per path, rejections
    per status, data packets forwarded, pings), :meth:`rooms`, :meth:`selected_pairs`."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        ice_servers: Sequence[LabIceServer] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "lab",
        regions: Sequence[LabRegion] = (),
        force_relay: bool = False,
        subscriber_primary: bool = True,
        ping_interval: int = 5,
        ping_timeout: int = 15,
        server_version: str = DEFAULT_SERVER_VERSION,
        cloud: bool | None = None,
        v1: bool = True,
        ice_addresses: Sequence[str] | None = None,
        peer_networks: Sequence[str] | None = None,
        ice_tcp_port: int | None = None,
        ice_udp: bool = True,
    ) -> None:
        if ping_interval <= 0 or ping_timeout <= 0:
            # The Rust client builds a tokio interval from ping_interval: 0 would panic it.
            raise ValueError("ping_interval and ping_timeout must be positive")
        self.api_key = api_key
        self._verifier = TokenVerifier(api_key, api_secret)
        self.ice_servers = list(ice_servers)
        self.host = host
        self.port = port
        self.region = region
        self.regions = list(regions)
        self.force_relay = force_relay
        self.subscriber_primary = subscriber_primary
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.server_version = server_version
        self.cloud = bool(regions) if cloud is None else cloud
        self.v1 = v1
        self.node_id = _sid("ND_")
        listen = "127.0.0.1" if host == "localhost" else host
        self.ice_addresses = list(ice_addresses) if ice_addresses is not None else [listen]
        for address in self.ice_addresses:
            ipaddress.ip_address(address)  # ValueError for a name: candidates are IP literals
        nets = list(peer_networks) if peer_networks is not None else ["127.0.0.0/8", "::1/128"]
        if peer_networks is None:
            nets += [f"{a}/{ipaddress.ip_address(a).max_prefixlen}" for a in self.ice_addresses]
        self.peer_networks: list[IpNetwork] = [ipaddress.ip_network(n, strict=False) for n in nets]
        self.ice_tcp_port = ice_tcp_port
        self.ice_udp = ice_udp
        if not ice_udp and ice_tcp_port is None:
            raise ValueError("ice_udp=False needs an ice_tcp_port: the SFU would offer nothing")
        self.ice_tcp: IceTcpListener | None = None
        self.stats = LabStats()
        self._rooms: dict[str, _Room] = {}
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:]

    def rooms(self) -> dict[str, list[str]]:
        """Room name -> identities currently joined."""
        return {name: sorted(room.sessions) for name, room in self._rooms.items()}

    def selected_pairs(self, identity: str) -> list[tuple[str, str]]:
        """For each of ``identity``'s connected PeerConnections, the pair ICE nominated, as
        (local transport, remote candidate type): ``("udp", "relay")`` when the client came
        through TURN, ``("tcp", ...)`` over ICE/TCP."""
        for room in self._rooms.values():
            session = room.sessions.get(identity)
            if session is not None:
                pairs = session.publisher.selected_pairs()
                if session.subscriber is not None:
                    pairs += session.subscriber.selected_pairs()
                return pairs
        return []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> LabLiveKit:
        for address in self.ice_addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((address, 0))
                except OSError as exc:
                    raise LabError(f"cannot use ICE address {address}: {exc}") from exc
        if self.ice_tcp_port is not None:
            self.ice_tcp = await IceTcpListener(
                self.ice_addresses[0], self.ice_tcp_port, self.peer_networks
            ).start()
            self.ice_tcp_port = self.ice_tcp.port
        app = web.Application()
        app.router.add_route("*", "/rtc", self._rtc_v0)
        app.router.add_route("*", "/rtc/v1", self._rtc_v1)
        app.router.add_route("*", "/rtc/validate", self._validate_v0)
        app.router.add_route("*", "/rtc/v1/validate", self._validate_v1)
        app.router.add_route("*", "/settings/regions", self._regions)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # No access log: LiveKit URLs carry the access token in the query string.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            if self.ice_tcp is not None:
                await self.ice_tcp.close()
            raise
        self._runner = runner
        self._socket = sock
        log.info("lab LiveKit listening on %s", self.url)
        return self

    async def stop(self) -> None:
        for session in list(self._sessions):
            await session.leave(models.SERVER_SHUTDOWN)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.ice_tcp is not None:
            await self.ice_tcp.close()
            self.ice_tcp = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> LabLiveKit:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 15.0) -> LabLiveKit:
        """Run the server on its own event loop in a daemon thread; returns once it listens."""
        if self._thread is not None:
            raise LabError("the lab LiveKit is already running in a thread")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                # Whatever aiortc left running (its fire-and-forget connect tasks) ends here,
                # rather than being destroyed pending when the loop closes.
                leftovers = asyncio.all_tasks(loop)
                for task in leftovers:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="lkice-lab-livekit", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            self._thread_loop = None
            raise
        return self

    def stop_thread(self, timeout: float = 15.0) -> None:
        """Stop a server started with :meth:`start_in_thread` (idempotent)."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None
            self._thread_loop = None

    def __enter__(self) -> LabLiveKit:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- authentication ---------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> _Grant | None:
        """LiveKit's APIKeyAuthMiddleware: no token is not an error here (handlers decide),
        a bad one is a 401 with the real server's reason."""
        header = request.headers.get("Authorization")
        if header is not None and header != "":
            if not header.startswith("Bearer "):
                raise _HttpError(401, ERR_MISSING_AUTHORIZATION)
            token = header[len("Bearer ") :]
        else:
            token = request.query.get("access_token", "")
        if not token:
            return None
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _HttpError(401, ERR_INVALID_TOKEN) from exc
        if unverified.get("iss") != self.api_key:
            raise _HttpError(401, ERR_INVALID_API_KEY)
        try:
            claims = self._verifier.verify(token)
        except jwt.ExpiredSignatureError as exc:
            raise _HttpError(
                401, f"{ERR_INVALID_TOKEN}: token has invalid claims: token is expired"
            ) from exc
        except jwt.ImmatureSignatureError as exc:
            raise _HttpError(
                401, f"{ERR_INVALID_TOKEN}: token has invalid claims: token is not valid yet"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _HttpError(
                401,
                f"{ERR_INVALID_TOKEN}: token has invalid claims: token is missing required "
                f"claim: {exc.claim} claim is required",
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise _HttpError(
                401, f"{ERR_INVALID_TOKEN}: token signature is invalid: signature is invalid"
            ) from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _HttpError(401, f"{ERR_INVALID_TOKEN}: {exc}") from exc
        return _Grant(claims=claims, video=claims.video or VideoGrants())

    def _validate(self, request: web.Request, grant: _Grant | None, v1: bool) -> _JoinParams:
        """LiveKit's validateInternal + ValidateConnectRequest, minus room allocation."""
        if grant is None or grant.claims.video is None:
            raise _HttpError(401, ERR_PERMISSION_DENIED)
        join_request: rtc.JoinRequest | None = None
        param = request.query.get("join_request", "")
        if param:
            join_request = _decode_join_request(param)
        elif v1:
            raise _HttpError(400, "join_request is required")
        video = grant.video
        if not video.room_join:
            raise _HttpError(401, ERR_PERMISSION_DENIED)
        claims = grant.claims
        if not claims.identity:
            raise _HttpError(400, ERR_IDENTITY_EMPTY)
        room = video.room or ""
        if not room:
            raise _HttpError(400, ERR_NO_ROOM_NAME)
        metadata = claims.metadata
        attributes = dict(claims.attributes or {})
        auto_subscribe = True
        if join_request is not None:
            metadata = join_request.metadata or metadata
            attributes.update(join_request.participant_attributes)
            auto_subscribe = join_request.connection_settings.auto_subscribe
        elif "auto_subscribe" in request.query:
            auto_subscribe = _bool_param(request.query.get("auto_subscribe"))
        return _JoinParams(
            room=room,
            identity=claims.identity,
            name=claims.name,
            metadata=metadata,
            attributes=attributes,
            video=video,
            single_pc=join_request is not None,
            join_request=join_request,
            auto_subscribe=auto_subscribe,
        )

    def _error(self, error: _HttpError, cors: bool = False) -> web.Response:
        self.stats.reject(error.status)
        headers = {"Access-Control-Allow-Origin": "*"} if cors else None
        return web.Response(
            status=error.status, text=error.reason, content_type="text/plain", headers=headers
        )

    # -- HTTP handlers ----------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text=ERR_NOT_FOUND, content_type="text/plain")

    async def _validate_v0(self, request: web.Request) -> web.Response:
        return await self._validate_endpoint(request, v1=False)

    async def _validate_v1(self, request: web.Request) -> web.Response:
        if not self.v1:
            return await self._not_found(request)
        return await self._validate_endpoint(request, v1=True)

    async def _validate_endpoint(self, request: web.Request, v1: bool) -> web.Response:
        try:
            self._validate(request, self._authenticate(request), v1)
        except _HttpError as error:
            return self._error(error, cors=True)
        return web.Response(
            text="success", content_type="text/plain", headers={"Access-Control-Allow-Origin": "*"}
        )

    async def _regions(self, request: web.Request) -> web.Response:
        if not self.regions:
            return await self._not_found(request)
        try:
            grant = self._authenticate(request)
        except _HttpError as error:
            return self._error(error)
        if grant is None:
            return self._error(_HttpError(401, ERR_MISSING_AUTHORIZATION))
        settings = rtc.RegionSettings(
            regions=[
                rtc.RegionInfo(region=r.region, url=r.url, distance=r.distance)
                for r in self.regions
            ]
        )
        return web.Response(
            text=json_format.MessageToJson(settings, indent=None),
            content_type="application/json",
        )

    async def _rtc_v0(self, request: web.Request) -> web.StreamResponse:
        return await self._rtc(request, v1=False)

    async def _rtc_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.v1:
            return await self._not_found(request)
        return await self._rtc(request, v1=True)

    async def _rtc(self, request: web.Request, v1: bool) -> web.StreamResponse:
        try:
            grant = self._authenticate(request)
        except _HttpError as error:
            return self._error(error)
        ws = web.WebSocketResponse(max_msg_size=MAX_SIGNAL_MESSAGE, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=404)  # "reject non websocket requests"
        try:
            params = self._validate(request, grant, v1)
        except _HttpError as error:
            return self._error(error)
        await ws.prepare(request)
        room = self._rooms.get(params.room)
        previous = room.sessions.get(params.identity) if room is not None else None
        if previous is not None:
            # LiveKit keeps the newer connection of an identity and tells the older to leave.
            await previous.leave(models.DUPLICATE_IDENTITY)
        room = self._rooms.get(params.room)  # the old session may have closed an empty room
        if room is None:
            room = self._rooms[params.room] = _Room(params.room)
        session = _Session(self, room, ws, params)
        room.sessions[params.identity] = session
        self._sessions.add(session)
        self.stats.joins += 1
        self.stats.paths[request.path] = self.stats.paths.get(request.path, 0) + 1
        log.info("%s joined room %s (%s)", params.identity, params.room, "v1" if v1 else "v0")
        await session.run()
        return ws


def main() -> int:
    """``python3 -m lkice.lab.livekit_server``: serve until stdin closes, e.g. inside a lab namespace.

    The configuration comes as one JSON line on stdin (``api_key``, ``api_secret``, ``host``,
    ``port``, ``region``, ``ice_servers`` as ``[{"urls": [...], "username": .., "credential":
    ..}]``), so the API secret and TURN credentials never appear in a process list. Answers
    ``ready <url>`` on stdout once listening."""
    config = json.loads(sys.stdin.readline())
    ice = [
        LabIceServer(list(e["urls"]), str(e.get("username", "")), str(e.get("credential", "")))
        for e in config.get("ice_servers", [])
    ]

    async def serve() -> None:
        async with LabLiveKit(
            api_key=str(config["api_key"]),
            api_secret=str(config["api_secret"]),
            ice_servers=ice,
            host=str(config["host"]),
            port=int(config.get("port", 0)),
            region=str(config.get("region", "lab")),
            peer_networks=config.get("peer_networks"),
            ice_tcp_port=config.get("ice_tcp_port"),
        ) as lk:
            print(f"ready {lk.url}", flush=True)
            # Until the owner closes stdin: the lab's way of saying stop.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
