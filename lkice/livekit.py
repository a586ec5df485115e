"""LiveKit targets (pure): URL parsing, diagnostic tokens, and what a token says about itself.

The API secret is used only here, to sign a short-lived token for a unique diagnostic identity
and room; it never leaves the machine and never appears in any output.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from lkice.credentials import Secret
from lkice.errors import UsageError

__all__ = [
    "LiveKitUrl",
    "diagnostic_token",
    "is_livekit_url",
    "mint_token",
    "parse_livekit_url",
    "token_expiry",
]

_SCHEMES = {"wss": (True, 443), "https": (True, 443), "ws": (False, 80), "http": (False, 80)}


@dataclass(frozen=True)
class LiveKitUrl:
    given: str
    host: str
    port: int
    secure: bool
    prefix: str  # path before /rtc, without a trailing slash (deployments behind a path)

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        default = 443 if self.secure else 80
        port = "" if self.port == default else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}{port}{self.prefix}"


def is_livekit_url(text: str) -> bool:
    return text.strip().lower().split(":", 1)[0] in _SCHEMES


def _quote(raw: str, limit: int = 100) -> str:
    """The URL for a message: its password masked, quoted, bounded."""
    from lkice.textsafe import redact_url

    shown = redact_url(raw)
    return repr(shown if len(shown) <= limit else shown[:limit] + "...")


def parse_livekit_url(text: str) -> LiveKitUrl:
    raw = text.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{_quote(raw)} is not a valid LiveKit URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise UsageError(
            f"{_quote(raw)}: a LiveKit URL starts with wss:// (or https://, ws://, http://), "
            "e.g. wss://myproject.livekit.cloud"
        )
    if not parts.hostname:
        raise UsageError(f"{_quote(raw)}: no host in the LiveKit URL")
    if parts.username or parts.password:
        raise UsageError(
            f"{_quote(raw)}: credentials do not belong in the URL; use --api-key/--api-secret"
        )
    if port == 0:
        raise UsageError(f"{_quote(raw)}: port 0 is no port")
    if not _valid_host(parts.hostname):
        raise UsageError(f"{_quote(raw)}: {parts.hostname!r} is not a valid host name or address")
    secure, default_port = _SCHEMES[scheme]
    # What goes into the request line is percent-encoded: a space, a control character or
    # non-ASCII in a path (a hostile region list's, a typo's) cannot break the request.
    prefix = quote(parts.path.rstrip("/"), safe="/:@!$&'()*+,;=-._~%")
    if prefix.endswith("/rtc"):
        prefix = prefix[: -len("/rtc")]
    return LiveKitUrl(_masked(raw), parts.hostname.lower(), port or default_port, secure, prefix)


# Query parameters that carry a token or a secret (meeting links carry the token this way):
# lkice never sends the given URL's query, and never shows these values.
_SECRET_QUERY = re.compile(
    r"(?i)(^|[?&;])(access_token|token|jwt|secret|api_secret|password|key)=[^&;#]*"
)


def _masked(url: str) -> str:
    """The URL as reports show it: secret-looking query values replaced with ``***``."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    return base + sep + _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", rest)


def _valid_host(host: str) -> bool:
    import ipaddress

    from lkice.uri import HOSTNAME_RE

    if "%" in host:
        return False  # a scoped IPv6 address: its zone would bypass --nameserver
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HOSTNAME_RE.match(host) is not None
    return True


def mint_token(
    api_key: str,
    api_secret: Secret,
    identity: str,
    room: str,
    ttl: timedelta = timedelta(minutes=10),
    name: str = "lkice diagnostic",
) -> Secret:
    """A LiveKit access token (HS256 JWT, the claims ``livekit.api.AccessToken`` writes) that
    may join ``room`` as ``identity``, publish, publish data and subscribe. Signed here with the
    standard library: PyJWT's import alone costs ~0.1 s of a time-to-verdict (cryptography)."""
    import hashlib
    import hmac

    now = int(time.time())
    claims = {
        "video": {
            "roomJoin": True,
            "room": room,
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
        },
        "name": name,
        "sub": identity,
        "iss": api_key,
        "nbf": now,
        "exp": now + int(ttl.total_seconds()),
    }

    def segment(value: dict[str, Any]) -> bytes:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = segment({"alg": "HS256", "typ": "JWT"}) + b"." + segment(claims)
    signature = hmac.new(api_secret.reveal().encode(), signing_input, hashlib.sha256).digest()
    token = signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")
    return Secret(token.decode())


def diagnostic_token(
    api_key: str, api_secret: Secret, ttl: timedelta = timedelta(minutes=10)
) -> Secret:
    """A short-lived token for a unique identity in a unique room, so the diagnosis never joins a
    real meeting or collides with another run."""
    suffix = secrets.token_hex(4)
    return mint_token(api_key, api_secret, f"lkice-{suffix}", f"lkice-diag-{suffix}", ttl)


# A LiveKit token is a few hundred bytes (a few KB with metadata).
MAX_TOKEN = 64 * 1024
# What a JWT is made of (base64url segments and dots); anything else would go into an HTTP
# header as it is.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-=]*){0,4}")


def check_token_text(token: Secret) -> None:
    """A usage error for a token that cannot be one: too long, or characters no JWT has (a
    space, a line break: they would end up in an HTTP header). Never shows the token."""
    text = token.reveal()
    if len(text) > MAX_TOKEN:
        raise UsageError(f"the token is {len(text)} characters long, more than any LiveKit token")
    if not _TOKEN_RE.fullmatch(text):
        raise UsageError(
            "the token holds characters a LiveKit token cannot have (a JWT is letters, digits, "
            "'-', '_' and dots): check that it was copied whole and alone"
        )


def _claims(token: Secret) -> dict[str, Any] | None:
    try:
        payload = token.reveal().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def token_identity(token: Secret) -> str | None:
    """The participant identity a LiveKit token carries (its ``sub`` claim), read without
    verifying; None if unreadable."""
    claims = _claims(token)
    sub = claims.get("sub") if claims is not None else None
    return sub if isinstance(sub, str) and sub else None


def token_room(token: Secret) -> str | None:
    """The room a LiveKit token grants (``video.room``), read without verifying; None if none."""
    claims = _claims(token)
    video = claims.get("video") if claims is not None else None
    room = video.get("room") if isinstance(video, dict) else None
    return room if isinstance(room, str) and room else None


def token_expiry(token: Secret) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying (only the server can verify); None if
    the token is not a readable JWT or has no usable expiry (not a finite number)."""
    try:
        payload = token.reveal().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    try:
        value = float(exp)
    except OverflowError:  # an int of 400 digits
        return None
    return value if math.isfinite(value) else None


def check_token_fresh(token: Secret, now: float | None = None) -> None:
    """Refuse an expired token before contacting anyone: the server would only say so later."""
    exp = token_expiry(token)
    now = time.time() if now is None else now
    if exp is not None and exp <= now:
        ago = int(now - exp)
        raise UsageError(
            f"the token expired {ago // 60} min {ago % 60} s ago: mint a new one, or give "
            "--api-key/--api-secret and lkice mints a short-lived one itself"
        )
