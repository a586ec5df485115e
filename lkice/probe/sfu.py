"""Full WebRTC sessions to the LiveKit SFU, one per path: the direct path (host candidates only,
no STUN/TURN) and, for each TURN URI the server hands out, a forced-relay path through it.

Each path joins the room twice over signaling, as LiveKit's clients do: ``/rtc/v1`` first (one
PeerConnection, which the agent offers inside the join request with ``_reliable`` and
``_lossy`` data channels; the SFU's own channels arrive on it; the SFU is the ICE-controlled
side), and on a 404 from an older server ``/rtc`` (v0: the server offers the *subscriber*
PeerConnection, the agent offers the *publisher* one); candidates trickle both ways. It times,
from the start of negotiation, ICE connected and DTLS connected. Then participant A sends a small
``DataPacket`` on ``_lossy`` every ``interval`` for ``duration`` seconds, participant B echoes
each back through the SFU, and A's arrival times give the round trip A -> SFU -> B -> SFU -> A
(both participants on the same path, so the path is crossed four times: ``ECHO_CROSSINGS``).
The train starts only once the path has carried an echo end to end (a warm-up, left out of the
figures: a data channel can report open seconds before SCTP carries anything through the SFU).

aiortc underneath: one TURN URL per PeerConnection (the reason for one session per path);
``turns:`` is verified with the user's trust settings only by handing aiortc's TURN client an
SSLContext (see ``_trust_for_turns``), ``turns:?transport=udp`` (DTLS to TURN) is not
supported, and a failed TURN allocation is swallowed by aioice (no relay candidate, no error),
so when a relay path gathers nothing the allocation is retried once, directly, to say why.
aiortc has no ICE-TCP: the SFU's passive TCP candidates seen in the direct session get one
STUN connectivity check each with that session's ICE credentials (``probe/icetcp.py``), each
reported as its own "sfu"/"tcp" path. aiortc is imported lazily: it imports PyAV.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from lkice import __version__
from lkice import stun as codec
from lkice.credentials import Secret
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.livekit import LiveKitUrl
from lkice.probe.icetcp import IceCredentials, check_ice_tcp, ice_credentials
from lkice.probe.proxy import Proxies
from lkice.probe.signal import IceServer
from lkice.probe.train import LoopMonitor
from lkice.quality import ECHO_CROSSINGS, Sample, TrainRecord, Warmup, summarize
from lkice.report import ErrorInfo, PathResult

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCIceCandidate, RTCPeerConnection
    from livekit.protocol import models, rtc

    from lkice.probe.releases import Releases

__all__ = ["GivenTokens", "SfuSettings", "probe_sfu_paths", "room_token_factory"]

log = logging.getLogger(__name__)
# websockets logs request headers (the token) at DEBUG: a logger that never emits DEBUG.
_WS_LOG = logging.getLogger("lkice.probe.sfu.websocket")
_WS_LOG.setLevel(logging.INFO)

PROTOCOL_VERSION = 16
RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
ECHO_TOPIC = "lkice-echo"
CLOSE_S = 8.0  # leaving the room after a finished session: bounded, whatever the server does
CANCEL_CLOSE_S = 0.3  # after a deadline or Ctrl-C: the partial report must not wait
_ECHO = struct.Struct("!4sI")  # tag, sequence number
SUPPORTED_RELAY = {("turn", "udp"), ("turn", "tcp"), ("turns", "tcp")}
ICE_CHECK_TIMEOUT_S = 1.0  # one ICE check on the selected pair (aioice gives up at 0.5 s)


@dataclass(frozen=True)
class SfuSettings:
    # Seconds of echo train (two participants). 0: setup only, no train: ICE, DTLS, the data
    # channels open and one data round trip through the SFU, the first echo that comes back.
    duration: float = 3.0
    interval: float = 0.02  # seconds between packets
    join_timeout: float = 10.0  # WebSocket upgrade + JoinResponse
    # Negotiation start -> ICE connected, every PC; then as long again for DTLS.
    ice_timeout: float = 10.0
    # A path whose client leg is UDP (direct, TURN/UDP): ICE connected within this instead, as
    # every UDP probe answers within --udp-timeout (None: ``ice_timeout``).
    udp_timeout: float | None = None
    ice_checks: int = 5  # STUN Binding requests on the selected pair once connected (its RTT)
    # Signaling as LiveKit's clients do first: /rtc/v1, one PeerConnection that the agent
    # offers (the SFU is ICE-controlled); /rtc (v0, two PeerConnections) when the server has
    # no /rtc/v1, or with False.
    single_pc: bool = True
    channel_timeout: float = 5.0  # DTLS connected -> every data channel open
    echo_grace: float = 1.0  # after the last send, how long late echoes are awaited
    # Before the train: how long warm-up probes may take to come back end to end (an SCTP
    # retransmission timeout is 3 s at first: RFC 4960's RTO.Initial, aiortc's and pion's).
    warmup_timeout: float = 5.0
    ice_tcp_timeout: float = 5.0  # ICE/TCP check: TCP connect, then the answer, each
    tls_context: ssl.SSLContext | None = None  # wss:// signaling
    # The user added trust anchors (--ca-file). aiortc checks turns: certificates against the
    # system store only, so a verification failure then says nothing about the network.
    custom_ca: bool = False
    # The web proxy for the signal WebSocket, when one applies (media never goes through it:
    # aiortc cannot tunnel TURN through an HTTP proxy).
    proxies: Proxies = field(default_factory=Proxies)
    # What the STUN/TURN engine, running at the same time, already found for a TURN URI (its
    # error, or None): reused to explain a relay path with no candidate, instead of asking the
    # TURN server a second time and waiting for it again.
    known: Callable[[str], Awaitable[ErrorInfo | None]] | None = None
    # The agent's own loop stalls while the sessions run (the job's monitor, or one of
    # ``probe_sfu_paths``' own): echoes that came in then are left out of jitter, as on the
    # TURN trains (``lkice.quality``).
    monitor: LoopMonitor | None = None
    # Where a concluded session's goodbye (leave, closes) goes to finish after the verdict,
    # bounded, as the TURN releases do (``lkice run``); None: awaited before the path ends.
    releases: Releases | None = None


def room_token_factory(
    api_key: str, api_secret: Secret, room: str | None = None, ttl_s: int = 600
) -> Callable[[str], Secret]:
    """``make_token(identity)``: short-lived tokens for one diagnostic room (a fresh unique one
    unless ``room`` is given), as :func:`lkice.livekit.diagnostic_token` mints them."""
    from datetime import timedelta

    from lkice.livekit import mint_token

    name = room or f"lkice-diag-{secrets.token_hex(4)}"

    def make_token(identity: str) -> Secret:
        return mint_token(api_key, api_secret, identity, name, timedelta(seconds=ttl_s))

    return make_token


@dataclass(frozen=True)
class GivenTokens:
    """Tokens the user gave (``--token``, ``--token2``), not minted: each carries its own
    identity, so the paths run one after another (LiveKit drops a participant when its identity
    joins again). With one token, each path seats one participant: ICE, DTLS and the data
    channels to the SFU, not the data round trip through it, which needs a second."""

    first: Secret
    second: Secret | None = None


ONE_PARTICIPANT_NOTE = (
    "data round trip through the SFU not tested: it needs a second participant (a second "
    "token, --token2, or --api-key/--api-secret); with one it would show that the SFU forwards "
    "data between participants, with that round trip's delay (and, with a quality train, its "
    "loss and jitter)"
)


@dataclass
class _Path:
    result: PathResult
    server: IceServer | None  # None: the direct path
    uri: str | None = None  # the URI as given to aiortc (transport made explicit)
    ice_tcp: _IceTcp | None = None  # the direct path: checks of the SFU's TCP candidates


class _IceTcp:
    """ICE/TCP checks (probe/icetcp.py) of the SFU's passive TCP candidates that one direct
    session learns; each is its own path in the report."""

    MAX_CANDIDATES = 2  # LiveKit offers one per interface; two covers IPv4 + IPv6

    def __init__(self, url: LiveKitUrl, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.results: list[PathResult] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: set[tuple[str, int]] = set()

    def offer(self, address: tuple[str, int], credentials: IceCredentials | None) -> None:
        if address in self._seen or len(self._seen) >= self.MAX_CANDIDATES:
            return
        self._seen.add(address)
        label = codec.format_address(address)
        result = PathResult(
            server=label, transport="tcp", kind="sfu", uri=self.url.given, address=label
        )
        result.timings_ms.update({"ice": None, "dtls": None})
        result.notes.append(
            "ICE/TCP (RFC 6544) to the SFU's passive TCP candidate: one STUN connectivity check "
            "with the direct session's ICE credentials; DTLS and data over ICE/TCP were not "
            "tested (the agent's WebRTC stack, aiortc, has no ICE-TCP)"
        )
        self.results.append(result)
        self._tasks.append(asyncio.create_task(self._check(address, credentials, result)))

    async def _check(
        self, address: tuple[str, int], credentials: IceCredentials | None, result: PathResult
    ) -> None:
        if credentials is None:
            result.fail(
                ProbeError(
                    ErrorKind.PROTOCOL,
                    "the SFU's answer carried no ICE ufrag/password to check ICE/TCP with",
                    Phase.BINDING,
                )
            )
            return
        result.phase = Phase.CONNECT
        try:
            answer = await check_ice_tcp(
                address, credentials, controlling=True, timeout=self.timeout
            )
        except ProbeError as exc:
            result.fail(exc)
            return
        result.timings_ms["connect"] = answer.connect_ms
        result.timings_ms["binding"] = answer.binding_ms
        result.mapped_address = answer.mapped_address
        result.ok = True
        result.phase = None

    async def wait(self) -> None:
        """Bounded: each check gives up after ``timeout`` (connect, then answer)."""
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        """Cut short (deadline, Ctrl-C): the checks end now; their results say where they were."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _relay_uri(server: IceServer) -> tuple[str | None, str]:
    """(URI for aiortc or None if aiortc cannot use it, client-leg transport for the report)."""
    uri = server.uri
    if uri.secure:
        transport = uri.transport or "tcp"
        leg = "tls" if transport == "tcp" else "udp"  # turns:?transport=udp: DTLS, untested
    else:
        transport = uri.transport or "udp"
        leg = transport
    if (uri.scheme, transport) not in SUPPORTED_RELAY:
        return None, leg
    if ":" in uri.host:
        return None, leg  # aiortc's URI parser fails on IPv6 literals
    return f"{uri.scheme}:{uri.server}?transport={transport}", leg


