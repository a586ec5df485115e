"""Whether media gets through, and what failed on the way: no path at all (no-path), UDP dropped
or refused (udp-blocked, udp-refused), only TCP or TLS (only-tcp, only-tls), an advertised URL
that does not answer (advertised-url-dead), TURN servers that refuse or relay nothing
(server-refused, relay-failed), and, run last, any evidential failure no other rule explained
(path-failed).
"""

from __future__ import annotations

from collections.abc import Sequence

from lkice.findings.common import (
    CLASSES,
    SILENT_KINDS,
    TIMEOUT_KINDS,
    UNREACHABLE_KINDS,
    Finding,
    Path,
    _advertised,
    _Ctx,
    _finding,
    _join,
    _kind,
    _message,
    _open_rules,
    _path_evidence,
    _paths_for,
    _port,
    _ports_by_proto,
    _same_host_answers,
    _sfu_udp_rule,
)
from lkice.findings.registry import rule


def _reset_after_connect(p: Path) -> bool:
    """TCP connected, then the connection was reset or closed before any answer."""
    message = _message(p.get("error")).lower()
    kind = _kind(p)
    if kind == "tls_handshake":
        return "closed or reset" in message
    return kind == "connection_closed" and ("reset" in message or "errno 104" in message)


def _silent_tls(p: Path) -> bool:
    """A TLS handshake that got no answer after TCP connected (a middlebox may hold it)."""
    return _kind(p) == "tls_handshake" and "got no answer within" in _message(p.get("error"))


def _blocked(items: Sequence[tuple[int, Path]]) -> bool:
    """Every evidential path failed at the network level, at least one was tried."""
    return bool(items) and all(not p.get("ok") and _kind(p) in UNREACHABLE_KINDS for _, p in items)


@rule(("no-path",), "critical")
def _rule_no_path(ctx: _Ctx) -> list[Finding]:
    if not ctx.indexed or ctx.any_ok():
        return []
    signal = ctx.report.get("signal")
    if signal is not None and not signal.get("ok"):
        return []  # signaling failed: its finding says why, the paths follow from it
    kinds = [_kind(p) or "" for _, p in ctx.indexed]
    parts = []
    n_dns = sum(k == "dns" for k in kinds)
    n_refused = sum(k in ("connect_refused", "udp_refused") for k in kinds)
    n_timeout = sum(k in TIMEOUT_KINDS for k in kinds)
    n_unreach = sum(k == "network_unreachable" for k in kinds)
    n_silent = sum(
        k in SILENT_KINDS or _silent_tls(p) for k, (_, p) in zip(kinds, ctx.indexed, strict=True)
    )
    # A reset right after connecting (on the ClientHello, on the first STUN request) is the
    # mark of an application-aware firewall as often as of the server: never "not a firewall".
    n_reset = sum(_reset_after_connect(p) for _, p in ctx.indexed)
    n_silent += n_reset
    n_other = len(kinds) - n_dns - n_refused - n_timeout - n_unreach - n_silent
    if n_timeout:
        parts.append(f"{n_timeout} got no answer (a firewall silently drops the traffic)")
    if n_reset:
        parts.append(
            f"{n_reset} were reset right after connecting (a firewall that inspects TLS or "
            "STUN and cuts what it does not allow, or the server)"
        )
    if n_silent - n_reset:
        parts.append(
            f"{n_silent - n_reset} reached the server but got no answer after that (TCP connected and "
            "no STUN or TLS answer came, or the server stopped answering: a TLS port spoken to "
            "without TLS, a port that is not STUN/TURN, a server that goes silent, or a "
            "middlebox holding the data)"
        )
    if n_refused:
        parts.append(
            f"{n_refused} were refused (nothing listens there, or a firewall rejects them)"
        )
    if n_dns:
        parts.append(f"{n_dns} failed because the server name could not be looked up (DNS)")
    if n_unreach:
        parts.append(f"{n_unreach} had no route to the server")
    if n_other:
        parts.append(f"{n_other} failed after reaching the server")
    total = len(kinds)
    if n_dns == total:
        summary = "No connection could be tried: the server names could not be looked up (DNS)."
        advice = "Check the server names and this computer's DNS (or VPN); nothing was reached."
    elif n_other + n_silent == total:
        # Every server was reached and failed after connecting (TLS, credentials, protocol):
        # nothing here points at a firewall.
        summary = (
            f"No connection to the media servers worked, but every one of the {total} tried "
            f"reached its server and failed after that ({_join(parts)}): the network let "
            "them through."
        )
        advice = (
            "The servers were reached: ask the operator to check the servers named here (their "
            "TLS certificates, credentials and configuration) with this report."
        )
        if n_silent:
            advice += (
                f" {n_silent} got no answer or were reset after connecting: if the operator "
                "finds the ports right, ask IT whether something on the way inspects, holds "
                "or cuts that traffic."
            )
        else:
            advice += " This is not a firewall problem."
    else:
        summary = f"No connection to the media servers worked: of {total} tried, {_join(parts)}."
        # Firewall advice only for what failed at the network level.
        network = [(i, p) for i, p in ctx.indexed if _kind(p) in UNREACHABLE_KINDS]
        rules = _open_rules(_ports_by_proto(network))
        sfu = _sfu_udp_rule(ctx)
        if sfu:
            rules.append(sfu)
        advice = (
            f"Ask IT to allow {_join(rules)}; at the very least outbound TCP 443 to the TURN/TLS "
            "server, which most firewalls allow."
            if rules
            else "Ask IT which outbound traffic to the media servers is allowed."
        )
        if n_other:
            advice += (
                f" The {n_other} that reached their server failed for other reasons (see the "
                "errors): ask the operator about those."
            )
        if n_reset:
            advice += (
                f" The {n_reset} reset right after connecting may be cut by a firewall that "
                "inspects TLS or STUN: ask IT about those too."
            )
    return [
        _finding(
            "no-path",
            "critical",
            summary,
            "Calls cannot carry audio or video from this network"
            + (" (signaling works, media does not)." if signal and signal.get("ok") else "."),
            [_path_evidence(p) for _, p in ctx.indexed],
            advice,
            [i for i, _ in ctx.indexed],
        )
    ]


