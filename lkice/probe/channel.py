"""STUN transactions over UDP, TCP and TLS, each phase timed and every failure named.

Why not aioice's ``Transaction``: it retransmits for tens of seconds (RFC 5389's 7 sends) and also
over TCP. Here UDP retransmits with RTO 0.5 s doubling but gives up at a short bound (default 3 s),
and stream transports send once. Stream sockets set TCP_NODELAY, as WebRTC stacks do; without it
Nagle's algorithm holds small writes and the probe would measure its own socket.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aioice import stun

from lkice import stun as codec
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.tcp import LOCAL_ERRNOS, local_reason, tls_failure, tls_info
from lkice.report import TlsInfo

if TYPE_CHECKING:
    from lkice.probe.proxy import ProxyConfig

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


@dataclass(frozen=True)
class Exchange:
    response: stun.Message
    rtt_ms: float  # from the first send of the request to the response
    sends: int


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class _Channel:
    """Matches responses to outstanding requests by transaction id."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._pending: dict[bytes, asyncio.Future[stun.Message]] = {}
        self._failure: ProbeError | None = None
        # Valid STUN messages received, and the methods of the requests answered: a server
        # that answered earlier and then stops is silent, not filtered.
        self.answers = 0
        self.answered: list[str] = []
        self.unmatched = 0
        # Set by probe trains: called with (transaction id, arrival time) for every response,
        # and with (peer, data, arrival time) for every TURN Data indication.
        self.on_response: Callable[[bytes, float], None] | None = None
        self.on_data: Callable[[tuple[str, int], bytes, float], None] | None = None

    @property
    def failure(self) -> ProbeError | None:
        return self._failure

    def send_message(self, message: stun.Message) -> None:
        """Send without waiting for an answer (probe trains match answers themselves)."""
        if self._failure is not None:
            raise ProbeError(self._failure.kind, self._failure.message)
        self._send(bytes(message))

    def _deliver(self, message: stun.Message, arrived: float) -> None:
        self.answers += 1
        if message.message_class == stun.Class.INDICATION:
            relayed = codec.data_indication(message)
            if relayed is not None and self.on_data is not None:
                self.on_data(relayed[0], relayed[1], arrived)
            return
        if self.on_response is not None:
            self.on_response(message.transaction_id, arrived)
        fut = self._pending.get(message.transaction_id)
        if fut is not None and not fut.done():
            if len(self.answered) < 8:
                self.answered.append(message.message_method.name.replace("_", " ").title())
            fut.set_result(message)
        elif self.on_response is None:
            self.unmatched += 1  # no train running: an answer to nothing lkice asked

    def _fail_all(self, exc: ProbeError) -> None:
        self._failure = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def _transact(
        self, request: stun.Message, phase: Phase, schedule: list[float], timeout: float
    ) -> Exchange:
        if self._failure is not None:
            raise ProbeError(self._failure.kind, self._failure.message, phase)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[stun.Message] = loop.create_future()
        self._pending[request.transaction_id] = fut
        data = bytes(request)
        start = time.perf_counter()
        sends = 0
        try:
            # asyncio.wait, not wait_for: on Python 3.11 wait_for returns a result that lands
            # in the same step as a cancellation and swallows the cancellation, so a path cut
            # by the deadline or Ctrl-C would run on through its whole train.
            for offset in schedule:
                delay = offset - (time.perf_counter() - start)
                if delay > 0:
                    await asyncio.wait({fut}, timeout=delay)
                    if fut.done():
                        return Exchange(fut.result(), elapsed_ms(start), sends)
                self._send(data)
                sends += 1
            remaining = timeout - (time.perf_counter() - start)
            await asyncio.wait({fut}, timeout=max(remaining, 0.0))
            if not fut.done():
                raise self._timeout_error(phase, timeout, sends)
            return Exchange(fut.result(), elapsed_ms(start), sends)
        except ProbeError as exc:
            if exc.phase is None:
                exc.phase = phase
            raise
        finally:
            self._pending.pop(request.transaction_id, None)
            if not fut.done():
                fut.cancel()

    def _timeout_error(self, phase: Phase, timeout: float, sends: int) -> ProbeError:
        raise NotImplementedError


