"""LiveKit signaling, each step timed on one real connection, the way a client meets it:
DNS, TCP connect, TLS, ``GET /rtc/validate``, the WebSocket upgrade, and the JoinResponse.

``/rtc/validate`` is asked first because it is where the server explains a rejected token in
plain text (a WebSocket refusal carries no reason a browser can read), and because a proxy or a
web server that is not LiveKit gives itself away there. The WebSocket is driven with
``websockets``' sans-I/O protocol over the connection timed here, so no library hides a phase.
The token travels in the ``Authorization`` header, never in a URL a proxy might log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from lkice import __version__
from lkice.credentials import Secret, TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.livekit import LiveKitUrl
from lkice.probe.channel import elapsed_ms
from lkice.probe.proxy import Proxies, ProxyConfig, connect_stream
from lkice.probe.resolve import resolve
from lkice.probe.tcp import tls_failure, tls_info
from lkice.report import SignalResult
from lkice.stun import format_address
from lkice.uri import IceUri, parse_ice_uri

__all__ = ["IceServer", "Region", "SignalSettings", "fetch_regions", "probe_signal"]

PROTOCOL_VERSION = 16

# websockets logs request headers at DEBUG, the Authorization header (the token) included: its
# protocol gets a logger of its own that never emits DEBUG, whatever the application configures.
_WS_LOG = logging.getLogger("lkice.probe.signal.websocket")
_WS_LOG.setLevel(logging.INFO)
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class SignalSettings:
    timeout: float = 5.0
    join_timeout: float = 10.0
    tls_context: ssl.SSLContext | None = None
    nameserver: tuple[str, int] | None = None
    # Signaling goes through the web proxy when one applies (none by default: direct only).
    proxies: Proxies = field(default_factory=Proxies)


@dataclass(frozen=True)
class IceServer:
    """One URL of the JoinResponse's ICE servers, with the credentials the server handed out."""

    uri: IceUri
    credentials: TurnCredentials | None