async def probe_sfu_paths(
    url: LiveKitUrl,
    make_token: Callable[[str], Secret] | GivenTokens,
    ice_servers: Sequence[IceServer],
    settings: SfuSettings,
    on_path_done: Callable[[PathResult], None] | None = None,
    out: list[PathResult] | None = None,
) -> list[PathResult]:
    """One full session per path. With minted tokens (``make_token(identity)``), all paths at
    once, each with two participants of its own joined at once (they share nothing but the
    room); with :class:`GivenTokens`, one path after another (fixed identities). Never raises
    for a path failure. ``out`` gets every path's result as soon as it exists, so a caller that
    cancels this (deadline, Ctrl-C) keeps what was measured; each unfinished result's ``phase``
    names the step it was in."""
    direct = _Path(PathResult(server=url.server, transport="udp", kind="sfu", uri=url.given), None)
    direct.ice_tcp = _IceTcp(url, settings.ice_tcp_timeout)
    paths = [direct]
    for server in ice_servers:
        if server.uri.kind != "turn":
            continue
        uri, leg = _relay_uri(server)
        result = PathResult(server=url.server, transport=leg, kind="sfu", uri=str(server.uri))
        paths.append(_Path(result, server, uri))
    for path in paths:
        path.result.timings_ms.update({"ice": None, "dtls": None})
        path.result.relay = None if path.server is None else str(path.server.uri)

    async def one(path: _Path) -> None:
        await _one(url, make_token, path, settings)
        if on_path_done is not None:
            for result in [path.result, *(path.ice_tcp.results if path.ice_tcp else [])]:
                on_path_done(result)

    if out is not None:
        # ICE/TCP results join the direct session's list as candidates arrive: ``out`` holds
        # that list itself (see the return below), filled in place.
        out[:] = [path.result for path in paths]
        direct.ice_tcp.results = _Appended(out, 1)
    own = settings.monitor is None  # a caller's monitor (the job's) is started and stopped there
    monitor = LoopMonitor() if own else settings.monitor
    assert monitor is not None
    if own:
        monitor.start()
        settings = replace(settings, monitor=monitor)
    try:
        with _loopback_gathering(url.host):
            if isinstance(make_token, GivenTokens):
                for path in paths:
                    await one(path)
            else:
                await asyncio.gather(*(one(path) for path in paths))
    finally:
        if own:
            await monitor.stop()
    return [direct.result, *direct.ice_tcp.results, *(path.result for path in paths[1:])]


async def _close_all(parts: Sequence[_Participant], budget: float) -> None:
    await asyncio.gather(*(part.close(budget) for part in parts))


async def _channels_ready(parts: Sequence[_Participant]) -> None:
    # One after the other, not gather: a gather cut by wait_for's timeout or a cancellation
    # ends with an exception nobody retrieves, which asyncio then logs.
    for part in parts:
        await part.channels_ready()


async def _connect_all(parts: Sequence[_Participant]) -> None:
    """Every participant joins and connects at once. The first failure is the path's (the
    others are cancelled, then collected); a cancellation cancels them all."""
    tasks = [asyncio.ensure_future(part.connect()) for part in parts]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on the finished ones
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
    if failed:
        raise failed[0].exception()  # type: ignore[misc]


def _ice_connection(pc: RTCPeerConnection) -> Any:
    """aioice's Connection under ``pc``'s (bundled) ICE transport, or None. aiortc's private
    ``_connection`` (checked against aiortc 1.16 and aioice 0.13)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    return getattr(sctp.transport.transport, "_connection", None)


async def _ice_rtt(pc: RTCPeerConnection, count: int, interval: float) -> dict[str, Any] | None:
    """The round trip of ``count`` STUN Binding requests (ICE connectivity checks, no
    nomination, no retransmission) on the candidate pair ICE selected, one every ``interval``:
    the media path's RTT (through the relay, on a relay path). None when aioice shows no
    selected pair (its internals: ``Connection._nominated``, ``build_request``)."""
    from aioice import stun

    connection = _ice_connection(pc)
    nominated = getattr(connection, "_nominated", None)
    pair = nominated.get(1) if isinstance(nominated, dict) else None
    password = getattr(connection, "remote_password", None)
    if pair is None or not isinstance(password, str) or not hasattr(connection, "build_request"):
        return None
    key = password.encode("utf-8")

    async def check(i: int) -> float | None:
        await asyncio.sleep(i * interval)
        request = connection.build_request(pair, nominate=False)
        start = time.perf_counter()
        try:
            await asyncio.wait_for(
                pair.protocol.request(
                    request, pair.remote_addr, integrity_key=key, retransmissions=0
                ),
                ICE_CHECK_TIMEOUT_S,
            )
        except (stun.TransactionError, asyncio.TimeoutError, OSError, ConnectionError):
            return None
        return (time.perf_counter() - start) * 1000.0

    found = await asyncio.gather(*(check(i) for i in range(count)))
    rtts = sorted(r for r in found if r is not None)
    return {
        "sent": count,
        "received": len(rtts),
        "min_ms": round(rtts[0], 2) if rtts else None,
        "p50_ms": round(rtts[len(rtts) // 2], 2) if rtts else None,
        "max_ms": round(rtts[-1], 2) if rtts else None,
    }


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Collect a cleanup task's outcome so asyncio never logs it as never retrieved (aiortc's
    close raises CancelledError and friends when it is cut short)."""
    if not task.cancelled():
        task.exception()


