"""STUN/TURN message building and parsing (pure: no I/O), on top of ``aioice.stun``, plus a fast
path for probe trains.

aioice's codec is complete except for a few attributes a diagnostic needs; they are registered
here (RFC 8489 section 14.15 ALTERNATE-SERVER). Stream framing follows RFC 8489 section 6.2.2 and
RFC 8656 section 12.5 (ChannelData padded to 4 bytes over TCP).

aioice is imported on first use, not with this module (``format_address`` and the framer are
used by code that never speaks STUN, and aioice pulls in its ICE stack, mDNS and dnspython).

The fast path (probe trains send and answer hundreds of messages a second per path, where
``aioice.stun.Message`` costs 80-100 us each way):

- ``BindingTemplate`` and ``SendTemplate`` hold a probe pre-encoded and patch, per probe, the
  transaction id and what depends on it: FINGERPRINT (a CRC over the whole message) and, for an
  IPv6 XOR-PEER-ADDRESS, the address (XORed with the cookie and the id; an IPv4 one is XORed
  with the cookie only). Train probes carry no MESSAGE-INTEGRITY: Binding requests to the
  server are unauthenticated and Send indications carry no credentials (RFC 8656 section 10),
  so there is no HMAC to redo. The bytes are identical to aioice's encoding of the same message.
- ``fast_parse`` reads the header and walks the attributes the way ``aioice.stun.parse_message``
  does, checking exactly what makes that parse fail (lengths, address families, UTF-8 text,
  FINGERPRINT) without building a ``Message``: it returns None where the full parse raises, and
  otherwise the method, class, transaction id and, for a Data indication, the peer and data the
  full parse gives. ``FAST_ATTRIBUTES`` must name the same attribute types as aioice's table
  (a test checks it).
"""

from __future__ import annotations

import binascii
import os
import socket
import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeError

if TYPE_CHECKING:
    from types import ModuleType

    from aioice import stun

__all__ = [
    "BindingTemplate",
    "FastParser",
    "SendTemplate",
    "StreamFramer",
    "TransactionIds",
    "allocate_request",
    "authenticate",
    "binding_request",
    "create_permission_request",
    "data_indication",
    "error_for_response",
    "fast_parse",
    "parse",
    "refresh_request",
    "send_indication",
]

SOFTWARE = "lkice"
REQUESTED_TRANSPORT_UDP = 17 << 24
COOKIE = 0x2112A442
_FINGERPRINT_XOR = 0x5354554E

# (type, name, aioice pack function name, aioice unpack function name)
_EXTRA_ATTRIBUTES = [(0x8023, "ALTERNATE-SERVER", "pack_address", "unpack_address")]
_stun: ModuleType | None = None


def _register(module: ModuleType) -> None:
    for code, name, pack, unpack in _EXTRA_ATTRIBUTES:
        entry = (code, name, getattr(module, pack), getattr(module, unpack))
        module.ATTRIBUTES_BY_TYPE.setdefault(code, entry)
        module.ATTRIBUTES_BY_NAME.setdefault(name, entry)


def _lazy_aioice() -> None:
    """Put the ``aioice`` package in ``sys.modules`` without running its ``__init__``, which
    imports its ICE agent, mDNS and dnspython (about 60-100 ms at start-up) that the codec never
    uses. Its submodules (``aioice.stun``, ``aioice.candidate``) import as usual; the first use
    of a name only ``__init__`` defines (aiortc's ``from aioice import Connection``) runs it then,
    into the same module object, so every importer sees one package."""
    if "aioice" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("aioice")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a plain package: let the ordinary import decide
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # probes such as __wrapped__ must not run __init__
        if importlib.util.find_spec(f"aioice.{name}") is not None:
            # A submodule (``from . import mdns`` inside aioice.ice): the import system loads
            # it when the attribute is missing; running __init__ here would be circular.
            raise AttributeError(name)
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = __getattr__
    sys.modules["aioice"] = package


def aioice_stun() -> ModuleType:
    """``aioice.stun``, imported on first use, with lkice's extra attributes registered."""
    global _stun
    if _stun is None:
        _lazy_aioice()
        import aioice.stun as module

        _register(module)
        _stun = module
    return _stun


if "aioice.stun" in sys.modules:  # already loaded: parse what it parses the same way at once
    aioice_stun()


