"""The NAT test (RFC 5780): a symmetric mapping (symmetric-nat)."""

from __future__ import annotations

from lkice.findings.common import (
    Finding,
    _Ctx,
    _finding,
    _mask,
)
from lkice.findings.registry import rule


@rule(("symmetric-nat",), "info for LiveKit or when a TURN relay works, else warning")
def _rule_nat(ctx: _Ctx) -> list[Finding]:
    nat = ctx.report.get("nat")
    if not nat:
        return []
    mapping = nat.get("mapping")
    if mapping not in ("address-dependent", "address-and-port-dependent"):
        return []
    evidence = [
        f"RFC 5780 discovery against {nat.get('server')}: mapping {mapping}, filtering "
        f"{nat.get('filtering')}"
    ] + [_mask(str(e)) for e in nat.get("evidence") or []]
    relay_ok = any(p.get("ok") for _, p in ctx.of(kinds=("turn",)))
    if ctx.livekit:
        severity = "info"
        impact = (
            "Little effect on LiveKit calls: every client talks to the SFU, which has a public "
            "address, so the connection still forms (the SFU learns this computer's address "
            "from its first packets). Only direct peer-to-peer connections would need a TURN "
            "relay."
        )
    elif relay_ok:
        severity = "info"
        impact = (
            "Direct peer-to-peer connections between two such networks will fail; the TURN "
            "relay, which works here, carries those calls instead."
        )
    else:
        severity = "warning"
        impact = (
            "Direct peer-to-peer connections between two such networks will fail, and no TURN "
            "relay was shown to work from here to carry them instead."
        )
    return [
        _finding(
            "symmetric-nat",
            severity,
            'This network\'s NAT gives every destination a different public port ("symmetric" '
            "NAT).",
            impact,
            evidence,
            "Nothing to open for LiveKit; for peer-to-peer apps make sure a TURN relay is "
            "configured. IT can make the NAT endpoint-independent (RFC 4787) if direct "
            "connections matter.",
        )
    ]
