"""One path: a server address x a transport. Connect, then a Binding (STUN) or the Allocate
(TURN: challenge round and authenticated round; its success carries the mapped address, so no
Binding goes before it), the quality trains, then Refresh with lifetime 0 so no allocation is left
on the server (handed to :class:`Releases` by ``lkice run``, so the verdict does not wait for it).

The result object is filled in as each phase completes, so a deadline or Ctrl-C keeps what was
measured; ``PathResult.phase`` always names the step in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from asyncio.trsock import TransportSocket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from lkice import stun as codec
from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.channel import (
    Exchange,
    StreamChannel,
    UdpChannel,
    attach_stream,
    elapsed_ms,
    open_udp,
)
from lkice.probe.proxy import ProxyConfig, connect_stream
from lkice.probe.releases import Releases
from lkice.probe.tcp import client_tls_context, tls_ready
from lkice.probe.train import (
    LoopMonitor,
    TcpSocket,
    Train,
    TrainResult,
    TrainSettings,
    read_tcp_counters,
    tcp_evidence,
)
from lkice.probe.turn import (
    Allocation,
    Redirect,
    allocate,
    create_permission,
    refused,
    release,
)
from lkice.quality import Sample
from lkice.report import PathResult
from lkice.uri import IceUri, Transport

__all__ = ["ProbeSettings", "Redirect", "probe_path"]

log = logging.getLogger(__name__)

Channel = UdpChannel | StreamChannel


@dataclass(frozen=True)
class ProbeSettings:
    udp_timeout: float = 3.0
    timeout: float = 5.0  # TCP connect, TLS handshake, and a STUN answer over a stream
    credentials: TurnCredentials | None = None
    tls_context: ssl.SSLContext | None = None
    train: TrainSettings | None = None  # None: no quality measurement
    # The agent's own event-loop stalls, measured by the engine while trains run.
    monitor: LoopMonitor | None = None
    # UDP paths: the first socket's local address (default: ephemeral). A retry after 437
    # always takes a fresh port.
    udp_local: tuple[str, int] | None = None
    # Stream paths: tunnel through this web proxy (HTTP CONNECT to the URI's host name and
    # port; the proxy resolves it) instead of connecting directly.
    proxy: ProxyConfig | None = None
    # A followed 300 to an address the user did not name: the note the path gets the moment
    # credentials are sent there.
    credentials_note: str | None = None
    # Where a path's release (Refresh lifetime 0) goes once the path is concluded: sent at once,
    # awaited by the caller after the verdict (``lkice run``). None: the path awaits it itself.
    releases: Releases | None = None


async def probe_path(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    result: PathResult,
    settings: ProbeSettings,
    follow_redirect: bool = True,
) -> None:
    """Probe one path, recording into ``result``. Raises Redirect for a followed 300."""
    channel: Channel | None = None
    allocation: Allocation | None = None
    released_later = False  # the channel went to settings.releases with the allocation
    try:
        channel = await _open(uri, transport, address, result, settings)
        if uri.kind != "turn":
            await _binding(channel, result)
        else:
            credentials = settings.credentials
            forms: list[str | None] = []
            mismatch_retried = False
            while True:
                try:
                    allocation = await _allocate(
                        channel, result, credentials, follow_redirect, forms,
                        settings.credentials_note,
                    )  # fmt: skip
                    break
                except ProbeError as exc:
                    if exc.stun_code == 437 and transport is Transport.UDP and not mismatch_retried:
                        # 437: the server still holds an allocation for this 5-tuple (an earlier
                        # run from this host got the same ephemeral port). RFC 8656 6.1: try
                        # again from another local port; once.
                        mismatch_retried = True
                        result.notes.append(
                            "the first Allocate got 437 (allocation mismatch: the server still "
                            "held an allocation for that local port); retried from a new local "
                            "port"
                        )
                    elif credentials is not None and credentials.fallback and refused(exc):
                        # TURN REST: coturn takes "expiry:user", pion/turn only "expiry". A new
                        # connection: coturn ties the refused username to this 5-tuple (437).
                        result.notes.append(
                            f"the server refused the TURN REST username in "
                            f"{credentials.form!r} form ({exc.stun_code}); retried in "
                            f"{credentials.fallback.form!r} form on a new connection"
                        )
                        forms.append(credentials.form)
                        credentials = credentials.fallback
                    else:
                        await _binding_after_refusal(channel, result, exc)
                        raise
                channel.close()
                channel = await _open(
                    uri, transport, address, result, replace(settings, udp_local=None)
                )
        if settings.train is not None:
            # Before the release: coturn closes a stream session once its allocation is gone.
            await _quality(uri, transport, address, channel, result, settings, allocation)
        if allocation is not None:
            if settings.releases is not None:
                settings.releases.start(channel, allocation, result)
                released_later = True
            else:
                await release(channel, allocation, result)
        broken = _broken_relay(result)
        if broken is not None:
            raise broken
        result.ok = True
        result.phase = None
        log.info("%s %s %s: ok %s", result.kind, result.address, transport.value, _timings(result))
    except ProbeError as exc:
        result.fail(exc)
        result.phase = None
        log.info(
            "%s %s %s failed: %s", result.kind, result.address, transport.value, exc.kind.value
        )
    except asyncio.CancelledError:
        if result.phase is Phase.QUALITY:
            # Cut during the trains: connectivity was already proven, and the trains kept their figures.
            result.ok = True
            result.phase = None
            if channel is not None and allocation is not None:
                with contextlib.suppress(ProbeError, asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(release(channel, allocation, result), 0.5)
        raise
    finally:
        if channel is not None and not released_later:
            channel.close()


async def _open(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    result: PathResult,
    settings: ProbeSettings,
) -> Channel:
    if transport is Transport.UDP:
        result.phase = Phase.BINDING
        return await open_udp(address, settings.udp_timeout, settings.udp_local)
    result.phase = Phase.CONNECT
    result.socket_options = ["TCP_NODELAY"]
    target = address if settings.proxy is None else (uri.host, uri.port)
    sock = await connect_stream(target, settings.proxy, settings.timeout, result.timings_ms)
    log.debug(
        "%s %s: TCP connected in %.1f ms",
        result.address or result.server,
        transport.value,
        result.timings_ms["connect"],
    )
    if transport is not Transport.TLS:
        channel, _ = await attach_stream(sock, address, settings.timeout)
        return channel
    result.phase = Phase.TLS
    context = settings.tls_context or client_tls_context()
    await tls_ready(context)  # the system's CAs, read in the background since start-up
    start = time.perf_counter()
    try:
        channel, result.tls = await attach_stream(
            sock,
            address,
            settings.timeout,
            tls=context,
            server_hostname=uri.host,
            proxy=settings.proxy,
            early=result.fail,  # a deadline while the certificate is re-read keeps tls_verify
        )
    except ProbeError as exc:
        result.tls = exc.tls  # a rejected certificate: what it was and what was wrong
        raise

    result.timings_ms["tls"] = elapsed_ms(start)
    log.debug(
        "%s tls: handshake in %.1f ms, %s", result.address, result.timings_ms["tls"], result.tls
    )
    return channel


async def _binding(channel: Channel, result: PathResult) -> None:
    """A STUN path's one request: the Binding, whose answer is the mapped address."""
    result.phase = Phase.BINDING
    exchange = await channel.request(codec.binding_request(), Phase.BINDING)
    _record_binding(exchange, result)