class _Appended(list[PathResult]):
    """The ICE/TCP results, also inserted into the caller's ``out`` list after the direct
    session's result, in order, the moment each check starts."""

    def __init__(self, out: list[PathResult], at: int) -> None:
        super().__init__()
        self._out, self._at = out, at

    def append(self, item: PathResult) -> None:
        self._out.insert(self._at + len(self), item)
        super().append(item)


def _bound_gathering(pc: RTCPeerConnection, timeout: float) -> None:
    """aioice waits up to 5 s for a TURN allocation while gathering (the ``timeout`` of its
    private ``Connection.get_component_candidates``): ``timeout`` instead, the path's own bound
    (--udp-timeout on a UDP leg), so an Allocate that UDP never carries gives up with the
    engine's UDP probes. Nothing changes when aiortc's or aioice's private state is not there.
    Call it where :func:`_trust_for_turns` is called."""
    for transport in getattr(pc, "_RTCPeerConnection__iceTransports", None) or ():
        connection = getattr(transport.iceGatherer, "_connection", None)
        if connection is None:
            continue
        original = getattr(connection, "get_component_candidates", None)
        if original is None or getattr(original, "_lkice_bounded", False):
            continue

        def bounded(*args: Any, _original: Any = original, **kwargs: Any) -> Awaitable[list[Any]]:
            kwargs["timeout"] = timeout
            return _original(*args, **kwargs)  # type: ignore[no-any-return]

        bounded._lkice_bounded = True  # type: ignore[attr-defined]
        connection.get_component_candidates = bounded


def _trust_for_turns(pc: RTCPeerConnection, context: ssl.SSLContext | None) -> bool:
    """Make ``pc`` check turns: certificates with ``context`` (the user's --ca-file/--insecure).

    aiortc hands aioice ``turn_ssl=True``, which means the system store only; aioice passes the
    value straight to ``loop.create_connection(ssl=...)``, so an SSLContext works in its place.
    This reaches into aiortc's private state (checked against aiortc 1.16): when that is not
    there, nothing changes and False says so. Call it after the ICE transports exist (a data
    channel or a remote description) and before gathering (setLocalDescription)."""
    if context is None:
        return False
    transports = getattr(pc, "_RTCPeerConnection__iceTransports", None)
    if not transports:
        return False
    for transport in transports:
        connection = getattr(transport.iceGatherer, "_connection", None)
        if connection is None or not hasattr(connection, "turn_ssl"):
            return False
        if connection.turn_ssl is True:
            connection.turn_ssl = context
    return True


@contextlib.contextmanager
def _loopback_gathering(host: str) -> Iterator[None]:
    """aioice never gathers loopback candidates; an SFU on loopback (a lab on this machine) is
    reachable only from loopback, so for it, and only for it, loopback is what is gathered."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        yield
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


async def _one(
    url: LiveKitUrl,
    make_token: Callable[[str], Secret] | GivenTokens,
    path: _Path,
    settings: SfuSettings,
) -> None:
    """One path, or the reason it cannot be tested with this agent's WebRTC stack."""
    if path.server is not None and path.uri is None:
        path.result.fail(
            ProbeError(
                ErrorKind.NOT_TESTED,
                f"not tested: the agent's WebRTC stack (aiortc) cannot use {path.server.uri}"
                " (it supports turn: over UDP or TCP and turns: over TCP, IPv4 or names)",
                Phase.ALLOCATE,
            )
        )
    elif path.server is not None and path.server.credentials is None:
        path.result.fail(
            ProbeError(
                ErrorKind.AUTH_REJECTED,
                "not tested: the server gave no credentials for this TURN server",
                Phase.ALLOCATE,
            )
        )
    else:
        await _probe_path(url, make_token, path, settings)


def _seats(
    make_token: Callable[[str], Secret] | GivenTokens,
) -> list[tuple[str, Callable[[str], Secret]]]:
    """(identity, token maker) of each participant a path seats: two minted ones of a fresh
    identity each, or the given tokens with the identities they carry."""
    from lkice.livekit import token_identity

    if not isinstance(make_token, GivenTokens):
        suffix = secrets.token_hex(3)
        return [(f"lkice-sfu-{suffix}-{n}", make_token) for n in ("a", "b")]
    given = [make_token.first] + ([make_token.second] if make_token.second is not None else [])
    return [(token_identity(token) or "", _fixed(token)) for token in given]


def _fixed(token: Secret) -> Callable[[str], Secret]:
    def make_token(identity: str) -> Secret:
        return token

    return make_token


