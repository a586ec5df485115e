"""Rejected TLS certificates (``tls_verify``), told apart by the certificate: interception only
where the issuer is one this computer does not trust and no verified connection showed; a
certificate for other names, out of its dates, self-signed or otherwise refused is the server's
or the URL's problem (tls-name-mismatch, tls-expired, tls-self-signed, tls-certificate).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lkice.findings.common import (
    Finding,
    _Ctx,
    _finding,
    _host,
    _join,
    _label,
    _mask,
    _message,
)
from lkice.findings.registry import rule
from lkice.report.read import ErrorDoc, TlsDoc

_ISSUED_BY = re.compile(r"issued by '([^']*)'")


def _problem(err: ErrorDoc, tls: TlsDoc | None) -> str:
    """What was wrong with a rejected certificate: the report's ``tls.problem``, or for reports
    written before it existed, read from OpenSSL's words in the message."""
    problem = (tls or {}).get("problem")
    if isinstance(problem, str):
        return problem
    text = str(err.get("message") or "").lower()
    if "hostname mismatch" in text or "ip address mismatch" in text:
        return "name_mismatch"
    if "certificate has expired" in text:
        return "expired"
    if "self-signed certificate" in text and "in certificate chain" not in text:
        return "self_signed"
    return "untrusted_issuer"


@rule(
    (
        "tls-interception",
        "tls-name-mismatch",
        "tls-expired",
        "tls-self-signed",
        "tls-certificate",
    ),
    "critical on signaling (interception: also when no path works), else warning",
    kinds=("tls_verify",),
)
def _rule_tls(ctx: _Ctx) -> list[Finding]:
    """tls_verify failures, told apart by the certificate: interception only where the issuer
    is one this computer does not trust (and not the one the working paths showed); a trusted
    certificate for another name, an expired one, a self-signed one are the server's or the
    URL's problem, with advice to match."""
    known: set[str] = set()
    # The issuers each host showed on verified connections: a different one from the same
    # host is what proves interception (another server may simply use another CA).
    known_by_host: dict[str, set[str]] = {}
    sources: list[tuple[int | None, str, ErrorDoc | None, TlsDoc | None]] = []
    hosts_of: dict[int | None, str] = {}
    signal = ctx.report.get("signal")
    if signal:
        tls: TlsDoc = signal.get("tls") or {}
        signal_host = (ctx.signal_hosts() or [""])[0]
        hosts_of[None] = signal_host
        if signal.get("ok") and tls.get("verified") and tls.get("issuer"):
            known.add(str(tls["issuer"]))
            known_by_host.setdefault(signal_host, set()).add(str(tls["issuer"]))
        sources.append(
            (None, f"signaling to {_mask(str(signal.get('url')))}", signal.get("error"), tls)
        )
    for i, p in enumerate(ctx.paths):
        tls = p.get("tls") or {}
        host = _host(str(p.get("server")))
        hosts_of[i] = host
        if p.get("ok") and tls.get("verified") and tls.get("issuer"):
            known.add(str(tls["issuer"]))
            known_by_host.setdefault(host, set()).add(str(tls["issuer"]))
        sources.append((i, _label(p), p.get("error"), tls))
    failed = [
        (i, label, err, tls)
        for i, label, err, tls in sources
        if err is not None and err.get("kind") == "tls_verify"
    ]
    if not failed:
        return []
    interception: dict[str, list[tuple[int | None, str]]] = {}
    by_problem: dict[str, list[tuple[int | None, str, TlsDoc]]] = {}
    for where, label, err, shown in failed:
        assert err is not None  # failed: only paths with a tls_verify error
        m = _ISSUED_BY.search(str(err.get("message") or ""))
        issuer = (shown or {}).get("issuer") or (m.group(1) if m else None)
        evidence = f"{label}: {_message(err)}"
        problem = _problem(err, shown)
        if problem == "untrusted_issuer" and issuer and issuer not in known:
            interception.setdefault(str(issuer), []).append((where, evidence))
        else:
            if problem == "untrusted_issuer" and issuer:
                evidence += " (the same issuer as the working paths)"
            by_problem.setdefault(problem, []).append((where, evidence, shown or {}))
    out = []
    signal_failed = signal is not None and (signal.get("error") or {}).get("kind") == "tls_verify"
    hosts = sorted(
        {_host(str(ctx.paths[i].get("server"))) for i, _, e, _ in failed if i is not None}
        | (set(ctx.signal_hosts()) if signal_failed else set())
    )
    for issuer, items in interception.items():
        own = sorted(
            {k for where, _ in items for k in known_by_host.get(hosts_of.get(where, ""), set())}
        )
        if own:
            summary = (
                "Something on this network intercepts encrypted connections: the certificate "
                f"came from '{issuer}', while the same server's own certificate, seen on a path "
                f"that worked, comes from {_join(own)}."
            )
        elif known:
            summary = (
                f"Encrypted connections got a certificate from '{issuer}' that this computer "
                "does not trust (other servers here showed certificates from "
                f"{_join(sorted(known))}): unless '{issuer}' is this server's own CA, a "
                "TLS-inspecting proxy on this network intercepts them."
            )
        else:
            summary = (
                f"Encrypted connections got a certificate from '{issuer}' that this computer "
                "does not trust: unless that is the server's own CA, a TLS-inspecting proxy on "
                "this network intercepts them."
            )
        severity = "critical" if signal_failed or not ctx.any_ok() else "warning"
        out.append(
            _finding(
                "tls-interception",
                severity,
                summary,
                (
                    "Encrypted connections to the call servers are broken open by an "
                    "inspecting proxy; WebRTC and TURN over TLS do not work through it"
                    if own
                    else "If it is an inspecting proxy, it breaks encrypted connections to the "
                    "call servers open, and WebRTC and TURN over TLS do not work through it"
                )
                + (", so calls cannot start." if signal_failed else ", so the TLS fallback fails."),
                [e for _, e in items],
                f"Ask IT to exempt {_join(hosts) or 'the call servers'} from TLS inspection "
                f"(the inspecting issuer is '{issuer}'). If '{issuer}' is your own private CA, "
                "give it to lkice with --ca-file instead; if it is an intermediate CA of the "
                "server's own provider, the server does not send its full certificate chain: "
                "ask the operator to fix that.",
                [i for i, _ in items if i is not None],
            )
        )
    impact = "Connections over TLS to that server fail" + (
        ": calls cannot start." if signal_failed else "."
    )
    severity = "critical" if signal_failed else "warning"
    for problem, entries in by_problem.items():
        fid, summary, advice = _certificate_advice(
            problem, [t for _, _, t in entries], ctx.report.get("started_at")
        )
        out.append(
            _finding(
                fid,
                severity,
                summary,
                impact,
                [e for _, e, _ in entries],
                advice,
                [i for i, _, _ in entries if i is not None],
            )
        )
    return out


