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
from websockets.exceptions import InvalidStatus, PayloadTooBig, ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from lkice import __version__
from lkice.credentials import Secret, TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError, UsageError
from lkice.livekit import LiveKitUrl
from lkice.probe.channel import elapsed_ms
from lkice.probe.proxy import Proxies, ProxyConfig, connect_stream
from lkice.probe.resolve import resolve
from lkice.probe.tcp import client_tls_context, tls_failure, tls_info
from lkice.report import SignalResult
from lkice.stun import format_address
from lkice.uri import IceUri, parse_ice_uri

__all__ = [
    "IceServer",
    "Region",
    "SignalSettings",
    "fetch_regions",
    "may_receive_token",
    "probe_signal",
]

PROTOCOL_VERSION = 16

# websockets logs request headers at DEBUG, the Authorization header (the token) included: its
# protocol gets a logger of its own that never emits DEBUG, whatever the application configures.
_WS_LOG = logging.getLogger("lkice.probe.signal.websocket")
_WS_LOG.setLevel(logging.INFO)
# Limits sized to what a real LiveKit server sends, with a wide margin.
MAX_HEAD = 16 * 1024  # an HTTP head
MAX_VALIDATE = 16 * 1024  # /rtc/validate: "success" or a one-line reason
MAX_REGIONS_BODY = 256 * 1024  # /settings/regions: a few KB for a dozen regions
MAX_JOIN = 1024 * 1024  # the JoinResponse: a few KB, more with many ICE servers
MAX_FRAMES = 256  # WebSocket frames before the join: a server sends it first
READ_SIZE = 16 * 1024
_EXPECTED = {MAX_VALIDATE: "a few bytes", MAX_REGIONS_BODY: "a few KB"}
# At most this many regions from /settings/regions are probed (LiveKit Cloud lists about a
# dozen, nearest first), and at most this many ICE server URLs from one JoinResponse.
MAX_REGIONS = 16
MAX_ICE_URLS = 32


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


class HttpError(Exception):
    """An HTTP answer lkice will not read: malformed, or larger than any real LiveKit answer."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names lower-case; values shown only through textsafe
    body: str
    reusable: bool  # the connection can carry the WebSocket upgrade next


class _Http:
    """One GET over a connection timed by the caller, parsed by h11 (sans-I/O, by the httpx
    authors) within size limits sized to what LiveKit really sends: ``/rtc/validate`` answers a
    few bytes, ``/settings/regions`` a few KB. A hostile chunk size or Content-Length cannot make
    lkice read more than ``limit`` bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11  # lazy: only LiveKit targets need it

        self._h11 = h11
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    async def get(self, target: str, host: str, token: Secret, limit: int) -> HttpAnswer:
        h11 = self._h11
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("Host", host),
                ("User-Agent", f"lkice/{__version__}"),
                ("Authorization", f"Bearer {token.reveal()}"),
                ("Accept", "*/*"),
            ],
        )
        self.writer.write(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        status, headers, body = 0, dict[str, str](), bytearray()
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.reader.read(READ_SIZE))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {
                        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers
                    }
                    declared = headers.get("content-length", "")
                    if declared.isascii() and declared.isdigit() and int(declared) > limit:
                        # Refused before any of it is read (or waited for).
                        raise HttpError(
                            f"announced {int(declared):,} bytes (more than {limit // 1024} KiB; a "
                            f"LiveKit server sends {_EXPECTED.get(limit, 'far less')})"
                        )
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise HttpError(
                            f"answered with more than {limit // 1024} KiB (a LiveKit server "
                            f"sends {_EXPECTED.get(limit, 'far less')})"
                        )
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise HttpError("closed the connection before answering")
                # h11.InformationalResponse (1xx): keep reading for the final answer.
        except h11.RemoteProtocolError as exc:
            raise HttpError(f"answered with malformed HTTP ({str(exc)[:120]})") from None
        reusable = self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
        return HttpAnswer(status, headers, body.decode("utf-8", errors="replace"), reusable)


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
    ctx = settings.tls_context or client_tls_context()
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
        error = await tls_failure(exc, address, url.host, settings.timeout, proxy, result.fail)
        result.tls = error.tls  # a rejected certificate: what it was and what was wrong
        raise error from exc
    result.timings_ms["tls"] = elapsed_ms(start)
    result.tls = tls_info(
        writer.get_extra_info("ssl_object"), verified=ctx.verify_mode != ssl.CERT_NONE
    )
    return reader, writer