class UdpChannel(_Channel, asyncio.DatagramProtocol):
    def __init__(self, label: str, timeout: float) -> None:
        super().__init__(label)
        self.timeout = timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.malformed = 0  # datagrams that were not STUN
        self.first_malformed: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: CPython 3.11's selector datagram transport does not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        arrived = time.perf_counter()
        try:
            message = codec.parse(data, Phase.BINDING)
        except ProbeError as exc:
            self._malformed(data, exc)
            return
        self._deliver(message, arrived)

    def _malformed(self, data: bytes, exc: ProbeError) -> None:
        """A datagram that is not STUN. One that carries an outstanding request's transaction
        id is that request's answer, broken: it fails at once. Others (stray, corrupt) are
        counted: if no valid answer comes, the server did answer, so the path fails as
        ``protocol``, never as filtered."""
        self.malformed += 1
        if self.first_malformed is None:
            self.first_malformed = _describe_bytes(data, exc)
        if len(data) >= 20:
            fut = self._pending.get(data[8:20])
            if fut is not None and not fut.done():
                fut.set_exception(
                    ProbeError(
                        ErrorKind.PROTOCOL,
                        f"{self.label} answered with a malformed STUN message: "
                        f"{self.first_malformed}",
                    )
                )

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket the kernel reports ICMP errors here.
        if isinstance(exc, ConnectionRefusedError):
            self._fail_all(
                ProbeError(
                    ErrorKind.UDP_REFUSED,
                    f"no STUN answer from {self.label}: ICMP port unreachable "
                    "(the host answered, but nothing listens on that UDP port)",
                )
            )
        elif isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
            self._fail_all(
                ProbeError(ErrorKind.NETWORK_UNREACHABLE, f"{self.label}: {exc.strerror} (ICMP)")
            )

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _timeout_error(self, phase: Phase, timeout: float, sends: int) -> ProbeError:
        if self.answered:
            return _silent_after(self.label, self.answered, phase, timeout, sends, self.unmatched)
        if self.malformed:
            return ProbeError(
                ErrorKind.PROTOCOL,
                f"no valid STUN answer from {self.label} within {timeout:g} s ({sends} sends): "
                f"it sent {self.malformed} datagram(s) that are not STUN "
                f"({self.first_malformed}); is this a STUN/TURN server?",
                phase,
            )
        return ProbeError(
            ErrorKind.UDP_NO_RESPONSE,
            f"no answer from {self.label} over UDP within {timeout:g} s ({sends} sends): "
            "UDP to this port is likely filtered",
            phase,
        )

    async def request(self, msg: stun.Message, phase: Phase) -> Exchange:
        schedule: list[float] = []
        offset, rto = 0.0, 0.5
        while offset < self.timeout:
            schedule.append(offset)
            offset += rto
            rto *= 2
        return await self._transact(msg, phase, schedule, self.timeout)


