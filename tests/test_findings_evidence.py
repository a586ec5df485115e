"""Each finding fires only on its evidence (docs/findings.md, "evidence required"): for every
rule a minimal report that has the evidence (it fires, with the severity the table gives) and
reports that lack it (it stays silent). Reports are built in ``Report.to_dict()`` shape and
schema-checked (tests/test_findings.py's builders); the claims that matter most are also proven
on real runs against real servers on loopback (coturn, pion/turn, silent and busy sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lkice.job import RunRequest, diagnose
from lkice.lab.pki import LabPki
from lkice.verdict import ExitStatus, Verdict, exit_status
from tests.conftest import TurnLab, plain, validate_report
from tests.test_findings import (
    NO_STALL,
    make_path,
    make_report,
    make_signal,
    run,
    stalls,
)

Report = dict[str, Any]
Builder = Callable[[], Report]
PROXY = "198.18.0.1:3128"
US = "turn.us.example.com"
INSPECTOR = "O=Contoso Corp,OU=Contoso TLS Inspection CA"
PUBLIC_CA = "CN=R11,O=Let's Encrypt,C=US"


# -- building blocks -----------------------------------------------------------------------------


def path(*args: Any, proxy: str | None = None, **kwargs: Any) -> dict[str, Any]:
    p = make_path(*args, **kwargs)
    if proxy is not None:
        p["proxy"] = proxy
    return p


def ok(transport: str, kind: str = "turn", **kwargs: Any) -> dict[str, Any]:
    rtt = kwargs.pop("rtt", 20.0)
    relay = kwargs.pop("relay_rtt", 2 * rtt if kind == "turn" and rtt is not None else None)
    return path(kind, transport, True, rtt=rtt, relay_rtt=relay, **kwargs)


def failed(transport: str, kind_: str, kind: str = "turn", **kwargs: Any) -> dict[str, Any]:
    return path(kind, transport, False, kind_, **kwargs)


def rejected_certificate(problem: str, issuer: str = PUBLIC_CA, **kwargs: Any) -> dict[str, Any]:
    """A TURN/TLS path whose certificate was rejected, as probe/tcp.py reports it."""
    reasons = {
        "untrusted_issuer": "unable to get local issuer certificate",
        "name_mismatch": "IP address mismatch, certificate is not valid for '203.0.113.10'",
        "expired": "certificate has expired",
        "not_yet_valid": "certificate is not yet valid",
        "self_signed": "self-signed certificate",
        "other": "unsupported certificate purpose",
    }
    p = failed(
        "tls",
        "tls_verify",
        message=f"certificate presented by 203.0.113.10:443 was rejected: {reasons[problem]}; "
        f"it was issued by '{issuer}'",
        tls_issuer=issuer,
        **kwargs,
    )
    p["error"]["phase"] = "tls"
    p["tls"].update(
        problem=problem,
        names=["turn.eu.example.com"],
        dialled="203.0.113.10",
        not_before="2025-01-01T00:00:00+00:00",
        verify_error=reasons[problem],
    )
    if problem == "self_signed":
        p["tls"]["issuer"] = p["tls"]["subject"]
    return p


def nat(mapping: str) -> dict[str, Any]:
    return {"server": "203.0.113.10:3478", "mapping": mapping, "filtering": "unknown"}


def udp_dropped() -> list[dict[str, Any]]:
    return [failed("udp", "udp_no_response", kind="stun"), failed("udp", "udp_no_response")]


def sfu_record(participants: int, data: str) -> dict[str, Any]:
    return {
        "participants": participants,
        "channels_open": True,
        "data_round_trip": data,
        "data_rtt_ms": 41.0 if data == "measured" else None,
        "ice_rtt": {"sent": 5, "received": 5, "min_ms": 20.1, "p50_ms": 20.4, "max_ms": 21.0},
    }


def sfu_session(participants: int, data: str, *, relay: bool = False) -> dict[str, Any]:
    """A working SFU session as probe/sfu.py reports it, with its ``sfu`` record."""
    via = "turn:turn.eu.example.com:3478?transport=udp" if relay else None
    p = ok("udp", kind="sfu", host="lk.example.com", relay=via, rtt=None)
    p["sfu"] = sfu_record(participants, data)
    return p


def report(paths: list[dict[str, Any]], **kwargs: Any) -> Builder:
    return lambda: make_report(paths, **kwargs)


def signal_report(signal: dict[str, Any], paths: list[dict[str, Any]] | None = None) -> Builder:
    return lambda: make_report(paths or [], signal=signal)


@dataclass(frozen=True)
class Rule:
    """A finding id, reports that have its evidence (name -> (report, severity)), and reports
    that lack it (name -> report): it must stay silent on those."""

    fid: str
    fires: dict[str, tuple[Builder, str]]
    silent: dict[str, Builder] = field(default_factory=dict)


OPEN = [ok("udp", kind="stun"), ok("udp"), ok("tcp"), ok("tls", port=443, tls_issuer=PUBLIC_CA)]

RULES = [
    Rule(
        "signal-failed",
        {
            "signaling refused": (
                signal_report(make_signal(False, "connect_refused", "TCP connect refused")),
                "critical",
            ),
            "not LiveKit": (signal_report(make_signal(False, "not_livekit", "nginx")), "critical"),
        },
        {
            "signaling works": signal_report(make_signal(), OPEN),
            "no signaling": report(OPEN),
            "certificate rejected (its own rule)": signal_report(
                make_signal(False, "tls_verify", "certificate has expired")
            ),
            "cut by the deadline (signal-incomplete)": signal_report(
                make_signal(False, "deadline", "deadline reached during tls")
            ),
            "token rejected (its own rule)": signal_report(
                make_signal(False, "token_rejected", "401 invalid token")
            ),
        },
    ),
    Rule(
        "signal-incomplete",
        {
            "deadline: nothing could start in time": (
                signal_report(make_signal(False, "deadline", "deadline reached during tls")),
                "critical",
            ),
            "Ctrl-C": (
                signal_report(make_signal(False, "interrupted", "interrupted during tls")),
                "warning",
            ),
        },
        {
            "signaling works": signal_report(make_signal(), OPEN),
            "signaling refused": signal_report(make_signal(False, "connect_refused", "refused")),
        },
    ),
    Rule(
        "proxy-required",
        {
            "407 from an intermediary": (
                signal_report(
                    make_signal(False, "proxy", "HTTP 407 Proxy Authentication Required")
                ),
                "critical",
            )
        },
        {"signaling refused": signal_report(make_signal(False, "connect_refused", "refused"))},
    ),
    Rule(
        "tls-interception",
        {
            "untrusted issuer, nothing works": (
                report([rejected_certificate("untrusted_issuer", INSPECTOR)]),
                "critical",
            ),
            "untrusted issuer, UDP works": (
                report([ok("udp"), rejected_certificate("untrusted_issuer", INSPECTOR)]),
                "warning",
            ),
        },
        {
            "the same issuer verified on a working path": report(
                [
                    ok("tls", port=5349, tls_issuer=INSPECTOR),
                    rejected_certificate("untrusted_issuer", INSPECTOR),
                ]
            ),
            **{
                f"trusted issuer, {problem}": report([rejected_certificate(problem)])
                for problem in ("name_mismatch", "expired", "not_yet_valid", "self_signed", "other")
            },
            "handshake failed, no certificate": report(
                [failed("tls", "tls_handshake", message="TLS handshake failed: closed or reset")]
            ),
        },
    ),
    *(
        Rule(
            fid,
            {problem: (report([ok("udp"), rejected_certificate(problem)]), "warning")},
            {
                "the certificate verified": report(OPEN),
                "handshake failed, no certificate": report(
                    [ok("udp"), failed("tls", "tls_handshake", message="no TLS answer within 5 s")]
                ),
                "an untrusted issuer (interception)": report(
                    [ok("udp"), rejected_certificate("untrusted_issuer", INSPECTOR)]
                ),
            },
        )
        for fid, problem in (
            ("tls-name-mismatch", "name_mismatch"),
            ("tls-expired", "expired"),
            ("tls-expired", "not_yet_valid"),
            ("tls-self-signed", "self_signed"),
            ("tls-certificate", "other"),
        )
    ),
    Rule(
        "tls-certificate",
        {
            "an untrusted issuer the working paths also show": (
                report(
                    [
                        ok("tls", port=5349, tls_issuer=INSPECTOR),
                        rejected_certificate("untrusted_issuer", INSPECTOR),
                    ]
                ),
                "warning",
            )
        },
    ),
    Rule(
        "token-rejected",
        {"401": (signal_report(make_signal(False, "token_rejected", "401 expired")), "critical")},
        {"signaling works": signal_report(make_signal(), OPEN)},
    ),
    Rule(
        "credentials",
        {
            "refused on UDP": (report([failed("udp", "auth_rejected")]), "critical"),
        },
        {
            "none were given": report(
                [
                    failed(
                        "udp",
                        "auth_rejected",
                        message="the server asks for credentials and none were given",
                    )
                ]
            ),
            "accepted": report(OPEN),
            "refused by the server's policy (403)": report([failed("udp", "forbidden")]),
        },
    ),
    Rule(
        "credentials-missing",
        {
            "none given": (
                report(
                    [
                        ok("udp", kind="stun"),
                        failed(
                            "udp",
                            "auth_rejected",
                            message="the server asks for credentials and none were given",
                        ),
                    ]
                ),
                "warning",
            )
        },
        {"wrong ones given": report([ok("udp", kind="stun"), failed("udp", "auth_rejected")])},
    ),
    Rule(
        "no-path",
        {
            "every path dropped": (
                report([*udp_dropped(), failed("tcp", "connect_timeout")]),
                "critical",
            ),
            "every path reached its server": (
                report(
                    [
                        failed("udp", "auth_rejected"),
                        failed("tcp", "protocol", message="the answer is HTTP"),
                        rejected_certificate("name_mismatch"),
                    ]
                ),
                "critical",
            ),
        },
        {
            "one path works": report([*udp_dropped(), ok("tls")]),
            "nothing was tested": report(
                [
                    failed("udp", "not_tested", message="not tested: no UDP here"),
                    failed("tcp", "deadline", message="deadline reached during connect"),
                    failed("tls", "local", message="no TCP socket: too many open files"),
                ]
            ),
            "signaling failed (its finding says why)": signal_report(
                make_signal(False, "connect_timeout", "timed out"), udp_dropped()
            ),
        },
    ),
    Rule(
        "udp-blocked",
        {
            "UDP dropped, TCP works": (report([*udp_dropped(), ok("tcp")]), "warning"),
            "UDP dropped to one region only": (
                report(
                    [
                        failed("udp", "udp_no_response", region="eu"),
                        ok("tls", region="eu"),
                        ok("udp", host=US, ip="203.0.113.20", region="us"),
                    ]
                ),
                "warning",
            ),
        },
        {
            "UDP works": report(OPEN),
            "UDP refused, not dropped": report([failed("udp", "connect_refused"), ok("tcp")]),
            "UDP reached the server (credentials refused)": report(
                [failed("udp", "auth_rejected"), ok("tcp")]
            ),
            "UDP could not be opened here": report([failed("udp", "local"), ok("tcp")]),
            "UDP not tried": report([ok("tcp"), ok("tls")]),
            "nothing works (no-path says it)": report(
                [*udp_dropped(), failed("tcp", "connect_timeout")]
            ),
        },
    ),
    Rule(
        "only-tls",
        {
            "UDP and TCP dropped": (
                report([*udp_dropped(), failed("tcp", "connect_timeout"), ok("tls", port=443)]),
                "warning",
            ),
        },
        {
            "a single turns: URI": report([ok("tls", port=443)]),
            "UDP and TLS tried, TCP not": report([*udp_dropped(), ok("tls", port=443)]),
            "TCP and TLS tried, UDP not": report([failed("tcp", "connect_timeout"), ok("tls")]),
            "UDP answers STUN": report(
                [ok("udp", kind="stun"), failed("tcp", "connect_timeout"), ok("tls")]
            ),
            "TCP works too": report([*udp_dropped(), ok("tcp"), ok("tls")]),
            "only through the web proxy (proxy-only)": report(
                [*udp_dropped(), failed("tcp", "connect_timeout"), ok("tls", proxy=PROXY)]
            ),
        },
    ),
    Rule(
        "only-tcp",
        {
            "UDP and TLS dropped": (
                report([*udp_dropped(), ok("tcp"), failed("tls", "connect_timeout", port=443)]),
                "warning",
            ),
        },
        {
            "TLS not tried": report([*udp_dropped(), ok("tcp")]),
            "UDP not tried": report([ok("tcp"), failed("tls", "connect_timeout")]),
            "TLS works too": report([*udp_dropped(), ok("tcp"), ok("tls")]),
        },
    ),
    Rule(
        "proxy-only",
        {
            "TURN/TLS through the proxy, nothing direct": (
                report([*udp_dropped(), failed("tcp", "connect_timeout"), ok("tls", proxy=PROXY)]),
                "warning",
            )
        },
        {
            "a direct relay works too": report([ok("udp"), ok("tls", proxy=PROXY)]),
            "no proxy used": report([*udp_dropped(), ok("tls")]),
        },
    ),
    Rule(
        "proxy-auth-required",
        {
            "407 on the only route": (
                report(
                    [
                        *udp_dropped(),
                        failed(
                            "tls",
                            "proxy",
                            proxy=PROXY,
                            message=f"proxy {PROXY} demands authentication (HTTP 407)",
                        ),
                    ]
                ),
                "critical",
            ),
            "407 while UDP works": (
                report(
                    [
                        ok("udp"),
                        failed(
                            "tls",
                            "proxy",
                            proxy=PROXY,
                            message=f"proxy {PROXY} demands authentication (HTTP 407)",
                        ),
                    ]
                ),
                "warning",
            ),
        },
        {"no proxy used": report([*udp_dropped(), failed("tls", "connect_timeout")])},
    ),
    Rule(
        "proxy-auth-rejected",
        {
            "wrong proxy login": (
                report(
                    [
                        ok("udp"),
                        failed(
                            "tls",
                            "proxy",
                            proxy=PROXY,
                            message=f"the proxy {PROXY} rejected the credentials (407 Denied)",
                        ),
                    ]
                ),
                "warning",
            )
        },
        {"no proxy used": report([ok("udp"), failed("tls", "connect_timeout")])},
    ),
    Rule(
        "proxy-unreachable",
        {
            "the proxy does not answer": (
                report(
                    [
                        ok("udp"),
                        failed(
                            "tls",
                            "connect_refused",
                            proxy=PROXY,
                            message=f"proxy {PROXY} unreachable: TCP connect refused",
                        ),
                    ]
                ),
                "warning",
            )
        },
        {"a direct path refused": report([ok("udp"), failed("tls", "connect_refused")])},
    ),
    Rule(
        "proxy-policy",
        {
            "one port refused of a server the proxy lets through": (
                report(
                    [
                        ok("tls", proxy=PROXY),
                        failed(
                            "tls",
                            "proxy",
                            port=5349,
                            proxy=PROXY,
                            message=f"proxy {PROXY} refused CONNECT (HTTP 403)",
                        ),
                    ]
                ),
                "info",
            ),
        },
        {"the proxy let everything through": report([ok("tls", proxy=PROXY)])},
    ),
    Rule(
        "turn-tls-missing",
        {
            "no turns: offered, UDP works": (
                signal_report(
                    make_signal(ice_urls=["turn:turn.eu.example.com:3478?transport=udp"]),
                    [ok("udp")],
                ),
                "info",
            ),
            "no turns: offered, UDP dropped": (
                signal_report(
                    make_signal(ice_urls=["turn:turn.eu.example.com:3478?transport=tcp"]),
                    [*udp_dropped(), ok("tcp")],
                ),
                "warning",
            ),
            "turns: offered, connected, never answered": (
                signal_report(
                    make_signal(ice_urls=["turns:turn.eu.example.com:443?transport=tcp"]),
                    [ok("udp"), failed("tls", "tcp_no_response")],
                ),
                "info",
            ),
        },
        {
            "turns: offered and working": signal_report(
                make_signal(ice_urls=["turns:turn.eu.example.com:443?transport=tcp"]), OPEN
            ),
            "turns: offered, certificate rejected (the TLS finding)": signal_report(
                make_signal(ice_urls=["turns:turn.eu.example.com:443?transport=tcp"]),
                [ok("udp"), rejected_certificate("expired")],
            ),
            "no LiveKit signaling": report([ok("udp")]),
        },
    ),
    Rule(
        "advertised-url-dead",
        {
            "TCP URL dead, the host answers on TLS": (
                signal_report(
                    make_signal(
                        ice_urls=[
                            "turn:turn.eu.example.com:3478?transport=tcp",
                            "turns:turn.eu.example.com:443?transport=tcp",
                        ]
                    ),
                    [ok("udp"), failed("tcp", "connect_timeout"), ok("tls")],
                ),
                "warning",
            ),
        },
        {
            "the host answers nowhere": signal_report(
                make_signal(ice_urls=["turn:turn.eu.example.com:3478?transport=tcp"]),
                [failed("tcp", "connect_timeout")],
            ),
            "not advertised": signal_report(
                make_signal(ice_urls=["turns:turn.eu.example.com:443?transport=tcp"]),
                [ok("udp"), failed("tcp", "connect_timeout"), ok("tls")],
            ),
            "the URL reached its server (credentials)": signal_report(
                make_signal(ice_urls=["turn:turn.eu.example.com:3478?transport=tcp"]),
                [ok("udp"), failed("tcp", "auth_rejected"), ok("tls")],
            ),
            "UDP URL dead while no UDP works (udp-blocked says it)": signal_report(
                make_signal(ice_urls=["turn:turn.eu.example.com:3478?transport=udp"]),
                [failed("udp", "udp_no_response"), ok("tls")],
            ),
        },
    ),
    Rule(
        "server-refused",
        {"403": (report([ok("tcp"), failed("udp", "forbidden")]), "warning")},
        {"credentials refused instead": report([ok("tcp"), failed("udp", "auth_rejected")])},
    ),
    Rule(
        "media-unproven",
        {"signaling only": (signal_report(make_signal()), "warning")},
        {
            "a path was measured": signal_report(make_signal(), [ok("udp")]),
            "signaling failed": signal_report(make_signal(False, "connect_refused", "refused")),
        },
    ),
    Rule(
        "high-rtt",
        {
            "p50 150 ms": (report([ok("udp", rtt=150.0, relay_rtt=None)]), "warning"),
            "p50 700 ms over 250 probes": (
                report([ok("udp", rtt=700.0, relay_rtt=None)]),
                "critical",
            ),
            "p50 700 ms over 20 probes": (
                report([ok("udp", rtt=700.0, relay_rtt=None, samples=20)]),
                "warning",
            ),
            "on a class the client will not use": (
                report([ok("udp"), ok("tls", rtt=150.0, relay_rtt=None)]),
                "info",
            ),
        },
        {
            "p50 50 ms": report([ok("udp", rtt=50.0, relay_rtt=None)]),
            "relay echo 180 ms: twice the limit applies": report(
                [ok("udp", rtt=None, relay_rtt=180.0)]
            ),
            "the path failed: no figure": report([failed("udp", "udp_no_response"), ok("tcp")]),
        },
    ),
    Rule(
        "high-jitter",
        {"45 ms": (report([ok("udp", jitter=45.0)]), "warning")},
        {"10 ms": report([ok("udp", jitter=10.0)])},
    ),
    Rule(
        "high-loss",
        {"20 % of relay echoes, about 5 % each way": (report([ok("udp", loss=0.2)]), "warning")},
        {"2 % of relay echoes, 0.5 % each way": report([ok("udp", loss=0.02)])},
    ),
    Rule(
        "low-mos",
        {"MOS 2.8": (report([ok("udp", mos=2.8)]), "warning")},
        {"MOS 4.2": report([ok("udp", mos=4.2)]), "no MOS": report([ok("udp", mos=None)])},
    ),
    Rule(
        "hol-blocking",
        {
            "stalls, UDP dropped": (
                report([*udp_dropped(), ok("tcp", hol=stalls(300.0))]),
                "warning",
            ),
            "stalls, UDP works": (report([ok("udp"), ok("tcp", hol=stalls(300.0))]), "info"),
        },
        {"no stalls": report([*udp_dropped(), ok("tcp", hol=NO_STALL)])},
    ),
    Rule(
        "symmetric-nat",
        {
            "mapping per destination, no relay": (
                report([ok("udp", kind="stun")], nat=nat("address-and-port-dependent")),
                "warning",
            ),
            "mapping per destination, relay works": (
                report([ok("udp")], nat=nat("address-dependent")),
                "info",
            ),
        },
        {
            "endpoint-independent": report([ok("udp")], nat=nat("endpoint-independent")),
            "unknown (no OTHER-ADDRESS, as pion/turn)": report([ok("udp")], nat=nat("unknown")),
            "not run": report([ok("udp")]),
        },
    ),
    Rule(
        "interrupted",
        {
            "Ctrl-C": (
                report([ok("udp"), failed("tcp", "interrupted")], interrupted=True),
                "warning",
            )
        },
        {"ran to the end": report(OPEN)},
    ),
    Rule(
        "incomplete",
        {
            "cut, something works": (
                report([ok("udp"), failed("tcp", "deadline", message="deadline during connect")]),
                "warning",
            ),
            "cut, nothing usable": (
                report([failed("udp", "deadline", message="deadline during binding")]),
                "critical",
            ),
        },
        {
            "ran to the end": report(OPEN),
            "Ctrl-C (interrupted says it)": report(
                [failed("udp", "interrupted")], interrupted=True
            ),
        },
    ),
    Rule(
        "agent-local",
        {"no socket": (report([failed("udp", "local"), ok("tcp")]), "warning")},
        {"sockets opened": report(OPEN)},
    ),
    Rule(
        "nothing-tested",
        {
            "no path at all": (report([]), "warning"),
            "only paths lkice could not test": (report([failed("tls", "not_tested")]), "warning"),
        },
        {
            "one path tested": report([failed("tls", "not_tested"), ok("udp")]),
            "signaling tried": signal_report(make_signal()),
        },
    ),
    Rule(
        "path-failed",
        {
            "one server of two does not answer": (
                report([*OPEN, failed("udp", "udp_no_response", host=US, ip="203.0.113.20")]),
                "warning",
            )
        },
        {
            "the failure has its own finding (udp-blocked)": report([*udp_dropped(), ok("tcp")]),
            "the failure is not evidence (not tested)": report(
                [*OPEN, failed("udp", "not_tested", message="not tested: x", host=US)]
            ),
        },
    ),
    Rule(
        "signal-ok",
        {"joined": (signal_report(make_signal(), OPEN), "info")},
        {"refused": signal_report(make_signal(False, "connect_refused", "refused"))},
    ),
    Rule(
        "turn-ok",
        {"relay allocated": (report([ok("tcp")]), "info")},
        {
            "STUN only": report([ok("udp", kind="stun")]),
            "refused": report([failed("udp", "auth_rejected")]),
        },
    ),
    Rule(
        "sfu-direct-ok",
        {"direct UDP": (report([ok("udp", kind="sfu", host="lk.example.com")]), "info")},
        {
            "relayed only": report(
                [ok("udp", kind="sfu", relay="turn:turn.eu.example.com:3478?transport=udp")]
            ),
            "failed": report([failed("udp", "udp_no_response", kind="sfu")]),
        },
    ),
    Rule(
        "sfu-ice-tcp-ok",
        {"ICE/TCP": (report([ok("tcp", kind="sfu", host="lk.example.com", port=7881)]), "info")},
        {"direct UDP only": report([ok("udp", kind="sfu", host="lk.example.com")])},
    ),
    Rule(
        "sfu-relay-ok",
        {
            "relayed": (
                report(
                    [ok("udp", kind="sfu", relay="turn:turn.eu.example.com:3478?transport=udp")]
                ),
                "info",
            )
        },
        {"direct only": report([ok("udp", kind="sfu", host="lk.example.com")])},
    ),
    Rule(
        "sfu-data-untested",
        {
            "one participant (a single token)": (
                report([sfu_session(1, "not_tested"), sfu_session(1, "not_tested", relay=True)]),
                "info",
            )
        },
        {
            "two participants": report([sfu_session(2, "measured")]),
            "an older report, without the session's record": report(
                [ok("udp", kind="sfu", host="lk.example.com")]
            ),
            "one participant, the session failed": report(
                [
                    {
                        **failed("udp", "connect_timeout", kind="sfu"),
                        "sfu": sfu_record(1, "not_tested"),
                    }
                ]
            ),
        },
    ),
]


def _proxy_case(message: str) -> Builder:
    return report([ok("udp"), failed("tls", "proxy", proxy=PROXY, message=message)])


def _relay_broken(transport: str) -> dict[str, Any]:
    p = failed(transport, "relay_failed", message="the TURN relay carried nothing: ...")
    p["error"]["phase"] = "quality"
    return p


RULES += [
    Rule(
        "proxy-silent",
        {
            "CONNECT never answered": (
                _proxy_case(
                    f"the proxy {PROXY} accepted the connection but did not answer CONNECT "
                    "turn.eu.example.com:443 within 5 s"
                ),
                "warning",
            )
        },
        {"the proxy unreachable (proxy-unreachable)": _proxy_case(f"proxy {PROXY} unreachable")},
    ),
    Rule(
        "proxy-broken",
        {
            "not HTTP": (
                _proxy_case(f"the proxy {PROXY} is broken: it is not an HTTP proxy ('SSH-2.0')"),
                "warning",
            )
        },
        {"a policy refusal (proxy-policy)": _proxy_case(f"the proxy {PROXY} refused CONNECT")},
    ),
    Rule(
        "proxy-auth-unsupported",
        {
            "NTLM only": (
                _proxy_case(
                    f"the proxy {PROXY} accepts only negotiate, ntlm logins (407 Denied), which "
                    "lkice cannot do (Basic only): the password is probably fine"
                ),
                "warning",
            )
        },
        {
            "a rejected Basic login (proxy-auth-rejected)": _proxy_case(
                f"the proxy {PROXY} rejected the credentials (407 Denied)"
            )
        },
    ),
    Rule(
        "udp-refused",
        {
            "ICMP port unreachable, TCP works": (
                report([failed("udp", "udp_refused"), ok("tcp")]),
                "warning",
            )
        },
        {
            "silent UDP (udp-blocked)": report([*udp_dropped(), ok("tcp")]),
            "UDP works": report(OPEN),
        },
    ),
    Rule(
        "region-failed",
        {
            "a region refused": (
                lambda: {
                    **make_report(OPEN, signal=make_signal()),
                    "regions": [
                        {
                            "region": "us",
                            "url": "wss://lk-us.example.com",
                            "distance": None,
                            "signal": make_signal(False, "connect_refused", "TCP connect refused"),
                        }
                    ],
                },
                "warning",
            )
        },
        {
            "regions answered": lambda: {
                **make_report(OPEN, signal=make_signal()),
                "regions": [
                    {
                        "region": "us",
                        "url": "wss://lk-us.example.com",
                        "distance": None,
                        "signal": make_signal(),
                    }
                ],
            },
            "a region cut by the deadline": lambda: {
                **make_report(OPEN, signal=make_signal()),
                "regions": [
                    {
                        "region": "us",
                        "url": "wss://lk-us.example.com",
                        "distance": None,
                        "signal": make_signal(False, "deadline", "overall deadline reached"),
                    }
                ],
            },
        },
    ),
    Rule(
        "relay-loss",
        {
            "relay echo over TCP loses 20 %": (
                report([failed("udp", "udp_no_response"), ok("tcp", loss=0.2)]),
                "warning",
            )
        },
        {
            "the same loss over UDP is the network's (high-loss)": report([ok("udp", loss=0.2)]),
            "no loss": report(OPEN),
        },
    ),
    Rule(
        "relay-failed",
        {
            "the only relay carries nothing": (report([_relay_broken("udp")]), "critical"),
            "another relay works": (report([_relay_broken("udp"), ok("tcp")]), "warning"),
        },
        {"relays work": report(OPEN), "UDP dropped": report([*udp_dropped(), ok("tcp")])},
    ),
]


def _shared(hol: dict[str, Any], count: int = 3, longest: float = 150.0) -> dict[str, Any]:
    """A hol block with ``count`` stalls set aside as holds UDP had at the same moments."""
    return {**hol, "shared": count, "shared_max_ms": longest, "shared_windows": []}


def _kernel(p: dict[str, Any], *, repaired: bool) -> dict[str, Any]:
    """A stream path whose trains carry the kernel's counters: a repair or none."""
    tcp = {
        "retransmits": 3,
        "spurious": 1 if repaired else 3,
        "out_of_order": 1 if repaired else 0,
        "rtt_ms": 40.0,
        "rttvar_ms": 2.0,
        "connections": 1,
    }
    for name in ("quality", "relay_quality"):
        if p.get(name):
            p[name]["tcp"] = tcp
    return p