@rule(("udp-blocked", "udp-refused"), "warning")
def _rule_udp_blocked(ctx: _Ctx) -> list[Finding]:
    udp = ctx.of("udp")
    if not udp or not ctx.any_ok():
        return []
    if not _blocked(udp):
        return _udp_blocked_to_regions(ctx, udp)
    if not any(_kind(p) in TIMEOUT_KINDS for _, p in udp):
        # Refused or unreachable only: not the silent drop of a firewall on UDP.
        return _udp_refused(ctx, udp)
    fallback = [c for c in ("tcp", "tls") if ctx.works(c)]
    rules = _open_rules(_ports_by_proto(udp))
    sfu = _sfu_udp_rule(ctx)
    if sfu:
        rules.append(sfu)
    via = _join(c.upper() for c in fallback) or "TCP/TLS"
    if fallback and not _works_directly(ctx, fallback):
        via += " through the web proxy"
    return [
        _finding(
            "udp-blocked",
            "warning",
            f"UDP is blocked on this network; calls can still connect over {via}.",
            "Audio and video go through the TURN relay over TCP or TLS: a little more delay, and "
            "on a network that loses packets, TCP holds audio back until each loss is repaired "
            "(short freezes and robotic sound).",
            [_path_evidence(p) for _, p in udp],
            f"Ask IT to allow {_join(rules)}."
            if rules
            else "Ask IT to allow outbound UDP to the media servers.",
            [i for i, _ in udp],
        )
    ]


def _udp_refused(ctx: _Ctx, udp: Sequence[tuple[int, Path]]) -> list[Finding]:
    """Every UDP path refused with ICMP port unreachable: the host answered, so this is a
    server that does not listen on UDP there, or a firewall that rejects (never "blocked")."""
    refused = [(i, p) for i, p in udp if _kind(p) == "udp_refused"]
    if not refused:
        return []
    where = _join(sorted({str(p.get("address") or p.get("server")) for _, p in refused}))
    return [
        _finding(
            "udp-refused",
            "warning",
            f"UDP to {where} was refused (ICMP port unreachable): nothing listens there on "
            "UDP, or a firewall rejects it.",
            "Calls fall back to TCP or TLS where those work: a little more delay, and stalls "
            "on a network that loses packets.",
            [_path_evidence(p) for _, p in refused],
            "Ask the operator whether the TURN server listens on UDP there (coturn's no-udp, "
            "LiveKit's turn.udp_port); if it does, ask IT whether a firewall rejects outbound "
            f"UDP to {where}.",
            [i for i, _ in refused],
        )
    ]


