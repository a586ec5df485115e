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
    too: with the TURN REST scheme it embeds the expiry, and in many deployments it names a user.

    ``form`` names a TURN REST username's form; ``fallback`` is the same secret in the other
    form, tried once if the server refuses the first (coturn and pion/turn disagree)."""

    username: Secret
    password: Secret
    mode: str = field(default="static")  # "static" | "rest"
    form: str | None = None  # REST: "expiry:user" (coturn) | "expiry" (pion/turn)
    fallback: TurnCredentials | None = None


# TURN REST usernames: coturn's use-auth-secret reads "<expiry>:<user>" (and also a bare expiry);
# pion/turn's NewLongTermAuthHandler (LiveKit's TURN is pion) reads only a bare "<expiry>".
REST_FORMS = ("expiry:user", "expiry")


def rest_credentials(
    secret: Secret,
    user: str = "lkice",
    ttl_s: int = 600,
    now: float | None = None,
    form: str | None = None,
) -> TurnCredentials:
    """Time-limited credentials from a TURN REST shared secret (TURN REST API draft): username
    "<expiry unix time>:<user>" (coturn) or "<expiry unix time>" (pion/turn), password =
    base64(HMAC-SHA1(secret, username)). ``form`` None: coturn's form first, pion's as the
    fallback; a form given: that form only."""
    expiry = int(now if now is not None else time.time()) + ttl_s

    def make(which: str, fallback: TurnCredentials | None) -> TurnCredentials:
        username = f"{expiry}:{user}" if which == "expiry:user" else str(expiry)
        digest = hmac.new(secret.reveal().encode(), username.encode(), hashlib.sha1).digest()
        password = Secret(base64.b64encode(digest).decode())
        return TurnCredentials(Secret(username), password, "rest", which, fallback)

    if form is not None:
        if form not in REST_FORMS:
            raise ValueError(f"unknown TURN REST username form {form!r}")
        return make(form, None)
    return make("expiry:user", make("expiry", None))
