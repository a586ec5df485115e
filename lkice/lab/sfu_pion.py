"""The lab SFU's media plane on pion/webrtc, LiveKit's own media stack: one Go process
(``lkice/lab/go/pionsfu/main.go``, built offline from Debian's ``golang-github-pion-webrtc.v3-dev``)
per lab LiveKit server, driven over its stdin/stdout, one JSON object per line.

It is configured as LiveKit configures its SFU: one UDP port for every session (UDP mux, like
LiveKit's ``rtc.udp_port`` 7882), passive ICE/TCP on one TCP port (7881), the answering side a
DTLS server, full ICE, no mDNS, host candidates on the lab's addresses only. It forwards RTP
between participants (audio; video, one simulcast layer) with NACK, RTCP reports, transport-cc
feedback and PLI relayed to the publisher; data channel messages come up to Python, where the
signaling (:mod:`lkice.lab.livekit_server`, the official protobufs) asserts the sender and sends
them on.

:class:`PionMedia` is the process; :class:`PionTransport` one server-side PeerConnection with the
surface of the aiortc transport (:class:`lkice.lab.sfu_server.SfuTransport`), plus tracks,
ICE restarts and candidates that trickle as pion finds them (``on_candidate``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkice.lab.gobuild import GOCODE, build_go_program, built_program
from lkice.lab.server import LabError, visible
from lkice.lab.sfu_server import (
    LOSSY_LABEL,
    RELIABLE_LABEL,
    CandidateInit,
    IpNetwork,
    allowed_remote,
)

__all__ = [
    "LOSSY_LABEL",
    "RELIABLE_LABEL",
    "PionMedia",
    "PionTrack",
    "PionTransport",
    "build_pion_sfu",
    "pion_sfu_path",
    "pion_sfu_unavailable_reason",
]

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "go" / "pionsfu"
PION_WEBRTC_SOURCE = GOCODE / "github.com" / "pion" / "webrtc"
INSTALL_HINT = (
    "pion/webrtc not available: apt-get install golang-go golang-github-pion-webrtc.v3-dev "
    "(or set LKICE_PION_SFU to a built lkice pionsfu binary)"
)
READY_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
MAX_LINE = 4 << 20  # an SDP is ~10 KB; a data packet at most LiveKit's 15 KiB, base64
STDERR_TAIL = 50


def pion_sfu_unavailable_reason() -> str | None:
    """Why no pion media plane can be had here, or None when one can (built or buildable)."""
    override = os.environ.get("LKICE_PION_SFU")
    if override is not None:
        if os.access(override, os.X_OK) and Path(override).is_file():
            return None
        return f"LKICE_PION_SFU={override!r} is not an executable file"
    if shutil.which("go") is None or not PION_WEBRTC_SOURCE.is_dir():
        return INSTALL_HINT
    return None


def build_pion_sfu(timeout: float | None = None) -> Path:
    """Build the media plane (cached per source hash) and return its path."""
    if shutil.which("go") is None or not PION_WEBRTC_SOURCE.is_dir():
        raise LabError(INSTALL_HINT)
    if timeout is None:
        return build_go_program("pionsfu", SOURCE_DIR)
    return build_go_program("pionsfu", SOURCE_DIR, timeout=timeout)


def pion_sfu_path(build: bool = True) -> str | None:
    """``LKICE_PION_SFU`` if set, else the cached build of this source (built now if
    ``build``), else None; a failing build raises :class:`LabError`."""
    if pion_sfu_unavailable_reason() is not None:
        return None
    override = os.environ.get("LKICE_PION_SFU")
    if override is not None:
        return override
    binary = built_program("pionsfu", SOURCE_DIR)
    if binary.is_file():
        return str(binary)
    return str(build_pion_sfu()) if build else None


@dataclass(frozen=True)
class PionTrack:
    """A track (one simulcast layer of it) a participant started sending."""

    track_id: str  # the msid track id: LiveKit's clients make it the AddTrackRequest cid
    stream_id: str
    kind: str  # "audio" | "video"
    rid: str  # simulcast layer ("q", "h", "f"), "" without simulcast
    mime: str


class PionMedia:
    """The media process. ``await start()`` (or ``async with``), then :meth:`transport` per
    PeerConnection; ``udp``/``tcp`` are the ``(address, port)`` pairs it listens on (port 0: a
    free one; :attr:`udp_ports` / :attr:`tcp_ports` tell)."""

    def __init__(
        self,
        udp: Sequence[tuple[str, int]],
        tcp: Sequence[tuple[str, int]] = (),
        log_level: str = "warn",
    ) -> None:
        if not udp and not tcp:
            raise ValueError("the media plane needs a UDP or a TCP address")
        self.udp = list(udp)
        self.tcp = list(tcp)
        self.log_level = log_level
        self.udp_ports: list[int] = []
        self.tcp_ports: list[int] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._tail: list[str] = []
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._peers: dict[str, PionTransport] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._ids = itertools.count(1)

    @staticmethod
    def _address(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> PionMedia:
        binary = await asyncio.get_running_loop().run_in_executor(None, pion_sfu_path)
        if binary is None:
            raise LabError(pion_sfu_unavailable_reason() or INSTALL_HINT)
        argv = [binary, "-log", self.log_level]
        for host, port in self.udp:
            argv += ["-udp", self._address(host, port)]
        for host, port in self.tcp:
            argv += ["-tcp", self._address(host, port)]
        self._process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self._stderr = asyncio.create_task(self._read_stderr())
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except (asyncio.TimeoutError, LabError) as exc:
            await self.stop()
            tail = visible("\n".join(self._tail[-10:])) or "(no output)"
            raise LabError(
                f"the pion media plane did not start: {exc or 'timeout'}: {tail}"
            ) from None
        self.udp_ports = [int(p) for p in ready.get("udp") or []]
        self.tcp_ports = [int(p) for p in ready.get("tcp") or []]
        return self

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(Exception):
                    process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 3.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in (self._reader, self._stderr):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(LabError("the pion media plane stopped"))
        self._waiting.clear()

    async def __aenter__(self) -> PionMedia:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _read_stderr(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        stream = self._process.stderr
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._tail = [*self._tail[-STDERR_TAIL:], text]
            log.debug("pionsfu: %s", visible(text))

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        stream = self._process.stdout
        try:
            while True:
                line = await stream.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.debug("pionsfu: undecodable line")
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)
        finally:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(LabError("the process ended"))
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(LabError("the pion media plane ended"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "re" in message:
            future = self._waiting.pop(int(message["re"]), None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        event = message.get("ev")
        if event == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
            return
        peer = self._peers.get(str(message.get("pc", "")))
        if peer is not None:
            peer._event(str(event), message)

    def _write(self, message: dict[str, Any]) -> None:
        if self._process is None or self._process.stdin is None:
            raise LabError("the pion media plane is not running")
        self._process.stdin.write(json.dumps(message).encode() + b"\n")

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; its reply, or :class:`LabError` with pion's error text."""
        seq = next(self._seq)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        try:
            self._write({"seq": seq, "op": op, **fields})
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            self._waiting.pop(seq, None)
        if "error" in reply:
            raise LabError(f"pion {op}: {visible(str(reply['error']))}")
        return reply

    def notify(self, op: str, **fields: Any) -> None:
        """A request without a reply (data sends)."""
        self._write({"op": op, **fields})

    async def stats(self) -> dict[str, int]:
        """Counters of the media plane: RTP packets in and out (``rtp_in``, ``rtp_out``),
        PLIs sent to publishers, data messages in, ICE/TCP connections accepted."""
        reply = await self.request("stats")
        return {str(k): int(v) for k, v in dict(reply.get("stats") or {}).items()}

    def transport(
        self,
        target: int,
        peer_networks: Sequence[IpNetwork],
        on_data: Callable[[str, bytes], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        on_candidate: Callable[[CandidateInit], None] | None = None,
        on_track: Callable[[PionTrack], None] | None = None,
        udp: bool = True,
        tcp: bool = True,
        single: bool = False,
    ) -> PionTransport:
        """A new server-side PeerConnection (``target``: LiveKit's SignalTarget, 0 publisher,
        1 subscriber); ``udp``/``tcp`` choose the candidates it offers; ``single``: the one
        PeerConnection of a ``/rtc/v1`` session (forwarded tracks ride the client's offer).
        Created asynchronously, in order: the process handles requests one after the other,
        so a failure to create it shows on the first request that uses it."""
        pc_id = f"pc{next(self._ids)}"
        transport = PionTransport(
            self, pc_id, target, peer_networks, on_data, on_state, on_candidate, on_track, single
        )
        self._peers[pc_id] = transport
        role = "subscriber" if target == 1 else "publisher"
        self.notify("new", pc=pc_id, role=role, udp=udp, tcp=tcp, single=single)
        return transport


class PionTransport:
    """One server-side PeerConnection in the pion media plane (see :class:`PionMedia`)."""

    def __init__(
        self,
        media: PionMedia,
        pc_id: str,
        target: int,
        peer_networks: Sequence[IpNetwork],
        on_data: Callable[[str, bytes], None] | None,
        on_state: Callable[[str], None] | None,
        on_candidate: Callable[[CandidateInit], None] | None,
        on_track: Callable[[PionTrack], None] | None,
        single: bool,
    ) -> None:
        self.media = media
        self.pc_id = pc_id
        self.target = target
        self.peer_networks = list(peer_networks)
        self.single = single
        self._on_data = on_data
        self._on_state = on_state
        self._on_candidate = on_candidate
        self._on_track = on_track
        self.connection_state = "new"
        self.ignored_candidates: list[str] = []
        self.tracks: list[PionTrack] = []
        self.mid_to_track: dict[str, str] = {}
        self.awaiting: dict[str, str] = {}  # sid -> kind: forwards waiting for a client offer
        self._pairs: list[dict[str, str]] = []
        self._tasks: set[asyncio.Future[None]] = set()
        # Candidates that arrive while a description is being made go out with it (the
        # caller sends the description, then these), never ahead of it.
        self._holding = 0
        self._held: list[CandidateInit] = []
        self._channels = False
        self._closed = False

    def _event(self, event: str, message: dict[str, Any]) -> None:
        if event == "candidate":
            init = message.get("candidate") or {}
            if isinstance(init, dict):
                mid = init.get("sdpMid")
                index = init.get("sdpMLineIndex")
                candidate = CandidateInit(
                    candidate=str(init.get("candidate", "")),
                    sdp_mid=mid if isinstance(mid, str) else None,
                    sdp_mline_index=index if isinstance(index, int) else None,
                )
                if self._holding:
                    self._held.append(candidate)
                elif self._on_candidate is not None:
                    self._on_candidate(candidate)
        elif event == "state":
            self.connection_state = str(message.get("state", ""))
            if self.connection_state == "connected":
                task = asyncio.ensure_future(self._remember_pairs())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._on_state is not None:
                self._on_state(self.connection_state)
        elif event == "data":
            if self._on_data is not None:
                try:
                    payload = base64.b64decode(str(message.get("data", "")), validate=True)
                except ValueError:
                    return
                self._on_data(str(message.get("label", "")), payload)
        elif event == "track":
            track = PionTrack(
                track_id=str(message.get("track", "")),
                stream_id=str(message.get("stream", "")),
                kind=str(message.get("kind", "")),
                rid=str(message.get("rid", "")),
                mime=str(message.get("mime", "")),
            )
            self.tracks.append(track)
            if self._on_track is not None:
                self._on_track(track)

    def _mids(self, reply: dict[str, Any]) -> None:
        mids = reply.get("mids")
        if isinstance(mids, dict):
            self.mid_to_track = {str(k): str(v) for k, v in mids.items()}
            for sid in self.mid_to_track.values():
                self.awaiting.pop(sid, None)

    def awaiting_kinds(self) -> tuple[int, int]:
        """(audio, video) sections the client should add for the forwards still waiting."""
        audio = sum(1 for kind in self.awaiting.values() if kind == "audio")
        return audio, len(self.awaiting) - audio

    # -- negotiation ------------------------------------------------------------------------

    async def _describe(self, op: str, **fields: Any) -> tuple[str, list[CandidateInit]]:
        """A description, and the candidates found meanwhile (later ones go to
        ``on_candidate``)."""
        self._holding += 1
        try:
            reply = await self.media.request(op, pc=self.pc_id, **fields)
        finally:
            self._holding -= 1
            held, self._held = (self._held, []) if not self._holding else ([], self._held)
        self._mids(reply)
        return str(reply["sdp"]), held

    async def create_offer(self, restart: bool = False) -> tuple[str, list[CandidateInit]]:
        """Subscriber side: the SFU's data channels (created once) and an offer."""
        if not self._channels:
            await self.media.request("channels", pc=self.pc_id)
            self._channels = True
        return await self._describe("offer", restart=restart)

    async def accept_answer(self, sdp: str) -> None:
        await self.media.request("remote_answer", pc=self.pc_id, sdp=sdp)

    async def answer(self, sdp: str) -> tuple[str, list[CandidateInit]]:
        """Publisher side: answer the client's offer (an ICE restart when its credentials
        changed, as pion detects)."""
        return await self._describe("answer", sdp=sdp)

    async def add_candidate(self, init: CandidateInit) -> bool:
        """A trickled remote candidate; False (and nothing sent to it) when its address is
        outside the lab's networks or it does not parse."""
        allowed = allowed_remote(init, self.peer_networks, self.ignored_candidates)
        if allowed is None:
            return False
        value, _ = allowed
        index = init.sdp_mline_index
        if init.sdp_mid is None and index is None:
            index = 0
        try:
            await self.media.request(
                "candidate",
                pc=self.pc_id,
                candidate={
                    "candidate": "candidate:" + value,
                    "sdpMid": init.sdp_mid,
                    "sdpMLineIndex": index,
                },
            )
        except LabError as exc:
            log.debug("candidate refused: %s", exc)
            return False
        return True

    # -- data -------------------------------------------------------------------------------

    def open_sfu_channels(self) -> None:
        """The SFU's own ``_reliable``/``_lossy`` channels (on a ``/rtc/v1`` session's one
        PeerConnection); asynchronous, ordered before any later request to this process."""
        if not self._channels:
            self._channels = True
            self.media.notify("channels", pc=self.pc_id)

    def send(self, label: str, payload: bytes) -> bool:
        """Send on one of the SFU's own channels (queued in pion, bounded, until it opens)."""
        if self._closed or not self._channels:
            return False
        try:
            self.media.notify(
                "send", pc=self.pc_id, label=label, data=base64.b64encode(payload).decode()
            )
        except LabError:
            return False
        return True

    # -- media ------------------------------------------------------------------------------

    async def forward(self, source: PionTransport, track_id: str, sid: str, stream: str) -> bool:
        """Send ``source``'s track on to this PeerConnection as ``sid``; True when it needs a
        new offer from the client (``/rtc/v1``: pion attaches it at the client's next offer)
        rather than from the server."""
        reply = await self.media.request(
            "forward", src=source.pc_id, track=track_id, dst=self.pc_id, sid=sid, stream=stream
        )
        if reply.get("pending"):
            kind = next((t.kind for t in source.tracks if t.track_id == track_id), "video")
            self.awaiting[sid] = kind
            return True
        return False

    async def unforward(self, sid: str) -> None:
        await self.media.request("unforward", dst=self.pc_id, sid=sid)

    async def pairs(self) -> list[dict[str, str]]:
        """The selected candidate pair, as pion sees it (protocol, type and address of each
        side); empty before ICE has selected one."""
        reply = await self.media.request("pairs", pc=self.pc_id)
        return [{str(k): str(v) for k, v in p.items()} for p in reply.get("pairs") or []]

    async def _remember_pairs(self) -> None:
        with contextlib.suppress(LabError, asyncio.TimeoutError):
            self._pairs = await self.pairs()

    def selected_pairs(self) -> list[tuple[str, str]]:
        """(local transport, remote candidate type) of the pair selected when the connection
        last became connected, as the aiortc transport reports it."""
        return [(p["local_protocol"], p["remote_type"]) for p in self._pairs]

    @property
    def selected_pair(self) -> dict[str, str] | None:
        """The whole pair (protocol, type, address of each side) last selected."""
        return self._pairs[0] if self._pairs else None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(LabError, asyncio.TimeoutError):
            await self.media.request("close", pc=self.pc_id)
        self.media._peers.pop(self.pc_id, None)
