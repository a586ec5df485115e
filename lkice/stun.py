"""STUN/TURN message building and parsing on top of ``aioice.stun`` (pure: no I/O).

aioice's codec is complete except for a few attributes a diagnostic needs; they are registered
here (RFC 8489 section 14.15 ALTERNATE-SERVER). Stream framing follows RFC 8489 section 6.2.2 and
RFC 8656 section 12.5 (ChannelData padded to 4 bytes over TCP).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from aioice import stun
from aioice.turn import make_integrity_key
from aioice.utils import random_transaction_id

from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError

__all__ = [
    "StreamFramer",
    "allocate_request",
    "authenticate",
    "binding_request",
    "create_permission_request",
    "data_indication",
    "error_for_response",
    "parse",
    "refresh_request",
    "send_indication",
]

SOFTWARE = "lkice"
REQUESTED_TRANSPORT_UDP = 17 << 24

_EXTRA_ATTRIBUTES: list[stun.AttributeEntry] = [
    (0x8023, "ALTERNATE-SERVER", stun.pack_address, stun.unpack_address),
]
for _entry in _EXTRA_ATTRIBUTES:
    stun.ATTRIBUTES_BY_TYPE.setdefault(_entry[0], _entry)
    stun.ATTRIBUTES_BY_NAME.setdefault(_entry[1], _entry)


def binding_request() -> stun.Message:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.add_fingerprint()
    return msg


def allocate_request(lifetime_s: int | None = None) -> stun.Message:
    attrs: dict[str, Any] = {"REQUESTED-TRANSPORT": REQUESTED_TRANSPORT_UDP, "SOFTWARE": SOFTWARE}
    if lifetime_s is not None:
        attrs["LIFETIME"] = lifetime_s
    msg = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, attributes=attrs)
    msg.add_fingerprint()
    return msg


def refresh_request(lifetime_s: int = 0) -> stun.Message:
    return stun.Message(
        stun.Method.REFRESH, stun.Class.REQUEST, attributes={"LIFETIME": lifetime_s}
    )


def create_permission_request(peer: tuple[str, int]) -> stun.Message:
    """RFC 8656 section 9: let ``peer``'s IP send to the allocation (the port is ignored)."""
    return stun.Message(
        stun.Method.CREATE_PERMISSION, stun.Class.REQUEST, attributes={"XOR-PEER-ADDRESS": peer}
    )


def send_indication(peer: tuple[str, int], data: bytes) -> stun.Message:
    """RFC 8656 section 10: relay ``data`` to ``peer``. Indications carry no credentials."""
    msg = stun.Message(
        stun.Method.SEND, stun.Class.INDICATION, attributes={"XOR-PEER-ADDRESS": peer, "DATA": data}
    )
    msg.add_fingerprint()
    return msg


def data_indication(msg: stun.Message) -> tuple[tuple[str, int], bytes] | None:
    """The peer and data of a Data indication, or None if ``msg`` is not one."""
    if msg.message_method != stun.Method.DATA or msg.message_class != stun.Class.INDICATION:
        return None
    peer, data = msg.attributes.get("XOR-PEER-ADDRESS"), msg.attributes.get("DATA")
    if peer is None or not isinstance(data, bytes):
        return None
    return peer, data


def authenticate(msg: stun.Message, creds: TurnCredentials, realm: str, nonce: bytes) -> bytes:
    """Add long-term credentials to ``msg`` (fresh transaction id) and return the integrity key."""
    username = creds.username.reveal()
    if len(username.encode("utf-8", "surrogatepass")) >= 513:
        # RFC 8489 section 14.3; the join's credentials are the server's, so this is a protocol
        # error, not a usage error (the user's own are checked at input).
        raise ProbeError(
            ErrorKind.PROTOCOL,
            "the TURN username is longer than STUN allows (513 bytes): not sent",
            Phase.ALLOCATE,
        )
    key = make_integrity_key(username, realm, creds.password.reveal())
    msg.transaction_id = random_transaction_id()
    msg.attributes.pop("MESSAGE-INTEGRITY", None)
    msg.attributes.pop("FINGERPRINT", None)
    msg.attributes["USERNAME"] = username
    msg.attributes["REALM"] = realm
    msg.attributes["NONCE"] = nonce
    msg.add_message_integrity(key)
    return key


