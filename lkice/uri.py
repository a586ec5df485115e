"""STUN and TURN URIs (RFC 7064, RFC 7065), parsed strictly: a diagnostic must not guess.

    stun:host[:port]    stuns:host[:port]
    turn:host[:port][?transport=udp|tcp]    turns:host[:port][?transport=tcp]

``turn:`` without a transport parameter is probed over both UDP and TCP, because the question a
diagnostic answers is which of them the network lets through. ``stun:`` is probed over UDP, the
only transport WebRTC stacks use for it; ``stuns:`` over TLS.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from lkice.errors import UsageError


class Transport(str, enum.Enum):
    """The client leg's transport."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


_DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
# RFC 3986 reg-name, restricted to what DNS can carry.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)


@dataclass(frozen=True)
class IceUri:
    """One parsed STUN/TURN URI."""

    scheme: str
    host: str
    port: int
    transport: str | None = None

    @property
    def kind(self) -> str:
        """``stun`` or ``turn``, as the report names it."""
        return "turn" if self.scheme.startswith("turn") else "stun"

    @property
    def secure(self) -> bool:
        return self.scheme.endswith("s")

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def server(self) -> str:
        """``host:port`` as given (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def transports(self) -> tuple[Transport, ...]:
        """The client-leg transports this URI asks to be probed."""
        if self.secure:
            return (Transport.TLS,)
        if self.transport == "udp":
            return (Transport.UDP,)
        if self.transport == "tcp":
            return (Transport.TCP,)
        if self.kind == "stun":
            return (Transport.UDP,)  # WebRTC stacks send STUN over UDP only
        return (Transport.UDP, Transport.TCP)

    def __str__(self) -> str:
        text = f"{self.scheme}:{self.server}"
        if self.transport is not None:
            text += f"?transport={self.transport}"
        return text


def _quote(raw: str, limit: int = 80) -> str:
    """The URI as given, quoted (control characters escaped) and bounded for a message."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")


def parse_ice_uri(text: str) -> IceUri:
    """Parse one URI; raise UsageError with a message that says what is wrong."""
    raw = text.strip()
    scheme, sep, rest = raw.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise UsageError(
            f"not a STUN/TURN URI: {_quote(raw)} (expected stun:, stuns:, turn: or turns:, e.g. "
            "turn:turn.example.com:3478?transport=udp)"
        )
    if rest.startswith("//"):
        raise UsageError(f"{_quote(raw)}: STUN/TURN URIs take no '//' (write {scheme}:{rest[2:]})")
    hostport, qmark, query = rest.partition("?")
    transport = _parse_query(raw, scheme, query) if qmark else None
    if "@" in hostport:
        raise UsageError(
            f"{_quote(raw)}: credentials do not belong in the URI; use --username/--credential"
        )
    host, port = _parse_hostport(raw, hostport, _DEFAULT_PORTS[scheme])
    return IceUri(scheme=scheme, host=host, port=port, transport=transport)


def _parse_query(raw: str, scheme: str, query: str) -> str:
    key, eq, value = query.partition("=")
    if key.lower() != "transport" or not eq:
        raise UsageError(f"{_quote(raw)}: the only query parameter allowed is transport=udp|tcp")
    if scheme.startswith("stun"):
        raise UsageError(f"{_quote(raw)}: {scheme}: URIs take no transport parameter (RFC 7064)")
    value = value.lower()
    if value not in ("udp", "tcp"):
        raise UsageError(f"{_quote(raw)}: unknown transport {value!r} (udp or tcp)")
    if scheme == "turns" and value == "udp":
        raise UsageError(f"{_quote(raw)}: TURN over DTLS (turns:?transport=udp) is not supported")
    return value


def _parse_hostport(raw: str, hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UsageError(f"{_quote(raw)}: unclosed '[' in IPv6 address")
        host, tail = hostport[1:end], hostport[end + 1 :]
        if "%" in host:
            raise UsageError(
                f"{_quote(raw)}: scoped IPv6 addresses (with a %zone) are not supported"
            )
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"{_quote(raw)}: {host!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise UsageError(f"{_quote(raw)}: unexpected text after ']'")
        port_text = tail[1:] if tail else ""
    else:
        if hostport.count(":") > 1:
            raise UsageError(
                f"{_quote(raw)}: IPv6 addresses must be written in brackets, e.g. turn:[2001:db8::1]"
            )
        host, _, port_text = hostport.partition(":")
        if not host:
            raise UsageError(f"{_quote(raw)}: no host")
        if not HOSTNAME_RE.match(host):
            raise UsageError(f"{_quote(raw)}: {host!r} is not a valid host name or address")
        host = host.rstrip(".").lower()
    if port_text == "":
        if hostport.endswith(":"):
            raise UsageError(f"{_quote(raw)}: empty port")
        return host, default_port
    # ASCII digits only: str.isdigit() also takes '³' and full-width digits.
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise UsageError(f"{_quote(raw)}: port {port_text[:12]!r} is not a number from 1 to 65535")
    return host, int(port_text)