def _record_binding(exchange: Exchange, result: PathResult) -> None:
    result.binding_sends = exchange.sends
    msg = exchange.response
    if msg.error_code is not None:
        raise codec.error_for_response(msg, Phase.BINDING)
    result.timings_ms["binding"] = exchange.rtt_ms
    _record_server_attributes(msg.attributes, result)
    mapped = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
    if mapped is None:
        raise ProbeError(
            ErrorKind.PROTOCOL, "Binding response carries no mapped address", Phase.BINDING
        )
    result.mapped_address = codec.format_address(mapped)


# A TURN server that has said nothing this long after the Allocate went out (UDP's first
# retransmission, RFC 8489's initial RTO) is sent a Binding beside it.
BINDING_HEDGE_S = 0.5


async def _allocate(
    channel: Channel,
    result: PathResult,
    credentials: TurnCredentials | None,
    follow_redirect: bool,
    forms: list[str | None],
    credentials_note: str | None,
) -> Allocation:
    """The Allocate with no Binding before it: its success carries XOR-MAPPED-ADDRESS (the
    server-reflexive address a Binding would give), so a Binding round first would only delay
    the verdict. Only when the server has answered nothing after BINDING_HEDGE_S does a Binding
    go out beside it, so a server that answers Binding but never Allocate (a STUN-only server
    named as TURN) is still told from a filtered port (server_silent, not udp_no_response)."""
    hedge = asyncio.ensure_future(_hedged_binding(channel, result))
    try:
        return await allocate(
            channel, result, credentials, follow_redirect, forms, credentials_note
        )
    finally:
        hedge.cancel()