def parse(data: bytes, phase: Phase) -> stun.Message:
    """Parse a datagram or frame as STUN, translating codec errors to a ``protocol`` ProbeError."""
    try:
        return stun.parse_message(data)
    except Exception as exc:  # any codec failure on foreign bytes is a malformed reply
        raise ProbeError(
            ErrorKind.PROTOCOL,
            f"malformed STUN response ({exc}); is this a STUN/TURN server?",
            phase,
        ) from exc


def format_address(addr: tuple[str, int]) -> str:
    """``ip:port`` or ``[ipv6]:port``; a host name (a destination asked of a web proxy, which
    resolves it) as ``name:port``."""
    host = addr[0]
    if ":" in host:
        return f"[{host}]:{addr[1]}"
    return f"{host}:{addr[1]}"


_ERROR_KINDS = {
    300: ErrorKind.TRY_ALTERNATE,
    401: ErrorKind.AUTH_REJECTED,
    403: ErrorKind.FORBIDDEN,
    486: ErrorKind.QUOTA,
    508: ErrorKind.CAPACITY,
}
_ERROR_HINTS = {
    401: "the server rejected the credentials (wrong username or password, or expired TURN REST "
    "credentials: check the shared secret and this machine's clock)",
    403: "the server forbids this request (policy or peer address not allowed)",
    437: "allocation mismatch: the server already holds an allocation for this 5-tuple",
    440: "address family not supported by the server",
    442: "the server does not support the requested transport",
    486: "allocation quota reached: this user already holds the maximum number of allocations",
    508: "the server is out of capacity (no relay ports left)",
}


def error_for_response(msg: stun.Message, phase: Phase) -> ProbeError:
    """Translate an error response into a ProbeError; the server's reason phrase is kept."""
    code, reason = msg.attributes.get("ERROR-CODE", (0, ""))
    # coturn pads its reason phrases with NULs to a 4-byte boundary.
    reason = str(reason).rstrip("\x00")[:200]
    kind = _ERROR_KINDS.get(code, ErrorKind.PROTOCOL)
    hint = _ERROR_HINTS.get(code, "unexpected error response")
    reason_text = f" {reason!r}" if reason else ""
    return ProbeError(kind, f"{code}{reason_text}: {hint}", phase, stun_code=code)


class StreamFramer:
    """Split a TCP/TLS byte stream into STUN messages and ChannelData frames."""

    def __init__(self, allow_channel_data: bool = False, max_buffer: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_buffer
        self._allow_channel_data = allow_channel_data

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        if len(self._buf) > self._max:
            raise ProbeError(ErrorKind.PROTOCOL, "the server sent an oversized frame: not STUN")
        while len(self._buf) >= 4:
            first = self._buf[0]
            if self._buf.startswith(b"\x16\x03"):
                raise ProbeError(
                    ErrorKind.PROTOCOL,
                    "the server speaks TLS on this port: use a turns: URI for it",
                )
            if first < 0x40:  # STUN: the two top bits are zero (RFC 8489 section 5)
                if len(self._buf) < 8:
                    return
                if struct.unpack("!I", self._buf[4:8])[0] != stun.COOKIE:
                    raise ProbeError(
                        ErrorKind.PROTOCOL,
                        f"the server sent bytes that are not STUN (0x{bytes(self._buf[:8]).hex()}...)",
                    )
                (length,) = struct.unpack("!H", self._buf[2:4])
                total = 20 + length
            elif first < 0x80 and self._allow_channel_data:  # ChannelData, 0x4000-0x7FFF
                (length,) = struct.unpack("!H", self._buf[2:4])
                total = 4 + length + (-length % 4)
            elif self._buf.startswith(b"HTTP/"):
                raise ProbeError(
                    ErrorKind.PROTOCOL,
                    "the server answered with HTTP: this port serves a web server or proxy, not STUN/TURN",
                )
            else:
                raise ProbeError(
                    ErrorKind.PROTOCOL,
                    f"the server sent bytes that are not STUN (0x{bytes(self._buf[:4]).hex()}...)",
                )
            if len(self._buf) < total:
                return
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            yield frame
