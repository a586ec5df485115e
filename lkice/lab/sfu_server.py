"""The SFU half of the lab's LiveKit stand-in (:mod:`lkice.lab.livekit_server`): one aiortc
``RTCPeerConnection`` per LiveKit server-side PeerConnection, restricted to the lab's addresses.

Why the restrictions: aioice, under aiortc, gathers host candidates on every interface *except*
127.0.0.1, and aiortc adds Google's public STUN server when no ICE servers are given. A lab server
must offer only addresses the lab owns (loopback, or a lab namespace's address) and must never
talk to the Internet, so this module

- always passes ``RTCConfiguration(iceServers=[])`` (an empty list, never ``None``);
- gathers the host candidates itself, on the configured addresses only, before aiortc would
  (aioice skips its own gathering once it has started; that flag is private to aioice, which the
  project pins to 0.13.x for exactly this kind of reliance);
- drops remote candidates whose address is not inside the allowed networks (mDNS ``.local``
  names included: resolving them would send multicast) and leaves checks arriving from outside
  them unanswered (no peer-reflexive candidate is learnt there), so the lab only ever sends
  where the lab lives;
- uses max-bundle (see :class:`SfuTransport`).

:class:`IceTcpListener` adds what aiortc lacks: RFC 6544 passive ICE/TCP on one shared port, as
LiveKit's TCP 7881, by presenting each accepted TCP connection to aioice as one more
``StunProtocol`` whose datagrams are RFC 4571 frames.

Candidates travel like LiveKit's: the SDP is sent without ``a=candidate`` lines and every
candidate goes separately as a ``trickle`` (JSON of an RTCIceCandidateInit, as pion marshals it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation
from aioice.ice import Connection, StunProtocol
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceGatherer
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

__all__ = [
    "LOSSY_LABEL",
    "RELIABLE_LABEL",
    "CandidateInit",
    "IceTcpListener",
    "IpNetwork",
    "SfuTransport",
    "allowed_remote",
    "candidate_allowed",
    "parse_candidate_init",
]

log = logging.getLogger(__name__)

RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
# What LiveKit's SFU does with a subscriber data channel that is not open yet: it buffers.
# Bounded, so a participant whose subscriber never connects cannot grow the lab's memory.
PENDING_LIMIT = 256

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CandidateInit:
    """One RTCIceCandidateInit as LiveKit carries it in ``TrickleRequest.candidateInit``."""

    candidate: str  # "candidate:..." (the SDP attribute value, with its "candidate:" prefix)
    sdp_mid: str | None
    sdp_mline_index: int | None

    def to_json(self) -> str:
        # Field names and the null usernameFragment as pion (LiveKit's server) marshals them;
        # the Rust client requires sdpMid and sdpMLineIndex to be present.
        return json.dumps(
            {
                "candidate": self.candidate,
                "sdpMid": self.sdp_mid,
                "sdpMLineIndex": self.sdp_mline_index,
                "usernameFragment": None,
            }
        )


def parse_candidate_init(text: str) -> CandidateInit:
    """Parse ``candidateInit`` JSON; ``ValueError`` if it is not an RTCIceCandidateInit."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("candidate"), str):
        raise ValueError("candidateInit is not an RTCIceCandidateInit")
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    return CandidateInit(
        candidate=data["candidate"],
        sdp_mid=mid if isinstance(mid, str) else None,
        sdp_mline_index=index if isinstance(index, int) else None,
    )