async def _hedged_binding(channel: Channel, result: PathResult) -> None:
    await asyncio.sleep(BINDING_HEDGE_S)
    if channel.answers == 0 and channel.failure is None:
        await _turn_binding(channel, result)


async def _binding_after_refusal(channel: Channel, result: PathResult, exc: ProbeError) -> None:
    """A failed Allocate gives no mapped address: where the server answered it (a refusal, an
    error code, a malformed answer) and the connection is still up, one Binding measures what
    the Allocate's success would have carried. Not after silence: that would only wait again."""
    silent = {ErrorKind.SERVER_SILENT, ErrorKind.UDP_NO_RESPONSE, ErrorKind.TCP_NO_RESPONSE}
    if (
        exc.kind in silent
        or channel.answers == 0
        or channel.failure is not None
        or result.timings_ms["binding"] is not None
    ):
        return
    await _turn_binding(channel, result)


async def _turn_binding(channel: Channel, result: PathResult) -> None:
    """A Binding on a TURN path, beside or after its Allocate: recorded if answered, and never
    the path's outcome (the Allocate's is); ``result.phase`` stays the Allocate's."""
    try:
        exchange = await channel.request(codec.binding_request(), Phase.BINDING)
        _record_binding(exchange, result)
    except ProbeError as exc:
        if exc.stun_code is not None:
            # A TURN server need not answer Binding; the Allocate tells whether it works.
            result.notes.append(f"Binding refused: {exc.message}")


def _record_server_attributes(attributes: dict[str, Any], result: PathResult) -> None:
    if "SOFTWARE" in attributes:
        result.server_software = str(attributes["SOFTWARE"])[:128]
    if "OTHER-ADDRESS" in attributes:
        result.other_address = codec.format_address(attributes["OTHER-ADDRESS"])
    if "RESPONSE-ORIGIN" in attributes:
        result.response_origin = codec.format_address(attributes["RESPONSE-ORIGIN"])