def _validate_verdict(
    status: int, headers: dict[str, str], body: str, url: LiveKitUrl, proxied: bool = False
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
    if 300 <= status < 400:
        # Never followed: the token would go wherever the answer points.
        where = headers.get("location", "")
        return ProbeError(
            ErrorKind.NOT_LIVEKIT,
            f"{url.server} redirects /rtc/validate (HTTP {status}"
            + (f" to {_short(where, 160)!r}" if where else "")
            + "): lkice does not follow redirects with the token; give the final URL",
            Phase.VALIDATE,
        )
    if (status in (502, 503, 504) or "via" in headers) and not proxied:
        # No web proxy in use: the gateway is the deployment's own (a load balancer, a CDN, a
        # reverse proxy) more often than one on this network; the findings say both.
        via = headers.get("via") or headers.get("server", "unknown")
        return ProbeError(
            ErrorKind.GATEWAY,
            f"HTTP {status} from a gateway in front of LiveKit ({_short(via, 80)}): LiveKit "
            "itself did not answer",
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
    (a LiveKit server sends its join right behind it). websockets bounds the handshake's lines,
    headers and body itself."""
    protocol = ClientProtocol(
        parse_uri(f"{url.ws_url}/rtc?{_query()}"), max_size=MAX_JOIN, logger=_WS_LOG
    )
    request = protocol.connect()
    request.headers["Authorization"] = f"Bearer {token.reveal()}"
    request.headers["User-Agent"] = f"lkice/{__version__}"
    protocol.send_request(request)
    writer.write(b"".join(protocol.data_to_send()))

    async def handshake() -> list[Any]:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)
            events = protocol.events_received()
            for i, event in enumerate(events):
                if isinstance(event, Response):
                    return events[i + 1 :]
            if protocol.handshake_exc is not None:
                return []
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
        location = exc.response.headers.get("Location")
        if 300 <= status < 400 and location:
            what += f", redirected to {_short(location, 160)!r} (not followed: the token stays)"
        raise ProbeError(kind, f"{what}: {body or 'no reason given'}", Phase.WEBSOCKET)
    if exc is not None:
        raise ProbeError(
            ErrorKind.WEBSOCKET_REJECTED, f"WebSocket upgrade failed: {exc}", Phase.WEBSOCKET
        )
    return protocol, early


def _broken_websocket(protocol: ClientProtocol) -> ProbeError | None:
    """What websockets' parser refused, named: a frame or message over the limit, or a frame
    that breaks the protocol."""
    exc = protocol.parser_exc
    if exc is None:
        return None
    if isinstance(exc, PayloadTooBig):
        return ProbeError(
            ErrorKind.PROTOCOL,
            f"the server sent a WebSocket message larger than {MAX_JOIN // 1024} KiB before "
            "the join (a JoinResponse is a few KB): not a LiveKit server, or a broken one",
            Phase.JOIN,
        )
    return ProbeError(
        ErrorKind.PROTOCOL,
        f"the server broke the WebSocket protocol before the join ({exc})",
        Phase.JOIN,
    )


async def _first_message(
    protocol: ClientProtocol, reader: asyncio.StreamReader, early: list[Any]
) -> bytes:
    """The first whole data message; bounded in bytes (websockets' ``max_size`` covers the
    fragments of one message) and in frames (empty fragments cost nothing in bytes)."""
    parts: list[bytes] = []
    pending = early
    frames = 0
    while True:
        for event in pending:
            if not isinstance(event, Frame):
                continue
            frames += 1
            if frames > MAX_FRAMES:
                raise ProbeError(
                    ErrorKind.PROTOCOL,
                    f"the server sent more than {MAX_FRAMES} WebSocket frames without a "
                    "complete message (a LiveKit server sends the join first, in one message)",
                    Phase.JOIN,
                )
            if event.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                parts.append(bytes(event.data))
                if event.fin:
                    return b"".join(parts)
            if event.opcode is Opcode.CLOSE:
                broken = _broken_websocket(protocol)
                if broken is not None:
                    raise broken
                raise ConnectionError(f"the server closed the WebSocket ({_close_of(event)})")
        broken = _broken_websocket(protocol)
        if broken is not None:
            raise broken
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("the server closed the connection before sending the join")
        protocol.receive_data(data)
        pending = protocol.events_received()


def _close_of(frame: Frame) -> str:
    """A close frame's code and reason, as the server gave them (LiveKit names why, e.g. a
    full room or a duplicate identity)."""
    try:
        close = Close.parse(bytes(frame.data))
    except (ProtocolError, ValueError):
        return "an unreadable close frame"
    reason = f" {_short(close.reason, 120)!r}" if close.reason else ", no reason given"
    return f"code {int(close.code)}{reason}"


def _summarize_join(join: Any, result: SignalResult) -> list[IceServer]:
    info = join.server_info
    result.server = {
        "version": _short(info.version or join.server_version) or None,
        "edition": _enum_name(info, "edition"),
        "region": _short(info.region or join.server_region) or None,
        "node_id": _short(info.node_id) or None,
        "protocol": info.protocol or None,
    }
    result.room = _short(join.room.name) or None
    result.force_relay = join.client_configuration.force_relay == 2  # ClientConfigSetting.ENABLED
    servers: list[IceServer] = []
    urls = 0
    skipped = 0
    for entry in join.ice_servers:
        creds = (
            TurnCredentials(Secret(entry.username), Secret(entry.credential))
            if entry.username or entry.credential
            else None
        )
        kept = []
        for text in entry.urls:
            urls += 1
            if urls > MAX_ICE_URLS:
                skipped += 1
                continue
            kept.append(_short(text))
            try:
                servers.append(IceServer(parse_ice_uri(text), creds))
            except UsageError as exc:  # the server advertised something unusable
                result.notes.append(f"the server advertised an ICE URL lkice cannot use: {exc}")
        if kept:
            result.ice_servers.append({"urls": kept, "credentials": creds is not None})
    if skipped:
        result.notes.append(
            f"the JoinResponse lists {urls} ICE server URLs; lkice probed the first "
            f"{MAX_ICE_URLS} and skipped {skipped} (a LiveKit server offers a handful)"
        )
    if not any(s.uri.kind == "turn" for s in servers):
        result.notes.append(
            "the JoinResponse offers no TURN server: clients behind firewalls that block UDP "
            "cannot connect unless ICE/TCP to the SFU gets through"
        )
    return servers


def _short(text: str, limit: int = 256) -> str:
    """A server's string as the report keeps it: bounded (shown visibly by the renderers)."""
    return text if len(text) <= limit else text[:limit] + "..."


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
    url: LiveKitUrl,
    token: Secret,
    settings: SignalSettings,
    result: SignalResult | None = None,
) -> tuple[SignalResult, list[IceServer]]:
    """Walk the signaling steps; the result says how far it got and why it stopped. Pass
    ``result`` to keep what was measured if the caller cancels this (deadline, Ctrl-C): its
    ``phase`` then names the step in progress."""
    from livekit.protocol import rtc  # lazy: a few MB of generated code

    result = result if result is not None else SignalResult(url=url.given)
    writer: asyncio.StreamWriter | None = None
    servers: list[IceServer] = []
    try:
        address, proxy = await _route(url, result, settings)
        reader, writer = await _open(url, result, settings, address, proxy)

        result.phase = Phase.VALIDATE.value
        start = time.perf_counter()
        answer = await _get(
            reader, writer, f"{url.prefix}/rtc/validate?{_query()}", url, token, settings,
            MAX_VALIDATE,
        )  # fmt: skip
        result.timings_ms["validate"] = elapsed_ms(start)
        problem = _validate_verdict(
            answer.status, answer.headers, answer.body, url, proxied=proxy is not None
        )
        if problem is not None:
            raise problem
        if answer.status == 404:
            result.notes.append(
                "the server has no /rtc/validate (an older LiveKit?): token checked at the upgrade only"
            )
        if not answer.reusable:
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


