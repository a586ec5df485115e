"""STUN transactions over UDP, TCP and TLS, each phase timed and every failure named.

Why not aioice's ``Transaction``: it retransmits for tens of seconds (RFC 5389's 7 sends) and also
over TCP. Here UDP retransmits with RTO 0.5 s doubling but gives up at a short bound (default 3 s),
and stream transports send once. Stream sockets set TCP_NODELAY, as WebRTC stacks do; without it
Nagle's algorithm holds small writes and the probe would measure its own socket.

Arrival times (``time.perf_counter()``'s clock, as ``lkice.quality.Sample`` has them):

- UDP, Linux: the kernel's receive time of each datagram. The socket is read with ``recvmsg``
  and ``SO_TIMESTAMPNS``, so an answer is timed when it reached this computer, not when the
  event loop got round to it (the difference is the loop's wake-up delay: 0.04 ms typical on an
  idle loop, several ms with busy coroutines). The kernel's stamp is on CLOCK_REALTIME; it is
  converted with the offset between ``time.time_ns()`` and ``time.perf_counter()`` read right
  after that datagram was read (so a clock adjustment between the two clocks matters only over
  the microseconds in between); a stamp that is missing, in the future, or more than
  ``MAX_KERNEL_AGE`` old (the wall clock was stepped) is replaced by the time of the read.
  ``kernel_stamps`` and ``user_stamps`` count how each message was timed. Elsewhere, or where
  the socket or event loop cannot do this, datagrams come through asyncio's own transport and
  are timed on arrival in user space.
- TCP and TLS: on arrival in user space, one stamp per chunk asyncio hands over (TLS: per
  decrypted chunk), taken before any parsing. Kernel stamps are not used there: asyncio reads
  the stream itself (and the TLS layer reads it again), and a stamp per ``recvmsg`` would only
  tell when the last of the segments that call returned came in, not when each STUN message
  did. The loop's wake-up delay therefore adds to stream RTTs; the engine's ``LoopMonitor``
  records the moments that delay was large, so stall figures leave them out.

Probe trains use a fast path (``lkice.stun.FastParser``): every received message is first read
without building an ``aioice`` message; only answers to a pending transaction (Binding,
Allocate, ...) and bytes the fast path rejects (to name what was wrong) take the full parse.
``send_bytes`` sends a pre-encoded probe; while the train pacer prepares a batch it joins the
batch (``lkice.probe.train.SendBatch``), which is then sent back to back.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import platform
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lkice import stun as codec
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.tcp import LOCAL_ERRNOS, local_reason, tls_failure, tls_info
from lkice.probe.train import SendBatch
from lkice.report import TlsInfo

if TYPE_CHECKING:
    from aioice import stun

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
        self._parser = codec.FastParser()
        # Messages received timed by the kernel, and in user space (see the module docstring).
        self.kernel_stamps = 0
        self.user_stamps = 0
        # Set by probe trains: called with (transaction id, arrival time) for every response,
        # and with (peer, data, arrival time) for every TURN Data indication.
        self.on_response: Callable[[bytes, float], None] | None = None
        self.on_data: Callable[[tuple[str, int], bytes, float], None] | None = None

    @property
    def failure(self) -> ProbeError | None:
        return self._failure

    def send_message(self, message: stun.Message) -> None:
        """Send without waiting for an answer (probe trains match answers themselves)."""
        self.send_bytes(bytes(message))

    def send_bytes(self, data: bytes) -> None:
        """Send an encoded message (a probe from a template) without waiting for an answer;
        while the train pacer prepares a batch, the send joins it (``SendBatch``)."""
        if self._failure is not None:
            raise ProbeError(self._failure.kind, self._failure.message)
        batch = SendBatch.current
        if batch is not None:
            batch.add(self._send, data)
        else:
            self._send(data)

    def _receive(self, data: bytes, arrived: float) -> None:
        """One STUN message received at ``arrived``. Train answers and Data indications take the
        fast path; answers to a pending transaction get the full parse (their caller reads the
        attributes). Raises ProbeError for bytes that are not a valid STUN message."""
        fast = self._parser.parse(data)
        if fast is None:
            # Malformed (the full parse raises and says why), or a message the fast path
            # declined: the full parse is the judge either way.
            self._deliver(codec.parse(data, Phase.BINDING), arrived)
            return
        _method, cls, tid, peer, payload = fast
        if cls == codec.CLASS_INDICATION:
            self.answers += 1
            if peer is not None and payload is not None and self.on_data is not None:
                self.on_data(peer, payload, arrived)
            return
        if tid in self._pending:
            self._deliver(codec.parse(data, Phase.BINDING), arrived)
            return
        self.answers += 1
        if self.on_response is not None:
            self.on_response(tid, arrived)
        else:
            self.unmatched += 1  # no train running: an answer to nothing lkice asked

    def _deliver(self, message: stun.Message, arrived: float) -> None:
        self.answers += 1
        if message.message_class == codec.CLASS_INDICATION:
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

    @property
    def kernel_stamped(self) -> bool:
        """Whether arrivals are timed by the kernel (see the module docstring)."""
        return isinstance(self.transport, _StampedDatagramTransport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.datagram_received_at(data, addr, time.perf_counter())

    def datagram_received_at(
        self,
        data: bytes,
        addr: tuple[str | Any, int] | None,
        arrived: float,
        kernel: bool = False,
    ) -> None:
        """A datagram that reached this computer at ``arrived`` (``time.perf_counter()``;
        ``kernel``: the kernel's receive time, else the time it was read)."""
        if kernel:
            self.kernel_stamps += 1
        else:
            self.user_stamps += 1
        try:
            self._receive(data, arrived)
        except ProbeError as exc:
            self._malformed(data, exc)

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

    kernel_stamped = False  # see the module docstring: stream arrivals are timed in user space

    def data_received(self, data: bytes) -> None:
        # One timestamp for every frame in this read: they were released to us together, which
        # is exactly what head-of-line blocking looks like.
        arrived = time.perf_counter()
        try:
            for frame in self._framer.feed(data):
                if frame[0] < 0x40:
                    self.user_stamps += 1
                    self._receive(frame, arrived)
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


# ------------------------------------------------------------------ kernel-stamped UDP (Linux)

# SO_TIMESTAMPNS, which is also the control message's type (SCM_TIMESTAMPNS): 35 in
# asm-generic/socket.h, which these architectures use (others number it differently, and
# Python's socket module does not export it).
_SO_TIMESTAMPNS = 35
_STAMP_MACHINES = frozenset(
    {"x86_64", "amd64", "aarch64", "arm64", "i386", "i686", "armv7l", "armv6l", "armv8l",
     "riscv64", "ppc64le", "ppc64", "s390x", "loongarch64"}
)  # fmt: skip
MAX_KERNEL_AGE = 5.0  # seconds: an older kernel stamp means the wall clock was stepped
_TIMESPEC64 = struct.Struct("=qq")  # struct timespec with a 64-bit time_t
_TIMESPEC32 = struct.Struct("=ii")
_local = threading.local()


def kernel_stamps_supported() -> bool:
    """Whether UDP arrivals can be timed by the kernel on this platform (Linux, known ABI)."""
    return sys.platform.startswith("linux") and platform.machine().lower() in _STAMP_MACHINES


def kernel_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The SO_TIMESTAMPNS stamp (ns since the epoch, CLOCK_REALTIME) among a ``recvmsg``'s
    control messages, or None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            if len(data) >= _TIMESPEC64.size:
                sec, nsec = _TIMESPEC64.unpack_from(data)
            elif len(data) >= _TIMESPEC32.size:
                sec, nsec = _TIMESPEC32.unpack_from(data)
            else:
                return None
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


def to_perf_counter(stamp_ns: int | None, now: float, wall_ns: int) -> float | None:
    """A CLOCK_REALTIME stamp on ``time.perf_counter()``'s clock, given both clocks read at the
    same moment (``now``, ``wall_ns``, after the stamp was taken); None for a stamp that cannot be
    right (missing, in the future, older than ``MAX_KERNEL_AGE``)."""
    if stamp_ns is None:
        return None
    age = wall_ns - stamp_ns
    if not 0 <= age <= MAX_KERNEL_AGE * 1e9:
        return None
    return now - age * 1e-9


def _read_buffer() -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(65536))
    return buf