async def _quality(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    channel: Channel,
    result: PathResult,
    settings: ProbeSettings,
    allocation: Allocation | None,
) -> None:
    """Both trains at once: Binding to the server, and data through the relay where we have one."""
    train = settings.train
    assert train is not None
    result.phase = Phase.QUALITY
    stream = transport is not Transport.UDP
    relay = allocation is not None and train.relay
    trains = {"quality": Train(train)}
    jobs = [_binding_train(channel, trains["quality"])]
    if relay:
        assert allocation is not None
        trains["relay_quality"] = Train(train)
        jobs.append(
            _relay_train(
                uri, transport, address, channel, settings, allocation, trains["relay_quality"]
            )
        )
    blind = settings.monitor.stalls if settings.monitor is not None else []

    def record(name: str, samples: list[Sample], outcome: TrainResult | None = None) -> None:
        # Figures now, so a cut run still has them; the raw train stays for the engine, which
        # judges every train of the run together once all have ended (shared holds).
        # At the cadence the train was really sent at, with how it was sent (``pacing``).
        kept = trains[name].record(
            samples,
            stream,
            legs=2 if name == "relay_quality" else 1,
            tcp=None if outcome is None else outcome.tcp,
            crossings=4 if name == "relay_quality" else 2,  # out, relay, echo back, home
        )
        result.trains.by_name[name] = kept
        setattr(result, name, kept.figures(blind=blind))
        note = trains[name].note(name)  # the agent could not keep up: said, never the network
        if note is not None and note not in result.notes:
            result.notes.append(note)

    try:
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    except asyncio.CancelledError:
        now = time.perf_counter()
        for name, cut in trains.items():
            samples = cut.partial(now)
            if samples:
                record(name, samples)
                result.notes.append(
                    f"{name} train cut short after {len(cut.sent_at)} of {train.count} probes; "
                    "the figures cover the probes answered or overdue by then"
                )
        raise
    for name, outcome in zip(("quality", "relay_quality")[: len(outcomes)], outcomes, strict=True):
        if isinstance(outcome, ProbeError):
            result.notes.append(f"{name} not measured: {outcome.message}")
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome.samples:
            record(name, outcome.samples, outcome)
        if outcome.cut_short is not None:
            result.notes.append(
                f"{name} train stopped after {len(outcome.samples)} of {train.count} probes: "
                f"{outcome.cut_short.message}"
            )


def _broken_relay(result: PathResult) -> ProbeError | None:
    """A relay that carries nothing while the server answers every Binding on the same
    connection is the server's fault (its relayed address is unreachable: a wrong external-ip
    or relay-ip), never loss on this network: the path fails as ``relay_failed``."""
    relay, binding = result.relay_quality, result.quality
    if not relay or not binding or relay.get("received") or not relay.get("samples"):
        return None
    if not binding.get("received"):
        return None
    return ProbeError(
        ErrorKind.RELAY_FAILED,
        f"the TURN relay carried nothing: none of the {relay['samples']} packets sent through "
        f"it (relayed address {result.relayed_address}) to lkice's second allocation came "
        f"back, while the server answered {binding['received']} of {binding['samples']} "
        "Bindings on the same connection: the relayed address is unreachable (check the "
        "server's external-ip / relay-ip setting)",
        Phase.QUALITY,
    )


def _stream_socket(channel: Channel) -> TcpSocket | None:
    """The TCP socket under a stream channel (TLS or a proxy tunnel included: the connection
    from this computer), for the kernel's counters; None for UDP."""
    if not isinstance(channel, StreamChannel) or channel.transport is None:
        return None
    sock = channel.transport.get_extra_info("socket")
    return sock if isinstance(sock, (socket.socket, TransportSocket)) else None


async def _counted(
    sockets: list[TcpSocket | None], run: Callable[[], Awaitable[TrainResult]]
) -> TrainResult:
    """Run a train between two readings of its connections' kernel counters (stream paths)."""
    if not any(sock is not None for sock in sockets):
        return await run()
    before = [read_tcp_counters(sock) for sock in sockets]
    outcome = await run()
    after = [read_tcp_counters(sock) for sock in sockets]
    return replace(outcome, tcp=tcp_evidence(before, after))


async def _binding_train(channel: Channel, train: Train) -> TrainResult:
    """Binding requests to the server from a pre-encoded template (``lkice.stun``), answers
    matched by transaction id on the channel's fast path and timed as the channel times them
    (UDP: by the kernel where it can; see ``lkice.probe.channel``)."""
    seq_of: dict[bytes, int] = {}
    template = codec.BindingTemplate()
    ids = codec.TransactionIds(min(256, train.settings.count))
    send_bytes = channel.send_bytes

    def send(seq: int) -> None:
        transaction_id = ids.next()
        seq_of[transaction_id] = seq
        send_bytes(template.encode(transaction_id))

    def on_response(transaction_id: bytes, arrived: float) -> None:
        seq = seq_of.get(transaction_id)
        if seq is not None:
            train.arrived(seq, arrived)

    train.arrivals = "kernel" if channel.kernel_stamped else "user"
    channel.on_response = on_response
    try:
        return await _counted(
            [_stream_socket(channel)], lambda: train.run(send, lambda: channel.failure)
        )
    finally:
        channel.on_response = None


