"""TURN credentials, and the one type secrets travel in.

A ``Secret`` never prints itself: repr, str and format all give ``<redacted>``, so a secret that
slips into a log call or an f-string leaks nothing. ``reveal()`` is the only way to the value, and
only the STUN codec calls it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field

REDACTED = "<redacted>"


class Secret:
    """A string that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class TurnCredentials:
    """Long-term credentials for TURN (RFC 8489 section 9.2). The username is treated as secret
    too: with the TURN REST scheme it embeds the expiry, and in many deployments it names a user."""

    username: Secret
    password: Secret
    mode: str = field(default="static")  # "static" | "rest"


def rest_credentials(
    secret: Secret, user: str = "lkice", ttl_s: int = 600, now: float | None = None
) -> TurnCredentials:
    """Time-limited credentials as coturn's ``use-auth-secret`` expects (TURN REST API draft):
    username = "<expiry unix time>:<user>", password = base64(HMAC-SHA1(secret, username))."""
    expiry = int(now if now is not None else time.time()) + ttl_s
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.reveal().encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(Secret(username), Secret(base64.b64encode(digest).decode()), mode="rest")