def _udp_blocked_to_regions(ctx: _Ctx, udp: Sequence[tuple[int, Path]]) -> list[Finding]:
    """UDP works to some regions but is dropped to others (a firewall rule per destination, or
    a region's own filter): the regions that would be nearest may be unusable over UDP."""
    blocked: dict[str, list[tuple[int, Path]]] = {}
    for region in dict.fromkeys(str(p.get("region")) for _, p in udp if p.get("region")):
        mine = [(i, p) for i, p in udp if p.get("region") == region]
        others = [
            p for _, p in ctx.indexed if p.get("region") == region and p.get("transport") != "udp"
        ]
        timed_out = any(_kind(p) in TIMEOUT_KINDS for _, p in mine)
        if _blocked(mine) and timed_out and any(p.get("ok") for p in others):
            blocked[region] = mine
    if not blocked:
        return []
    hits = [item for items in blocked.values() for item in items]
    rules = _open_rules(_ports_by_proto(hits))
    names = _join(blocked)
    return [
        _finding(
            "udp-blocked",
            "warning",
            f"UDP to {names} is blocked from this network, while other regions answer over UDP.",
            f"Clients sent to {names} fall back to TCP or TLS there (more delay, stalls under "
            "loss), or should be sent to a region that works over UDP.",
            [_path_evidence(p) for _, p in hits],
            f"Ask IT to allow {_join(rules)} (region {names})."
            if rules
            else f"Ask IT to allow outbound UDP to {names}.",
            [i for i, _ in hits],
        )
    ]


@rule(("only-tcp", "only-tls"), "warning")
def _rule_only(ctx: _Ctx) -> list[Finding]:
    working = [c for c in CLASSES if ctx.works(c)]
    if len(working) != 1 or working[0] == "udp":
        return []
    only = working[0]
    udp = ctx.of("udp")
    if not udp or ctx.reaches("udp"):
        return []  # UDP works, or was not tried: "only X" would claim more than was measured
    other = "tls" if only == "tcp" else "tcp"
    failed_other = ctx.of(other)
    if not failed_other:
        return []  # the other TCP class not tried: the same
    ok_paths = [(i, p) for i, p in ctx.of(only) if p.get("ok")]
    if all(p.get("proxy") for _, p in ok_paths):
        return []  # only through the web proxy: _rule_via_proxy says so
    ports = sorted({_port(p.get("address")) or _port(p.get("server")) or "?" for _, p in ok_paths})
    port_text = _join(ports)
    # "Blocked" only for what failed at the network level; a refused login is not a firewall.
    blocked = _blocked(udp) and _blocked([x for x in failed_other if not x[1].get("ok")])
    if only == "tls":
        summary = (
            f"Only encrypted TURN over TLS (TCP port {port_text}) gets through this network; "
            "UDP and plain TCP are blocked."
            if blocked
            else f"Only encrypted TURN over TLS (TCP port {port_text}) worked here; UDP and "
            "plain TCP were tried and did not."
        )
    else:
        summary = (
            f"Only TURN over plain TCP (port {port_text}) gets through this network; UDP and "
            "TURN over TLS are blocked."
            if blocked
            else f"Only TURN over plain TCP (port {port_text}) worked here; UDP and TURN over "
            "TLS were tried and did not."
        )
    evidence = [_path_evidence(p) for _, p in ok_paths] + [
        _path_evidence(p) for _, p in failed_other + ctx.of("udp")
    ]
    return [
        _finding(
            f"only-{only}",
            "warning",
            summary,
            "Calls connect, but only through the TURN relay over one TCP connection: joining "
            "takes longer (clients try UDP first), delay is higher, and lost packets stall "
            "audio until TCP repairs them.",
            evidence,
            "This is the last fallback: keep it open. To do better, see the UDP advice.",
            [i for i, _ in ok_paths] + [i for i, _ in failed_other],
        )
    ]


def _works_directly(ctx: _Ctx, classes: Sequence[str]) -> bool:
    """A media path (TURN or SFU) of one of these transport classes worked without the proxy."""
    return any(
        p.get("ok") and not p.get("proxy") for c in classes for _, p in ctx.of(c, ("turn", "sfu"))
    )