async def _probe_path(
    url: LiveKitUrl,
    make_token: Callable[[str], Secret] | GivenTokens,
    path: _Path,
    settings: SfuSettings,
) -> None:
    from aiortc import RTCConfiguration, RTCIceServer
    from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

    result = path.result
    if path.server is None or path.uri is None:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        what = "direct (host candidates only, no STUN or TURN)"
    else:
        creds = path.server.credentials
        assert creds is not None
        config = RTCConfiguration(
            iceServers=[
                RTCIceServer(
                    urls=[path.uri],
                    username=creds.username.reveal(),
                    credential=creds.password.reveal(),
                )
            ],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )
        what = f"relay only, through {path.server.uri}"
    ice_timeout, since = settings.ice_timeout, None
    if settings.udp_timeout is not None and result.transport == "udp":
        # Counted from the session's start, as the engine's UDP probes, started with it, are.
        ice_timeout, since = settings.udp_timeout, time.perf_counter()
    parts = [
        _Participant(
            url, identity, maker, config, settings, path, ice_timeout, primary=i == 0, since=since
        )
        for i, (identity, maker) in enumerate(_seats(make_token))
    ]
    a, b = parts[0], (parts[1] if len(parts) > 1 else None)
    a.ice_tcp = path.ice_tcp
    sfu: dict[str, Any] = {
        "participants": len(parts),
        "channels_open": False,
        "data_round_trip": "not_tested",
        "data_rtt_ms": None,
        "ice_rtt": None,
    }
    result.sfu = sfu
    cancelled = False
    warm_note: str | None = None  # how the data echo warmed up, after the session's note
    rtt_task: asyncio.Task[dict[str, Any] | None] | None = None
    try:
        # Joined at once: A's timings are the path's; B only carries the echo.
        await _connect_all(parts)
        result.timings_ms["ice"] = a.ice_ms
        result.timings_ms["dtls"] = a.dtls_ms
        result.address = a.remote_address
        result.relayed_address = a.relayed_address
        assert a.publisher is not None
        # The selected pair's RTT, measured while the data channels open.
        rtt_task = asyncio.ensure_future(
            _ice_rtt(a.publisher, settings.ice_checks, settings.interval)
        )
        result.phase = Phase.QUALITY
        await asyncio.wait_for(_channels_ready(parts), settings.channel_timeout)
        sfu["channels_open"] = True
        if b is not None:
            sfu["data_round_trip"] = "failed"  # until an echo comes back
            if settings.duration <= 0:
                warmup, rtt = await _first_echo(a, b, settings)
                sfu["data_rtt_ms"] = round(rtt, 2)
                sfu["data_round_trip"] = "measured"
            else:
                samples, warmup, settled = await _echo_train(a, b, settings)
                quality = summarize(
                    samples,
                    stream=False,
                    interval=settings.interval,
                    crossings=ECHO_CROSSINGS,
                    warmup=warmup,
                    blind=() if settings.monitor is None else settings.monitor.stalls,
                )
                result.quality = quality.to_dict()
                # Kept for the job, which judges it with the run's other trains and all of
                # the agent's stalls once everything has ended (lkice.job).
                result.trains.by_name["quality"] = TrainRecord(
                    samples=tuple(samples),
                    interval=settings.interval,
                    stream=False,
                    crossings=ECHO_CROSSINGS,
                    warmup=warmup,
                    witness=result.transport == "udp",
                )
                warm_note = _warmup_note(warmup, settled)
                if quality.received == 0:
                    raise ProbeError(
                        ErrorKind.CONNECTION_CLOSED,
                        f"no data packet came back through the SFU ({quality.samples} sent)",
                        Phase.QUALITY,
                    )
                rtts = quality.to_dict().get("rtt_ms")
                sfu["data_rtt_ms"] = rtts.get("p50") if isinstance(rtts, dict) else None
                sfu["data_round_trip"] = "measured"
        sfu["ice_rtt"] = await rtt_task  # bounded: each check gives up within a second
        result.ok = True
        result.phase = None
    except ProbeError as exc:
        result.fail(exc)
    except asyncio.TimeoutError:
        result.fail(
            ProbeError(
                ErrorKind.CONNECTION_CLOSED,
                f"the SFU's data channels did not open within {settings.channel_timeout:g} s",
                result.phase,
            )
        )
    except (OSError, ValueError, RuntimeError, AttributeError, KeyError) as exc:
        # aiortc/aioice failing in a way they do not document: a path result, not a crash.
        log.debug("SFU path %s failed", result.uri, exc_info=True)
        result.fail(
            ProbeError(
                ErrorKind.PROTOCOL,
                f"the WebRTC session failed: {type(exc).__name__}: {exc}",
                result.phase,
            )
        )
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        if rtt_task is not None and not rtt_task.done():
            rtt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rtt_task
        # Cut short (deadline, Ctrl-C): end the checks and leave the room within a fraction
        # of a second, so the partial report comes at once.
        if path.ice_tcp is not None:
            if cancelled:
                await path.ice_tcp.cancel()
            else:
                await path.ice_tcp.wait()  # before leaving: the checks use this session's ufrag
        budget = CANCEL_CLOSE_S if cancelled else CLOSE_S
        closing = _close_all(parts, budget)
        if settings.releases is not None and not cancelled:
            settings.releases.later(closing)  # the leave goes now; the verdict does not wait
        else:
            await closing
    if b is None:
        data = "; " + ONE_PARTICIPANT_NOTE
    elif settings.duration <= 0:
        data = (
            ", then one data packet A -> SFU -> B -> SFU -> A on the lossy channel (the first "
            "echo to come back; no quality train was asked for)"
        )
    else:
        data = ", data-channel round trip A -> SFU -> B -> SFU -> A on the lossy channel"
    who = "one participant" if b is None else "two participants, joined at once"
    note = (
        f"full WebRTC session to the SFU, {what}, {who}: {_signaling_words(a.signal_path)}, "
        "the data channels to the SFU opened, RTT from STUN connectivity checks on the "
        "selected candidate pair"
        f"{data}; no audio or video was sent"
    )
    if path.ice_tcp is not None:
        found = len(path.ice_tcp.results)
        note += (
            f"; the SFU offered {found} ICE/TCP candidate(s), each checked as its own path"
            if found
            else "; the SFU offered no ICE/TCP candidate (LiveKit's rtc.tcp_port, 7881 by "
            "default, is off or not advertised)"
        )
    result.notes.append(note)
    if warm_note is not None:
        result.notes.append(warm_note)


class _EchoEnd(Protocol):
    """What the echo train needs of a participant (``_Participant``; a fake one in tests)."""

    identity: str
    on_data: Callable[[models.DataPacket], None] | None

    def send_user(self, payload: bytes, destination: str) -> None: ...


async def _echo_train(
    a: _EchoEnd, b: _EchoEnd, settings: SfuSettings
) -> tuple[list[Sample], Warmup, bool]:
    """A's probes echoed by B, after a warm-up: probes (their own tag) every interval until the
    path has carried one end to end on a channel already open, i.e. one sent after the first
    echo came back has come back too (whatever was queued before it has drained). Returns the
    train, the warm-up and whether it settled so (else it ran out of ``warmup_timeout`` after
    a first echo, and the train starts anyway). Raises ProbeError when nothing came back."""
    warm_tag, tag = secrets.token_bytes(4), secrets.token_bytes(4)
    while tag == warm_tag:
        tag = secrets.token_bytes(4)
    warm_sent: dict[int, float] = {}
    warm_back: dict[int, float] = {}
    first_back: list[float] = []  # when the first warm-up echo came back
    ready = asyncio.Event()  # the path carried an echo end to end on an open channel
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    done = asyncio.Event()
    count = max(1, round(settings.duration / settings.interval))

    def on_a(packet: models.DataPacket) -> None:
        now = time.perf_counter()
        try:
            got_tag, seq = _ECHO.unpack(packet.user.payload)
        except struct.error:
            return
        if got_tag == tag and seq in sent and seq not in received:
            received[seq] = now
            if len(received) == count:
                done.set()
        elif got_tag == warm_tag and seq in warm_sent and seq not in warm_back:
            warm_back[seq] = now
            if not first_back:
                first_back.append(now)
            elif warm_sent[seq] >= first_back[0]:
                ready.set()

    _echo_back(a, b)
    a.on_data = on_a
    begin = time.perf_counter()
    deadline = begin + settings.warmup_timeout
    seq = 0
    while not ready.is_set() and time.perf_counter() < deadline:
        warm_sent[seq] = time.perf_counter()
        a.send_user(_ECHO.pack(warm_tag, seq), b.identity)
        seq += 1
        delay = min(begin + seq * settings.interval, deadline) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    start = time.perf_counter()
    settled = ready.is_set()
    warmup = Warmup(
        probes=len(warm_sent),
        answered=len(warm_back),
        first_echo_ms=(first_back[0] - begin) * 1000.0 if first_back else None,
        ms=(start - begin) * 1000.0,
    )
    if not first_back:
        raise ProbeError(
            ErrorKind.CONNECTION_CLOSED,
            f"no data packet came back through the SFU within {settings.warmup_timeout:g} s "
            f"({warmup.probes} sent)",
            Phase.QUALITY,
        )
    for seq in range(count):
        delay = start + seq * settings.interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[seq] = time.perf_counter()
        a.send_user(_ECHO.pack(tag, seq), b.identity)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(done.wait(), settings.echo_grace)
    samples = [Sample(seq, sent[seq], received.get(seq)) for seq in range(count)]
    return samples, warmup, settled


