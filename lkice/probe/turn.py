"""An instrumented TURN client (RFC 8656) on a STUN channel: Allocate with the 401 challenge round
and the authenticated round timed apart, CreatePermission, and release (Refresh lifetime 0).
Every error response becomes a ProbeError naming the server's reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lkice import stun as codec
from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.channel import StreamChannel, UdpChannel
from lkice.report import PathResult

if TYPE_CHECKING:
    from aioice import stun
else:
    stun = codec.aioice_stun()  # the codec without aioice's ICE stack (see lkice.stun)

Channel = UdpChannel | StreamChannel


class Redirect(Exception):
    """300 Try Alternate: the engine probes the alternate once."""

    def __init__(self, alternate: tuple[str, int]) -> None:
        super().__init__(alternate)
        self.alternate = alternate


@dataclass(frozen=True)
class Auth:
    """Long-term credentials with the realm and the nonce the server handed out."""

    credentials: TurnCredentials
    realm: str
    nonce: bytes


@dataclass(frozen=True)
class Allocation:
    relayed: tuple[str, int]
    auth: Auth | None  # None: an open relay that asked for no credentials


async def allocate(
    channel: Channel,
    result: PathResult,
    credentials: TurnCredentials | None,
    follow_redirect: bool,
    earlier_forms: Sequence[str | None] = (),
    credentials_note: str | None = None,
) -> Allocation:
    """Allocate a UDP relay: the unauthenticated round (expecting 401), then the authenticated
    one. ``earlier_forms``: TURN REST username forms already refused on other connections (a
    refusal then names them all)."""
    result.phase = Phase.ALLOCATE_CHALLENGE
    first = await channel.request(codec.allocate_request(), Phase.ALLOCATE_CHALLENGE)
    _check_redirect(first.response, result, follow_redirect)
    if first.response.message_class == stun.Class.RESPONSE:
        result.auth = "none"
        result.timings_ms["allocate"] = first.rtt_ms
        return Allocation(_record_allocation(first.response, result), None)
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
    if credentials is None:
        raise ProbeError(
            ErrorKind.AUTH_REJECTED,
            "the server asks for credentials and none were given (--username/--credential or --turn-secret)",
            Phase.ALLOCATE_CHALLENGE,
        )
    result.auth = credentials.mode
    result.auth_form = credentials.form
    result.phase = Phase.ALLOCATE
    if credentials_note is not None and credentials_note not in result.notes:
        result.notes.append(credentials_note)  # before sending: a cut path says it too
    response, rtt, auth = await _authenticated(
        channel, codec.allocate_request(), Auth(credentials, realm, nonce), Phase.ALLOCATE
    )
    _check_redirect(response, result, follow_redirect)
    if response.message_class == stun.Class.ERROR:
        raise _allocate_error(response, [*earlier_forms, credentials.form])
    result.timings_ms["allocate"] = rtt
    return Allocation(_record_allocation(response, result), auth)


def _refused(response: stun.Message) -> bool:
    """The authenticated round refused the credentials: 401 (coturn, RFC 8656), or 400 with no
    reason (pion/turn answers a wrong username or password that way, after its own 401)."""
    if response.message_class != stun.Class.ERROR:
        return False
    if response.error_code == 401:
        return True
    _, reason = response.attributes.get("ERROR-CODE", (0, ""))
    # A 400 that says why ('Wrong transport field') is about the request, not the credentials.
    return response.error_code == 400 and not str(reason).strip("\x00 ")


def refused(exc: ProbeError) -> bool:
    """Whether a failed Allocate was a refusal of the credentials (see :func:`_refused`)."""
    return exc.kind is ErrorKind.AUTH_REJECTED and exc.stun_code in (400, 401)


def _allocate_error(response: stun.Message, forms: Sequence[str | None]) -> ProbeError:
    """The authenticated Allocate failed; a refusal is named in terms of what was sent."""
    error = codec.error_for_response(response, Phase.ALLOCATE)
    if not _refused(response):
        return error
    code = response.error_code
    _, reason = response.attributes.get("ERROR-CODE", (code, ""))
    said = f"{code} {reason!r}" if reason else f"{code}, no reason given"
    if forms and forms[-1] is not None:
        forms = " and ".join(repr(form) for form in forms)
        what = (
            f"the server refused the TURN REST credentials ({said}; username tried in "
            f"{forms} form): the shared secret does not match the server's, or this machine's "
            "clock is off by more than the credentials' lifetime"
        )
    elif code == 400:
        what = (
            f"the server refused the credentials ({said}, answered to the authenticated "
            "Allocate after its own 401 challenge: pion/turn, the TURN server built into "
            "LiveKit, answers a wrong username or password this way)"
        )
    else:
        return error
    return ProbeError(ErrorKind.AUTH_REJECTED, what, Phase.ALLOCATE, stun_code=code)


async def create_permission(
    channel: Channel, allocation: Allocation, peer: tuple[str, int]
) -> Allocation:
    """Install a permission for ``peer``'s IP; returns the allocation with the nonce in use."""
    response, _, auth = await _authenticated(
        channel, codec.create_permission_request(peer), allocation.auth, Phase.QUALITY
    )
    if response.message_class == stun.Class.ERROR:
        raise codec.error_for_response(response, Phase.QUALITY)
    return Allocation(allocation.relayed, auth)


async def release(channel: Channel, allocation: Allocation, result: PathResult | None) -> bool:
    """Refresh with lifetime 0, so no allocation is left on the server. True if released."""
    if result is not None:
        result.phase = Phase.DEALLOCATE
    response, rtt, _ = await _authenticated(
        channel, codec.refresh_request(0), allocation.auth, Phase.DEALLOCATE
    )
    released = response.message_class == stun.Class.RESPONSE
    if result is not None:
        result.deallocated = released
        if released:
            result.timings_ms["deallocate"] = rtt
        else:
            reason = codec.error_for_response(response, Phase.DEALLOCATE).message
            result.notes.append(
                f"the allocation could not be released ({reason}); it expires after its lifetime"
            )
    return released


async def _authenticated(
    channel: Channel, request: stun.Message, auth: Auth | None, phase: Phase
) -> tuple[stun.Message, float, Auth | None]:
    """Send with long-term credentials (if any); follow one 438 Stale Nonce."""
    if auth is None:
        exchange = await channel.request(request, phase)
        return exchange.response, exchange.rtt_ms, None
    nonce = auth.nonce
    for _ in range(2):
        key = codec.authenticate(request, auth.credentials, auth.realm, nonce)
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
        return msg, exchange.rtt_ms, Auth(auth.credentials, auth.realm, nonce)
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
    unusable = _unusable(alternate)
    if unusable:
        raise ProbeError(
            ErrorKind.PROTOCOL,
            f"the server redirected the allocation (300 Try Alternate) to "
            f"{result.alternate_server}, {unusable}: not followed",
            result.phase,
        )
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


def _unusable(address: tuple[str, int]) -> str | None:
    """Why an ALTERNATE-SERVER cannot be a TURN server to go to, or None."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return "not an IP address"
    if not 0 < int(address[1]) < 65536:
        return "a port no server listens on"
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        return "an address no server has"
    return None


def _record_allocation(msg: stun.Message, result: PathResult) -> tuple[str, int]:
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
    software = msg.attributes.get("SOFTWARE")  # what a Binding's answer would have said
    if software is not None and result.server_software is None:
        result.server_software = str(software)[:128]
    return (str(relayed[0]), int(relayed[1]))
