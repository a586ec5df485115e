"""LiveKit signaling, the WebSocket connection and join every call begins with: signal-failed,
signal-incomplete. Failures another rule explains (the web proxy's refusal, a rejected certificate
or token: those rules' declared kinds) are left to it.
"""

from __future__ import annotations

from lkice.findings.common import (
    Finding,
    _Ctx,
    _finding,
    _join,
    _mask,
    _message,
    _port,
)
from lkice.findings.registry import kinds_of, rule

_SIGNAL_ADVICE = {
    "dns": "Check that the LiveKit URL is spelled right and that this network's DNS resolves it.",
    "connect_refused": "The connection was actively refused: check the URL's port, or ask IT "
    "whether a firewall rejects outbound TCP to {hosts} on port {port}.",
    "connect_timeout": "Ask IT to allow outbound TCP port {port} to {hosts}.",
    "network_unreachable": "This machine has no route to {hosts}: check the network connection "
    "or VPN.",
    "tls_handshake": "Something on port {port} of {hosts} does not speak TLS, or a middlebox cut "
    "the handshake: check the URL (wss:// vs ws://) and ask IT whether traffic to {hosts} is "
    "filtered.",
    "websocket_rejected": "A WebSocket upgrade to {hosts} was refused: ask IT to allow WebSocket "
    "connections to {hosts} (proxies and web filters often block them), or ask the operator to "
    "check the load balancer in front of LiveKit.",
    "not_livekit": "The URL does not point at a LiveKit server: check it with the operator.",
    "join_timeout": "The server accepted the connection but sent no join response: ask the "
    "operator to check the LiveKit server's logs and health.",
    "gateway": "Ask the operator whether the LiveKit server behind its load balancer, CDN or "
    "reverse proxy at {hosts} is up (the gateway answered, LiveKit did not); if the operator "
    "sees none of these requests, ask IT whether a proxy on this network intercepts HTTPS to "
    "{hosts}.",
}


@rule(
    ("signal-failed", "signal-incomplete"),
    "critical; signal-incomplete: critical for deadline, warning for interrupted",
)
def _rule_signal(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or signal.get("ok"):
        return []
    err = signal.get("error") or {}
    kind = str(err.get("kind") or "")
    if kind == "not_tested" or kind in kinds_of("proxy_required", "tls", "token"):
        return []  # no evidence, or a failure their own rules explain
    url = _mask(str(signal.get("url")))
    hosts = _join(ctx.signal_hosts()) or "the LiveKit server"
    port = _port(signal.get("address")) or ("443" if url.startswith("wss") else "80")
    if kind == "interrupted":
        return [
            _finding(
                "signal-incomplete",
                "warning",
                "The connection to the LiveKit server did not finish before the test stopped.",
                "Whether calls can connect is not known from this run.",
                [f"signaling to {url}: {_message(err)}"],
                "Run the test again and let it finish.",
            )
        ]
    if kind == "deadline":
        # Not finished within the time limit: no call could have started in that time (exit
        # 2), and that is all this says: nothing was refused or filtered.
        return [
            _finding(
                "signal-incomplete",
                "critical",
                "The connection to the LiveKit server did not finish within the overall time "
                "limit.",
                "Within this time no call could have started; whether it would have connected "
                "later is not known from this run.",
                [f"signaling to {url}: {_message(err)}"],
                "Run the test again with a longer deadline (--deadline); if it stays this "
                f"slow, ask the operator to check the LiveKit server at {hosts}.",
            )
        ]
    advice = _SIGNAL_ADVICE.get(
        kind, "Ask the operator to check the LiveKit server at {hosts} with this report."
    ).format(hosts=hosts, port=port)
    return [
        _finding(
            "signal-failed",
            "critical",
            f"The LiveKit server {hosts} was reached, but {_describe_kind(kind)}."
            if kind in _REACHED_KINDS
            else f"This computer cannot reach the LiveKit server {hosts}: {_describe_kind(kind)}.",
            "Calls cannot start: every LiveKit call begins with this connection.",
            [f"signaling to {url} ({signal.get('address') or 'no address'}): {_message(err)}"],
            advice,
        )
    ]


# Signaling failures after the connection was made: the network reached the server.
_REACHED_KINDS = frozenset(
    {"tcp_no_response", "not_livekit", "join_timeout", "protocol", "gateway"}
)


def _describe_kind(kind: str) -> str:
    return {
        "dns": "its name could not be looked up (DNS failure)",
        "connect_refused": "the connection was refused",
        "connect_timeout": "the connection timed out (a firewall likely drops it)",
        "tcp_no_response": "the server did not answer in time",
        "server_silent": "the server stopped answering",
        "relay_failed": "its relay carried nothing",
        "gateway": "a gateway in front of it answered instead of LiveKit",
        "udp_refused": "UDP was refused (nothing listens there)",
        "network_unreachable": "there is no route to it",
        "tls_handshake": "the secure (TLS) connection could not be set up",
        "websocket_rejected": "the WebSocket connection was refused",
        "not_livekit": "the address answers, but not as a LiveKit server",
        "join_timeout": "the server never completed the join",
        "connection_closed": "the connection was closed unexpectedly",
        "protocol": "the server's answer could not be understood",
    }.get(kind, kind.replace("_", " "))