class StreamChannel(_Channel, asyncio.Protocol):
    def __init__(self, label: str, timeout: float, tls: bool) -> None:
        super().__init__(label)
        self.timeout = timeout
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self._framer = codec.StreamFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # One timestamp for every frame in this read: they were released to us together, which
        # is exactly what head-of-line blocking looks like.
        arrived = time.perf_counter()
        try:
            for frame in self._framer.feed(data):
                if frame[0] < 0x40:
                    self._deliver(codec.parse(frame, Phase.BINDING), arrived)
        except ProbeError as exc:
            self._fail_all(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            how = f" ({exc})" if exc else ""
            self._fail_all(
                ProbeError(ErrorKind.CONNECTION_CLOSED, f"{self.label} closed the connection{how}")
            )

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is None:
            return
        if self.tls:
            # A TLS close waits for the server's close_notify, which some servers (pion/turn)
            # never send: asyncio would hold the socket for its 30 s shutdown timeout. The
            # session is over when this is called (the release was answered, or given up).
            self.transport.abort()
        else:
            self.transport.close()

    def _timeout_error(self, phase: Phase, timeout: float, sends: int) -> ProbeError:
        if self.answered:
            return _silent_after(self.label, self.answered, phase, timeout, sends, self.unmatched)
        proto = "TLS" if self.tls else "TCP"
        if self.answers:
            # Messages came, none an answer to this request (a flood of unsolicited STUN).
            return ProbeError(
                ErrorKind.TCP_NO_RESPONSE,
                f"{self.label} accepted the {proto} connection and sent {self.answers} STUN "
                f"message(s), none an answer to lkice's request, within {timeout:g} s",
                phase,
            )
        return ProbeError(
            ErrorKind.TCP_NO_RESPONSE,
            f"{self.label} accepted the {proto} connection but sent no STUN answer within "
            f"{timeout:g} s (not a STUN/TURN port, or a middlebox holds the data)",
            phase,
        )

    async def request(self, msg: stun.Message, phase: Phase) -> Exchange:
        return await self._transact(msg, phase, [0.0], self.timeout)


def _silent_after(
    label: str, answered: list[str], phase: Phase, timeout: float, sends: int, unmatched: int = 0
) -> ProbeError:
    """The server answered earlier requests on this connection (or 5-tuple), then not this
    one: the network carries the traffic, so it is the server that went silent (or, with
    ``unmatched``, that sent only messages nobody asked for)."""
    earlier = ", ".join(dict.fromkeys(answered))
    step = phase.value.replace("_", " ")
    plural = "s" if sends != 1 else ""
    if unmatched:
        return ProbeError(
            ErrorKind.SERVER_SILENT,
            f"{label} answered lkice's earlier requests ({earlier}) on this connection, then sent "
            f"{unmatched} STUN message(s) that answer nothing lkice asked, and no answer to the "
            f"{step} request within {timeout:g} s ({sends} send{plural}): the server is broken "
            "(not a firewall: its traffic gets through)",
            phase,
        )
    return ProbeError(
        ErrorKind.SERVER_SILENT,
        f"{label} answered lkice's earlier requests ({earlier}) on this connection, then sent no "
        f"answer to the {step} request within {timeout:g} s ({sends} send{plural}): the server "
        "stopped answering (not a firewall: the same traffic got through before)",
        phase,
    )


def _describe_bytes(data: bytes, exc: ProbeError) -> str:
    """What was wrong with a datagram, briefly: the codec's reason and its first bytes."""
    reason = exc.message.split(";")[0].removeprefix("malformed STUN response ")
    return f"{len(data)} bytes starting 0x{data[:8].hex()}: {reason}"


def _label(address: tuple[str, int]) -> str:
    return codec.format_address(address)


async def open_udp(
    address: tuple[str, int], timeout: float, local: tuple[str, int] | None = None
) -> UdpChannel:
    """A connected UDP socket to ``address``, from ``local`` (default: any, ephemeral)."""
    loop = asyncio.get_running_loop()
    label = _label(address)
    try:
        _, protocol = await loop.create_datagram_endpoint(
            lambda: UdpChannel(label, timeout), remote_addr=address, local_addr=local
        )
    except OSError as exc:
        raise ProbeError(
            ErrorKind.LOCAL if exc.errno in LOCAL_ERRNOS else ErrorKind.NETWORK_UNREACHABLE,
            f"cannot send UDP to {label}: {local_reason(exc)}",
            Phase.BINDING,
        ) from exc
    return protocol


async def attach_stream(
    sock: socket.socket,
    address: tuple[str, int],
    timeout: float,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    proxy: ProxyConfig | None = None,
    early: Callable[[ProbeError], None] | None = None,
) -> tuple[StreamChannel, TlsInfo | None]:
    """Wrap a connected socket in a STUN channel, after a TLS handshake when ``tls`` is given."""
    loop = asyncio.get_running_loop()
    label = _label(address)
    channel = StreamChannel(label, timeout, tls is not None)
    if tls is None:
        await loop.create_connection(lambda: channel, sock=sock)
        return channel, None
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(
                lambda: channel,
                sock=sock,
                ssl=tls,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            ),
            timeout + 1.0,
        )
    except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
        sock.close()
        raise await tls_failure(exc, address, server_hostname, timeout, proxy, early) from exc
    except BaseException:
        sock.close()
        raise
    info = tls_info(
        transport.get_extra_info("ssl_object"), verified=tls.verify_mode != ssl.CERT_NONE
    )
    return channel, info
