"""One path: a server address x a transport. Connect, Binding, Allocate (challenge round and
authenticated round), then Refresh with lifetime 0 so no allocation is left on the server.

The result object is filled in as each phase completes, so a deadline or Ctrl-C keeps what was
measured; ``PathResult.phase`` always names the step in progress.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass

from aioice import stun

from lkice import stun as codec
from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.channel import (
    StreamChannel,
    UdpChannel,
    attach_stream,
    connect_tcp,
    elapsed_ms,
    open_udp,
)
from lkice.report import PathResult
from lkice.uri import IceUri, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    udp_timeout: float = 3.0
    timeout: float = 5.0  # TCP connect, TLS handshake, and a STUN answer over a stream
    credentials: TurnCredentials | None = None
    tls_context: ssl.SSLContext | None = None


class Redirect(Exception):
    """300 Try Alternate: the engine probes the alternate once."""

    def __init__(self, alternate: tuple[str, int]) -> None:
        super().__init__(alternate)
        self.alternate = alternate


async def probe_path(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    result: PathResult,
    settings: ProbeSettings,
    follow_redirect: bool = True,
) -> None:
    """Probe one path, recording into ``result``. Raises Redirect for a followed 300."""
    channel: UdpChannel | StreamChannel | None = None
    try:
        channel = await _open(uri, transport, address, result, settings)
        await _binding(channel, result)
        if uri.kind == "turn":
            await _allocate_and_release(channel, result, settings, follow_redirect)
        result.ok = True
        result.phase = None
        log.info("%s %s %s: ok %s", result.kind, result.address, transport.value, _timings(result))
    except ProbeError as exc:
        result.fail(exc)
        result.phase = None
        log.info(
            "path %s %s %s failed: %s",
            result.server,
            result.address,
            transport.value,
            exc.kind.value,
        )
    finally:
        if channel is not None:
            channel.close()


async def _open(
    uri: IceUri,
    transport: Transport,
    address: tuple[str, int],
    result: PathResult,
    settings: ProbeSettings,
) -> UdpChannel | StreamChannel:
    if transport is Transport.UDP:
        result.phase = Phase.BINDING
        return await open_udp(address, settings.udp_timeout)
    result.phase = Phase.CONNECT
    result.socket_options = ["TCP_NODELAY"]
    start = time.perf_counter()
    sock = await connect_tcp(address, settings.timeout)
    result.timings_ms["connect"] = elapsed_ms(start)
    log.debug(
        "%s %s: TCP connected in %.1f ms",
        result.address,
        transport.value,
        result.timings_ms["connect"],
    )
    if transport is not Transport.TLS:
        channel, _ = await attach_stream(sock, address, settings.timeout)
        return channel
    result.phase = Phase.TLS
    start = time.perf_counter()
    channel, result.tls = await attach_stream(
        sock,
        address,
        settings.timeout,
        tls=settings.tls_context or ssl.create_default_context(),
        server_hostname=uri.host,
    )
    result.timings_ms["tls"] = elapsed_ms(start)
    log.debug(
        "%s tls: handshake in %.1f ms, %s", result.address, result.timings_ms["tls"], result.tls
    )
    return channel


async def _binding(channel: UdpChannel | StreamChannel, result: PathResult) -> None:
    result.phase = Phase.BINDING
    exchange = await channel.request(codec.binding_request(), Phase.BINDING)
    result.binding_sends = exchange.sends
    msg = exchange.response
    if msg.message_class == stun.Class.ERROR:
        if result.kind == "turn":
            # A TURN server need not answer Binding; the Allocate still tells whether it works.
            result.notes.append(
                f"Binding refused: {codec.error_for_response(msg, Phase.BINDING).message}"
            )
            return
        raise codec.error_for_response(msg, Phase.BINDING)
    result.timings_ms["binding"] = exchange.rtt_ms
    _record_server_attributes(msg, result)
    mapped = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
    if mapped is None:
        raise ProbeError(
            ErrorKind.PROTOCOL, "Binding response carries no mapped address", Phase.BINDING
        )
    result.mapped_address = codec.format_address(mapped)


def _timings(result: PathResult) -> str:
    # Phase names and durations only: STUN messages carry USERNAME, so they are never logged.
    return " ".join(f"{k}={v:.1f}ms" for k, v in result.timings_ms.items() if v is not None)


def _record_server_attributes(msg: stun.Message, result: PathResult) -> None:
    if "SOFTWARE" in msg.attributes:
        result.server_software = str(msg.attributes["SOFTWARE"])[:128]
    if "OTHER-ADDRESS" in msg.attributes:
        result.other_address = codec.format_address(msg.attributes["OTHER-ADDRESS"])
    if "RESPONSE-ORIGIN" in msg.attributes:
        result.response_origin = codec.format_address(msg.attributes["RESPONSE-ORIGIN"])


async def _allocate_and_release(
    channel: UdpChannel | StreamChannel,
    result: PathResult,
    settings: ProbeSettings,
    follow_redirect: bool,
) -> None:
    creds = settings.credentials
    result.phase = Phase.ALLOCATE_CHALLENGE
    first = await channel.request(codec.allocate_request(), Phase.ALLOCATE_CHALLENGE)
    _check_redirect(first.response, result, follow_redirect)
    if first.response.message_class == stun.Class.RESPONSE:
        # An open relay: it allocated without asking for credentials.
        result.auth = "none"
        result.timings_ms["allocate"] = first.rtt_ms
        _record_allocation(first.response, result)
        result.phase = Phase.DEALLOCATE
        release = await channel.request(codec.refresh_request(0), Phase.DEALLOCATE)
        result.deallocated = release.response.message_class == stun.Class.RESPONSE
        return
    if first.response.error_code != 401:
        raise codec.error_for_response(first.response, Phase.ALLOCATE_CHALLENGE)
    result.timings_ms["allocate_challenge"] = first.rtt_ms
    realm = first.response.attributes.get("REALM")
    nonce = first.response.attributes.get("NONCE")
    if not isinstance(realm, str) or not isinstance(nonce, bytes):
        raise ProbeError(
            ErrorKind.PROTOCOL,
            "401 challenge without REALM and NONCE (not long-term credentials)",
            Phase.ALLOCATE_CHALLENGE,
        )
    if creds is None:
        raise ProbeError(
            ErrorKind.AUTH_REJECTED,
            "the server asks for credentials and none were given (--username/--credential or --turn-secret)",
            Phase.ALLOCATE_CHALLENGE,
        )
    result.auth = creds.mode
    result.phase = Phase.ALLOCATE
    response, rtt, nonce = await _authenticated(
        channel, codec.allocate_request(), creds, realm, nonce, Phase.ALLOCATE
    )
    _check_redirect(response, result, follow_redirect)
    if response.message_class == stun.Class.ERROR:
        raise codec.error_for_response(response, Phase.ALLOCATE)
    result.timings_ms["allocate"] = rtt
    _record_allocation(response, result)

    result.phase = Phase.DEALLOCATE
    response, rtt, _ = await _authenticated(
        channel, codec.refresh_request(0), creds, realm, nonce, Phase.DEALLOCATE
    )
    if response.message_class == stun.Class.RESPONSE:
        result.timings_ms["deallocate"] = rtt
        result.deallocated = True
    else:
        result.deallocated = False
        result.notes.append(
            "the allocation could not be released "
            f"({codec.error_for_response(response, Phase.DEALLOCATE).message}); it expires after its lifetime"
        )


async def _authenticated(
    channel: UdpChannel | StreamChannel,
    request: stun.Message,
    creds: TurnCredentials,
    realm: str,
    nonce: bytes,
    phase: Phase,
) -> tuple[stun.Message, float, bytes]:
    """Send with long-term credentials; follow one 438 Stale Nonce. Returns the nonce in use."""
    for _ in range(2):
        key = codec.authenticate(request, creds, realm, nonce)
        exchange = await channel.request(request, phase)
        msg = exchange.response
        if msg.message_class == stun.Class.ERROR and msg.error_code == 438:
            fresh = msg.attributes.get("NONCE")
            if isinstance(fresh, bytes):
                nonce = fresh
                continue
        if msg.message_class == stun.Class.RESPONSE and not msg.check_message_integrity(key):
            raise ProbeError(
                ErrorKind.PROTOCOL,
                "the response's MESSAGE-INTEGRITY does not match the credentials",
                phase,
            )
        return msg, exchange.rtt_ms, nonce
    raise ProbeError(ErrorKind.PROTOCOL, "the server kept answering 438 Stale Nonce", phase)


def _check_redirect(msg: stun.Message, result: PathResult, follow: bool) -> None:
    if msg.message_class != stun.Class.ERROR or msg.error_code != 300:
        return
    alternate = msg.attributes.get("ALTERNATE-SERVER")
    if alternate is None:
        raise ProbeError(
            ErrorKind.PROTOCOL, "300 Try Alternate without an ALTERNATE-SERVER", result.phase
        )
    result.alternate_server = codec.format_address(alternate)
    error = ProbeError(
        ErrorKind.TRY_ALTERNATE,
        f"the server redirected the allocation to {result.alternate_server} (300 Try Alternate)"
        + ("" if follow else "; not followed again: one redirect is followed at most"),
        result.phase,
    )
    result.fail(error)
    if follow:
        raise Redirect(alternate)
    raise error


def _record_allocation(msg: stun.Message, result: PathResult) -> None:
    relayed = msg.attributes.get("XOR-RELAYED-ADDRESS")
    if relayed is None:
        raise ProbeError(
            ErrorKind.PROTOCOL, "Allocate success without XOR-RELAYED-ADDRESS", Phase.ALLOCATE
        )
    result.relayed_address = codec.format_address(relayed)
    lifetime = msg.attributes.get("LIFETIME")
    result.lifetime_s = int(lifetime) if isinstance(lifetime, int) else None
    mapped = msg.attributes.get("XOR-MAPPED-ADDRESS")
    if mapped is not None and result.mapped_address is None:
        result.mapped_address = codec.format_address(mapped)
