"""The SFU half of the lab's LiveKit stand-in (:mod:`lkice.lab.livekit`): one aiortc
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
  names included: resolving them would send multicast), so connectivity checks only go where
  the lab lives.

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

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceGatherer
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

__all__ = [
    "LOSSY_LABEL",
    "RELIABLE_LABEL",
    "CandidateInit",
    "IpNetwork",
    "SfuTransport",
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


async def _gather_on(gatherer: RTCIceGatherer, addresses: Sequence[str]) -> None:
    """Host candidates on ``addresses`` only, before aiortc's own gathering would run on every
    interface (and skip loopback). Relies on aioice 0.13's Connection internals."""
    connection = gatherer._connection
    if connection._local_candidates_start:
        return
    connection._local_candidates_start = True
    for component in sorted(connection._components):
        connection._local_candidates += await connection.get_component_candidates(
            component=component, addresses=list(addresses)
        )
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
    ) -> None:
        self.target = target
        self.ice_addresses = list(ice_addresses)
        self.peer_networks = list(peer_networks)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
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
        self._open_channel(RELIABLE_LABEL, ordered=True)
        self._open_channel(LOSSY_LABEL, ordered=False, max_retransmits=0)
        offer = await self.pc.createOffer()
        for gatherer in _gatherers(self.pc):
            await _gather_on(gatherer, self.ice_addresses)
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
            await _gather_on(gatherer, self.ice_addresses)
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
        value = init.candidate.removeprefix("a=").removeprefix("candidate:")
        if not value:
            return False  # end-of-candidates marker: aioice keeps listening anyway
        try:
            candidate = candidate_from_sdp(value)
        except (ValueError, IndexError):
            self.ignored_candidates.append(value)
            return False
        if not candidate_allowed(candidate, self.peer_networks):
            self.ignored_candidates.append(value)
            log.debug("ignoring remote candidate outside the lab: %s", value)
            return False
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

    def _open_channel(self, label: str, ordered: bool, max_retransmits: int | None = None) -> None:
        channel = self.pc.createDataChannel(
            label, ordered=ordered, maxRetransmits=max_retransmits
        )
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

    def selected_remote_candidate_types(self) -> list[str]:
        """Type (host, srflx, prflx, relay) of the remote candidate of each nominated pair:
        lets a test prove the path went through TURN. Reads aioice internals."""
        types: list[str] = []
        for gatherer in _gatherers(self.pc):
            for pair in gatherer._connection._nominated.values():
                types.append(pair.remote_candidate.type)
        return types

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), timeout=5.0)


def local_candidate_line(candidate: RTCIceCandidate) -> str:
    """``candidate:...`` for an aiortc candidate (used by tests and the ICE-TCP listener)."""
    return "candidate:" + candidate_to_sdp(candidate)