def _busy(max_ms: float, total_ms: float, own_ms: float = 0.0, *, outside: float = 0.0) -> Builder:
    """An open network measured by an agent whose event loop stalled as given while the trains
    ran (its own thread computing for ``own_ms`` of it), and for ``outside`` ms besides."""

    def build() -> Report:
        r = make_report(OPEN)
        during = {"stalls": 4, "max_ms": max_ms, "total_ms": total_ms, "own_ms": own_ms}
        r["agent"]["loop_stalls"] = {
            "stalls": 4 + (1 if outside else 0),
            "max_ms": max(max_ms, outside),
            "threshold_ms": 10.0,
            "total_ms": total_ms + outside,
            "own_ms": own_ms + outside,
            "during_trains": {**during, "window_ms": 5000.0},
        }
        r["settings"] = {"quality": {"interval_ms": 20.0, "duration_s": 5.0}}
        return r

    return build


RULES += [
    Rule(
        "shared-hold",
        {
            "TCP held when UDP was": (
                report([ok("udp"), ok("tcp", hol=_shared(NO_STALL))]),
                "info",
            )
        },
        {
            "real stalls only": report([*udp_dropped(), ok("tcp", hol=stalls(300.0))]),
            "no stalls": report(OPEN),
        },
    ),
    Rule(
        "stream-hold",
        {
            "stalls, the kernel repaired nothing, UDP works": (
                report([ok("udp"), _kernel(ok("tcp", hol=stalls(300.0)), repaired=False)]),
                "info",
            ),
            "stalls, the kernel repaired nothing, UDP dropped": (
                report([*udp_dropped(), _kernel(ok("tcp", hol=stalls(300.0)), repaired=False)]),
                "warning",
            ),
        },
        {
            "the kernel repaired": report(
                [*udp_dropped(), _kernel(ok("tcp", hol=stalls(300.0)), repaired=True)]
            ),
            "no kernel counts": report([*udp_dropped(), ok("tcp", hol=stalls(300.0))]),
            "no stalls": report([ok("udp"), _kernel(ok("tcp", hol=NO_STALL), repaired=False)]),
        },
    ),
    Rule(
        "agent-busy",
        {
            "one 120 ms stall": (_busy(120.0, 130.0), "info"),
            "stalled for 20 % of the train": (_busy(80.0, 1000.0), "info"),
            "its own work": (_busy(80.0, 300.0, own_ms=290.0), "info"),
        },
        {
            "a few short stalls": _busy(20.0, 45.0),
            "not measured": report(OPEN),
            "stalls only outside the trains (start-up)": _busy(0.0, 0.0, outside=400.0),
        },
    ),
]