async def _get(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: str,
    url: LiveKitUrl,
    token: Secret,
    settings: SignalSettings,
    limit: int,
) -> HttpAnswer:
    """One bounded GET: ``settings.timeout`` for the whole answer, ``limit`` bytes of body."""
    try:
        return await asyncio.wait_for(
            _Http(reader, writer).get(target, url.host, token, limit), settings.timeout
        )
    except asyncio.TimeoutError:
        raise ProbeError(
            ErrorKind.TCP_NO_RESPONSE,
            f"{url.server} accepted the connection but did not answer "
            f"{target.split('?')[0]} within {settings.timeout:g} s",
        ) from None
    except HttpError as exc:
        raise ProbeError(
            ErrorKind.PROTOCOL, f"{url.server} {exc} to GET {target.split('?')[0]}"
        ) from None
    except Exception as exc:  # h11's LocalProtocolError: a request lkice could not send
        if type(exc).__name__ != "LocalProtocolError":
            raise
        raise ProbeError(
            ErrorKind.PROTOCOL, f"the request to {url.server} could not be formed ({exc})"
        ) from None
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ProbeError(
            ErrorKind.NOT_LIVEKIT, f"{url.server} did not answer HTTP properly ({exc})"
        ) from exc


@dataclass(frozen=True)
class Region:
    name: str
    url: str
    distance: int | None


