"""Error kinds: every failure a probe can meet maps to exactly one of these.

    Exception
     +-- UsageError        bad input from the user (exit 3); message is safe to print
     +-- ProbeError        a probe step failed; carries an ErrorKind, a phase and a one-line message

Foreign exceptions (OSError, ssl.SSLError, dns.exception.*) are translated where the I/O happens,
with ``raise ProbeError(...) from exc``, so nothing above the probe layer sees them.
"""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    """Stable identifiers: they appear in the JSON report and are consumed by other tools."""

    DNS = "dns"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    NETWORK_UNREACHABLE = "network_unreachable"
    UDP_NO_RESPONSE = "udp_no_response"
    TCP_NO_RESPONSE = "tcp_no_response"
    CONNECTION_CLOSED = "connection_closed"
    TLS_VERIFY = "tls_verify"
    TLS_HANDSHAKE = "tls_handshake"
    AUTH_REJECTED = "auth_rejected"
    FORBIDDEN = "forbidden"
    QUOTA = "quota"
    CAPACITY = "capacity"
    TRY_ALTERNATE = "try_alternate"
    PROTOCOL = "protocol"
    DEADLINE = "deadline"
    INTERRUPTED = "interrupted"
    # LiveKit signaling
    TOKEN_REJECTED = "token_rejected"  # noqa: S105 (an error kind, not a secret)
    NOT_LIVEKIT = "not_livekit"
    PROXY = "proxy"
    WEBSOCKET_REJECTED = "websocket_rejected"
    JOIN_TIMEOUT = "join_timeout"
    # A path this agent's own stack cannot exercise: neither a success nor a failure.
    NOT_TESTED = "not_tested"


class Phase(str, enum.Enum):
    """The step of a path probe, in the order they run."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    BINDING = "binding"
    ALLOCATE_CHALLENGE = "allocate_challenge"
    ALLOCATE = "allocate"
    QUALITY = "quality"
    DEALLOCATE = "deallocate"
    # LiveKit signaling
    VALIDATE = "validate"
    WEBSOCKET = "websocket"
    JOIN = "join"


class UsageError(Exception):
    """The user's input cannot be used (malformed URI, missing credentials, unreadable file)."""


class ProbeError(Exception):
    """A probe step failed in a way the report explains."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        phase: Phase | None = None,
        stun_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.phase = phase
        self.stun_code = stun_code  # the server's STUN ERROR-CODE, when it answered with one

    def __repr__(self) -> str:
        return f"ProbeError({self.kind.value!r}, {self.message!r}, phase={self.phase})"