def binding_request() -> stun.Message:
    aioice_stun()
    from aioice import stun as st

    msg = st.Message(st.Method.BINDING, st.Class.REQUEST)
    msg.add_fingerprint()
    return msg


def allocate_request(lifetime_s: int | None = None) -> stun.Message:
    aioice_stun()
    from aioice import stun as st

    attrs: dict[str, Any] = {"REQUESTED-TRANSPORT": REQUESTED_TRANSPORT_UDP, "SOFTWARE": SOFTWARE}
    if lifetime_s is not None:
        attrs["LIFETIME"] = lifetime_s
    msg = st.Message(st.Method.ALLOCATE, st.Class.REQUEST, attributes=attrs)
    msg.add_fingerprint()
    return msg


def refresh_request(lifetime_s: int = 0) -> stun.Message:
    aioice_stun()
    from aioice import stun as st

    return st.Message(st.Method.REFRESH, st.Class.REQUEST, attributes={"LIFETIME": lifetime_s})


def create_permission_request(peer: tuple[str, int]) -> stun.Message:
    """RFC 8656 section 9: let ``peer``'s IP send to the allocation (the port is ignored)."""
    aioice_stun()
    from aioice import stun as st

    return st.Message(
        st.Method.CREATE_PERMISSION, st.Class.REQUEST, attributes={"XOR-PEER-ADDRESS": peer}
    )


def send_indication(
    peer: tuple[str, int], data: bytes, transaction_id: bytes | None = None
) -> stun.Message:
    """RFC 8656 section 10: relay ``data`` to ``peer``. Indications carry no credentials."""
    aioice_stun()
    from aioice import stun as st

    msg = st.Message(
        st.Method.SEND,
        st.Class.INDICATION,
        transaction_id=transaction_id,
        attributes={"XOR-PEER-ADDRESS": peer, "DATA": data},
    )
    msg.add_fingerprint()
    return msg


def data_indication(msg: stun.Message) -> tuple[tuple[str, int], bytes] | None:
    """The peer and data of a Data indication, or None if ``msg`` is not one."""
    if msg.message_method != METHOD_DATA or msg.message_class != CLASS_INDICATION:
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
    aioice_stun()
    from aioice.turn import make_integrity_key

    key = make_integrity_key(username, realm, creds.password.reveal())
    msg.transaction_id = os.urandom(12)
    msg.attributes.pop("MESSAGE-INTEGRITY", None)
    msg.attributes.pop("FINGERPRINT", None)
    msg.attributes["USERNAME"] = username
    msg.attributes["REALM"] = realm
    msg.attributes["NONCE"] = nonce
    msg.add_message_integrity(key)
    return key


def parse(data: bytes, phase: Phase) -> stun.Message:
    """Parse a datagram or frame as STUN, translating codec errors to a ``protocol`` ProbeError."""
    aioice_stun()
    from aioice import stun as st

    try:
        return st.parse_message(data)
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
                if struct.unpack("!I", self._buf[4:8])[0] != COOKIE:
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


# ------------------------------------------------------------------------- probe train fast path

METHOD_BINDING = 0x001
METHOD_SEND = 0x006
METHOD_DATA = 0x007
CLASS_REQUEST = 0x000
CLASS_INDICATION = 0x010
CLASS_RESPONSE = 0x100
CLASS_ERROR = 0x110
_METHODS = frozenset({0x1, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9})  # aioice's stun.Method

