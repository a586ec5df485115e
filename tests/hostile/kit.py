"""The hostile-server kit: servers on loopback that misbehave on purpose.

Every server is a context manager that runs on its own asyncio loop in a daemon thread, binds a
free port on a loopback address (127.0.0.0/8 only: 127.0.0.5 and friends stand for "another
host") and stops by itself after ``lifetime`` seconds whatever the test does. Every stream it
sends is capped in bytes (``bomb_bytes``) and every connection ends with the server.

- :class:`HostileLiveKit`: HTTP/1.1 and WebSocket, the way lkice meets a LiveKit server
  (``/rtc/validate``, ``/settings/regions``, the ``/rtc`` upgrade and a protobuf JoinResponse),
  or a chunked bomb, a huge drip-fed Content-Length, a slowloris drip, silence, stalls, a giant
  WebSocket frame, an endless fragment stream, a join whose strings hold escape codes. Every
  request is recorded (path, Host, whether a token came with it, which address it reached).
- :class:`StunServer`: STUN/TURN over UDP answering Binding/Allocate well or with a
  wrong-length attribute, random garbage, a truncated message, a SOFTWARE attribute with escape
  codes, or ``300 Try Alternate``; every request is recorded with the attributes it carried (did
  USERNAME or MESSAGE-INTEGRITY reach this address?).
- :class:`StunStreamServer`: STUN over TCP or TLS (a certificate made by
  :func:`hostile_certificate`), or a TCP port that accepts and stays silent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import itertools
import json
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from aioice import stun

__all__ = [
    "ESCAPES",
    "FAKE_LINE",
    "HostileLiveKit",
    "HttpRequest",
    "IceServerSpec",
    "Region",
    "StunRequest",
    "StunServer",
    "StunStreamServer",
    "closed_port",
    "fake_jwt",
    "free_port",
    "hostile_certificate",
    "join_response",
    "ws_frame",
]

# What a hostile peer puts in strings that reach a terminal: an OSC title change ended by BEL,
# a CSI clear screen, and a newline followed by a line that looks like lkice's own error.
FAKE_LINE = "lkice: error: FAKE LINE"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\n " + FAKE_LINE

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
MAX_HEAD = 64 * KIB
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's constant, not a secret


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def closed_port(host: str = "127.0.0.1") -> int:
    """A port with nothing on it over TCP or UDP (released just before use)."""
    for _ in range(20):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no closed port found in 20 tries")


_T = TypeVar("_T", bound="_LoopThread")


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the hostile kit binds loopback addresses only, not {host}")


class _LoopThread:
    """An asyncio loop in a daemon thread with a bounded lifetime; subclasses set up their
    listeners in :meth:`_setup` and spawn per-connection work with :meth:`_spawn`."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    async def _setup(self) -> None:
        raise NotImplementedError

    async def _teardown(self) -> None:
        """Close the listeners (subclasses); tasks and writers are ended by the base."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            await self._setup()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.lifetime)
        finally:
            await self._teardown()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start within 10 s")
        if self._error is not None:
            self._thread.join(5)
            raise RuntimeError(f"{type(self).__name__} failed to start: {self._error!r}")

    def __enter__(self: _T) -> _T:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed by itself
                loop.call_soon_threadsafe(self._stopping.set)
        thread.join(15)
        self._thread = None


# -- HTTP / WebSocket: a hostile "LiveKit" ---------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One request as the server received it."""

    connection: int
    method: str
    target: str
    path: str
    host: str | None  # the Host header
    authorization: bool  # an Authorization header was present
    token_in_query: bool  # access_token= in the query string
    local_address: str  # the address the client connected to (which "host" it reached)
    at: float  # time.monotonic() on arrival
    raw: bytes = field(repr=False)

    @property
    def carried_token(self) -> bool:
        return self.authorization or self.token_in_query

    def contains(self, secret: str) -> bool:
        return secret.encode() in self.raw


