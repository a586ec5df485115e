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
- The SFU: by default pion/webrtc, LiveKit's own media stack (:mod:`lkice.lab.sfu_pion`):
  one UDP port for every session, passive ICE/TCP on one TCP port (LiveKit's 7882 and 7881),
  RTP forwarded to subscribers (audio, one simulcast layer of video) with NACK, transport-cc
  and PLI; or, without Go, aiortc (:mod:`lkice.lab.sfu_server`: data only). Data packets
  (``livekit.protocol.models.DataPacket``) published on a participant's ``_reliable``/``_lossy``
  channels are forwarded to every other participant of the room (or the
  ``destination_identities``) over the SFU's own ``_reliable``/``_lossy`` channels, with
  ``participant_sid``/``participant_identity`` asserted by the server as LiveKit does.
- Resume (``reconnect=1&sid=...``): a ``ReconnectResponse`` and the subscriber's ICE restarted;
  ``SimulateScenario``'s switch of candidate protocol (held for the identity's next joins), as
  LiveKit's own connection test uses them. See ``docs/lab.md`` for the whole comparison.

Both signaling protocols are served and tested with LiveKit's official Python client
(``livekit.rtc``, libwebrtc underneath): its default tries ``/rtc/v1`` (one PeerConnection)
and falls back to ``/rtc`` on a 404 (``v1=False`` makes the lab answer that 404);
``RoomOptions(single_peer_connection=False)`` goes to ``/rtc`` directly.

The SFU's ICE addresses (``ice_addresses``, default the listen host) are the only candidates it
offers, and it sends connectivity checks only into ``peer_networks`` (default: loopback plus the
ICE addresses) — checks from elsewhere are dropped unanswered, peer-reflexive ones included.
LiveKit's official clients (libwebrtc) never gather loopback and check from their non-loopback
address, so run them and the lab in a network namespace with a lab address (as the tests do).

Fidelity gaps: no simulcast layer switching (the lowest layer is forwarded), no room service
API, one node, no ``refresh_token``, no speaker/quality updates, data tracks (``_data_track``)
not routed, no built-in TURN (the lab's coturn or pion/turn plays that part via
``ice_servers``). On the aiortc fallback: no media, no ICE restart, the ICE/TCP candidate's peer
learnt as peer-reflexive (``("tcp", "prflx")``).

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
from typing import Any, Literal

import jwt
from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.api import TokenVerifier
from livekit.api.access_token import Claims, VideoGrants
from livekit.protocol import models, rtc