# How aioice's unpack function of each attribute type can fail (see fast_parse).
_ADDRESS, _XOR_ADDRESS, _U32, _U16, _U64, _TEXT, _ERROR_CODE, _ANY, _INTEGRITY, _FINGERPRINT = (
    range(10)
)
FAST_ATTRIBUTES: dict[int, int] = {
    0x0001: _ADDRESS,  # MAPPED-ADDRESS
    0x0003: _U32,  # CHANGE-REQUEST
    0x0004: _ADDRESS,  # SOURCE-ADDRESS
    0x0005: _ADDRESS,  # CHANGED-ADDRESS
    0x0006: _TEXT,  # USERNAME
    0x0008: _INTEGRITY,  # MESSAGE-INTEGRITY
    0x0009: _ERROR_CODE,  # ERROR-CODE
    0x000C: _U16,  # CHANNEL-NUMBER
    0x000D: _U32,  # LIFETIME
    0x0012: _XOR_ADDRESS,  # XOR-PEER-ADDRESS
    0x0013: _ANY,  # DATA
    0x0014: _TEXT,  # REALM
    0x0015: _ANY,  # NONCE
    0x0016: _XOR_ADDRESS,  # XOR-RELAYED-ADDRESS
    0x0019: _U32,  # REQUESTED-TRANSPORT
    0x0020: _XOR_ADDRESS,  # XOR-MAPPED-ADDRESS
    0x0024: _U32,  # PRIORITY
    0x0025: _ANY,  # USE-CANDIDATE
    0x8022: _TEXT,  # SOFTWARE
    0x8023: _ADDRESS,  # ALTERNATE-SERVER (registered by lkice)
    0x8028: _FINGERPRINT,  # FINGERPRINT
    0x8029: _U64,  # ICE-CONTROLLED
    0x802A: _U64,  # ICE-CONTROLLING
    0x802B: _ADDRESS,  # RESPONSE-ORIGIN
    0x802C: _ADDRESS,  # OTHER-ADDRESS
}
_XOR_PEER_ADDRESS = 0x0012
_DATA = 0x0013
_HEADER = struct.Struct("!HHI12s")
_TLV = struct.Struct("!HH")
_U32_AT = struct.Struct("!I")

# (method, class, transaction id, peer, data); peer and data only for a Data indication that
# carries both (as ``data_indication`` of the full parse gives them), else None.
FastMessage = tuple[int, int, bytes, "tuple[str, int] | None", "bytes | None"]


def _fingerprint(data: bytes | bytearray | memoryview, end: int) -> int:
    """aioice's ``message_fingerprint(data[:end])``: CRC-32 of the message up to ``end`` with the
    header's length set as if FINGERPRINT followed at once."""
    head = bytes(data[0:2]) + (end - 12).to_bytes(2, "big")
    return binascii.crc32(memoryview(data)[4:end], binascii.crc32(head)) ^ _FINGERPRINT_XOR


def _xor_peer(data: bytes, start: int, family: int, tid: bytes) -> tuple[str, int]:
    port = int.from_bytes(data[start + 2 : start + 4], "big") ^ (COOKIE >> 16)
    if family == 1:
        ip = int.from_bytes(data[start + 4 : start + 8], "big") ^ COOKIE
        return socket.inet_ntoa(ip.to_bytes(4, "big")), port
    import ipaddress  # the way aioice writes it (RFC 5952 text as Python's ipaddress gives it)

    pad = int.from_bytes(COOKIE.to_bytes(4, "big") + tid, "big")
    raw = (int.from_bytes(data[start + 4 : start + 20], "big") ^ pad).to_bytes(16, "big")
    return str(ipaddress.IPv6Address(raw)), port


def fast_parse(data: bytes) -> FastMessage | None:
    """What ``aioice.stun.parse_message(data)`` gives a probe train, without building a
    ``Message``: None exactly where that parse raises (see the module docstring); never raises.

    The checks follow aioice 0.13's parser step by step: the length in the header must match
    the input; attributes are read while 4 bytes remain, a value cut short by the end of the
    input is taken as it is, and a type aioice knows must decode (addresses: family 1 with 8
    bytes or 2 with 20; 32- and 64-bit integers exactly 4 and 8 bytes; CHANNEL-NUMBER at least 2;
    ERROR-CODE at least 4; text UTF-8); FINGERPRINT, wherever it stands, must match the CRC of
    what precedes it; after MESSAGE-INTEGRITY only FINGERPRINT is read. The method must be one
    aioice knows."""
    try:
        if len(data) < 20:
            return None
        return _fast_parse(data, None)
    except Exception:  # defensive: bytes no parser anticipated are the full parse's to judge
        return None