def _echo_back(a: _EchoEnd, b: _EchoEnd) -> None:
    """B sends A's probes back to A (to their sender when A's identity is not known: a given
    token whose identity could not be read; its paths run alone in the room then)."""

    def on_b(packet: models.DataPacket) -> None:
        if packet.user.topic != ECHO_TOPIC:
            return
        if a.identity and packet.participant_identity != a.identity:
            return
        b.send_user(packet.user.payload, a.identity or packet.participant_identity)

    b.on_data = on_b


async def _first_echo(a: _EchoEnd, b: _EchoEnd, settings: SfuSettings) -> tuple[Warmup, float]:
    """Setup only: A's probes, one every interval, until the first echoed by B comes back
    (a data channel can report open before SCTP carries anything through the SFU). Returns the
    warm-up and that echo's own round trip in ms; raises ProbeError when none came back within
    ``warmup_timeout``."""
    tag = secrets.token_bytes(4)
    sent: dict[int, float] = {}
    back: list[tuple[int, float]] = []
    came = asyncio.Event()

    def on_a(packet: models.DataPacket) -> None:
        now = time.perf_counter()
        try:
            got_tag, seq = _ECHO.unpack(packet.user.payload)
        except struct.error:
            return
        if got_tag == tag and seq in sent and not back:
            back.append((seq, now))
            came.set()

    _echo_back(a, b)
    a.on_data = on_a
    begin = time.perf_counter()
    deadline = begin + settings.warmup_timeout
    seq = 0
    while not came.is_set():
        now = time.perf_counter()
        if now >= deadline:
            break
        sent[seq] = now
        a.send_user(_ECHO.pack(tag, seq), b.identity)
        seq += 1
        wait = min(begin + seq * settings.interval, deadline) - time.perf_counter()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(came.wait(), max(0.0, wait))
    a.on_data = None
    if not back:
        raise ProbeError(
            ErrorKind.CONNECTION_CLOSED,
            f"no data packet came back through the SFU within {settings.warmup_timeout:g} s "
            f"({len(sent)} sent)",
            Phase.QUALITY,
        )
    got, at = back[0]
    warmup = Warmup(
        probes=len(sent), answered=1, first_echo_ms=(at - begin) * 1000.0, ms=(at - begin) * 1000.0
    )
    return warmup, (at - sent[got]) * 1000.0


def _warmup_note(warmup: Warmup, settled: bool) -> str:
    first = "-" if warmup.first_echo_ms is None else f"{warmup.first_echo_ms:.0f}"
    until = (
        "until the path carried an echo end to end on an open channel"
        if settled
        else "the time allowed, after a first echo but before a second on the open channel"
    )
    return (
        f"data echo warm-up: {warmup.probes} probe(s) over {warmup.ms:.0f} ms before the train "
        f"({until}; first echo back after {first} ms, {warmup.answered} back), left out of "
        "the figures"
    )