class _Http:
    """Just enough HTTP/1.1 over asyncio streams for one GET and one upgrade."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(
        self, target: str, host: str, token: Secret, timeout: float
    ) -> tuple[int, dict[str, str], str]:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lkice/{__version__}\r\n"
            f"Authorization: Bearer {token.reveal()}\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
        )
        self.writer.write(request.encode())
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self) -> tuple[int, dict[str, str], str]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("response headers too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            length = min(int(headers["content-length"]), MAX_BODY)
            body = await self.reader.readexactly(length)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while len(body) < MAX_BODY:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.read(MAX_BODY)
            headers["connection"] = "close"  # the body ran to the end of the connection
        return int(parts[1]), headers, body.decode("utf-8", errors="replace")


async def _route(
    url: LiveKitUrl, result: SignalResult, settings: SignalSettings
) -> tuple[tuple[str, int], ProxyConfig | None]:
    """Where to connect: the resolved address, or the proxy (which resolves the name itself,
    so no local DNS: on proxy-only networks it often cannot resolve outside names)."""
    proxy = settings.proxies.for_(url.host, url.port)
    if proxy is not None:
        result.proxy = proxy.label
        return (url.host, url.port), proxy
    result.phase = Phase.DNS.value
    resolution = await resolve(url.host, timeout=settings.timeout, nameserver=settings.nameserver)
    result.timings_ms["dns"] = resolution.elapsed_ms
    address = (resolution.addresses[0], url.port)
    result.address = format_address(address)
    return address, None


async def _open(
    url: LiveKitUrl,
    result: SignalResult,
    settings: SignalSettings,
    address: tuple[str, int],
    proxy: ProxyConfig | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    result.phase = Phase.CONNECT.value
    sock = await connect_stream(address, proxy, settings.timeout, result.timings_ms)
    if not url.secure:
        return await asyncio.open_connection(sock=sock)
    result.phase = Phase.TLS.value
    ctx = settings.tls_context or ssl.create_default_context()
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=url.host, ssl_handshake_timeout=settings.timeout
            ),
            settings.timeout + 1,
        )
    except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
        sock.close()
        raise await tls_failure(exc, address, url.host, settings.timeout, proxy) from exc
    result.timings_ms["tls"] = elapsed_ms(start)
    result.tls = tls_info(
        writer.get_extra_info("ssl_object"), verified=ctx.verify_mode != ssl.CERT_NONE
    )
    return reader, writer


def _validate_verdict(
    status: int, headers: dict[str, str], body: str, url: LiveKitUrl
) -> ProbeError | None:
    reason = " ".join(body.split())[:200]
    if status == 200 and body.strip() == "success":
        return None
    if status in (401, 403):
        return ProbeError(
            ErrorKind.TOKEN_REJECTED,
            f"token rejected by server: {reason or f'HTTP {status}'}",
            Phase.VALIDATE,
        )
    if status == 407:
        return ProbeError(
            ErrorKind.PROXY,
            "an HTTP proxy demands authentication (407) before anything reaches LiveKit",
            Phase.VALIDATE,
        )
    if status == 200:
        server = headers.get("server", "unknown")
        return ProbeError(
            ErrorKind.NOT_LIVEKIT,
            f"{url.server} answered /rtc/validate with 200 but not 'success' (server: {server}, "
            f"body: {reason[:80]!r}): this is not a LiveKit server, or a proxy answers for it",
            Phase.VALIDATE,
        )
    if status in (502, 503, 504) or "via" in headers:
        return ProbeError(
            ErrorKind.PROXY,
            f"HTTP {status} from an intermediary ({headers.get('via') or headers.get('server', 'unknown')}): "
            "LiveKit itself was not reached",
            Phase.VALIDATE,
        )
    return None  # e.g. 404 from an older server without /rtc/validate: the upgrade will tell


def _query() -> str:
    return urlencode(
        {
            "auto_subscribe": "1",
            "protocol": PROTOCOL_VERSION,
            "sdk": "python",
            "version": f"lkice-{__version__}",
        }
    )


async def _upgrade(
    url: LiveKitUrl,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    token: Secret,
    timeout: float,
) -> tuple[ClientProtocol, list[Any]]:
    """The upgrade; returns the protocol and the events that came in the same reads as the 101
    (a LiveKit server sends its join right behind it)."""
    protocol = ClientProtocol(
        parse_uri(f"{url.ws_url}/rtc?{_query()}"), max_size=4 * 1024 * 1024, logger=_WS_LOG
    )
    request = protocol.connect()
    request.headers["Authorization"] = f"Bearer {token.reveal()}"
    request.headers["User-Agent"] = f"lkice/{__version__}"
    protocol.send_request(request)
    writer.write(b"".join(protocol.data_to_send()))

    async def handshake() -> list[Any]:
        while True:
            data = await reader.read(65536)
            if not data:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)
            events = protocol.events_received()
            for i, event in enumerate(events):
                if isinstance(event, Response):
                    return events[i + 1 :]
            if not data:
                raise ConnectionError("connection closed during the WebSocket upgrade")

    early = await asyncio.wait_for(handshake(), timeout)
    exc = protocol.handshake_exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = " ".join(exc.response.body.decode("utf-8", errors="replace").split())[:200]
        kind = ErrorKind.TOKEN_REJECTED if status in (401, 403) else ErrorKind.WEBSOCKET_REJECTED
        what = (
            "token rejected by server"
            if kind is ErrorKind.TOKEN_REJECTED
            else f"WebSocket upgrade refused (HTTP {status})"
        )
        raise ProbeError(kind, f"{what}: {body or 'no reason given'}", Phase.WEBSOCKET)
    if isinstance(exc, InvalidHandshake):
        raise ProbeError(
            ErrorKind.WEBSOCKET_REJECTED, f"WebSocket upgrade failed: {exc}", Phase.WEBSOCKET
        )
    return protocol, early


async def _first_message(
    protocol: ClientProtocol, reader: asyncio.StreamReader, early: list[Any]
) -> bytes:
    parts: list[bytes] = []
    pending = early
    while True:
        for event in pending:
            if isinstance(event, Frame) and event.opcode in (
                Opcode.BINARY,
                Opcode.TEXT,
                Opcode.CONT,
            ):
                parts.append(bytes(event.data))
                if event.fin:
                    return b"".join(parts)
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                raise ConnectionError(
                    f"the server closed the WebSocket ({protocol.close_reason or 'no reason'})"
                )
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the connection before sending the join")
        protocol.receive_data(data)
        pending = protocol.events_received()


def _summarize_join(join: Any, result: SignalResult) -> list[IceServer]:
    info = join.server_info
    result.server = {
        "version": info.version or join.server_version or None,
        "edition": _enum_name(info, "edition"),
        "region": info.region or join.server_region or None,
        "node_id": info.node_id or None,
        "protocol": info.protocol or None,
    }
    result.room = join.room.name or None
    result.force_relay = join.client_configuration.force_relay == 2  # ClientConfigSetting.ENABLED
    servers: list[IceServer] = []
    for entry in join.ice_servers:
        creds = (
            TurnCredentials(Secret(entry.username), Secret(entry.credential))
            if entry.username or entry.credential
            else None
        )
        result.ice_servers.append({"urls": list(entry.urls), "credentials": creds is not None})
        for text in entry.urls:
            try:
                servers.append(IceServer(parse_ice_uri(text), creds))
            except ValueError as exc:  # UsageError: the server advertised something unusable
                result.notes.append(f"the server advertised an ICE URL lkice cannot use: {exc}")
    if not any(s.uri.kind == "turn" for s in servers):
        result.notes.append(
            "the JoinResponse offers no TURN server: clients behind UDP-blocking firewalls cannot connect"
        )
    return servers


def _enum_name(message: Any, field_name: str) -> str | None:
    value = getattr(message, field_name)
    try:
        name: str = (
            message.DESCRIPTOR.fields_by_name[field_name].enum_type.values_by_number[value].name
        )
    except (KeyError, AttributeError):
        return None
    return name.lower()


async def probe_signal(
    url: LiveKitUrl, token: Secret, settings: SignalSettings
) -> tuple[SignalResult, list[IceServer]]:
    """Walk the signaling steps; the result says how far it got and why it stopped."""
    from livekit.protocol import rtc  # lazy: a few MB of generated code

    result = SignalResult(url=url.given)
    writer: asyncio.StreamWriter | None = None
    servers: list[IceServer] = []
    try:
        address, proxy = await _route(url, result, settings)
        reader, writer = await _open(url, result, settings, address, proxy)
        http = _Http(reader, writer)

        result.phase = Phase.VALIDATE.value
        start = time.perf_counter()
        try:
            status, headers, body = await http.get(
                f"{url.prefix}/rtc/validate?{_query()}", url.host, token, settings.timeout
            )
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ProbeError(
                ErrorKind.NOT_LIVEKIT,
                f"{url.server} did not answer HTTP properly ({exc})",
                Phase.VALIDATE,
            ) from exc
        result.timings_ms["validate"] = elapsed_ms(start)
        problem = _validate_verdict(status, headers, body, url)
        if problem is not None:
            raise problem
        if status == 404:
            result.notes.append(
                "the server has no /rtc/validate (an older LiveKit?): token checked at the upgrade only"
            )
        if headers.get("connection", "").lower() == "close":
            writer.close()
            result.notes.append(
                "the server closed the connection after /rtc/validate; the WebSocket used a new one"
            )
            reader, writer = await _open(url, result, settings, address, proxy)

        result.phase = Phase.WEBSOCKET.value
        start = time.perf_counter()
        protocol, early = await _upgrade(url, reader, writer, token, settings.timeout)
        result.timings_ms["websocket"] = elapsed_ms(start)

        result.phase = Phase.JOIN.value
        start = time.perf_counter()
        try:
            data = await asyncio.wait_for(
                _first_message(protocol, reader, early), settings.join_timeout
            )
        except asyncio.TimeoutError:
            raise ProbeError(
                ErrorKind.JOIN_TIMEOUT,
                f"no JoinResponse within {settings.join_timeout:g} s after the upgrade",
                Phase.JOIN,
            ) from None
        result.timings_ms["join"] = elapsed_ms(start)
        try:
            response = rtc.SignalResponse.FromString(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ProbeError(
                ErrorKind.PROTOCOL,
                "the first WebSocket message is not a LiveKit SignalResponse",
                Phase.JOIN,
            ) from exc
        if response.WhichOneof("message") != "join":
            raise ProbeError(
                ErrorKind.PROTOCOL,
                f"the first signal message is {response.WhichOneof('message')!r}, not a join",
                Phase.JOIN,
            )
        servers = _summarize_join(response.join, result)
        protocol.send_binary(
            rtc.SignalRequest(leave=rtc.LeaveRequest(can_reconnect=False)).SerializeToString()
        )
        protocol.send_close()
        writer.write(b"".join(protocol.data_to_send()))
        result.ok = True
        result.phase = None
    except ProbeError as exc:
        result.fail(exc)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError) as exc:
        phase = result.phase
        what = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"failed ({exc})"
        result.fail(
            ProbeError(ErrorKind.CONNECTION_CLOSED, f"signaling {what} during {phase}", None)
        )
    finally:
        if writer is not None:
            writer.close()
    return result, servers


@dataclass(frozen=True)
class Region:
    name: str
    url: str
    distance: int | None


async def fetch_regions(
    url: LiveKitUrl, token: Secret, settings: SignalSettings
) -> tuple[list[Region] | None, str | None]:
    """LiveKit Cloud's ``GET /settings/regions``: (regions, None), or (None, why not). The
    open-source server has no such endpoint (404): its regions come from the user."""
    from lkice.livekit import parse_livekit_url

    scratch = SignalResult(url=url.given)
    writer: asyncio.StreamWriter | None = None
    try:
        address, proxy = await _route(url, scratch, settings)
        reader, writer = await _open(url, scratch, settings, address, proxy)
        status, _, body = await _Http(reader, writer).get(
            f"{url.prefix}/settings/regions", url.host, token, settings.timeout
        )
    except (
        ProbeError,
        ValueError,
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.TimeoutError,
        OSError,
    ) as exc:
        return None, f"region discovery failed: {getattr(exc, 'message', exc)}"
    finally:
        if writer is not None:
            writer.close()
    if status == 404:
        return (
            None,
            "no /settings/regions (a self-hosted server): give regions explicitly to compare them",
        )
    if status != 200:
        return None, f"/settings/regions answered HTTP {status}"
    try:
        entries = json.loads(body).get("regions", [])
        regions = []
        for entry in entries:
            parse_livekit_url(str(entry["url"]))  # refuse what cannot be probed
            distance = entry.get("distance")
            regions.append(
                Region(
                    str(entry["region"]),
                    str(entry["url"]),
                    int(distance) if distance is not None else None,
                )
            )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"/settings/regions sent something unreadable ({exc.__class__.__name__})"
    return regions, None
