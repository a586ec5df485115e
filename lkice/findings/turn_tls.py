"""TURN over TLS, the fallback strict firewalls let through: not offered, or offered and not
answering (turn-tls-missing).
"""

from __future__ import annotations

from lkice.findings.common import (
    SILENT_KINDS,
    UNREACHABLE_KINDS,
    Finding,
    _advertised,
    _Ctx,
    _finding,
    _host,
    _kind,
    _path_evidence,
    _paths_for,
    _same_host_answers,
)
from lkice.findings.registry import rule


@rule(("turn-tls-missing",), "warning if UDP does not carry media, else info")
def _rule_turn_tls(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or not signal.get("ok"):
        return []
    urls = _advertised(ctx)
    turns = [u for u in urls if u.lower().startswith("turns:")]
    udp_fine = ctx.works("udp")
    udp_tried = bool(ctx.of("udp", ("turn", "sfu")))
    if not turns:
        if udp_fine:
            impact = (
                "Not a problem on this network (UDP works), but users behind firewalls that "
                "only allow HTTPS (TCP 443) will not be able to connect media."
            )
        elif udp_tried:
            impact = (
                "On this network UDP does not work, and without TURN over TLS on port 443 "
                "there is no fallback that strict firewalls let through."
            )
        else:
            impact = (
                "Users behind firewalls that only allow HTTPS (TCP 443) will not be able to "
                "connect media (UDP media was not tested in this run)."
            )
        return [
            _finding(
                "turn-tls-missing",
                "info" if udp_fine else "warning",
                "The LiveKit server offers no TURN over TLS (turns:) relay.",
                impact,
                [f"the join response offered: {', '.join(urls) or 'no ICE servers'}"],
                "Ask the LiveKit operator to enable the built-in TURN server with TLS "
                "(turn.enabled, turn.domain, turn.tls_port; LiveKit advertises it as "
                "turns:<turn.domain>:443?transport=tcp).",
            )
        ]
    out = []
    for url in turns:
        tried = _paths_for(ctx, url)
        if not tried or not all(
            not p.get("ok") and _kind(p) in UNREACHABLE_KINDS | SILENT_KINDS | {"tls_handshake"}
            for _, p in tried
        ):
            continue
        elsewhere = _same_host_answers(ctx, tried)
        cause = (
            f"{_host(str(tried[0][1].get('server')))} answers on other ports, so the server is "
            "up: its TURN/TLS listener (or the load balancer in front of it) is not answering"
            if elsewhere
            else "either a firewall blocks it or the server does not listen there"
        )
        out.append(
            _finding(
                "turn-tls-missing",
                "info" if udp_fine else "warning",
                f"The LiveKit server offers TURN over TLS ({url}) but it does not answer.",
                (
                    "Not a problem on this network (UDP works), but users behind strict "
                    "firewalls will have no working fallback."
                    if udp_fine
                    else "On this network UDP does not work and the TLS fallback does not "
                    "answer either."
                ),
                [_path_evidence(p) for _, p in tried] + [_path_evidence(p) for _, p in elsewhere],
                f"Ask the LiveKit operator to check the TURN/TLS listener behind {url}: {cause}. "
                "TURN/TLS cannot sit behind a load balancer that terminates TLS for HTTP only.",
                [i for i, _ in tried],
            )
        )
    return out
