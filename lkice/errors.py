"""Error kinds: every failure a probe can meet maps to exactly one of these.

    Exception
     +-- UsageError        bad input from the user (exit 3); message is safe to print
     +-- ProbeError        a probe step failed; carries an ErrorKind, a phase and a one-line message
     +-- ProbeBug          a probe task failed through a bug in lkice (message: type and place)

Foreign exceptions (OSError, ssl.SSLError, dns.exception.*) are translated where the I/O happens,
with ``raise ProbeError(...) from exc``, so nothing above the probe layer sees them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lkice.report import TlsInfo


class ErrorKind(str, enum.Enum):
    """Stable identifiers: they appear in the JSON report and are consumed by other tools."""

    DNS = "dns"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    NETWORK_UNREACHABLE = "network_unreachable"
    UDP_NO_RESPONSE = "udp_no_response"
    # ICMP port unreachable: the host answered, nothing listens on that UDP port (or a firewall
    # rejects it, as a TCP RST would say for TCP).
    UDP_REFUSED = "udp_refused"
    TCP_NO_RESPONSE = "tcp_no_response"
    # The server answered earlier on this connection or 5-tuple, then stopped answering: the
    # network lets the traffic through, so this is never called filtered.
    SERVER_SILENT = "server_silent"
    CONNECTION_CLOSED = "connection_closed"
    TLS_VERIFY = "tls_verify"
    TLS_HANDSHAKE = "tls_handshake"
    AUTH_REJECTED = "auth_rejected"
    FORBIDDEN = "forbidden"
    QUOTA = "quota"
    CAPACITY = "capacity"
    TRY_ALTERNATE = "try_alternate"
    # The allocation works but the relay carries nothing back while the server answers on the
    # same connection: the server's relayed address is unreachable (its external-ip, relay-ip).
    RELAY_FAILED = "relay_failed"
    PROTOCOL = "protocol"
    DEADLINE = "deadline"
    INTERRUPTED = "interrupted"
    # LiveKit signaling
    TOKEN_REJECTED = "token_rejected"  # noqa: S105 (an error kind, not a secret)
    NOT_LIVEKIT = "not_livekit"
    PROXY = "proxy"
    # An HTTP gateway answered instead of LiveKit (502/503/504, a Via header) with no web proxy
    # in use: most often the deployment's own load balancer or CDN with LiveKit behind it down.
    GATEWAY = "gateway"
    WEBSOCKET_REJECTED = "websocket_rejected"
    JOIN_TIMEOUT = "join_timeout"
    # A path this agent's own stack cannot exercise: neither a success nor a failure.
    NOT_TESTED = "not_tested"
    # This computer could not open the socket (local port in use, no free port, too many open
    # files): says nothing about the network.
    LOCAL = "local"


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
        # tls_verify: the certificate that was presented (read without verifying) and what was
        # wrong with it, for the report's ``tls``.
        self.tls: TlsInfo | None = None

    def __repr__(self) -> str:
        return f"ProbeError({self.kind.value!r}, {self.message!r}, phase={self.phase})"


def _place(exc: BaseException) -> str:
    """Where an exception was raised: the innermost frame's file and line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unknown place"
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"


class ProbeBug(Exception):
    """A probe task failed through a bug in lkice. The message names only the exception's type
    and where it was raised: the original's text and arguments (which may hold what a server
    sent, or a credential being encoded) stay out of every output."""

    def __init__(self, original: BaseException, count: int) -> None:
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(
            f"a probe failed with {type(original).__name__} at {_place(original)}{more}"
        )


def bug_summary(exc: BaseException) -> str:
    """A bug, for a message or a log: its type and place, never its text."""
    if isinstance(exc, ProbeBug):
        return str(exc)
    return f"{type(exc).__name__} at {_place(exc)}"