@rule(("advertised-url-dead",), "warning")
def _rule_advertised_dead(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or not signal.get("ok"):
        return []
    out_evidence: list[str] = []
    out_paths: list[int] = []
    dead_urls: list[str] = []
    for url in _advertised(ctx):
        if url.lower().startswith("turns:"):
            continue  # turn-tls-missing
        tried = _paths_for(ctx, url)
        dead = [
            (i, p)
            for i, p in tried
            if not p.get("ok") and _kind(p) in UNREACHABLE_KINDS | SILENT_KINDS
        ]
        if not tried or len(dead) != len(tried):
            continue
        elsewhere = _same_host_answers(ctx, dead)
        if not elsewhere:
            continue  # the host answers nowhere: a network question (no-path, udp-blocked)
        dead_classes = {p.get("transport") for _, p in dead}
        if "udp" in dead_classes and not any(
            p.get("ok") for i, p in ctx.of("udp") if i not in {d for d, _ in dead}
        ):
            continue  # no UDP works anywhere: the firewall explains it (udp-blocked)
        dead_urls.append(url)
        out_evidence += [_path_evidence(p) for _, p in dead]
        out_evidence += [_path_evidence(p) for _, p in elsewhere]
        out_paths += [i for i, _ in dead]
    if not dead_urls:
        return []
    return [
        _finding(
            "advertised-url-dead",
            "warning",
            f"The LiveKit server tells clients to use {_join(dead_urls)}, but "
            f"{'it does' if len(dead_urls) == 1 else 'they do'} not answer, while the same "
            "server answers elsewhere.",
            "Clients waste time trying it before falling back; if it was meant as the fallback "
            "for this kind of network, there is none.",
            out_evidence,
            f"Ask the LiveKit operator to check {_join(dead_urls)}: the port must be open on "
            "the server's firewall and the address must be the node's reachable (public) "
            "address (rtc.node_ip / use_external_ip, turn settings).",
            out_paths,
        )
    ]


@rule(("server-refused",), "warning", kinds=("forbidden", "quota", "capacity"))
def _rule_server_refused(ctx: _Ctx) -> list[Finding]:
    refused = [(i, p) for i, p in ctx.indexed if _kind(p) in ("forbidden", "quota", "capacity")]
    if not refused:
        return []
    return [
        _finding(
            "server-refused",
            "warning",
            "A TURN server was reached but refused to set up a relay (policy, quota or capacity).",
            "Calls that need that relay may fail even though the network lets them through.",
            [_path_evidence(p) for _, p in refused],
            "Ask the operator to check the TURN server's quotas, capacity and policy.",
            [i for i, _ in refused],
        )
    ]


@rule(
    ("relay-failed",),
    "critical when no other TURN relay works, else warning",
    kinds=("relay_failed",),
)
def _rule_relay_failed(ctx: _Ctx) -> list[Finding]:
    """TURN relays that carry nothing although the server answers on the same connection:
    the server's relayed address is unreachable, a server setting, not this network."""
    broken = [(i, p) for i, p in ctx.indexed if _kind(p) == "relay_failed"]
    if not broken:
        return []
    servers = _join(sorted({str(p.get("server")) for _, p in broken}))
    relays = _join(sorted({str(p.get("relayed_address")) for _, p in broken}))
    other = any(p.get("ok") and p.get("kind") == "turn" for _, p in ctx.of(kinds=("turn",)))
    return [
        _finding(
            "relay-failed",
            "warning" if other else "critical",
            f"The TURN server {servers} grants relays that carry nothing: packets sent through "
            f"its relay ({relays}) never came back, while the server itself answered.",
            "Calls that need this relay (behind firewalls that block direct media) get no "
            "audio or video through it"
            + ("; another TURN server tested here works." if other else "."),
            [_path_evidence(p) for _, p in broken],
            "Ask the operator to check the TURN server's relay address settings (coturn's "
            "external-ip and relay-ip, LiveKit's turn.relay_range_start/end and node IP): the "
            "relayed address it hands out must be reachable. This is not a problem of this "
            "network.",
            [i for i, _ in broken],
        )
    ]


@rule(("path-failed",), "warning")
def _rule_unexplained(ctx: _Ctx) -> list[Finding]:
    """Every failure that was really tested is part of the answer: a failed path that no rule
    before this one explained (``ctx.covered``: it runs last) still makes the verdict degraded
    (one server of several down, one address of a name, one port), with the path's own message
    as evidence."""
    failed = [(i, p) for i, p in ctx.indexed if not p.get("ok") and i not in ctx.covered]
    if not failed:
        return []
    return [
        _finding(
            "path-failed",
            "warning",
            f"{len(failed)} path(s) did not work while others did.",
            "Clients that pick one of these servers or transports may fail to connect or fall "
            "back more slowly.",
            [_path_evidence(p) for _, p in failed],
            "Check the servers and ports named here: whether they should answer from this "
            f"network ({_join(str(p.get('address') or p.get('server')) for _, p in failed)}).",
            [i for i, _ in failed],
        )
    ]