class _StampedDatagramTransport(asyncio.DatagramTransport):
    """A connected UDP socket read with ``recvmsg``: every datagram goes to the protocol with
    its kernel receive time (``UdpChannel.datagram_received_at``). Sends go straight to the
    socket and are queued only while it would block, as asyncio's own transport does."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: UdpChannel
    ) -> None:
        super().__init__(
            extra={"socket": sock, "sockname": sock.getsockname(), "peername": sock.getpeername()}
        )
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._closing = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._cmsg_size = socket.CMSG_SPACE(_TIMESPEC64.size)
        loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        # One datagram per wake-up, as asyncio's own transport reads: the selector reports the
        # socket again while more are queued, and reading on to EAGAIN would cost a system call
        # per wake-up where (the usual case) one datagram came.
        buf = _read_buffer()
        try:
            size, ancillary, _flags, _addr = self._sock.recvmsg_into([buf], self._cmsg_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # an ICMP error on the connected socket, as asyncio reports it
            self._protocol.error_received(exc)
            return
        now, wall = time.perf_counter(), time.time_ns()
        arrived = to_perf_counter(kernel_ns(ancillary), now, wall)
        if arrived is None:
            self._protocol.datagram_received_at(bytes(buf[:size]), None, now)
        else:
            self._protocol.datagram_received_at(bytes(buf[:size]), None, arrived, kernel=True)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._queue.append(bytes(data))

    def _write_ready(self) -> None:
        while self._queue:
            try:
                self._sock.send(self._queue[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._queue.popleft()
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._queue:
            self._loop.call_soon(self._finish)

    def abort(self) -> None:
        self._queue.clear()
        self.close()
        self._loop.remove_writer(self._fd)

    def _finish(self) -> None:
        if self._sock.fileno() == -1:
            return
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._protocol.connection_lost(None)


def _stamped_socket(
    address: tuple[str, int], local: tuple[str, int] | None
) -> socket.socket | None:
    """A non-blocking UDP socket connected to ``address`` with kernel receive stamps on, or None
    where that cannot be had (then asyncio's transport is used). Raises OSError for a bind or
    connect that fails (as ``create_datagram_endpoint`` would)."""
    if not kernel_stamps_supported():
        return None
    host = address[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return None  # a name, not an address: asyncio resolves it
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            sock.close()
            return None
        if local is not None:
            sock.bind(local)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp(
    address: tuple[str, int], timeout: float, local: tuple[str, int] | None = None
) -> UdpChannel:
    """A connected UDP socket to ``address``, from ``local`` (default: any, ephemeral); arrivals
    timed by the kernel where the platform allows (see the module docstring)."""
    loop = asyncio.get_running_loop()
    label = _label(address)
    try:
        sock = _stamped_socket(address, local)
        if sock is not None:
            channel = UdpChannel(label, timeout)
            try:
                transport = _StampedDatagramTransport(loop, sock, channel)
            except NotImplementedError:  # an event loop without add_reader (Windows proactor)
                sock.close()
            else:
                channel.connection_made(transport)
                return channel
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
