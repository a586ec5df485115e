"""Credentials a server refused: the LiveKit access token (token-rejected) and the TURN
credentials (credentials, credentials-missing).
"""

from __future__ import annotations

from lkice.findings.common import (
    Finding,
    _Ctx,
    _finding,
    _join,
    _kind,
    _mask,
    _message,
    _path_evidence,
)
from lkice.findings.registry import rule


@rule(("token-rejected",), "critical", kinds=("token_rejected",))
def _rule_token(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or (signal.get("error") or {}).get("kind") != "token_rejected":
        return []
    msg = _message(signal["error"])
    expired = "expir" in msg.lower()
    summary = (
        "The LiveKit server rejected the access token because it has expired."
        if expired
        else "The LiveKit server rejected the access token."
    )
    advice = (
        "Create a new token (and check this computer's clock: tokens carry an expiry time)."
        if expired
        else "Check that the token was made with this server's API key and secret "
        "(LIVEKIT_API_KEY / LIVEKIT_API_SECRET), that it grants room_join, and that it has not "
        "expired; this is a configuration problem, not a network one."
    )
    return [
        _finding(
            "token-rejected",
            "critical",
            summary,
            "Calls cannot start until a valid token is used; the network itself reached the "
            "server.",
            [f"signaling to {_mask(str(signal.get('url')))}: {msg}"],
            advice,
        )
    ]


@rule(
    ("credentials", "credentials-missing"),
    "credentials: critical unless another TURN relay works, else warning; missing: warning",
    kinds=("auth_rejected",),
)
def _rule_credentials(ctx: _Ctx) -> list[Finding]:
    rejected = [(i, p) for i, p in ctx.of(kinds=("turn", "sfu")) if _kind(p) == "auth_rejected"]
    if not rejected:
        return []
    none_given = [(i, p) for i, p in rejected if "none were given" in _message(p.get("error"))]
    wrong = [(i, p) for i, p in rejected if (i, p) not in none_given]
    out = []
    if wrong:
        rest = any(p.get("auth") == "rest" for _, p in wrong)
        servers = _join(sorted({str(p.get("server")) for _, p in wrong}))
        advice = (
            "The TURN REST credentials were refused: check that the shared secret matches the "
            "TURN server's (static-auth-secret) and that this computer's clock is right (the "
            "credentials carry an expiry time)."
            if rest
            else "Check the TURN username and password (or ask the operator for current ones)."
        )
        if ctx.livekit:
            advice += (
                " With LiveKit the TURN credentials come from the server: ask the operator to "
                "check its TURN configuration."
            )
        # Critical only when no relay works at all; another TURN server that works carries
        # the calls that need one.
        relay_works = any(
            p.get("ok") and (p.get("kind") == "turn" or p.get("relay"))
            for _, p in ctx.of(kinds=("turn", "sfu"))
        )
        out.append(
            _finding(
                "credentials",
                "warning" if relay_works else "critical",
                f"The TURN server {servers} refused the credentials.",
                "The network reached the TURN server, but no relay can be set up there with "
                "these credentials"
                + (
                    "; other TURN servers tested here work, so calls that need a relay can use "
                    "those."
                    if relay_works
                    else ": calls that need the relay (for example behind a firewall that "
                    "blocks UDP) will fail."
                ),
                [_path_evidence(p) for _, p in wrong],
                advice,
                [i for i, _ in wrong],
            )
        )
    if none_given:
        out.append(
            _finding(
                "credentials-missing",
                "warning",
                "The TURN server needs credentials and none were given, so its relay was not "
                "tested.",
                "Whether the relay works is not known from this run.",
                [_path_evidence(p) for _, p in none_given],
                "Run lkice again with --username/--credential or --turn-secret.",
                [i for i, _ in none_given],
            )
        )
    return out