@dataclass(frozen=True)
class Region:
    """One ``/settings/regions`` entry."""

    region: str
    url: str
    distance: int


@dataclass(frozen=True)
class IceServerSpec:
    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""


ValidateMode = Literal[
    "ok", "reject", "chunked_bomb", "huge_length", "slowloris", "silent", "stall"
]
WebSocketMode = Literal["join", "giant_frame", "fragment_bomb", "silent"]


def ws_frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
    """A server-to-client WebSocket frame (unmasked)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


def join_response(
    *,
    version: str = "1.9.0",
    region: str = "hostile",
    node_id: str = "ND_hostile",
    ice_servers: Sequence[IceServerSpec] = (),
) -> bytes:
    """A ``SignalResponse(join=...)`` as LiveKit sends it first on the WebSocket."""
    from livekit.protocol import models, rtc

    join = rtc.JoinResponse(
        room=models.Room(sid="RM_hostile", name="lkice-diag-hostile"),
        participant=models.ParticipantInfo(sid="PA_hostile", identity="lkice-hostile"),
        server_version=version,
        server_region=region,
        ice_servers=[
            rtc.ICEServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in ice_servers
        ],
        ping_timeout=15,
        ping_interval=5,
        server_info=models.ServerInfo(
            edition=models.ServerInfo.Standard,
            version=version,
            protocol=16,
            region=region,
            node_id=node_id,
        ),
    )
    data: bytes = rtc.SignalResponse(join=join).SerializeToString()
    return data


def _response(status: int, reason: str, body: bytes, headers: Sequence[str] = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HostileLiveKit(_LoopThread):
    """``with HostileLiveKit(validate="chunked_bomb") as lk:`` then ``lk.url``
    (``ws://127.0.0.1:PORT``), ``lk.requests``, ``lk.wait_for_request()``.

    ``validate`` is how ``GET /rtc/validate`` is answered:

    - ``ok``: ``200 success`` (keep-alive); ``reject``: 401 with the real server's wording.
    - ``chunked_bomb``: ``Transfer-Encoding: chunked``, chunk size ``FFFFFFFFFF``, then bytes
      as fast as the client takes them (up to ``bomb_bytes``).
    - ``huge_length``: ``Content-Length: 99999999999`` and a body drip-fed 64 bytes per 0.1 s.
    - ``slowloris``: every response drip-fed one byte per ``drip_interval`` seconds.
    - ``silent``: every request is read (and recorded) and never answered.
    - ``stall``: every answer (validate, the 101, the join) comes after ``stall_s`` seconds,
      just inside a per-step timeout, so only an overall deadline bounds the whole.

    ``websocket`` is what follows the 101 on ``/rtc``: ``join`` (a JoinResponse whose
    ``server_info`` carries ``server_version``/``server_region``), ``giant_frame`` (a header
    announcing 2^62 bytes, then bytes), ``fragment_bomb`` (16-byte non-final frames without
    end), ``silent``. ``regions``: ``/settings/regions`` answers these (404 when None), in one
    chunk of a chunked body, as Go's net/http sends a body written in one call."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        validate: ValidateMode = "ok",
        websocket: WebSocketMode = "join",
        regions: Sequence[Region] | None = None,
        server_version: str = "1.9.0",
        server_region: str = "hostile",
        node_id: str = "ND_hostile",
        ice_servers: Sequence[IceServerSpec] = (),
        stall_s: float = 4.0,
        drip_interval: float = 1.0,
        bomb_bytes: int = 4 * GIB,
        lifetime: float = 120.0,
    ) -> None:
        super().__init__(lifetime)
        _check_loopback(host)
        self.host = host
        self.port = port
        self.validate = validate
        self.websocket = websocket
        self.regions = None if regions is None else list(regions)
        self.join = join_response(
            version=server_version, region=server_region, node_id=node_id, ice_servers=ice_servers
        )
        self.stall_s = stall_s
        self.drip_interval = drip_interval
        self.bomb_bytes = bomb_bytes
        self._requests: list[HttpRequest] = []
        self._seen = threading.Event()
        self._connections = itertools.count(1)
        self.connections = 0
        self.bytes_sent = 0
        self._server: asyncio.AbstractServer | None = None

    # -- observing -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def requests(self) -> list[HttpRequest]:
        with self._lock:
            return list(self._requests)

    def seen(self) -> bool:
        return self._seen.is_set()

    def wait_for_request(self, timeout: float = 10.0) -> bool:
        return self._seen.wait(timeout)

    def signaling_attempts(self) -> int:
        """Connections that asked for /rtc/validate or the /rtc upgrade."""
        return len(
            {
                r.connection
                for r in self.requests
                if r.path.endswith("/validate") or r.path.rstrip("/").endswith(("/rtc", "/rtc/v1"))
            }
        )

    # -- serving ---------------------------------------------------------------------------

    async def _setup(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEAD, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _teardown(self) -> None:
        if self._server is not None:
            self._server.close()

    def _record(self, connection: int, head: bytes, local: str) -> HttpRequest:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method = parts[0] if parts else ""
        target = parts[1] if len(parts) > 1 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path, _, query = target.partition("?")
        request = HttpRequest(
            connection=connection,
            method=method,
            target=target,
            path=path,
            host=headers.get("host"),
            authorization="authorization" in headers,
            token_in_query="access_token=" in query,
            local_address=local,
            at=time.monotonic(),
            raw=head,
        )
        with self._lock:
            self._requests.append(request)
        self._seen.set()
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        self._writers.add(writer)
        self.connections += 1
        connection = next(self._connections)
        local = str(writer.get_extra_info("sockname")[0])
        try:
            for _ in range(16):  # requests per connection: bounded
                head = await reader.readuntil(b"\r\n\r\n")
                request = self._record(connection, head, local)
                headers = head.lower()
                if self.validate == "silent":
                    await self._hold(reader)
                    return
                if request.path.endswith("/validate"):
                    if not await self._answer_validate(reader, writer):
                        return
                elif request.path.endswith("/settings/regions"):
                    await self._answer_regions(writer)
                elif b"upgrade: websocket" in headers:
                    await self._websocket(reader, writer, head)
                    return
                else:
                    await self._send(writer, _response(404, "Not Found", b"404 page not found"))
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # The kit is stopping: end the handler quietly (asyncio's stream callback would
            # print the cancellation as an error).
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Read and drop whatever comes until the client hangs up (or the server stops)."""
        received = 0
        while received < 64 * MIB:
            data = await reader.read(65536)
            if not data:
                return
            received += len(data)
        await asyncio.sleep(self.lifetime)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.validate == "slowloris":
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                self.bytes_sent += 1
                await asyncio.sleep(self.drip_interval)
            return
        if self.validate == "stall":
            await asyncio.sleep(self.stall_s)
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)

    async def _flood(self, writer: asyncio.StreamWriter, block: bytes) -> None:
        while self.bytes_sent < self.bomb_bytes:
            writer.write(block)
            await writer.drain()
            self.bytes_sent += len(block)

    async def _answer_validate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """False: the connection is done (a bomb was sent)."""
        mode = self.validate
        if mode == "reject":
            body = b"invalid authorization token: token is malformed"
            await self._send(writer, _response(401, "Unauthorized", body))
            return True
        if mode == "chunked_bomb":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n"
            )
            await self._flood(writer, b"A" * MIB)
            await self._hold(reader)
            return False
        if mode == "huge_length":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 99999999999\r\n\r\n"
            )
            while self.bytes_sent < self.bomb_bytes:
                writer.write(b"s" * 64)
                await writer.drain()
                self.bytes_sent += 64
                await asyncio.sleep(0.1)
            return False
        await self._send(writer, _response(200, "OK", b"success"))
        return True

    async def _answer_regions(self, writer: asyncio.StreamWriter) -> None:
        if self.regions is None:
            await self._send(writer, _response(404, "Not Found", b"404 page not found"))
            return
        body = json.dumps(
            {
                "regions": [
                    {"region": r.region, "url": r.url, "distance": str(r.distance)}
                    for r in self.regions
                ]
            }
        ).encode()
        # As Go's net/http sends a body written in one call without a Content-Length: one chunk.
        await self._send(
            writer,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):X}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n",
        )

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # noqa: S324 (RFC 6455)
        await self._send(
            writer,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n",
        )
        mode = self.websocket
        if mode == "join":
            await self._send(writer, ws_frame(self.join))
        elif mode == "giant_frame":
            writer.write(struct.pack("!BBQ", 0x82, 127, 1 << 62))
            await self._flood(writer, b"G" * MIB)
        elif mode == "fragment_bomb":
            writer.write(ws_frame(b"F" * 16, opcode=0x2, fin=False))
            await self._flood(writer, ws_frame(b"F" * 16, opcode=0x0, fin=False) * 4096)
        await self._hold(reader)


# -- STUN over UDP ---------------------------------------------------------------------------

BINDING, ALLOCATE, REFRESH = 0x001, 0x003, 0x004
USERNAME, MESSAGE_INTEGRITY = 0x0006, 0x0008
XOR_MAPPED_ADDRESS, LIFETIME, ALTERNATE_SERVER = 0x0020, 0x000D, 0x8023

StunMode = Literal[
    "ok", "silent", "xor_mapped_len2", "lifetime_len2", "garbage", "truncated", "redirect"
]
AfterAuth = Literal["forbidden", "redirect", "silent", "bad_request"]


@dataclass(frozen=True)
class StunRequest:
    method: int
    message_class: int
    attributes: tuple[int, ...]
    source: tuple[str, int]
    at: float

    @property
    def credentials(self) -> bool:
        """USERNAME or MESSAGE-INTEGRITY came with it: the secret's key reached this server."""
        return USERNAME in self.attributes or MESSAGE_INTEGRITY in self.attributes


def _parse_request(data: bytes) -> tuple[int, int, bytes, tuple[int, ...]] | None:
    """(method, class, transaction id, attribute types) of a STUN request, parsed by hand (the
    kit must not depend on the codec under test); None if it is not STUN."""
    if len(data) < 20 or data[0] & 0xC0:
        return None
    msg_type, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != stun.COOKIE:
        return None
    types: list[int] = []
    pos, end = 20, min(len(data), 20 + length)
    for _ in range(64):
        if pos + 4 > end:
            break
        attr_type, attr_len = struct.unpack("!HH", data[pos : pos + 4])
        types.append(attr_type)
        pos += 4 + attr_len + (-attr_len % 4)
    return msg_type & 0x3EEF, msg_type & 0x0110, data[8:20], tuple(types)


def raw_stun(
    msg_type: int, transaction_id: bytes, attributes: Sequence[tuple[int, bytes]]
) -> bytes:
    """A STUN message built byte by byte: each attribute's length is its value's, so a value of
    the wrong size makes a wrong-length attribute."""
    body = b""
    for attr_type, value in attributes:
        body += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    return struct.pack("!HHI", msg_type, len(body), stun.COOKIE) + transaction_id + body


def append_attribute(message: bytes, attr_type: int, value: bytes) -> bytes:
    extra = struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    length = struct.unpack("!H", message[2:4])[0] + len(extra)
    return message[:2] + struct.pack("!H", length) + message[4:] + extra


def address_value(address: tuple[str, int]) -> bytes:
    """A plain (not XORed) IPv4 address attribute value, as ALTERNATE-SERVER carries it."""
    return struct.pack("!BBH", 0, 1, address[1]) + socket.inet_aton(address[0])


def _success(method: int, transaction_id: bytes, source: tuple[str, int]) -> stun.Message:
    message = stun.Message(
        message_method=stun.Method(method),
        message_class=stun.Class.RESPONSE,
        transaction_id=transaction_id,
    )
    message.attributes["XOR-MAPPED-ADDRESS"] = source
    return message


def _error(method: int, transaction_id: bytes, code: int, reason: str) -> stun.Message:
    message = stun.Message(
        message_method=stun.Method(method),
        message_class=stun.Class.ERROR,
        transaction_id=transaction_id,
    )
    message.attributes["ERROR-CODE"] = (code, reason)
    return message


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = (str(addr[0]), int(addr[1]))
        reply = self.server.handle(data, source)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class StunServer(_LoopThread):
    """``with StunServer(mode="garbage") as s:`` then ``s.uri`` (``stun:127.0.0.1:PORT``).

    ``mode`` decides every answer:

    - ``ok``: Binding success (XOR-MAPPED-ADDRESS, and ``software`` as SOFTWARE if given);
      Allocate without credentials: 401 with REALM and NONCE; with credentials: ``after_auth``
      (``forbidden``: 403; ``redirect``: 300 Try Alternate to ``alternate``; ``silent``: no
      answer at all; ``bad_request``: 400 with a reason that is not about credentials).
    - ``redirect``: Binding success; Allocate: 300 Try Alternate + ALTERNATE-SERVER ``alternate``.
    - ``silent``: nothing, ever (a filtered port looks like this, not like ICMP refused).
    - ``xor_mapped_len2``: a Binding success whose XOR-MAPPED-ADDRESS is 2 bytes long.
    - ``lifetime_len2``: a valid XOR-MAPPED-ADDRESS followed by a 2-byte LIFETIME.
    - ``garbage``: 64 random bytes. ``truncated``: a header announcing more than is sent.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: StunMode = "ok",
        software: str | None = None,
        alternate: tuple[str, int] | None = None,
        after_auth: AfterAuth = "forbidden",
        realm: str = "hostile.test",
        lifetime: float = 120.0,
    ) -> None:
        super().__init__(lifetime)
        _check_loopback(host)
        self.host = host
        self.port = port
        self.mode = mode
        self.software = software
        self.alternate = alternate
        self.after_auth = after_auth
        self.realm = realm
        self._requests: list[StunRequest] = []
        self._random = random.Random(12)
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        return f"stun:{self.host}:{self.port}"

    def turn_uri(self, transport: str = "udp") -> str:
        return f"turn:{self.host}:{self.port}?transport={transport}"

    @property
    def requests(self) -> list[StunRequest]:
        with self._lock:
            return list(self._requests)

    def received_credentials(self) -> bool:
        return any(r.credentials for r in self.requests)

    async def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _StunProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def _teardown(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def handle(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        parsed = _parse_request(data)
        if parsed is None:
            return None
        method, message_class, tid, attributes = parsed
        with self._lock:
            self._requests.append(
                StunRequest(method, message_class, attributes, source, time.monotonic())
            )
        if message_class != 0x0000:  # only requests are answered
            return None
        mode = self.mode
        if mode == "silent":
            return None
        if mode == "xor_mapped_len2":
            return raw_stun(method | 0x0100, tid, [(XOR_MAPPED_ADDRESS, b"\x00\x01")])
        if mode == "lifetime_len2":
            good = bytes(_success(method, tid, source))
            return append_attribute(good, LIFETIME, b"\x00\x10")
        if mode == "garbage":
            return bytes(self._random.getrandbits(8) for _ in range(64))
        if mode == "truncated":
            good = bytes(_success(method, tid, source))
            return good[:2] + struct.pack("!H", 100) + good[4:]
        if method == BINDING:
            message = _success(method, tid, source)
            if self.software is not None:
                message.attributes["SOFTWARE"] = self.software
            return bytes(message)
        if method == ALLOCATE:
            if mode == "redirect" or (self.after_auth == "redirect" and USERNAME in attributes):
                return self._redirect(method, tid)
            if USERNAME not in attributes:
                challenge = _error(method, tid, 401, "Unauthorized")
                challenge.attributes["REALM"] = self.realm
                challenge.attributes["NONCE"] = b"hostile-nonce-0001"
                return bytes(challenge)
            if self.after_auth == "silent":
                return None  # answered the Binding and the 401 round, then goes quiet
            if self.after_auth == "bad_request":
                return bytes(_error(method, tid, 400, "Wrong transport field"))
            return bytes(_error(method, tid, 403, "Forbidden"))
        return bytes(_error(method, tid, 400, "Bad Request"))

    def _redirect(self, method: int, tid: bytes) -> bytes:
        assert self.alternate is not None, "a redirecting StunServer needs alternate="
        message = bytes(_error(method, tid, 300, "Try Alternate"))
        return append_attribute(message, ALTERNATE_SERVER, address_value(self.alternate))


# -- STUN over TCP/TLS, and silent TCP ---------------------------------------------------------

StreamMode = Literal["ok", "silent"]


class StunStreamServer(_LoopThread):
    """STUN Binding over TCP (or TLS with ``tls``): ``ok`` answers every Binding with a success
    (and ``software`` as SOFTWARE); ``silent`` accepts the connection and never says a word."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: StreamMode = "ok",
        tls: ssl.SSLContext | None = None,
        software: str | None = None,
        lifetime: float = 120.0,
    ) -> None:
        super().__init__(lifetime)
        _check_loopback(host)
        self.host = host
        self.port = port
        self.mode = mode
        self.tls = tls
        self.software = software
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._accepted = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def seen(self) -> bool:
        return self._accepted.is_set()

    async def _setup(self) -> None:
        if self.tls is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        else:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, ssl=self.tls, ssl_handshake_timeout=5
            )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _teardown(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        self._writers.add(writer)
        self.accepted += 1
        self._accepted.set()
        peer = writer.get_extra_info("peername")
        source = (str(peer[0]), int(peer[1]))
        try:
            for _ in range(10_000):  # messages per connection: bounded
                if self.mode == "silent":
                    data = await reader.read(65536)
                    if not data:
                        return
                    continue
                head = await reader.readexactly(20)
                length = struct.unpack("!H", head[2:4])[0]
                body = await reader.readexactly(length)
                parsed = _parse_request(head + body)
                if parsed is None:
                    return
                method, message_class, tid, _ = parsed
                if message_class != 0x0000:
                    continue
                if method == BINDING:
                    message = _success(method, tid, source)
                    if self.software is not None:
                        message.attributes["SOFTWARE"] = self.software
                    writer.write(bytes(message))
                else:
                    writer.write(bytes(_error(method, tid, 400, "Bad Request")))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# -- TLS: a certificate whose names carry escape codes --------------------------------------


@dataclass(frozen=True)
class HostileCertificate:
    cert_file: Path
    key_file: Path
    ca_file: Path
    subject_cn: str
    issuer_o: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


def hostile_certificate(
    directory: Path,
    subject_cn: str = "\x1b]0;title\x07",
    issuer_o: str = "\nlkice: error: FAKE LINE",
) -> HostileCertificate:
    """A CA whose organization (the leaf's issuer O) is ``issuer_o`` and a leaf for 127.0.0.1
    whose subject CN is ``subject_cn``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer_o),
            x509.NameAttribute(NameOID.COMMON_NAME, "hostile kit CA"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file, ca_file = (
        directory / "hostile-cert.pem",
        directory / "hostile-key.pem",
        directory / "hostile-ca.pem",
    )
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return HostileCertificate(cert_file, key_file, ca_file, subject_cn, issuer_o)


# -- tokens ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(payload_json: str, signature: str = "hostile-signature") -> str:
    """A JWT-shaped token whose payload is ``payload_json`` exactly as written (so it can hold
    JSON that no encoder would produce: 1e400, -Infinity, 30,000 brackets)."""
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    return f"{header}.{_b64url(payload_json.encode())}.{_b64url(signature.encode())}"