# LiveKit Cloud's domains, as client-sdk-js tells a Cloud URL (isCloud): its regions of
# ``p.livekit.cloud`` live elsewhere under the same domain. Any other parent domain could be a
# public suffix (``co.uk``, ``fly.dev``) shared with strangers.
CLOUD_DOMAINS = ("livekit.cloud", "livekit.run")


def may_receive_token(project: LiveKitUrl, region: LiveKitUrl) -> bool:
    """Whether lkice may send the project's token to a region it did not get from the user:
    never in clear text when the project uses TLS; to the project's own host; and between
    hosts of LiveKit Cloud's own domains. Anything else needs ``--region NAME=URL``."""
    if project.secure and not region.secure:
        return False
    given, other = project.host.rstrip(".").lower(), region.host.rstrip(".").lower()
    if other == given:
        return True
    return any(
        given.endswith("." + domain) and other.endswith("." + domain) for domain in CLOUD_DOMAINS
    )


async def fetch_regions(
    url: LiveKitUrl, token: Secret, settings: SignalSettings
) -> tuple[list[Region] | None, list[str]]:
    """LiveKit Cloud's ``GET /settings/regions``: (regions to probe, notes). Regions are
    bounded in number (nearest first, as the server orders them) and limited to hosts that may
    receive the token; the notes say what was skipped and why. The open-source server has no
    such endpoint (404): its regions come from the user."""
    from lkice.livekit import parse_livekit_url

    scratch = SignalResult(url=url.given)
    writer: asyncio.StreamWriter | None = None
    try:
        address, proxy = await _route(url, scratch, settings)
        reader, writer = await _open(url, scratch, settings, address, proxy)
        answer = await _get(
            reader, writer, f"{url.prefix}/settings/regions", url, token, settings,
            MAX_REGIONS_BODY,
        )  # fmt: skip
    except ProbeError as exc:
        return None, [f"region discovery failed: {exc.message}"]
    except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
        return None, [f"region discovery failed: {exc.__class__.__name__}"]
    finally:
        if writer is not None:
            writer.close()
    if answer.status == 404:
        return None, [
            "no /settings/regions (a self-hosted server): give regions explicitly to compare them"
        ]
    if answer.status != 200:
        return None, [f"/settings/regions answered HTTP {answer.status}"]
    try:
        entries = json.loads(answer.body).get("regions", [])
        if not isinstance(entries, list):
            raise TypeError
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        return None, [f"/settings/regions sent something unreadable ({exc.__class__.__name__})"]
    regions: list[Region] = []
    notes: list[str] = []
    foreign: list[str] = []
    unusable = beyond = 0
    seen: set[str] = set()
    for entry in entries:
        try:
            name, target = _short(str(entry["region"]), 64), str(entry["url"])
            region_url = parse_livekit_url(target)  # refuse what cannot be probed
            distance = entry.get("distance")
            km = int(distance) if distance is not None else None
        except (UsageError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
            unusable += 1
            continue
        if region_url.given in seen:
            continue
        seen.add(region_url.given)
        if not may_receive_token(url, region_url):
            foreign.append(f"{name} ({_short(region_url.given, 80)})")
            continue
        if len(regions) >= MAX_REGIONS:
            beyond += 1
            continue
        regions.append(Region(name, target, km))
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        notes.append(
            f"/settings/regions lists {len(foreign)} region(s) lkice does not send the token "
            f"to unasked (another domain than {url.host}'s, or no TLS), skipped: {shown}; give "
            "a region with --region NAME=URL to test it"
        )
    if beyond:
        notes.append(
            f"/settings/regions lists {beyond} more region(s), skipped: lkice probes the "
            f"nearest {MAX_REGIONS}"
        )
    if unusable:
        notes.append(f"/settings/regions lists {unusable} entries lkice cannot use, skipped")
    return regions, notes
