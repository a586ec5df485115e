"""The web proxy (docs/proxy.md): signaling stopped at a proxy (proxy-required), media reachable
only through the proxy lkice went through (proxy-only), and that proxy refusing tunnels
(proxy-auth-*, proxy-policy, proxy-silent, proxy-broken, proxy-unreachable). The servers behind a
refusing proxy are never blamed.
"""

from __future__ import annotations

from lkice.findings.common import (
    TRAINS,
    Finding,
    Path,
    _best,
    _Ctx,
    _finding,
    _host,
    _join,
    _mask,
    _Measure,
    _message,
    _open_rules,
    _path_evidence,
    _port,
    _ports_by_proto,
    _sfu_udp_rule,
    _url_port,
)
from lkice.findings.registry import rule
from lkice.report.read import ErrorDoc
from lkice.report.views import ms as _ms


@rule(("proxy-required",), "critical", kinds=("proxy",), explains_failures=True)
def _rule_proxy_required(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or (signal.get("error") or {}).get("kind") != "proxy":
        return []
    err = signal["error"]
    msg = _message(err)
    hosts = _join(ctx.signal_hosts()) or "the LiveKit server"
    needs_auth = "407" in msg
    through = signal.get("proxy")
    if through:
        # lkice itself went through the proxy (--proxy, HTTPS_PROXY): the proxy said no.
        how = _proxy_refusal(err) or "policy"
        url = str(signal.get("url") or "")
        port = _port(signal.get("address")) or _url_port(url)
        summary, advice = _proxy_login(how, through, hosts, "anything reaches LiveKit") or (
            f"The web proxy {through} refuses to connect to the LiveKit server {hosts}.",
            f"Ask IT to allow HTTPS and WebSocket connections through the proxy to {hosts} "
            f"(port {port}), without TLS inspection.",
        )
        return [
            _finding(
                "proxy-required",
                "critical",
                summary,
                "Calls cannot start: the connection to LiveKit is stopped at the proxy.",
                [f"signaling to {_mask(str(signal.get('url')))}: {msg}"],
                advice,
            )
        ]
    summary = (
        "A web proxy on this network demands a login (HTTP 407) before anything reaches LiveKit."
        if needs_auth
        else "A web proxy or gateway on this network answered instead of the LiveKit server."
    )
    return [
        _finding(
            "proxy-required",
            "critical",
            summary,
            "Calls cannot start: the connection to LiveKit is stopped at the proxy, and WebRTC "
            "media cannot be sent through an HTTP proxy anyway.",
            [f"signaling to {_mask(str(signal.get('url')))}: {msg}"],
            f"Ask IT to let {hosts} bypass the proxy (direct outbound TCP 443 to {hosts}, "
            "WebSocket allowed, no TLS inspection), and to allow the media ports named in the "
            "other findings.",
        )
    ]


def _proxy_refusal(err: ErrorDoc | None) -> str | None:
    """How the web proxy lkice went through refused (the words of lkice.probe.proxy), or None
    (the failure was beyond it): auth-rejected, auth-required, policy or unreachable."""
    err = err or {}
    message = str(err.get("message") or "")
    if err.get("kind") == "proxy":
        if "rejected the credentials" in message:
            return "auth-rejected"
        if "accepts only" in message and "lkice cannot do" in message:
            return "auth-unsupported"
        if "did not answer CONNECT" in message:
            return "silent"  # reached, then quiet: the proxy's failing, not unreachable
        if "is broken" in message:
            return "broken"
        return "auth-required" if "authentication" in message else "policy"
    if "unreachable" in message:
        return "unreachable"
    return None


def _proxy_login(how: str, proxy: str, targets: str, gate: str) -> tuple[str, str] | None:
    """(summary, advice) when the proxy refused for want of a (right) login, else None;
    ``gate``: what the login stands before ("anything reaches LiveKit")."""
    if how == "auth-required":
        return (
            f"The web proxy {proxy} demands a login (HTTP 407) before {gate}.",
            "Give lkice the proxy login, as your browser has it: --proxy "
            f"http://USER@{proxy} (it asks for the password), or ask IT to let {targets} "
            "through the proxy without one.",
        )
    if how == "auth-rejected":
        return (
            f"The web proxy {proxy} rejected the login lkice gave it.",
            "Check the proxy user name and password (the ones your browser uses); lkice "
            "never shows them.",
        )
    if how == "auth-unsupported":
        return (
            f"The web proxy {proxy} wants a Windows login (Negotiate/NTLM) before {gate}, which "
            "lkice cannot give (it speaks Basic only).",
            f"Your password is probably fine: browsers log in with your Windows account. Ask IT "
            f"to let {targets} through the proxy without a login, or to allow Basic "
            "authentication for this test.",
        )
    if how == "silent":
        return (
            f"The web proxy {proxy} accepted the connection but never answered, so nothing "
            f"reached {targets}.",
            f"Ask IT whether the proxy {proxy} is working (overloaded, or not a proxy at that "
            "address); the servers behind it were never asked.",
        )
    if how == "broken":
        return (
            f"The web proxy {proxy} answered with something that is not a proxy's answer, so "
            f"nothing reached {targets}.",
            f"Ask IT to check the proxy address and the proxy {proxy} itself; the servers "
            "behind it were never asked.",
        )
    return None


@rule(
    (
        "proxy-only",
        "proxy-auth-required",
        "proxy-auth-rejected",
        "proxy-auth-unsupported",
        "proxy-policy",
        "proxy-silent",
        "proxy-broken",
        "proxy-unreachable",
    ),
    "proxy-only: warning; refusals: critical if no path works, else warning, info for a "
    "policy refusal of one port of a server reached through the proxy",
    kinds=("proxy",),
    explains_failures=True,
)
def _rule_via_proxy(ctx: _Ctx) -> list[Finding]:
    """Paths tunnelled through the web proxy: media reachable only that way (and what it
    costs), or the proxy refusing them (login, policy, unreachable)."""
    proxied = [(i, p) for i, p in ctx.indexed if p.get("proxy")]
    if not proxied:
        return []
    proxy = str(proxied[0][1]["proxy"])
    out: list[Finding] = []
    ok = [(i, p) for i, p in proxied if p.get("ok") and p.get("kind") in ("turn", "sfu")]
    direct = [(i, p) for i, p in ctx.indexed if not p.get("proxy")]
    direct_media = any(p.get("ok") and p.get("kind") in ("turn", "sfu") for _, p in direct)
    direct_any = any(p.get("ok") for _, p in direct)
    if ok and not direct_media:
        failed = [(i, p) for i, p in direct if not p.get("ok")]
        measured = [_Measure(i, p, s, q) for i, p in ok for s in TRAINS[::-1] if (q := p.get(s))]
        best = _best([m for m in measured if m.rtt is not None])
        tunnel = min(
            (
                float(t)
                for _, p in ok
                if (t := (p.get("timings_ms") or {}).get("proxy")) is not None
            ),
            default=None,
        )
        costs = []
        if tunnel is not None:
            costs.append(f"the proxy took {_ms(tunnel)} ms to open each tunnel")
        if best is not None:
            costs.append(f"media round trip p50 {_ms(best.rtt)} ms through it, {best.count()}")
        protocols = sorted({"UDP" if p.get("transport") == "udp" else "TCP" for _, p in failed})
        if direct_any:
            summary = (
                f"Media (a TURN relay) works only through the web proxy {proxy}; directly, only "
                "STUN answered."
            )
        else:
            summary = (
                f"The media servers are reachable only through the web proxy {proxy}: calls "
                "can connect over TURN/TLS through it"
                + (
                    f", while direct {' and '.join(protocols)} "
                    f"{'are' if len(protocols) > 1 else 'is'} blocked."
                    if failed
                    else "."
                )
            )
        rules = _open_rules(_ports_by_proto(failed))
        sfu = _sfu_udp_rule(ctx)
        if sfu:
            rules.append(sfu)
        hosts = _join(dict.fromkeys(_host(str(p.get("server"))) for _, p in ok))
        out.append(
            _finding(
                "proxy-only",
                "warning",
                summary,
                "Calls connect, but all audio and video go through the proxy inside one TCP "
                "connection: an extra hop"
                + (f" ({'; '.join(costs)})" if costs else "")
                + ", and every lost packet holds the audio behind it until TCP resends it "
                "(head-of-line blocking: short freezes, robotic sound). Browsers use this route "
                "last, after UDP and direct TCP have failed, so joining takes longer; proxies "
                "may also cut long connections or inspect them.",
                [_path_evidence(p) for _, p in ok] + [_path_evidence(p) for _, p in failed],
                (f"Ask IT to allow {_join(rules)}, bypassing the proxy; " if rules else "Ask IT ")
                + f"at least to let {hosts} bypass the web proxy (and its TLS inspection).",
                [i for i, _ in ok] + [i for i, _ in failed],
            )
        )
    refused: dict[str, list[tuple[int, Path]]] = {}
    for i, p in proxied:
        how = None if p.get("ok") else _proxy_refusal(p.get("error"))
        if how is not None:
            refused.setdefault(how, []).append((i, p))
    anything = ctx.any_ok()
    reached = {_host(str(p.get("server"))) for _, p in ok}
    for how, items in refused.items():
        # Refused to one port of a server the proxy does let through on another: a detail.
        minor = how == "policy" and all(_host(str(p.get("server"))) in reached for _, p in items)
        targets = _join(dict.fromkeys(str(p.get("server")) for _, p in items))
        summary, advice = (
            _proxy_login(how, proxy, targets, f"it lets media through to {targets}")
            or {
                "policy": (
                    f"The web proxy {proxy} refuses to open a tunnel to {targets}: its policy "
                    "blocks that destination or port.",
                    f"Ask IT to allow HTTPS (CONNECT) through the proxy to {targets}: TURN over TLS "
                    "looks like any HTTPS site to it.",
                ),
                "unreachable": (
                    f"The web proxy {proxy} could not be reached.",
                    "Check the proxy address (--proxy, HTTPS_PROXY or the system's proxy setting) "
                    "with IT.",
                ),
            }[how]
        )
        out.append(
            _finding(
                f"proxy-{how}",
                "info" if minor else "warning" if anything else "critical",
                summary,
                "Media cannot use the route through the proxy"
                + (
                    "; the paths that work are named in the other findings."
                    if anything
                    else ", and no other route worked: calls cannot carry audio or video."
                ),
                [_path_evidence(p) for _, p in items],
                advice,
                [i for i, _ in items],
            )
        )
    return out