def candidate_allowed(candidate: RTCIceCandidate, networks: Sequence[IpNetwork]) -> bool:
    """Whether connectivity checks may be sent to this remote candidate: an IP literal inside
    one of ``networks`` (names, mDNS included, are refused without being resolved)."""
    try:
        address = ipaddress.ip_address(candidate.ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def allowed_remote(
    init: CandidateInit, networks: Sequence[IpNetwork], ignored: list[str]
) -> tuple[str, RTCIceCandidate] | None:
    """A trickled remote candidate the lab may send checks to: its SDP value and the parsed
    candidate; None for the end-of-candidates marker, and (noted in ``ignored``) for one that
    does not parse or whose address is outside ``networks``."""
    value = init.candidate.removeprefix("a=").removeprefix("candidate:")
    if not value:
        return None
    try:
        candidate = candidate_from_sdp(value)
    except (ValueError, IndexError):
        ignored.append(value)
        return None
    if not candidate_allowed(candidate, networks):
        ignored.append(value)
        log.debug("ignoring remote candidate outside the lab: %s", value)
        return None
    return value, candidate


async def _gather_on(
    gatherer: RTCIceGatherer,
    addresses: Sequence[str],
    networks: Sequence[IpNetwork],
    ice_tcp: IceTcpListener | None = None,
) -> None:
    """Host candidates on ``addresses`` only, before aiortc's own gathering would run on every
    interface (and skip loopback); and connectivity checks from outside ``networks`` dropped
    unanswered, so a peer-reflexive address outside the lab is never answered nor checked.
    Relies on aioice 0.13's Connection internals (the project pins aioice to 0.13.x)."""
    connection = gatherer._connection
    if connection._local_candidates_start:
        return
    answer = connection.request_received

    def request_received(
        message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        try:
            source = ipaddress.ip_address(addr[0])
        except ValueError:
            return
        if any(source in network for network in networks):
            answer(message, addr, protocol)
        else:
            log.debug("dropping a connectivity check from outside the lab: %s", addr[0])

    connection.request_received = request_received  # type: ignore[method-assign]
    connection._local_candidates_start = True
    for component in sorted(connection._components):
        connection._local_candidates += await connection.get_component_candidates(
            component=component, addresses=list(addresses)
        )
    if ice_tcp is not None:
        # Also what makes aiortc start ICE when there is no UDP candidate at all.
        connection._local_candidates.append(ice_tcp.register(connection))
    connection._local_candidates_end = True


def _gatherers(pc: RTCPeerConnection) -> list[RTCIceGatherer]:
    found: list[RTCIceGatherer] = []
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.receiver.transport.transport.iceGatherer
        if gatherer not in found:
            found.append(gatherer)
    if pc.sctp is not None:
        gatherer = pc.sctp.transport.transport.iceGatherer
        if gatherer not in found:
            found.append(gatherer)
    return found


def split_candidates(sdp: str) -> tuple[str, list[CandidateInit]]:
    """The SDP without candidate lines, and its candidates (deduplicated across a BUNDLE
    group: the first media section that carries a candidate names it)."""
    kept: list[str] = []
    candidates: list[CandidateInit] = []
    seen: set[str] = set()
    index = -1
    mid: str | None = None
    pending: list[str] = []

    def flush() -> None:
        for value in pending:
            if value not in seen:
                seen.add(value)
                candidates.append(CandidateInit(value, mid, index))
        pending.clear()

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            pending.append(line[len("a=") :])
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    flush()
    return "\r\n".join(kept) + "\r\n", candidates


class SfuTransport:
    """One server-side PeerConnection. ``target`` is LiveKit's ``SignalTarget`` (0 publisher:
    the client offers; 1 subscriber: the server offers and creates ``_reliable``/``_lossy``).

    ``on_data(label, payload)`` receives every binary message on a data channel the client
    opened; ``on_state(state)`` every connection state change."""

    def __init__(
        self,
        target: int,
        ice_addresses: Sequence[str],
        peer_networks: Sequence[IpNetwork],
        on_data: Callable[[str, bytes], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        ice_tcp: IceTcpListener | None = None,
    ) -> None:
        self.target = target
        self.ice_tcp = ice_tcp
        self.ice_addresses = list(ice_addresses)
        self.peer_networks = list(peer_networks)
        # max-bundle, as LiveKit's clients use: with aiortc's default (balanced), a BUNDLE offer
        # whose first m-line is audio leaves the 2nd and 3rd video transceivers on a closed
        # transport (the v1 client offers 3 audio + 3 video recvonly sections).
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._on_data = on_data
        self._on_state = on_state
        self._early: list[RTCIceCandidate] = []
        self._remote_set = False
        self.channels: dict[str, RTCDataChannel] = {}
        self._pending: dict[str, deque[bytes]] = {}
        self.ignored_candidates: list[str] = []
        self.pc.on("datachannel", self._datachannel)
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    def _state_changed(self) -> None:
        if self._on_state is not None:
            self._on_state(self.connection_state)

    def _datachannel(self, channel: RTCDataChannel) -> None:
        label = channel.label

        def message(payload: bytes | str) -> None:
            if isinstance(payload, bytes) and self._on_data is not None:
                self._on_data(label, payload)

        channel.on("message", message)

    # -- negotiation ------------------------------------------------------------------------

    async def create_offer(self) -> tuple[str, list[CandidateInit]]:
        """Subscriber side: create the SFU's data channels and offer them."""
        self.open_sfu_channels()
        offer = await self.pc.createOffer()
        for gatherer in _gatherers(self.pc):
            await _gather_on(gatherer, self.ice_addresses, self.peer_networks, self.ice_tcp)
        await self.pc.setLocalDescription(offer)
        return split_candidates(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await self._remote_description_set()

    async def answer(self, sdp: str) -> tuple[str, list[CandidateInit]]:
        """Publisher side: answer the client's offer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self._remote_description_set()
        for gatherer in _gatherers(self.pc):
            await _gather_on(gatherer, self.ice_addresses, self.peer_networks, self.ice_tcp)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return split_candidates(self.pc.localDescription.sdp)

    async def _remote_description_set(self) -> None:
        self._remote_set = True
        early, self._early = self._early, []
        for candidate in early:
            await self.pc.addIceCandidate(candidate)

    async def add_candidate(self, init: CandidateInit) -> bool:
        """Add a trickled remote candidate; False (and nothing sent to it) when its address is
        outside the lab's networks or it does not parse. Held until the remote description is
        set, since a client may trickle before its answer arrives."""
        # The end-of-candidates marker is dropped too: aioice keeps listening anyway.
        allowed = allowed_remote(init, self.peer_networks, self.ignored_candidates)
        if allowed is None:
            return False
        _, candidate = allowed
        candidate.sdpMid = init.sdp_mid
        candidate.sdpMLineIndex = init.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        if not self._remote_set:
            self._early.append(candidate)
        else:
            await self.pc.addIceCandidate(candidate)
        return True

    # -- data -------------------------------------------------------------------------------

    def open_sfu_channels(self) -> None:
        """The SFU's own ``_reliable`` (ordered) and ``_lossy`` (unordered, no retransmits)
        channels, on which it forwards other participants' packets."""
        if not self.channels:
            self._open_channel(RELIABLE_LABEL, ordered=True)
            self._open_channel(LOSSY_LABEL, ordered=False, max_retransmits=0)

    def _open_channel(self, label: str, ordered: bool, max_retransmits: int | None = None) -> None:
        channel = self.pc.createDataChannel(label, ordered=ordered, maxRetransmits=max_retransmits)
        self.channels[label] = channel
        self._pending[label] = deque(maxlen=PENDING_LIMIT)

        def opened() -> None:
            pending = self._pending[label]
            while pending:
                channel.send(pending.popleft())

        channel.on("open", opened)

    def send(self, label: str, payload: bytes) -> bool:
        """Send on one of the SFU's own channels; queued (bounded) until it opens."""
        channel = self.channels.get(label)
        if channel is None or channel.readyState in ("closing", "closed"):
            return False
        if channel.readyState == "open":
            channel.send(payload)
        else:
            self._pending[label].append(payload)
        return True

    def selected_pairs(self) -> list[tuple[str, str]]:
        """(local transport, remote candidate type) of each nominated pair, e.g.
        ``("udp", "relay")`` when the client came through TURN, ``("tcp", "prflx")`` over
        ICE/TCP (an active TCP candidate's port is 9, so the peer is learnt as prflx).
        Reads aioice internals."""
        pairs: list[tuple[str, str]] = []
        for gatherer in _gatherers(self.pc):
            for pair in gatherer._connection._nominated.values():
                pairs.append((pair.local_candidate.transport, pair.remote_candidate.type))
        return pairs

    async def close(self) -> None:
        if self.ice_tcp is not None:
            for gatherer in _gatherers(self.pc):
                await self.ice_tcp.unregister(gatherer._connection)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), timeout=5.0)


def local_candidate_line(candidate: RTCIceCandidate) -> str:
    """``candidate:...`` for an aiortc candidate (used by tests and the ICE-TCP listener)."""
    return "candidate:" + candidate_to_sdp(candidate)


# -- ICE/TCP (RFC 6544), passive, like LiveKit's TCP 7881 ------------------------------------------

# libwebrtc's type preference for TCP host candidates, and RFC 6544's local preference for a
# passive one (direction 4, other 8191): below every UDP host candidate, as with LiveKit.
_TCP_TYPE_PREFERENCE = 90
_TCP_PASSIVE_LOCAL_PREFERENCE = (4 << 13) + 8191
MAX_FRAME = 0xFFFF


class IceTcpListener:
    """One TCP port shared by every session, as LiveKit's ``rtc.tcp_port``: each accepted
    connection is matched to a session by the USERNAME of its first STUN Binding request
    (``serverUfrag:clientUfrag``), then carries that session's ICE checks and DTLS/SCTP in
    RFC 4571 frames (16-bit length, then the packet). Connections from outside
    ``networks``, or whose first frame is not such a request, are closed."""

    def __init__(self, host: str, port: int, networks: Sequence[IpNetwork]) -> None:
        self.host = host
        self.port = port
        self.networks = list(networks)
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, tuple[Connection, Candidate]] = {}
        self._streams: dict[str, list[_IceTcpStream]] = {}
        self._pending: set[_IceTcpFramer] = set()
        self.accepted = 0

    async def start(self) -> IceTcpListener:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _IceTcpFramer(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for framer in list(self._pending):
            framer.abort()
        for ufrag in list(self._streams):
            for stream in self._streams.pop(ufrag):
                await stream.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def register(self, connection: Connection) -> Candidate:
        """The passive candidate for ``connection``; its checks will be routed to it."""
        component = min(connection._components)
        candidate = Candidate(
            foundation=candidate_foundation("host", "tcp", self.host),
            component=component,
            transport="tcp",
            priority=(_TCP_TYPE_PREFERENCE << 24)
            + (_TCP_PASSIVE_LOCAL_PREFERENCE << 8)
            + (256 - component),
            host=self.host,
            port=self.port,
            type="host",
            tcptype="passive",
        )
        self._sessions[connection.local_username] = (connection, candidate)
        return candidate

    async def unregister(self, connection: Connection) -> None:
        self._sessions.pop(connection.local_username, None)
        for stream in self._streams.pop(connection.local_username, []):
            await stream.close()

    def allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def attach(self, framer: _IceTcpFramer, message: stun.Message) -> _IceTcpStream | None:
        """Bind an accepted connection to the session its first check names."""
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str) or ":" not in username:
            return None
        found = self._sessions.get(username.split(":", 1)[0])
        if found is None:
            return None
        connection, candidate = found
        stream = _IceTcpStream(connection, candidate, framer)
        self._streams.setdefault(connection.local_username, []).append(stream)
        self.accepted += 1
        return stream


class _IceTcpFramer(asyncio.Protocol):
    """RFC 4571 framing on one accepted TCP connection."""

    def __init__(self, listener: IceTcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.buffer = bytearray()
        self.stream: _IceTcpStream | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        if not self.listener.allowed(self.peer[0]):
            log.debug("refusing an ICE/TCP connection from outside the lab: %s", self.peer[0])
            self.transport.abort()
            return
        self.listener._pending.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            size = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + size:
                return
            frame = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            self.frame_received(frame)

    def frame_received(self, frame: bytes) -> None:
        if self.stream is None:
            try:
                message = stun.parse_message(frame)
            except ValueError:
                self.abort()
                return
            self.stream = self.listener.attach(self, message)
            self.listener._pending.discard(self)
            if self.stream is None:
                self.abort()
                return
        self.stream.datagram_received(frame, self.peer)

    def write(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if len(packet) > MAX_FRAME:
                return
            self.transport.write(len(packet).to_bytes(2, "big") + packet)

    def abort(self) -> None:
        self.listener._pending.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._pending.discard(self)
        if self.stream is not None:
            self.stream.receiver.protocol_lost(self.stream)
        if not self.closed.done():
            self.closed.set_result(None)


class _IceTcpStream(StunProtocol):
    """What aioice sees of one ICE/TCP connection: a StunProtocol whose local candidate is
    the passive TCP one and whose datagrams are RFC 4571 frames. aioice learns the peer as a
    peer-reflexive candidate from its first check and answers and checks back on it."""

    def __init__(self, receiver: Connection, candidate: Candidate, framer: _IceTcpFramer) -> None:
        super().__init__(receiver)
        self.local_candidate = candidate
        self.framer = framer

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        self.framer.write(data)

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        self.framer.write(bytes(message))

    async def close(self) -> None:
        self.framer.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.framer.closed), timeout=2.0)