async def _relay_train(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    channel: Channel,
    settings: ProbeSettings,
    allocation: Allocation,
    train: Train,
) -> TrainResult:
    """Data through the relay: the path's allocation sends to a second allocation of ours (same
    server, same transport), which echoes every packet back. Both client legs use the path's
    transport, so what is measured is the relayed media path, twice.

    Probes and echoes are Send indications from templates (``lkice.stun.SendTemplate``). The
    echo's own time, from the probe's arrival at the echo's socket (the kernel's stamp on UDP,
    the read on streams) to the moment its copy is sent back, is taken out of the probe's RTT:
    it is this computer's time, not the relay's."""
    scratch = PathResult(server=uri.server, transport=transport.value, kind="turn", uri=str(uri))
    peer = await _open(uri, transport, address, scratch, settings)
    try:
        # The credentials the path's own Allocate succeeded with (a TURN REST form included).
        working = allocation.auth.credentials if allocation.auth is not None else None
        peer_allocation = await allocate(peer, scratch, working, follow_redirect=False)
        allocation = await create_permission(channel, allocation, peer_allocation.relayed)
        peer_allocation = await create_permission(peer, peer_allocation, allocation.relayed)
        tag = os.urandom(8)  # tells our probes from anything else a relay may carry
        padding = bytes(max(0, train.settings.payload - 12))
        # Send indications from templates: the probes out, and the echo's copies back.
        size = 12 + len(padding)
        outward = codec.SendTemplate(peer_allocation.relayed, size)
        homeward = codec.SendTemplate(allocation.relayed, size)
        ids = codec.TransactionIds(min(256, 2 * train.settings.count))
        to_peer, to_home = channel.send_bytes, peer.send_bytes
        home = allocation.relayed

        held: dict[int, float] = {}  # seq -> how long the echo held the probe, s
        clock = time.perf_counter

        def echo(source: tuple[str, int], data: bytes, arrived: float) -> None:
            if data[:8] == tag:
                # If the echo side died, the train records the loss.
                with contextlib.suppress(ProbeError):
                    encoded = homeward.encode(ids.next(), data) if len(data) == size else None
                    if len(data) >= 12:
                        held[int.from_bytes(data[8:12], "big")] = max(0.0, clock() - arrived)
                    if encoded is not None:
                        to_home(encoded)
                    else:
                        peer.send_message(codec.send_indication(home, data))

        def back(source: tuple[str, int], data: bytes, arrived: float) -> None:
            if data[:8] == tag and len(data) >= 12:
                seq = int.from_bytes(data[8:12], "big")
                train.arrived(seq, arrived - held.get(seq, 0.0))

        def send(seq: int) -> None:
            to_peer(outward.encode(ids.next(), tag + seq.to_bytes(4, "big") + padding))

        train.arrivals = "kernel" if channel.kernel_stamped else "user"
        peer.on_data, channel.on_data = echo, back
        try:
            # Both client legs' connections: a loss on either holds the echo.
            outcome = await _counted(
                [_stream_socket(channel), _stream_socket(peer)],
                lambda: train.run(send, lambda: channel.failure or peer.failure),
            )
        finally:
            peer.on_data = channel.on_data = None
        await release(peer, peer_allocation, None)
        return outcome
    finally:
        peer.close()


def _timings(result: PathResult) -> str:
    # Phase names and durations only: STUN messages carry USERNAME, so they are never logged.
    return " ".join(f"{k}={v:.1f}ms" for k, v in result.timings_ms.items() if v is not None)