FIRES = [(r.fid, name, build, sev) for r in RULES for name, (build, sev) in r.fires.items()]
SILENT = [(r.fid, name, build) for r in RULES for name, build in r.silent.items()]


def findings_of(build: Builder) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    return run(build())


@pytest.mark.parametrize(
    ("fid", "name", "build", "severity"), FIRES, ids=[f"{f}: {n}" for f, n, _, _ in FIRES]
)
def test_fires_on_its_evidence(fid: str, name: str, build: Builder, severity: str) -> None:
    findings, by_id = findings_of(build)
    assert fid in by_id, [f["id"] for f in findings]
    assert by_id[fid]["severity"] == severity, by_id[fid]
    assert by_id[fid]["evidence"], "a finding always shows what it rests on"


@pytest.mark.parametrize(("fid", "name", "build"), SILENT, ids=[f"{f}: {n}" for f, n, _ in SILENT])
def test_silent_without_its_evidence(fid: str, name: str, build: Builder) -> None:
    _, by_id = findings_of(build)
    assert fid not in by_id, by_id.get(fid)


def test_every_finding_id_of_the_docs_has_a_rule_here() -> None:
    """docs/findings.md's evidence table and this file name the same ids."""
    import re
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "findings.md").read_text()
    table = docs.split("## Finding ids", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z0-9-]+)`", line.split("|")[1]))
    tested = {r.fid for r in RULES}
    assert documented, "no ids found in docs/findings.md"
    assert tested == documented, (tested - documented, documented - tested)


# -- wording: what each claim may say, given what was measured ---------------------------------


def test_only_tls_says_blocked_only_for_network_failures() -> None:
    _, by_id = run(
        make_report([*udp_dropped(), failed("tcp", "connect_timeout"), ok("tls", port=443)])
    )
    assert "blocked" in by_id["only-tls"]["summary"]
    # TCP reached its server and got no STUN answer: tried, not blocked.
    _, by_id = run(
        make_report([*udp_dropped(), failed("tcp", "tcp_no_response"), ok("tls", port=443)])
    )
    summary = by_id["only-tls"]["summary"]
    assert "blocked" not in summary, summary
    assert "tried and did not" in summary, summary


def test_only_tcp_says_blocked_only_when_tls_failed_at_the_network_level() -> None:
    _, by_id = run(
        make_report([*udp_dropped(), ok("tcp"), failed("tls", "connect_timeout", port=443)])
    )
    assert "blocked" in by_id["only-tcp"]["summary"]
    # The TLS path reached its server (the certificate was rejected): not blocked by anyone.
    _, by_id = run(make_report([*udp_dropped(), ok("tcp"), rejected_certificate("expired")]))
    summary = by_id["only-tcp"]["summary"]
    assert "blocked" not in summary, summary
    assert "gets through" not in summary, summary
    assert "tls-expired" in by_id


def test_an_expiry_names_which_certificate_is_out_of_date() -> None:
    """Judged against the run's own start (``started_at``), so a pasted report says the same."""
    leaf = rejected_certificate("expired")
    leaf["tls"]["not_after"] = "2025-06-01T00:00:00+00:00"  # before the run started
    _, by_id = run(make_report([ok("udp"), leaf]))
    assert by_id["tls-expired"]["summary"].startswith("The server's certificate has expired")
    assert "renew" in by_id["tls-expired"]["advice"]
    # The server's own certificate is within its dates: an intermediate of its chain expired.
    chain = rejected_certificate("expired")
    _, by_id = run(make_report([ok("udp"), chain]))
    assert "in the server's chain has expired" in by_id["tls-expired"]["summary"]
    assert "intermediate" in by_id["tls-expired"]["advice"]


def test_no_path_gives_firewall_advice_only_for_network_failures() -> None:
    paths = [
        failed("udp", "udp_no_response"),
        rejected_certificate("name_mismatch"),  # TCP 443 reached the server
    ]
    _, by_id = run(make_report(paths))
    advice = by_id["no-path"]["advice"]
    assert "outbound UDP port 3478" in advice
    assert "TCP port 443" not in advice  # it got through: nothing to open there
    assert "reached their server" in advice


def test_tcp_no_response_is_never_called_dropped() -> None:
    paths = [failed("tcp", "tcp_no_response"), failed("tls", "tcp_no_response")]
    _, by_id = run(make_report(paths))
    text = json.dumps(by_id)
    assert "silently drops" not in text
    assert "Ask IT to allow" not in by_id["no-path"]["advice"]
    assert "no STUN or TLS answer came" in by_id["no-path"]["summary"]
    assert "udp-blocked" not in by_id


def test_local_errors_are_this_computer_not_the_network() -> None:
    paths = [failed("udp", "local", kind="stun"), failed("udp", "local"), failed("tcp", "local")]
    _, by_id = run(make_report(paths))
    assert set(by_id) == {"agent-local"}, list(by_id)
    assert "says nothing about the network" in by_id["agent-local"]["impact"]
    assert by_id["agent-local"]["paths"] == [0, 1, 2]


# -- real runs -------------------------------------------------------------------------------


async def lkice_run(*targets: str, **options: Any) -> Report:
    """A whole diagnosis as ``lkice run`` makes it, schema-checked."""
    settings: dict[str, Any] = {
        "timeout": 2.0,
        "udp_timeout": 1.0,
        "deadline": 10.0,
        "quality_duration": 0.0,
        **options,
    }
    done = await diagnose(RunRequest(targets=targets, **settings), stop=asyncio.Event())
    data = plain(done.to_dict())
    validate_report(data)
    return data


def ids(report: Report) -> set[str]:
    return {f["id"] for f in report["findings"]}


def by_id(report: Report) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["findings"]}


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A bound UDP port that never answers, as behind a dropping firewall."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.asynccontextmanager
async def silent_tcp(hold: float = 5.0) -> AsyncIterator[int]:
    """A TCP port that accepts and never says anything (closed when the block ends)."""
    writers: list[asyncio.StreamWriter] = []

    def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_a_single_working_turns_uri_is_not_only_tls(
    turn_server: TurnLab, pki: LabPki
) -> None:
    data = await lkice_run(
        f"turns:127.0.0.1:{turn_server.tls_port}?transport=tcp",
        username=turn_server.user,
        credential=turn_server.password,
        ca_files=(str(pki.ca_file),),
    )
    assert [p["ok"] for p in data["paths"]] == [True]
    assert "only-tls" not in ids(data)
    assert data["verdict"] == "ok", data["findings"]


async def test_udp_and_tls_tried_tcp_not_is_not_only_tls(
    turn_server: TurnLab, pki: LabPki, silent_udp: int
) -> None:
    data = await lkice_run(
        f"turn:127.0.0.1:{silent_udp}?transport=udp",
        f"turns:127.0.0.1:{turn_server.tls_port}?transport=tcp",
        username=turn_server.user,
        credential=turn_server.password,
        ca_files=(str(pki.ca_file),),
    )
    assert [(p["transport"], p["ok"]) for p in data["paths"]] == [("udp", False), ("tls", True)]
    assert "only-tls" not in ids(data)
    assert "udp-blocked" in ids(data)  # that much was measured


async def test_every_path_reached_its_server_no_firewall_advice(
    turn_server: TurnLab, rogue_pki: LabPki, pki: LabPki
) -> None:
    """Wrong password (UDP and TCP), a certificate the client does not trust (TLS) and an HTTP
    server on a TURN port: every path got to a server, so no firewall is blamed."""
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(100)
            writer.write(reply)
            await writer.drain()
        writer.close()

    web = await asyncio.start_server(http, "127.0.0.1", 0)
    web_port = web.sockets[0].getsockname()[1]
    try:
        data = await lkice_run(
            f"turn:127.0.0.1:{turn_server.port}",  # UDP and TCP
            f"turn:127.0.0.1:{web_port}?transport=tcp",
            f"turns:127.0.0.1:{turn_server.tls_port}?transport=tcp",
            username=turn_server.user,
            credential="not-" + turn_server.password,
            ca_files=(str(rogue_pki.ca_file),),  # the lab's own CA is not trusted
        )
    finally:
        web.close()
        await web.wait_closed()
    kinds = sorted(p["error"]["kind"] for p in data["paths"])
    assert kinds == ["auth_rejected", "auth_rejected", "protocol", "tls_verify"], kinds
    found = by_id(data)
    assert found["no-path"]["severity"] == "critical"
    assert "Ask IT to allow" not in found["no-path"]["advice"]
    assert "not a firewall problem" in found["no-path"]["advice"]
    assert "credentials" in found
    for f in data["findings"]:
        assert "silently drops" not in f["summary"] + f["advice"], f
    assert data["verdict"] == "failed"


async def test_connected_but_never_answered_is_not_called_dropped() -> None:
    async with silent_tcp() as port:
        data = await lkice_run(
            f"turn:127.0.0.1:{port}?transport=tcp", username="u", credential="p", timeout=1.0
        )
    (p,) = data["paths"]
    assert p["error"]["kind"] == "tcp_no_response"
    assert p["timings_ms"]["connect"] is not None
    text = json.dumps(data["findings"])
    assert "silently drops" not in text
    assert "Ask IT to allow" not in by_id(data)["no-path"]["advice"]


async def test_plain_tcp_to_pions_tls_port_is_not_called_dropped(pion: TurnLab) -> None:
    """pion/turn swallows plain TCP on its TLS port: connected, never answered."""
    data = await lkice_run(
        f"turn:127.0.0.1:{pion.tls_port}?transport=tcp",
        username=pion.user,
        credential=pion.password,
        timeout=1.0,
    )
    (p,) = data["paths"]
    assert p["error"]["kind"] == "tcp_no_response"
    assert "silently drops" not in json.dumps(data["findings"])
    assert "TLS port" in by_id(data)["no-path"]["summary"]


@pytest.fixture
def busy_udp_port() -> Iterator[tuple[str, int]]:
    """A local UDP address already bound: a probe asked to send from it cannot (EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()


async def test_a_busy_local_port_is_agent_local_not_a_blocked_network(
    turn_server: TurnLab, busy_udp_port: tuple[str, int]
) -> None:
    from lkice.credentials import Secret, TurnCredentials
    from lkice.engine import EngineSettings
    from lkice.engine import run as engine_run
    from lkice.probe.path import ProbeSettings
    from lkice.uri import parse_ice_uri
    from lkice.verdict import conclude

    creds = TurnCredentials(Secret(turn_server.user), Secret(turn_server.password))
    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=1.0, timeout=2.0, credentials=creds, udp_local=busy_udp_port
        ),
        deadline=10.0,
    )
    uris = [f"stun:127.0.0.1:{turn_server.port}", f"turn:127.0.0.1:{turn_server.port}"]
    done = await engine_run([parse_ice_uri(u) for u in uris], settings)
    conclude(done)
    data = plain(done.to_dict())
    validate_report(data)
    kinds = {(p["transport"], p["kind"]): (p["error"] or {}).get("kind") for p in data["paths"]}
    assert kinds == {("udp", "stun"): "local", ("udp", "turn"): "local", ("tcp", "turn"): None}
    found = by_id(data)
    assert "agent-local" in found, list(found)
    assert "Address already in use" in " ".join(found["agent-local"]["evidence"])
    for claim in ("no-path", "udp-blocked", "only-tcp", "path-failed"):
        assert claim not in found, found[claim]


async def test_nothing_usable_at_the_deadline_is_critical(silent_udp: int) -> None:
    data = await lkice_run(f"stun:127.0.0.1:{silent_udp}", udp_timeout=5.0, deadline=1.0)
    (p,) = data["paths"]
    assert p["error"]["kind"] == "deadline"
    found = by_id(data)
    assert found["incomplete"]["severity"] == "critical"
    assert "no-path" not in found  # not called blocked
    assert "udp-blocked" not in found
    assert data["verdict"] == "failed"
    assert exit_status(Verdict(data["verdict"])) is ExitStatus.CRITICAL


async def test_signaling_unfinished_at_the_deadline_is_critical() -> None:
    from livekit import api

    key, secret = "APIevidence", secrets.token_urlsafe(32)
    token = (
        api.AccessToken(key, secret)
        .with_identity("evidence")
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    async with silent_tcp() as port:
        data = await lkice_run(f"ws://127.0.0.1:{port}", token=token, timeout=5.0, deadline=1.0)
    assert data["signal"]["error"]["kind"] == "deadline"
    found = by_id(data)
    assert found["signal-incomplete"]["severity"] == "critical"
    assert "signal-failed" not in found
    assert data["verdict"] == "failed"


def test_a_relay_that_carries_nothing_is_never_network_loss() -> None:
    _, by_id = run(make_report([_relay_broken("tcp")]))
    text = json.dumps(by_id)
    assert "relay-failed" in by_id
    assert "high-loss" not in by_id
    assert "Ask IT to allow" not in text
    assert "Wi-Fi" not in text


def test_an_icmp_refusal_is_never_called_blocked() -> None:
    _, by_id = run(make_report([failed("udp", "udp_refused"), ok("tcp")]))
    assert "udp-blocked" not in by_id
    assert "blocked" not in by_id["udp-refused"]["summary"]


def test_relay_echo_loss_over_tcp_is_not_called_this_networks() -> None:
    _, by_id = run(make_report([failed("udp", "udp_no_response"), ok("tcp", loss=0.2)]))
    assert "relay-loss" in by_id
    assert "high-loss" not in by_id
    _, by_id = run(make_report([ok("udp", loss=0.2)]))
    assert "high-loss" in by_id
    assert "relay-loss" not in by_id


def test_a_reset_after_connecting_is_never_called_not_a_firewall() -> None:
    """A reset on the ClientHello or the first STUN request is what an application-aware
    firewall does as often as a server: the advice keeps IT in it."""
    reset_tls = failed(
        "tls",
        "tls_handshake",
        message="TLS handshake with 203.0.113.10:443 failed: the connection was closed or reset "
        "(ConnectionResetError)",
    )
    reset_tcp = failed(
        "tcp", "connection_closed", message="203.0.113.10:3478 closed the connection ([Errno 104])"
    )
    _, by_id = run(make_report([reset_tls, reset_tcp]))
    advice = by_id["no-path"]["advice"]
    assert "not a firewall problem" not in advice
    assert "ask IT" in advice
    assert "reset right after connecting" in by_id["no-path"]["summary"]


def test_another_servers_other_ca_is_no_proof_of_interception() -> None:
    """LiveKit's certificate from a public CA and the TURN server's from the operator's private
    CA: two servers, two CAs, no middlebox. Interception is hedged unless the same server showed
    another issuer on a path that worked."""
    signal_ok = make_signal()
    signal_ok["tls"] = {
        "version": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "subject": "CN=lk.example.com",
        "issuer": PUBLIC_CA,
        "verified": True,
    }
    private = rejected_certificate("untrusted_issuer", issuer="CN=Acme Private CA")
    _, by_id = run(make_report([ok("udp"), private], signal=signal_ok))
    summary = by_id["tls-interception"]["summary"]
    assert not summary.startswith("Something on this network intercepts")
    assert "unless" in summary
    # The same server showing another issuer where it worked: that is interception.
    same_host_ok = ok("tls", port=5349, tls_issuer=PUBLIC_CA)
    _, by_id = run(make_report([same_host_ok, private]))
    assert by_id["tls-interception"]["summary"].startswith("Something on this network intercepts")


def test_agent_busy_names_what_held_the_loop() -> None:
    """The same stall time, told apart by the CPU lkice's own thread used over it: waiting
    for a processor is this computer's load; computing is lkice's own work (never the user's
    other programs, and nothing about calls)."""
    s = run(_busy(80.0, 300.0, own_ms=20.0)())[1]["agent-busy"]
    o = run(_busy(80.0, 300.0, own_ms=290.0)())[1]["agent-busy"]
    assert s["summary"].startswith("This computer was too busy")
    assert "Close programs" in s["advice"]
    assert o["summary"].startswith("lkice itself could not keep up")
    assert "Close programs" not in o["advice"]
    assert "nothing about the network" in o["impact"]
    for f in (s, o):
        assert "300 ms" in f["summary"]
        assert "computed for" in f["evidence"][0]