def _own_dates_cover(cert: TlsDoc, when: object) -> bool:
    """The presented certificate's own validity covers ``when`` (the run's start): an expiry
    OpenSSL reported is then another certificate's of the chain (an intermediate CA)."""
    from datetime import datetime

    try:
        at = datetime.fromisoformat(str(when))
        start = datetime.fromisoformat(str(cert.get("not_before")))
        end = datetime.fromisoformat(str(cert.get("not_after")))
        return start <= at <= end
    except (TypeError, ValueError):  # absent, malformed, or naive against aware
        return False


def _certificate_advice(
    problem: str, certs: Sequence[TlsDoc], started_at: object = None
) -> tuple[str, str, str]:
    """(finding id, summary, advice) for a certificate problem that is not interception."""
    dialled = _join(sorted({str(c["dialled"]) for c in certs if c.get("dialled")}))
    names = _join(sorted({str(n) for c in certs for n in (c.get("names") or [])}))
    if problem == "name_mismatch":
        return (
            "tls-name-mismatch",
            f"The server's certificate is from a trusted CA but is for {names or 'other names'}, "
            f"not for {dialled or 'the name or address dialled'}.",
            (
                f"Use the name on the certificate ({names}) in the URL instead of "
                f"{dialled or 'the name or address dialled'}"
                if names
                else "Use the name on the certificate in the URL"
            )
            + " (a certificate is usually made for a name, rarely for an IP address); if the "
            f"URL is right, ask the operator to add {dialled or 'that name'} to the "
            "certificate. This is not a firewall problem.",
        )
    if problem in ("expired", "not_yet_valid"):
        until = _join(sorted({str(c["not_after"]) for c in certs if c.get("not_after")}))
        since = _join(sorted({str(c["not_before"]) for c in certs if c.get("not_before")}))
        if certs and all(_own_dates_cover(c, started_at) for c in certs):
            state = "has expired" if problem == "expired" else "is not valid yet"
            return (
                "tls-expired",
                f"A CA certificate in the server's chain {state}, while the server's own "
                f"certificate is within its dates (valid until {until}).",
                "Ask the operator to install the CA's current intermediate certificate (the "
                "full chain as the CA issues it now) on the server; if the chain is current, "
                "check this computer's date and time.",
            )
        if problem == "expired":
            return (
                "tls-expired",
                f"The server's certificate has expired (valid until {until or 'a past date'}).",
                "Ask the operator to renew the certificate; if it is not expired, check this "
                "computer's date and time.",
            )
        return (
            "tls-expired",
            f"The server's certificate is not valid yet (valid from {since or 'a later date'}): "
            "this computer's clock is probably wrong.",
            "Check this computer's date and time; otherwise ask the operator to check the "
            "certificate.",
        )
    if problem == "self_signed":
        return (
            "tls-self-signed",
            "The server presents a self-signed certificate, which no browser or client trusts.",
            "Ask the operator to install a certificate from a public or company CA; to test "
            "anyway, give the server's certificate to lkice with --ca-file.",
        )
    said = _join(sorted({str(c["verify_error"]) for c in certs if c.get("verify_error")}))
    if problem == "other" and said:
        return (
            "tls-certificate",
            f"A server's TLS certificate was rejected: {said}.",
            "Ask the operator to check the certificate (its key, its purpose: server "
            "authentication, and its chain); this is not about which CA signed it.",
        )
    return (
        "tls-certificate",
        "A server's TLS certificate was rejected (signed by a CA this computer does not trust, "
        "or otherwise invalid).",
        "Ask the operator to check the certificate (name, expiry, full chain); if it is "
        "signed by a private CA, give that CA to lkice with --ca-file.",
    )