from lkice.lab.server import LabError
from lkice.lab.sfu_pion import PionMedia, PionTrack, PionTransport, pion_sfu_unavailable_reason
from lkice.lab.sfu_server import (
    LOSSY_LABEL,
    RELIABLE_LABEL,
    CandidateInit,
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
# How long a participant whose signal connection dropped (without a leave) waits for the
# client to resume it, as LiveKit keeps it while its PeerConnections live.
RESUME_WINDOW = 15.0
# How long a switch of candidate protocol (SimulateScenario) holds for the identity's next
# joins: LiveKit's iceConfigTTL.
ICE_PREFERENCE_TTL = 300.0

Transport = SfuTransport | PionTransport
MediaPlane = Literal["auto", "pion", "aiortc"]


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
    resumes: int = 0
    leaves: int = 0  # LeaveRequests received: participants that said goodbye

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
    reconnect: bool = False
    sid: str = ""
    reconnect_reason: int = 0


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
    """One participant: its signal WebSocket (replaced when the client resumes) and its SFU
    PeerConnection(s)."""

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
        self.resumes = 0
        self._outgoing: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue(OUTGOING_QUEUE)
        self._writer: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        # Tracks: AddTrackRequests waiting for their media (cid -> info), the published ones
        # (sid -> info) with the media plane's track id, and the SIDs this one receives.
        self._pending_tracks: dict[str, models.TrackInfo] = {}
        self.tracks: dict[str, models.TrackInfo] = {}
        self._track_media: dict[str, str] = {}
        self._subscribed: set[str] = set()
        self._offer_id = 0
        self._offering = False
        self._offer_again = False
        self._restart_again = False
        protocol = lab._ice_preference(room.name, self.identity)
        udp = lab.ice_udp and protocol == rtc.UDP
        self.force_relay = lab.force_relay or protocol == rtc.TLS
        self.publisher: Transport = lab._transport(
            rtc.PUBLISHER,
            udp=udp,
            on_data=self._on_data,
            on_state=self._publisher_state,
            on_candidate=lambda c: self._trickle(c, rtc.PUBLISHER),
            on_track=self._on_track,
            single=params.single_pc,
        )
        self.subscriber: Transport | None = None
        if not params.single_pc:
            self.subscriber = lab._transport(
                rtc.SUBSCRIBER,
                udp=udp,
                on_state=self._subscriber_state,
                on_candidate=lambda c: self._trickle(c, rtc.SUBSCRIBER),
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
            tracks=list(self.tracks.values()),
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

    def _client_configuration(self) -> models.ClientConfiguration:
        force_relay = (
            models.ClientConfigSetting.ENABLED
            if self.force_relay
            else models.ClientConfigSetting.UNSET
        )
        return models.ClientConfiguration(force_relay=force_relay)

    def _server_info(self) -> models.ServerInfo:
        lab = self.lab
        return models.ServerInfo(
            edition=models.ServerInfo.Cloud if lab.cloud else models.ServerInfo.Standard,
            version=lab.server_version,
            protocol=SERVER_PROTOCOL,
            region=lab.region,
            node_id=lab.node_id,
        )

    def join_response(self) -> rtc.SignalResponse:
        lab = self.lab
        join = rtc.JoinResponse(
            room=self.room.info(),
            participant=self.info(),
            other_participants=[s.info() for s in self.room.others(self)],
            server_version=lab.server_version,
            server_region=lab.region,
            ice_servers=[server.to_proto() for server in lab.ice_servers],
            subscriber_primary=self.subscriber_primary,
            client_configuration=self._client_configuration(),
            ping_timeout=lab.ping_timeout,
            ping_interval=lab.ping_interval,
            server_info=self._server_info(),
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

    def _trickle(self, candidate: CandidateInit, target: rtc.SignalTarget) -> None:
        self.send(
            rtc.SignalResponse(
                trickle=rtc.TrickleRequest(candidateInit=candidate.to_json(), target=target)
            )
        )

    async def _write_loop(self) -> None:
        while True:
            response = await self._outgoing.get()
            if response is None:
                return
            ws = self.ws  # the current one: a resumed session writes to its new socket
            try:
                if self.json_mode:
                    await ws.send_str(json_format.MessageToJson(response, indent=None))
                else:
                    await ws.send_bytes(response.SerializeToString())
            except (ConnectionError, RuntimeError):
                continue  # the socket went away; a resume brings the next one

    async def run(self) -> None:
        """Serve the join's WebSocket; the session outlives it when the client may resume."""
        self._writer = asyncio.create_task(self._write_loop())
        try:
            self.send(self.join_response())
            self.room.broadcast_update(self)
            if self.subscriber is not None:
                await self._negotiate()
            request = self.params.join_request
            if request is not None:
                for add in request.add_track_requests:
                    self._add_track(add)
                if request.HasField("publisher_offer"):
                    await self._on_offer(request.publisher_offer)
            for other in self.room.others(self):
                for sid in list(other.tracks):
                    self.lab._spawn(self.subscribe(other, sid))
        except BaseException:
            await self.close()
            raise
        await self._serve(self.ws)

    async def resume(self, ws: web.WebSocketResponse, reconnect_reason: int) -> None:
        """The client came back on a new WebSocket (``reconnect=1``): answer with a
        ReconnectResponse, as LiveKit does, and restart the subscriber's ICE when the client
        says its transports need it."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        old, self.ws = self.ws, ws
        self.resumes += 1
        self.lab.stats.resumes += 1
        if old is not ws:
            with contextlib.suppress(Exception):
                await old.close()
        self.send(
            rtc.SignalResponse(
                reconnect=rtc.ReconnectResponse(
                    ice_servers=[server.to_proto() for server in self.lab.ice_servers],
                    client_configuration=self._client_configuration(),
                    server_info=self._server_info(),
                )
            )
        )
        if self.subscriber is not None:
            # The client restarts the publisher's ICE itself (a new offer); the subscriber's
            # is the server's to restart (LiveKit's ICERestart on resume).
            await self._negotiate(restart=True)
        await self._serve(ws)

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        ended = await self._read_loop(ws)
        if self.closed or ws is not self.ws:
            return  # closed meanwhile, or a resume took over with a newer socket
        if ended:
            await self.close()
            return
        # The socket dropped without a leave: the participant stays for a while, so the
        # client can resume it.
        log.info(
            "%s: signal connection lost; waiting %g s for a resume", self.identity, RESUME_WINDOW
        )
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(RESUME_WINDOW, lambda: self.lab._spawn(self.close()))

    async def _read_loop(self, ws: web.WebSocketResponse) -> bool:
        """Read one socket until it ends; True when the session is over (a leave), False
        when only the socket went away (or a newer one replaced it)."""
        timeout = float(self.lab.ping_timeout)
        while not self.closed and ws is self.ws:
            try:
                message = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                log.info(
                    "%s: no message within ping timeout (%g s): closing", self.identity, timeout
                )
                return True
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
                return False  # close, closing, error
            try:
                if not await self._handle(request):
                    return True
            except Exception:
                log.exception("%s: signal request failed", self.identity)
        return False

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
            await self._on_answer(request.answer)
        elif kind == "trickle":
            await self._on_trickle(request.trickle)
        elif kind == "add_track":
            self._add_track(request.add_track)
        elif kind == "mute":
            info = self.tracks.get(request.mute.sid)
            if info is not None and info.muted != request.mute.muted:
                info.muted = request.mute.muted
                self.version += 1
                self.room.broadcast_update(self)
        elif kind == "subscription":
            await self._on_subscription(request.subscription)
        elif kind == "simulate":
            return self._on_simulate(request.simulate)
        elif kind == "leave":
            self.lab.stats.leaves += 1
            return False
        else:
            log.debug("%s: ignoring %s", self.identity, kind)
        return True

    def _on_simulate(self, scenario: rtc.SimulateScenario) -> bool:
        """LiveKit's test scenarios that a connection test uses: a switch of candidate
        protocol (remembered for the identity's next joins, as LiveKit's ICE config cache;
        the client then reconnects in full), and server-side leaves."""
        which = scenario.WhichOneof("scenario")
        if which == "switch_candidate_protocol":
            self.lab._set_ice_preference(
                self.room.name, self.identity, scenario.switch_candidate_protocol
            )
        elif which == "server_leave":
            self.lab._spawn(self.leave(models.SERVER_SHUTDOWN))
        elif which == "leave_request_full_reconnect":
            self.send(
                rtc.SignalResponse(
                    leave=rtc.LeaveRequest(
                        can_reconnect=True,
                        reason=models.CLIENT_INITIATED,
                        action=rtc.LeaveRequest.RECONNECT,
                    )
                )
            )
        else:
            log.debug("%s: ignoring scenario %s", self.identity, which)
        return True

    # -- negotiation ------------------------------------------------------------------------

    async def _negotiate(self, restart: bool = False) -> None:
        """Offer the subscriber PeerConnection (again); one offer at a time, a change while
        one is out is offered once it is answered."""
        if self.subscriber is None or (restart and not isinstance(self.subscriber, PionTransport)):
            return  # aiortc's transport has no ICE restart
        if self._offering:
            # pion cannot roll an unanswered offer back: the change (or the restart) goes
            # in the offer after the answer.
            self._offer_again = True
            self._restart_again = self._restart_again or restart
            return
        self._offering = True
        self._offer_again = False
        self._restart_again = False
        self._offer_id += 1
        if isinstance(self.subscriber, PionTransport):
            sdp, candidates = await self.subscriber.create_offer(restart=restart)
        else:
            sdp, candidates = await self.subscriber.create_offer()
        mids = self.subscriber.mid_to_track if isinstance(self.subscriber, PionTransport) else {}
        self.send(
            rtc.SignalResponse(
                offer=rtc.SessionDescription(
                    type="offer", sdp=sdp, id=self._offer_id, mid_to_track_id=mids
                )
            )
        )
        for candidate in candidates:
            self._trickle(candidate, rtc.SUBSCRIBER)

    async def _on_answer(self, answer: rtc.SessionDescription) -> None:
        if self.subscriber is None:
            return
        await self.subscriber.accept_answer(answer.sdp)
        self._offering = False
        if self._offer_again:
            await self._negotiate(restart=self._restart_again)

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        sdp, candidates = await self.publisher.answer(offer.sdp)
        if self.subscriber is None:
            # Single PeerConnection: the SFU's own data channels live on the client's PC.
            self.publisher.open_sfu_channels()
        mids = self.publisher.mid_to_track if isinstance(self.publisher, PionTransport) else {}
        self.send(
            rtc.SignalResponse(
                answer=rtc.SessionDescription(
                    type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mids
                )
            )
        )
        for candidate in candidates:
            self._trickle(candidate, rtc.PUBLISHER)
        if isinstance(self.publisher, PionTransport) and self.publisher.awaiting:
            self._request_sections(self.publisher.awaiting_kinds())

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

    # -- media ------------------------------------------------------------------------------

    def _add_track(self, add: rtc.AddTrackRequest) -> None:
        """Acknowledge a track the client is about to publish; it is announced to the room
        once its media arrives (pion) or at once (aiortc, which routes no media)."""
        track = models.TrackInfo(
            sid=add.sid or _sid("TR_"),
            name=add.name,
            type=add.type,
            muted=add.muted,
            width=add.width,
            height=add.height,
            simulcast=len(add.layers) > 1,
            disable_dtx=add.disable_dtx,
            source=add.source,
            layers=list(add.layers),
            stereo=add.stereo,
            disable_red=add.disable_red,
            stream=add.stream,
        )
        self.send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=add.cid, track=track))
        )
        if isinstance(self.publisher, PionTransport) and len(self._pending_tracks) < 64:
            self._pending_tracks[add.cid] = track

    def _on_track(self, media: PionTrack) -> None:
        """Media arrived for a track (or a simulcast layer of one): the first layer publishes
        it to the room."""
        if media.track_id in self._track_media.values() or self.closed:
            return
        kind = models.AUDIO if media.kind == "audio" else models.VIDEO
        info = self._pending_tracks.pop(media.track_id, None)
        if info is None:  # a client whose cid is not its msid track id: match by kind
            cid = next((c for c, t in self._pending_tracks.items() if t.type == kind), None)
            info = self._pending_tracks.pop(cid) if cid is not None else None
        if info is None:
            log.debug("%s: media for a track it did not add", self.identity)
            return
        info.mime_type = media.mime
        self.tracks[info.sid] = info
        self._track_media[info.sid] = media.track_id
        self.version += 1
        self.room.broadcast_update(self)
        for other in self.room.others(self):
            if other.params.auto_subscribe:
                self.lab._spawn(other.subscribe(self, info.sid))

    async def subscribe(self, source: _Session, sid: str) -> None:
        """Forward ``source``'s track ``sid`` to this participant (a new subscriber offer, or
        for ``/rtc/v1`` a request for the client's next offer)."""
        destination = self.subscriber if self.subscriber is not None else self.publisher
        media = source._track_media.get(sid)
        if (
            sid in self._subscribed
            or self.closed
            or media is None
            or not isinstance(destination, PionTransport)
            or not isinstance(source.publisher, PionTransport)
            or not _flag(self.params.video.can_subscribe)
        ):
            return
        self._subscribed.add(sid)
        try:
            waits = await destination.forward(source.publisher, media, sid, f"{source.sid}|{sid}")
        except LabError as exc:
            self._subscribed.discard(sid)
            log.info("%s: cannot forward %s: %s", self.identity, sid, exc)
            return
        if waits:
            self._request_sections(destination.awaiting_kinds())
        else:
            await self._negotiate()

    def _request_sections(self, kinds: tuple[int, int]) -> None:
        audios, videos = kinds
        self.send(
            rtc.SignalResponse(
                media_sections_requirement=rtc.MediaSectionsRequirement(
                    num_audios=audios, num_videos=videos
                )
            )
        )

    async def unsubscribe(self, sid: str) -> None:
        if sid not in self._subscribed or self.closed:
            return
        self._subscribed.discard(sid)
        destination = self.subscriber if self.subscriber is not None else self.publisher
        if isinstance(destination, PionTransport):
            with contextlib.suppress(LabError):
                await destination.unforward(sid)
            await self._negotiate()

    async def _on_subscription(self, update: rtc.UpdateSubscription) -> None:
        sids = list(update.track_sids)
        for item in update.participant_tracks:
            sids.extend(item.track_sids)
        for sid in sids:
            if not update.subscribe:
                await self.unsubscribe(sid)
                continue
            for other in self.room.others(self):
                if sid in other.tracks:
                    await self.subscribe(other, sid)

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
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.state = models.ParticipantInfo.DISCONNECTED
        self.version += 1
        if self.room.sessions.get(self.identity) is self:
            self.room.broadcast_update(self)
            del self.room.sessions[self.identity]
            if not self.room.sessions:
                self.lab._rooms.pop(self.room.name, None)
        self.closed = True
        self.lab._sessions.discard(self)
        for other in self.room.others(self):
            for sid in self.tracks:
                if sid in other._subscribed:
                    self.lab._spawn(other.unsubscribe(sid))
        await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._outgoing.put_nowait(None)
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            try:
                await asyncio.wait_for(writer, timeout=2.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
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
    - ``media``: the SFU's media plane: ``"pion"`` (pion/webrtc, LiveKit's own stack, in
      :mod:`lkice.lab.sfu_pion`: one UDP port for every session, ``ice_udp_port``, LiveKit's
      7882; media forwarded), ``"aiortc"`` (:mod:`lkice.lab.sfu_server`: data only, a UDP
      port per session; no Go needed), ``"auto"`` (pion where it can be built).

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
        ice_udp_port: int = 0,
        media: MediaPlane = "auto",
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
        self.ice_udp_port = ice_udp_port
        if media == "auto":
            media = "pion" if pion_sfu_unavailable_reason() is None else "aiortc"
        self.media_plane: Literal["pion", "aiortc"] = media
        self.media: PionMedia | None = None
        self._ice_preferences: dict[tuple[str, str], tuple[int, float]] = {}
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

    def pair_details(self, identity: str) -> list[dict[str, str]]:
        """The pion media plane's selected pairs for ``identity`` (protocol, candidate type and
        address of each side); empty on the aiortc media plane."""
        for room in self._rooms.values():
            session = room.sessions.get(identity)
            if session is not None:
                transports = [session.publisher, session.subscriber]
                return [
                    t.selected_pair
                    for t in transports
                    if isinstance(t, PionTransport) and t.selected_pair is not None
                ]
        return []

    async def ice_tcp_accepted(self) -> int:
        """ICE/TCP connections the SFU's TCP port accepted (either media plane)."""
        if self.media is not None:
            return (await self.media.stats()).get("tcp_accepted", 0)
        return self.ice_tcp.accepted if self.ice_tcp is not None else 0

    def session_sid(self, identity: str) -> str | None:
        for room in self._rooms.values():
            session = room.sessions.get(identity)
            if session is not None:
                return session.sid
        return None

    def _transport(
        self,
        target: int,
        *,
        udp: bool,
        on_data: Any = None,
        on_state: Any = None,
        on_candidate: Any = None,
        on_track: Any = None,
        single: bool = False,
    ) -> Transport:
        if self.media is not None:
            return self.media.transport(
                target,
                self.peer_networks,
                on_data=on_data,
                on_state=on_state,
                on_candidate=on_candidate,
                on_track=on_track,
                udp=udp,
                tcp=self.ice_tcp_port is not None,
                single=single,
            )
        return SfuTransport(
            target,
            self.ice_addresses if udp else [],
            self.peer_networks,
            on_data=on_data,
            on_state=on_state,
            ice_tcp=self.ice_tcp,
        )

    def _ice_preference(self, room: str, identity: str) -> int:
        """The candidate protocol a SimulateScenario switched this identity to (UDP when
        none, or when it is older than LiveKit's ICE config TTL)."""
        protocol, at = self._ice_preferences.get((room, identity), (rtc.UDP, 0.0))
        if time.monotonic() - at > ICE_PREFERENCE_TTL:
            return rtc.UDP
        if protocol != rtc.UDP and self.ice_tcp_port is None:
            return rtc.UDP  # nothing but UDP to switch to
        return protocol

    def _set_ice_preference(self, room: str, identity: str, protocol: int) -> None:
        if len(self._ice_preferences) > 1024:
            self._ice_preferences.clear()  # bounded: a lab sees few identities
        self._ice_preferences[(room, identity)] = (protocol, time.monotonic())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> LabLiveKit:
        for address in self.ice_addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((address, 0))
                except OSError as exc:
                    raise LabError(f"cannot use ICE address {address}: {exc}") from exc
        if self.media_plane == "pion":
            udp = [(a, self.ice_udp_port) for a in self.ice_addresses] if self.ice_udp else []
            tcp = (
                [(a, self.ice_tcp_port) for a in self.ice_addresses]
                if self.ice_tcp_port is not None
                else []
            )
            self.media = await PionMedia(udp, tcp).start()
            if self.media.udp_ports:
                self.ice_udp_port = self.media.udp_ports[0]
            if self.media.tcp_ports:
                self.ice_tcp_port = self.media.tcp_ports[0]
        elif self.ice_tcp_port is not None:
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
            if self.media is not None:
                await self.media.stop()
                self.media = None
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
        if self.media is not None:
            await self.media.stop()
            self.media = None

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
        reconnect = _bool_param(request.query.get("reconnect"))
        sid = request.query.get("sid", "")
        reason_text = request.query.get("reconnect_reason", "0")
        reconnect_reason = (
            int(reason_text) if reason_text.isascii() and reason_text.isdigit() else 0
        )
        if join_request is not None:
            metadata = join_request.metadata or metadata
            attributes.update(join_request.participant_attributes)
            auto_subscribe = join_request.connection_settings.auto_subscribe
            reconnect = reconnect or join_request.reconnect
            sid = join_request.participant_sid or sid
            reconnect_reason = join_request.reconnect_reason or reconnect_reason
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
            reconnect=reconnect,
            sid=sid[:64],
            reconnect_reason=reconnect_reason % 1000,
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
        if params.reconnect:
            if previous is not None and not previous.closed and previous.sid == params.sid:
                log.info("%s resumed in room %s", params.identity, params.room)
                await previous.resume(ws, params.reconnect_reason)
                return ws
            # Nothing to resume (it timed out, or another node): LiveKit asks for a full
            # reconnect.
            leave = rtc.SignalResponse(
                leave=rtc.LeaveRequest(
                    can_reconnect=True,
                    reason=models.STATE_MISMATCH,
                    action=rtc.LeaveRequest.RECONNECT,
                )
            )
            with contextlib.suppress(Exception):
                await ws.send_bytes(leave.SerializeToString())
                await ws.close()
            return ws
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
            ice_udp_port=int(config.get("ice_udp_port", 0)),
            media=config.get("media", "auto"),
        ) as lk:
            print(f"ready {lk.url}", flush=True)
            # Until the owner closes stdin: the lab's way of saying stop.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