class FastParser:
    """``fast_parse`` for one socket, remembering the layouts it accepted.

    A train's answers on one socket all look alike (a server's Binding responses differ only in
    transaction id and FINGERPRINT; Data indications also in their data), so the layout of each
    message accepted is kept (a few per header): a message that matches a kept one byte for byte
    outside its transaction id, its DATA value and a final FINGERPRINT is valid exactly when its
    FINGERPRINT is, and only that is checked. Layouts whose validity could depend on the
    transaction id are not kept (a FINGERPRINT before the end, an IPv6 XOR address)."""

    def __init__(self, per_header: int = 4, headers: int = 16) -> None:
        self._shapes: dict[bytes, list[_Shape]] = {}
        self._per_header, self._headers = per_header, headers

    def parse(self, data: bytes) -> FastMessage | None:
        try:
            if len(data) < 20:
                return None
            for shape in self._shapes.get(data[:8], ()):
                hit = shape.match(data)
                if hit is not None:
                    return hit
            return _fast_parse(data, self)
        except Exception:  # as fast_parse
            return None

    def _remember(self, shape: _Shape, data: bytes) -> None:
        key = data[:8]
        shapes = self._shapes.get(key)
        if shapes is None:
            if len(self._shapes) >= self._headers:
                self._shapes.clear()
            shapes = self._shapes[key] = []
        if len(shapes) >= self._per_header:
            shapes.pop(0)
        shapes.append(shape)


class _Shape:
    """A validated message's layout: bytes that must match, the DATA value's span (free), and
    whether a FINGERPRINT ends it (checked per message)."""

    __slots__ = (
        "cls",
        "data_at",
        "data_end",
        "fingerprint",
        "method",
        "peer",
        "post",
        "pre",
        "size",
    )

    def __init__(
        self,
        data: bytes,
        method: int,
        cls: int,
        data_span: tuple[int, int] | None,
        fingerprint: bool,
        peer: tuple[str, int] | None,
    ) -> None:
        self.method, self.cls, self.peer, self.fingerprint = method, cls, peer, fingerprint
        self.size = len(data)
        end = len(data) - 4 if fingerprint else len(data)
        self.data_at, self.data_end = data_span if data_span is not None else (end, end)
        self.pre = data[20 : self.data_at]
        self.post = data[self.data_end : end]

    def match(self, data: bytes) -> FastMessage | None:
        a, b = self.data_at, self.data_end
        if len(data) != self.size or data[20:a] != self.pre:
            return None
        end = b + len(self.post)
        if data[b:end] != self.post:
            return None
        if self.fingerprint and _U32_AT.unpack_from(data, end)[0] != (
            binascii.crc32(data[: end - 4]) ^ _FINGERPRINT_XOR
        ):
            return None
        tid = data[8:20]
        if self.peer is not None:
            return self.method, self.cls, tid, self.peer, data[a:b]
        return self.method, self.cls, tid, None, None


def _fast_parse(data: bytes, parser: FastParser | None) -> FastMessage | None:
    n = len(data)
    message_type, length, _cookie, tid = _HEADER.unpack_from(data)
    if n != 20 + length:
        return None
    method = message_type & 0x3EEF
    if method not in _METHODS:
        return None
    peer_at = peer_family = -1
    data_at = data_end = -1
    integrity = False
    # Whether the layout can be remembered: one FINGERPRINT at most and only at the end (one
    # elsewhere covers the transaction id), and an IPv4 peer (an IPv6 one is XORed with it).
    cacheable = True
    fingerprints = 0
    last_fingerprint = -1
    pos = 20
    kinds = FAST_ATTRIBUTES
    unpack = _TLV.unpack_from
    while pos <= n - 4:
        attr_type, attr_len = unpack(data, pos)
        start = pos + 4
        end = start + attr_len
        if end > n:
            end = n
        kind = kinds.get(attr_type)
        if kind is not None and (not integrity or kind == _FINGERPRINT):
            size = end - start
            if kind in (_XOR_ADDRESS, _ADDRESS):
                if size < 4:
                    return None
                family = data[start + 1]
                if not ((family == 1 and size == 8) or (family == 2 and size == 20)):
                    return None
                if attr_type == _XOR_PEER_ADDRESS:
                    peer_at, peer_family = start, family
                if kind == _XOR_ADDRESS and family == 2:
                    cacheable = False
            elif kind == _FINGERPRINT:
                if size != 4 or pos - 12 > 0xFFFF:
                    return None
                if _U32_AT.unpack_from(data, start)[0] != _fingerprint(data, pos):
                    return None
                fingerprints += 1
                last_fingerprint = pos
            elif kind == _U32:
                if size != 4:
                    return None
            elif kind == _TEXT:
                value = data[start:end]
                if not value.isascii():
                    value.decode("utf8")  # raises UnicodeDecodeError: caught by fast_parse
            elif kind == _ANY:
                if attr_type == _DATA:
                    data_at, data_end = start, end
            elif kind == _INTEGRITY:
                integrity = True
            elif kind == _ERROR_CODE:
                if size < 4:
                    return None
                reason = data[start + 4 : end]
                if not reason.isascii():
                    reason.decode("utf8")
            elif kind == _U16:
                if size < 2:
                    return None
            elif kind == _U64 and size != 8:
                return None
        pos = start + attr_len + (-attr_len % 4)
    cls = message_type & 0x0110
    peer: tuple[str, int] | None = None
    if method == METHOD_DATA and cls == CLASS_INDICATION and peer_at >= 0 and data_at >= 0:
        peer = _xor_peer(data, peer_at, peer_family, tid)
    final = fingerprints == 1 and last_fingerprint == n - 8
    if parser is not None and cacheable and (fingerprints == 0 or final):
        span = (data_at, data_end) if data_at >= 0 else None
        parser._remember(_Shape(data, method, cls, span, final, peer), data)
    if peer is not None:
        return method, cls, tid, peer, data[data_at:data_end]
    return method, cls, tid, None, None