def _split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without candidate lines, and the candidates as RTCIceCandidateInit dicts
    (LiveKit carries candidates in trickle messages only)."""
    kept: list[str] = []
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    index, mid = -1, None
    pending: list[str] = []

    def flush() -> None:
        for value in pending:
            if value not in seen:
                seen.add(value)
                found.append({"candidate": value, "sdpMid": mid, "sdpMLineIndex": index})
        pending.clear()

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
            index, mid = index + 1, None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            pending.append(line[len("a=") :])
        elif line != "a=end-of-candidates":
            kept.append(line)
    flush()
    return "\r\n".join(kept) + "\r\n", found


def _signaling_words(path: str) -> str:
    if path == "/rtc/v1":
        return (
            "signaling on /rtc/v1 (one PeerConnection, offered by the agent in the join "
            "request, as LiveKit's clients do), ICE and DTLS timed from that offer"
        )
    return (
        "signaling on /rtc (v0: the server has no /rtc/v1, or it was not asked for), ICE and "
        "DTLS timed from the start of negotiation on the publisher and subscriber "
        "PeerConnections"
    )


class _NoV1(Exception):
    """The server answered ``/rtc/v1`` with 404: it predates the single PeerConnection."""


def _join_request(offer_sdp: str) -> str:
    """``join_request`` of ``/rtc/v1``: base64url(WrappedJoinRequest(gzip(JoinRequest))) with
    the publisher's offer, as LiveKit's clients send it."""
    import base64
    import gzip

    from livekit.protocol import models, rtc

    request = rtc.JoinRequest(
        client_info=models.ClientInfo(
            sdk=models.ClientInfo.PYTHON, version=f"lkice-{__version__}", protocol=PROTOCOL_VERSION
        ),
        connection_settings=rtc.ConnectionSettings(auto_subscribe=True),
        publisher_offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=1),
    )
    wrapped = rtc.WrappedJoinRequest(
        join_request=gzip.compress(request.SerializeToString()),
        compression=rtc.WrappedJoinRequest.GZIP,
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


@dataclass
class _PcState:
    ice_at: float | None = None
    dtls_at: float | None = None
    failed: str | None = None
    remote_set: bool = False
    early: list[Any] = field(default_factory=list)


class _Participant:
    """One participant of the agent: a signal WebSocket and two PeerConnections."""

    def __init__(
        self,
        url: LiveKitUrl,
        identity: str,
        make_token: Callable[[str], Secret],
        config: Any,
        settings: SfuSettings,
        path: _Path,
        ice_timeout: float | None = None,
        primary: bool = True,
        since: float | None = None,
    ) -> None:
        self.url = url
        # ICE connected within this (a UDP leg: --udp-timeout), then DTLS within as long again.
        self.ice_timeout = settings.ice_timeout if ice_timeout is None else ice_timeout
        # When the ICE bound counts from (None: from the start of negotiation).
        self.since = since
        # The first participant's steps are the path's phase (the others' errors carry theirs).
        self.primary = primary
        self.phase: Phase | None = None
        self.identity = identity
        self.make_token = make_token
        self.config = config
        self.settings = settings
        self.path = path
        self.ws: Any = None
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.states: dict[int, _PcState] = {0: _PcState(), 1: _PcState()}  # SignalTarget
        self.out_channels: dict[str, RTCDataChannel] = {}
        self.in_channels: dict[str, RTCDataChannel] = {}
        self.on_data: Callable[[models.DataPacket], None] | None = None
        self.remote_address: str | None = None
        self.relayed_address: str | None = None  # our relay candidate (relay paths)
        self.ice_ms: float | None = None
        self.dtls_ms: float | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._start = 0.0
        self._signal_error: ProbeError | None = None
        # Whether turns: certificates are checked with the user's trust settings (see
        # _trust_for_turns); when not, a verification failure says nothing about the network.
        self.turns_trusted = False
        self.ice_tcp: _IceTcp | None = None  # set on the direct path's first participant
        self.signal_path = "/rtc/v1" if settings.single_pc else "/rtc"
        self._v1_offer: str | None = None

    # -- signaling --------------------------------------------------------------------------

    async def _open(self, publisher_offer: str | None = None) -> rtc.JoinResponse:
        """The signal WebSocket and its JoinResponse: ``/rtc`` (v0), or with the publisher's
        offer ``/rtc/v1`` (one PeerConnection, the offer inside the join request, as LiveKit's
        clients do first); :class:`_NoV1` when the server has no ``/rtc/v1`` (HTTP 404)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import (
            InvalidHandshake,
            InvalidProxy,
            InvalidProxyStatus,
            InvalidStatus,
            ProxyError,
        )

        query = urlencode(
            {
                "auto_subscribe": "1",
                "protocol": PROTOCOL_VERSION,
                "sdk": "python",
                "version": f"lkice-{__version__}",
            }
        )
        endpoint = "/rtc"
        if publisher_offer is not None:
            endpoint = "/rtc/v1"
            query = urlencode({"join_request": _join_request(publisher_offer)})
        token = self.make_token(self.identity)
        ssl_arg: ssl.SSLContext | bool | None = None
        if self.url.secure:
            ssl_arg = self.settings.tls_context or True
        self._step(Phase.WEBSOCKET)
        proxy = self.settings.proxies.for_(self.url.host, self.url.port)
        try:
            self.ws = await connect(
                f"{self.url.ws_url}{endpoint}?{query}",
                additional_headers={"Authorization": f"Bearer {token.reveal()}"},
                user_agent_header=f"lkice/{__version__}",
                open_timeout=self.settings.join_timeout,
                ping_interval=None,
                max_size=4 * 1024 * 1024,
                logger=_WS_LOG,
                ssl=ssl_arg,
                proxy=None if proxy is None else proxy.url(),
            )
        except InvalidProxyStatus as exc:
            # Our own words: the library's would carry the proxy URL, credentials included.
            assert proxy is not None
            status = exc.response.status_code
            raise ProbeError(
                ErrorKind.PROXY,
                f"the proxy {proxy.label} refused the signal WebSocket's CONNECT (HTTP {status})",
                Phase.WEBSOCKET,
            ) from None
        except (ProxyError, InvalidProxy):
            assert proxy is not None
            raise ProbeError(
                ErrorKind.PROXY,
                f"the proxy {proxy.label} did not open a tunnel for the signal WebSocket",
                Phase.WEBSOCKET,
            ) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 404 and publisher_offer is not None:
                raise _NoV1 from None
            body = " ".join(exc.response.body.decode("utf-8", errors="replace").split())[:200]
            kind = (
                ErrorKind.TOKEN_REJECTED if status in (401, 403) else ErrorKind.WEBSOCKET_REJECTED
            )
            raise ProbeError(
                kind, f"WebSocket upgrade refused (HTTP {status}): {body}", Phase.WEBSOCKET
            ) from exc
        except InvalidHandshake as exc:
            raise ProbeError(
                ErrorKind.WEBSOCKET_REJECTED, f"WebSocket upgrade failed: {exc}", Phase.WEBSOCKET
            ) from exc
        peer = self.ws.remote_address
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
            self.remote_address = f"{host}:{peer[1]}"
        self._step(Phase.JOIN)
        try:
            data = await asyncio.wait_for(self.ws.recv(), self.settings.join_timeout)
        except asyncio.TimeoutError:
            raise ProbeError(
                ErrorKind.JOIN_TIMEOUT,
                f"no JoinResponse within {self.settings.join_timeout:g} s after the upgrade",
                Phase.JOIN,
            ) from None
        response = self._parse(data)
        if response.WhichOneof("message") != "join":
            raise ProbeError(
                ErrorKind.PROTOCOL,
                f"the first signal message is {response.WhichOneof('message')!r}, not a join",
                Phase.JOIN,
            )
        return response.join

    @staticmethod
    def _parse(data: Any) -> rtc.SignalResponse:
        from google.protobuf import json_format
        from livekit.protocol import rtc

        response = rtc.SignalResponse()
        try:
            if isinstance(data, str):
                json_format.Parse(data, response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(data)
        except Exception as exc:  # protobuf's DecodeError, json_format.ParseError
            raise ProbeError(
                ErrorKind.PROTOCOL, "a signal message is not a LiveKit SignalResponse", Phase.JOIN
            ) from exc
        return response

    async def _send(self, request: rtc.SignalRequest) -> None:
        await self.ws.send(request.SerializeToString())

    async def _read_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                response = self._parse(await self.ws.recv())
                await self._handle(response)
        except ConnectionClosed:
            self._signal_error = ProbeError(
                ErrorKind.CONNECTION_CLOSED, "the server closed the signal connection", None
            )
        except ProbeError as exc:
            self._signal_error = exc
        except Exception as exc:  # aiortc's errors on a bad SDP, for instance
            self._signal_error = ProbeError(
                ErrorKind.PROTOCOL, f"negotiation failed: {type(exc).__name__}: {exc}", None
            )
        finally:
            self._changed.set()

    async def _handle(self, response: rtc.SignalResponse) -> None:
        from aiortc import RTCSessionDescription
        from aiortc.sdp import candidate_from_sdp
        from livekit.protocol import rtc

        kind = response.WhichOneof("message")
        if kind == "offer":
            if self.subscriber is None:
                return  # /rtc/v1: the agent publishes no media, so nothing to subscribe to
            pc = self.subscriber
            await pc.setRemoteDescription(RTCSessionDescription(response.offer.sdp, "offer"))
            await self._remote_set(rtc.SUBSCRIBER)
            _trust_for_turns(pc, self.settings.tls_context)
            _bound_gathering(pc, self.ice_timeout)
            await pc.setLocalDescription(await pc.createAnswer())
            sdp, candidates = _split_candidates(pc.localDescription.sdp)
            await self._send(
                rtc.SignalRequest(
                    answer=rtc.SessionDescription(type="answer", sdp=sdp, id=response.offer.id)
                )
            )
            await self._trickle(candidates, rtc.SUBSCRIBER)
        elif kind == "answer":
            assert self.publisher is not None
            await self.publisher.setRemoteDescription(
                RTCSessionDescription(response.answer.sdp, "answer")
            )
            for line in response.answer.sdp.splitlines():
                if line.startswith("a=candidate:"):
                    with contextlib.suppress(ValueError, IndexError):
                        self._check_tcp(candidate_from_sdp(line.removeprefix("a=candidate:")))
            await self._remote_set(rtc.PUBLISHER)
        elif kind == "trickle":
            await self._add_candidate(response.trickle)
        elif kind == "leave":
            raise ProbeError(
                ErrorKind.CONNECTION_CLOSED,
                f"the server asked the participant to leave (reason {response.leave.reason})",
                None,
            )

    async def _trickle(self, candidates: list[dict[str, Any]], target: int) -> None:
        from livekit.protocol import rtc

        for init in candidates:
            await self._send(
                rtc.SignalRequest(
                    trickle=rtc.TrickleRequest(
                        candidateInit=json.dumps(init),
                        target=target,  # type: ignore[arg-type]
                    )
                )
            )

    async def _add_candidate(self, trickle: rtc.TrickleRequest) -> None:
        from aiortc.sdp import candidate_from_sdp

        try:
            init = json.loads(trickle.candidateInit)
            value = str(init["candidate"]).removeprefix("a=").removeprefix("candidate:")
        except (ValueError, KeyError, TypeError):
            return
        if not value:
            return  # end of candidates
        try:
            candidate = candidate_from_sdp(value)
        except (ValueError, IndexError):
            return
        mid, index = init.get("sdpMid"), init.get("sdpMLineIndex")
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        target = int(trickle.target)
        pc = self.subscriber if target == 1 else self.publisher
        state = self.states[1 if target == 1 else 0]
        if pc is None:
            return
        if state.remote_set:
            await pc.addIceCandidate(candidate)
            if target != 1:
                self._check_tcp(candidate)
        else:
            state.early.append(candidate)

    def _check_tcp(self, candidate: RTCIceCandidate) -> None:
        """An SFU candidate for the publisher PeerConnection: a passive TCP one gets an ICE/TCP
        check, with the session's credentials (known once the SFU's answer is in)."""
        if self.ice_tcp is None or self.publisher is None:
            return
        if candidate.protocol.lower() != "tcp" or candidate.tcpType != "passive":
            return
        # Only called once the SFU's answer is set, so both descriptions exist.
        local, remote = self.publisher.localDescription, self.publisher.remoteDescription
        self.ice_tcp.offer((candidate.ip, candidate.port), ice_credentials(local.sdp, remote.sdp))

    async def _remote_set(self, target: int) -> None:
        pc = self.subscriber if target == 1 else self.publisher
        assert pc is not None
        state = self.states[target]
        state.remote_set = True
        early, state.early = state.early, []
        for candidate in early:
            await pc.addIceCandidate(candidate)
            if target != 1:
                self._check_tcp(candidate)

    async def _ping_loop(self, interval: float) -> None:
        from livekit.protocol import rtc

        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(interval)
                now = int(time.time() * 1000)
                await self._send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now)))

    # -- PeerConnections --------------------------------------------------------------------

    def _watch(self, pc: RTCPeerConnection, target: int) -> None:
        state = self.states[target]

        def ice_changed() -> None:
            value = pc.iceConnectionState
            if value in ("connected", "completed") and state.ice_at is None:
                state.ice_at = time.perf_counter()
            elif value == "failed":
                state.failed = state.failed or "ice"
            self._changed.set()

        def connection_changed() -> None:
            value = pc.connectionState
            if value == "connected" and state.dtls_at is None:
                state.dtls_at = time.perf_counter()
            elif value == "failed":
                state.failed = state.failed or ("dtls" if state.ice_at is not None else "ice")
            self._changed.set()

        pc.on("iceconnectionstatechange", ice_changed)
        pc.on("connectionstatechange", connection_changed)

    def _step(self, phase: Phase) -> None:
        self.phase = phase
        if self.primary:
            self.path.result.phase = phase

    def _new_publisher(self) -> RTCPeerConnection:
        from aiortc import RTCPeerConnection
        from livekit.protocol import rtc

        pc = RTCPeerConnection(self.config)
        self.publisher = pc
        self._watch(pc, rtc.PUBLISHER)
        self.out_channels[RELIABLE_LABEL] = pc.createDataChannel(RELIABLE_LABEL, ordered=True)
        self.out_channels[LOSSY_LABEL] = pc.createDataChannel(
            LOSSY_LABEL, ordered=False, maxRetransmits=0
        )
        return pc

    async def _offer(self) -> tuple[str, list[dict[str, Any]]]:
        """The publisher's offer, its candidates gathered (a relay path: the TURN allocation)."""
        assert self.publisher is not None
        self._step(Phase.ALLOCATE if self.path.server is not None else Phase.CONNECT)
        self.turns_trusted = _trust_for_turns(self.publisher, self.settings.tls_context)
        _bound_gathering(self.publisher, self.ice_timeout)
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        sdp, candidates = _split_candidates(self.publisher.localDescription.sdp)
        if not candidates:
            raise await self._no_candidates()
        for init in candidates:
            fields = str(init["candidate"]).split()
            if len(fields) >= 8 and fields[7] == "relay" and self.relayed_address is None:
                host = f"[{fields[4]}]" if ":" in fields[4] else fields[4]
                self.relayed_address = f"{host}:{fields[5]}"
        return sdp, candidates

    async def _joined(self) -> rtc.JoinResponse:
        try:
            return await self._open(self._v1_offer)
        except (OSError, asyncio.TimeoutError) as exc:
            what = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"failed ({exc})"
            raise ProbeError(ErrorKind.CONNECTION_CLOSED, f"signaling {what}", self.phase) from exc

    def _start_loops(self, join: rtc.JoinResponse) -> None:
        self._reader = asyncio.create_task(self._read_loop())
        self._pinger = asyncio.create_task(self._ping_loop(float(join.ping_interval or 5)))
        for task in (self._reader, self._pinger):
            task.add_done_callback(_retrieved)  # a close cut short must not leave them unread

    async def _join_v1(self) -> list[dict[str, Any]]:
        """``/rtc/v1``: one PeerConnection, offered by the agent inside the join request (the
        SFU's own data channels arrive on it); negotiation starts with that offer."""
        from livekit.protocol import rtc

        self.signal_path = "/rtc/v1"
        self._start = time.perf_counter()
        self.states = {rtc.PUBLISHER: _PcState()}  # before the PC: its watcher holds its state
        pc = self._new_publisher()
        pc.on("datachannel", self._incoming_channel)
        sdp, candidates = await self._offer()
        self._v1_offer = sdp
        try:
            join = await self._joined()
        finally:
            self._v1_offer = None
        self._start_loops(join)
        return candidates

    async def _join_v0(self) -> list[dict[str, Any]]:
        """``/rtc``: the subscriber PeerConnection the SFU offers, the publisher the agent
        offers after the join; negotiation starts after the join."""
        from aiortc import RTCPeerConnection
        from livekit.protocol import rtc

        self.signal_path = "/rtc"
        join = await self._joined()
        self._start = time.perf_counter()
        self.states = {rtc.PUBLISHER: _PcState(), rtc.SUBSCRIBER: _PcState()}
        self._new_publisher()
        self.subscriber = RTCPeerConnection(self.config)
        self._watch(self.subscriber, rtc.SUBSCRIBER)
        self.subscriber.on("datachannel", self._incoming_channel)
        self._start_loops(join)
        sdp, candidates = await self._offer()
        await self._send(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp)))
        return candidates

    async def _discard_publisher(self) -> None:
        pc, self.publisher = self.publisher, None
        self.out_channels.clear()
        self.relayed_address = None
        if pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 2.0)

    async def connect(self) -> None:
        """Join, negotiate the PeerConnection(s), wait for ICE and DTLS on each."""
        from livekit.protocol import rtc

        if self.settings.single_pc:
            try:
                candidates = await self._join_v1()
            except _NoV1:
                # An older server (no /rtc/v1): the two PeerConnections of /rtc, as LiveKit's
                # clients fall back.
                await self._discard_publisher()
                candidates = await self._join_v0()
        else:
            candidates = await self._join_v0()
        await self._trickle(candidates, rtc.PUBLISHER)
        self._step(Phase.CONNECT)
        limit = self.ice_timeout
        deadline = self._start + limit
        if self.since is not None:  # never less than a second of ICE after a slow join
            deadline = max(self.since + limit, self._start + min(limit, 1.0))
        while True:
            states = list(self.states.values())
            if self._signal_error is not None:
                raise self._signal_error
            failed = next((s.failed for s in states if s.failed), None)
            if failed == "ice":
                raise ProbeError(
                    ErrorKind.CONNECT_TIMEOUT,
                    "ICE failed: no candidate pair to the SFU answered its connectivity checks",
                    Phase.CONNECT,
                )
            if failed == "dtls":
                raise ProbeError(
                    ErrorKind.TLS_HANDSHAKE,
                    "DTLS with the SFU failed after ICE connected",
                    Phase.TLS,
                )
            if all(s.ice_at is not None for s in states) and self.phase is not Phase.TLS:
                self._step(Phase.TLS)
                # DTLS gets as long again from ICE connected: the path is not blocked.
                deadline = max(s.ice_at or 0.0 for s in states) + limit
            if all(s.dtls_at is not None for s in states):
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                stage = "DTLS" if self.phase is Phase.TLS else "ICE"
                after = " after ICE connected" if self.phase is Phase.TLS else ""
                if self.phase is not Phase.TLS and self.since is not None:
                    after = " of the session's start"
                raise ProbeError(
                    ErrorKind.CONNECT_TIMEOUT,
                    f"{stage} to the SFU not connected within {limit:g} s{after}",
                    self.phase,
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        self.ice_ms = (max(s.ice_at or 0.0 for s in states) - self._start) * 1000.0
        self.dtls_ms = (max(s.dtls_at or 0.0 for s in states) - self._start) * 1000.0

    async def _tcp_or_silent(self, host: str, port: int, prefix: str) -> ProbeError:
        from lkice.probe.tcp import connect_tcp

        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), 2.0
            )
            ip, resolved_port = str(infos[0][4][0]), int(infos[0][4][1])
            sock = await connect_tcp((ip, resolved_port), 2.0)
        except ProbeError as exc:
            return ProbeError(exc.kind, f"{prefix}: {exc.message}", Phase.CONNECT)
        except (OSError, asyncio.TimeoutError, IndexError):
            return ProbeError(
                ErrorKind.CONNECTION_CLOSED,
                f"{prefix}: the TURN server did not answer (TCP connect or Allocate)",
                Phase.ALLOCATE,
            )
        sock.close()
        return ProbeError(
            ErrorKind.TCP_NO_RESPONSE,
            f"{prefix}: TCP connected, but the TURN server did not answer the Allocate",
            Phase.ALLOCATE,
        )

    async def _no_candidates(self) -> ProbeError:
        """No local candidate: on a relay path the TURN allocation failed inside aioice, which
        keeps the reason to itself; one more Allocate, directly, says what it was."""
        server = self.path.server
        if server is None:
            return ProbeError(
                ErrorKind.NETWORK_UNREACHABLE,
                "no usable local address for ICE (no host candidate gathered)",
                Phase.CONNECT,
            )
        from aioice import stun
        from aioice.turn import create_turn_endpoint

        creds = server.credentials
        assert creds is not None
        uri = server.uri
        transport = "tcp" if uri.secure else (uri.transport or "udp")
        no_response = ErrorKind.UDP_NO_RESPONSE if transport == "udp" else ErrorKind.TCP_NO_RESPONSE
        prefix = f"no relay candidate from {uri}"
        found = await self.settings.known(str(uri)) if self.settings.known is not None else None
        if found is not None:
            return ProbeError(
                ErrorKind(found.kind),
                f"{prefix}: {found.message} (found by the TURN probe of the same server)",
                Phase(found.phase) if found.phase else Phase.ALLOCATE,
            )
        try:
            endpoint, _ = await asyncio.wait_for(
                create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(uri.host, uri.port),
                    username=creds.username.reveal(),
                    password=creds.password.reveal(),
                    ssl=(self.settings.tls_context or True) if uri.secure else None,
                    transport=transport,
                ),
                5.0,
            )
        except stun.TransactionFailed as exc:
            rejected = codec.error_for_response(exc.response, Phase.ALLOCATE)
            return ProbeError(
                rejected.kind,
                f"{prefix}: Allocate rejected with {rejected.message}",
                Phase.ALLOCATE,
            )
        except (stun.TransactionTimeout, asyncio.TimeoutError):
            if transport == "udp":
                return ProbeError(
                    no_response, f"{prefix}: the TURN server did not answer", Phase.ALLOCATE
                )
            # aioice's timeout covers the TCP connect too: whether TCP got through is asked
            # apart, so a silent server is never taken for a filtered port or the reverse.
            return await self._tcp_or_silent(uri.host, uri.port, prefix)
        except ssl.SSLError as exc:
            if (
                isinstance(exc, ssl.SSLCertVerificationError)
                and self.settings.custom_ca
                and not self.turns_trusted
            ):
                return ProbeError(
                    ErrorKind.NOT_TESTED,
                    f"{prefix}: not tested: the agent's WebRTC stack (aiortc) trusts only the "
                    "system's CAs for turns:, and this certificate needs the --ca-file CA "
                    "(the TURN/TLS path itself is measured above)",
                    Phase.TLS,
                )
            return ProbeError(
                ErrorKind.TLS_VERIFY
                if isinstance(exc, ssl.SSLCertVerificationError)
                else ErrorKind.TLS_HANDSHAKE,
                f"{prefix}: TLS to the TURN server failed ({exc.__class__.__name__})",
                Phase.TLS,
            )
        except ConnectionRefusedError:
            return ProbeError(
                ErrorKind.CONNECT_REFUSED, f"{prefix}: connection refused", Phase.CONNECT
            )
        except OSError as exc:
            return ProbeError(ErrorKind.CONNECTION_CLOSED, f"{prefix}: {exc}", Phase.CONNECT)
        endpoint.close()
        return ProbeError(
            ErrorKind.PROTOCOL,
            f"{prefix}: aiortc gathered none, yet a direct Allocate succeeded",
            Phase.ALLOCATE,
        )

    # -- data -------------------------------------------------------------------------------

    def _incoming_channel(self, channel: RTCDataChannel) -> None:
        from livekit.protocol import models

        self.in_channels[channel.label] = channel
        self._changed.set()

        def message(payload: bytes | str) -> None:
            if not isinstance(payload, bytes) or self.on_data is None:
                return
            packet = models.DataPacket()
            try:
                packet.ParseFromString(payload)
            except Exception:  # DecodeError
                return
            if packet.HasField("user"):
                self.on_data(packet)

        channel.on("message", message)

    async def channels_ready(self) -> None:
        """Our publisher channels open and the SFU's ``_lossy`` channel to us arrived."""
        while not (
            all(c.readyState == "open" for c in self.out_channels.values())
            and LOSSY_LABEL in self.in_channels
        ):
            if self._signal_error is not None:
                raise self._signal_error
            await asyncio.sleep(0.02)

    def send_user(self, payload: bytes, destination: str) -> None:
        """``destination`` "": everyone in the room (an identity the token did not show)."""
        from livekit.protocol import models

        to = [destination] if destination else []
        packet = models.DataPacket(
            kind=models.DataPacket.LOSSY,
            destination_identities=to,
            user=models.UserPacket(payload=payload, topic=ECHO_TOPIC, destination_identities=to),
        )
        channel = self.out_channels.get(LOSSY_LABEL)
        if channel is not None and channel.readyState == "open":
            channel.send(packet.SerializeToString())

    async def close(self, budget: float = 8.0) -> None:
        """Leave and close, within ``budget`` seconds whatever the server does."""
        try:
            await asyncio.wait_for(self._close(), budget)
        except asyncio.TimeoutError:
            if self.ws is not None:
                self.ws.transport.abort()

    async def _close(self) -> None:
        from livekit.protocol import rtc

        for task in (self._pinger, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._send(rtc.SignalRequest(leave=rtc.LeaveRequest(can_reconnect=False))),
                    1.0,
                )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        closing = [
            asyncio.ensure_future(pc.close())
            for pc in (self.publisher, self.subscriber)
            if pc is not None
        ]
        if not closing:
            return
        try:
            await asyncio.wait(closing, timeout=5.0)
        finally:
            for task in closing:
                task.cancel()  # a no-op on the finished ones
                task.add_done_callback(_retrieved)