class TransactionIds:
    """Random 96-bit transaction ids (RFC 8489 section 5), drawn from the OS in blocks."""

    def __init__(self, block: int = 256) -> None:
        self._block = block
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(12 * self._block), 0
        self._at += 12
        return self._pool[self._at - 12 : self._at]


class BindingTemplate:
    """A Binding request as ``binding_request()`` encodes it (header and FINGERPRINT), with the
    transaction id and the FINGERPRINT patched per probe."""

    def __init__(self) -> None:
        self._buf = bytearray(_HEADER.pack(METHOD_BINDING | CLASS_REQUEST, 8, COOKIE, bytes(12)))
        self._buf += _TLV.pack(0x8028, 4) + bytes(4)

    def encode(self, tid: bytes) -> bytes:
        buf = self._buf
        buf[8:20] = tid
        _U32_AT.pack_into(buf, 24, binascii.crc32(buf[:20]) ^ _FINGERPRINT_XOR)
        return bytes(buf)


class SendTemplate:
    """A Send indication to ``peer`` with ``size`` bytes of data, as ``send_indication()``
    encodes it (XOR-PEER-ADDRESS, DATA, FINGERPRINT); per probe the transaction id, the data,
    the FINGERPRINT and, for an IPv6 peer, the XORed address are patched."""

    def __init__(self, peer: tuple[str, int], size: int) -> None:
        self.size = size
        if ":" in peer[0]:
            family, raw = 2, socket.inet_pton(socket.AF_INET6, peer[0])
        else:
            family, raw = 1, socket.inet_aton(peer[0])
        self._v6 = int.from_bytes(raw, "big") if family == 2 else None
        xport = (peer[1] ^ (COOKIE >> 16)).to_bytes(2, "big")
        if family == 1:
            xaddr = (int.from_bytes(raw, "big") ^ COOKIE).to_bytes(4, "big")
        else:
            xaddr = bytes(16)  # patched per transaction id
        address = bytes((0, family)) + xport + xaddr
        padded = size + (-size % 4)
        body = _TLV.pack(_XOR_PEER_ADDRESS, len(address)) + address
        self._data_at = 20 + len(body) + 4
        body += _TLV.pack(_DATA, size) + bytes(padded)
        self._crc_end = 20 + len(body)
        body += _TLV.pack(0x8028, 4) + bytes(4)
        self._buf = bytearray(
            _HEADER.pack(METHOD_SEND | CLASS_INDICATION, len(body), COOKIE, bytes(12)) + body
        )

    def encode(self, tid: bytes, data: bytes) -> bytes:
        if len(data) != self.size:
            raise ValueError(f"this template carries {self.size} bytes of data, not {len(data)}")
        buf = self._buf
        buf[8:20] = tid
        if self._v6 is not None:
            pad = int.from_bytes(COOKIE.to_bytes(4, "big") + tid, "big")
            buf[28:44] = (self._v6 ^ pad).to_bytes(16, "big")
        at = self._data_at
        buf[at : at + self.size] = data
        end = self._crc_end
        _U32_AT.pack_into(buf, end + 4, binascii.crc32(memoryview(buf)[:end]) ^ _FINGERPRINT_XOR)
        return bytes(buf)
