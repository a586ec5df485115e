"""Findings: a pure rules engine that reads a report (``Report.to_dict()`` shape) and says what
works, what does not, what a call will feel like and what to ask IT (or the operator) for.

No I/O: input is the report dict, output plain dicts::

    {"id", "severity", "summary", "impact", "evidence": [str], "advice", "paths": [int]}

sorted critical, warning, info (stable: rules keep their order within a severity).

Honesty rules, applied everywhere:

- only what the report measured is claimed; a path the agent could not exercise (``not_tested``,
  or a path cut off by the deadline or Ctrl-C) is never evidence of failure;
- evidence names the path (kind, server, address, transport) and the figure with its sample count;
- round trips are compared as measured: a relay echo (data through the TURN relay and back to a
  second allocation of the agent's) and an SFU data round trip (A -> SFU -> B -> SFU -> A, both
  participants on this machine) cross this network twice each way, so the RTT limit applied to
  them is twice the client-to-server limit, and the evidence says so;
- loss is judged per crossing of this network (``crossings``: 2 for a Binding, 4 for an echo),
  with its 95 % interval and probe count, and on UDP also pooled over every train of the run
  that worked (``lkice.quality.pooled_loss``), so that the best of noisy trains cannot hide a
  loss the network has;
- nothing secret is echoed (tokens and ``key=value`` secrets are masked in quoted messages).

Severity (see ``docs/findings.md`` for the table):

- critical: calls will not connect (no path, signaling blocked, credentials or token refused), or
  the measured quality is past the point where the field calls a call bad (loss >= 10 %, Daily
  "bad"; RTT >= 600 ms, Daily "bad", one way already past ITU-T G.114's 150 ms transparent limit
  twice over; MOS < 2.58, ITU-T G.107/G.109 R < 50 "not recommended"). A quality figure can only
  be critical from a train of at least ``MIN_SAMPLES`` probes, and only on the transport class
  the client will actually use (the best one that works: UDP, then TCP, then TLS).
- warning: calls connect but something is worse than the field's targets (RTT > 100 ms, jitter
  > 30 ms, loss > 1 %: Microsoft Teams client-to-edge targets, the same jitter and loss levels
  Twilio warns at; MOS < 3: Twilio), UDP is blocked (media falls back to TURN over TCP/TLS, with
  extra latency and head-of-line stalls), a server advertises something that does not answer.
  Jitter is never critical: no field source gives a failing jitter level, and its effect on the
  call is already in the MOS (the E-model's effective latency adds twice the jitter).
- info: what works, and problems on a transport the client will not use here (it prefers a
  better one that works), which matter only if that better one breaks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lkice.errors import UsageError
from lkice.quality import loss_each_way, pooled_loss, same_loss, wilson_interval
from lkice.report.read import (
    ErrorDoc,
    ErrorKindName,
    HolDoc,
    PathDoc,
    QualityDoc,
    ReportDoc,
    TlsDoc,
)
from lkice.report.views import ms as _ms
from lkice.report.views import percent
from lkice.uri import parse_ice_uri

__all__ = ["SEVERITIES", "evaluate"]

SEVERITIES = ("critical", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
CLASSES = ("udp", "tcp", "tls")

# Thresholds (sources in the module docstring and docs/findings.md).
RTT_WARN_MS = 100.0  # Microsoft Teams, client to edge
RTT_CRIT_MS = 600.0  # Daily call quality: "bad" RTT
JITTER_WARN_MS = 30.0  # Teams, Twilio
LOSS_WARN = 0.01  # Teams (< 1 %), Twilio (> 1 % per sample)
LOSS_CRIT = 0.10  # Daily call quality: "bad" loss
MOS_WARN = 3.0  # Twilio
MOS_CRIT = 2.58  # ITU-T G.107 MOS at R = 50, ITU-T G.109 "not recommended" below


@dataclass(frozen=True)
class Limits:
    """The quality thresholds in force: the field's (above) unless the report's
    ``settings.thresholds`` (a probe definition's [thresholds]) set their own."""

    rtt_warn_ms: float = RTT_WARN_MS
    rtt_crit_ms: float = RTT_CRIT_MS
    jitter_warn_ms: float = JITTER_WARN_MS
    loss_warn: float = LOSS_WARN
    loss_crit: float = LOSS_CRIT
    mos_warn: float = MOS_WARN
    mos_crit: float = MOS_CRIT
    custom: frozenset[str] = frozenset()

    def source(self, key: str, field_source: str) -> str:
        """Who set a threshold, as the evidence names it."""
        return "this probe's threshold" if key in self.custom else field_source


THRESHOLD_KEYS = tuple(k for k in Limits.__dataclass_fields__ if k != "custom")


def limits_of(report: ReportDoc) -> Limits:
    given = (report.get("settings") or {}).get("thresholds") or {}
    values = {
        k: float(v)
        for k, v in given.items()
        if k in THRESHOLD_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return Limits(**values, custom=frozenset(values))


MIN_SAMPLES = 50  # fewer probes: a rough figure, never critical on its own

# Error kinds that say the traffic did not get an answer at the network level.
TIMEOUT_KINDS = frozenset({"udp_no_response", "connect_timeout"})
# TCP (or TLS) connected, then no STUN answer: the network let the connection through, so this
# is never called filtered (a TLS port spoken to in plain TCP, pion/turn's way; or a middlebox
# that holds the data). Dead for an advertised URL, but no firewall claim.
SILENT_KINDS = frozenset({"tcp_no_response", "server_silent"})
UNREACHABLE_KINDS = TIMEOUT_KINDS | {"connect_refused", "udp_refused", "network_unreachable"}
# Kinds that are not evidence of anything about the network.
NOT_EVIDENCE_KINDS = frozenset({"not_tested", "deadline", "interrupted", "local"})
LIVEKIT_UDP_RANGE = "50000-60000"

Finding = dict[str, Any]
Path = PathDoc
TrainSource = Literal["quality", "relay_quality"]
TRAINS: tuple[TrainSource, ...] = ("quality", "relay_quality")
# (index, path, which train, its figures, its hol figures)
_Hit = tuple[int, Path, TrainSource, QualityDoc, HolDoc]


# --------------------------------------------------------------------------- helpers


def _kind(p: Path) -> ErrorKindName | None:
    err = p.get("error")
    return None if err is None else err.get("kind")


def _message(err: ErrorDoc | None) -> str:
    return _mask(str((err or {}).get("message") or ""))


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SECRET_PARAM = re.compile(
    r"(?i)\b(access_token|token|secret|credential|password|api_secret)=([^&\s'\"]+)"
)


def _mask(text: str) -> str:
    """Quoted messages may come from servers: never let a token or secret through."""
    text = _JWT.sub("<token>", text)
    return _SECRET_PARAM.sub(r"\1=<redacted>", text)


def _settled_by_redirect(p: Path, paths: Sequence[Path]) -> bool:
    if _kind(p) != "try_alternate":
        return False
    return any(q.get("ok") and q.get("redirected_from") == p.get("address") for q in paths)


def _evidential(p: Path, paths: Sequence[Path]) -> bool:
    """A path whose outcome says something: it worked, or it failed in a way that was tested."""
    if p.get("ok"):
        return True
    kind = _kind(p)
    if kind is None or kind in NOT_EVIDENCE_KINDS:
        return False
    if _message(p.get("error")).lower().startswith("not tested"):
        return False
    return not _settled_by_redirect(p, paths)


def _host(server: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``."""
    if server.startswith("["):
        return server[1 : server.find("]")]
    return server.rsplit(":", 1)[0] if ":" in server else server


def _port(server: str | None) -> str | None:
    """The port of ``host:port`` (ASCII digits only: a pasted report may hold anything)."""
    if not server or ":" not in server:
        return None
    port = str(server).rsplit(":", 1)[1]
    return port if port.isascii() and port.isdigit() and len(port) <= 5 else None


def _url_port(url: str) -> str:
    """The port of a LiveKit URL as given (its scheme's default when none is written)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "443"
    if port:
        return str(port)
    return "80" if parts.scheme in ("ws", "http") else "443"


def _ip(p: Path) -> str | None:
    address = p.get("address")
    return None if not address else _host(str(address))


def _label(p: Path) -> str:
    """How a path is named in evidence: kind, server, transport (and the address when it says
    more than the name)."""
    transport = str(p.get("transport", "")).upper()
    server = str(p.get("server"))
    kind = p.get("kind")
    if kind == "sfu":
        relay = p.get("relay")
        if relay:
            text = f"SFU {server} relayed via {relay} ({transport} leg)"
        elif p.get("transport") == "tcp":
            text = f"SFU {server} ICE/TCP"
        else:
            text = f"SFU {server} direct UDP"
    else:
        text = f"{str(kind).upper()} {server} over {transport}"
    address = p.get("address")
    if address and address != server and kind != "sfu":
        text += f" ({address})"
    if p.get("proxy"):
        text += f" through the web proxy {p['proxy']}"
    return text


def _path_evidence(p: Path) -> str:
    if p.get("ok"):
        return f"{_label(p)}: works"
    return f"{_label(p)}: {_message(p.get('error'))}"


def _pct(value: float) -> str:
    return percent(value, space=True)


def _join(items: Iterable[str]) -> str:
    seen = list(dict.fromkeys(i for i in items if i))
    if len(seen) <= 1:
        return "".join(seen)
    return ", ".join(seen[:-1]) + " and " + seen[-1]


def _finding(
    fid: str,
    severity: str,
    summary: str,
    impact: str,
    evidence: Iterable[str],
    advice: str,
    paths: Iterable[int] = (),
) -> Finding:
    return {
        "id": fid,
        "severity": severity,
        "summary": summary,
        "impact": impact,
        "evidence": list(dict.fromkeys(evidence)),
        "advice": advice,
        "paths": sorted(set(paths)),
    }


def _max_severity(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


@dataclass
class _Ctx:
    report: ReportDoc
    paths: list[Path]
    indexed: list[tuple[int, Path]]  # evidential paths only

    @property
    def livekit(self) -> bool:
        return self.report.get("signal") is not None or any(
            p.get("kind") == "sfu" for p in self.paths
        )

    def of(self, transport: str | None = None, kinds: Sequence[str] = ()) -> list[tuple[int, Path]]:
        return [
            (i, p)
            for i, p in self.indexed
            if (transport is None or p.get("transport") == transport)
            and (not kinds or p.get("kind") in kinds)
        ]

    def works(self, transport: str) -> bool:
        """Media can flow over this transport class: a TURN allocation or an SFU session over
        it worked (a STUN Binding alone proves reachability, not a media path)."""
        return any(p.get("ok") for _, p in self.of(transport, ("turn", "sfu")))

    def reaches(self, transport: str) -> bool:
        """Something answered over this transport class (STUN counts)."""
        return any(p.get("ok") for _, p in self.of(transport))

    def preferred(self) -> str | None:
        """The transport class the client will use: the best one that works."""
        for c in CLASSES:
            if self.works(c) or (
                c == "udp" and self.reaches(c) and not self.of(c, ("turn", "sfu"))
            ):
                return c
        return None

    def any_ok(self) -> bool:
        return any(p.get("ok") for _, p in self.indexed)

    def signal_hosts(self) -> list[str]:
        signal = self.report.get("signal")
        if not signal:
            return []
        url = str(signal.get("url") or "")
        rest = url.split("://", 1)[-1].split("/", 1)[0]
        return [_host(rest) if ":" in rest else rest] if rest else []


def _ports_by_proto(items: Iterable[tuple[int, Path]]) -> dict[str, dict[str, list[str]]]:
    """{"UDP"|"TCP": {port: [host (ip), ...]}} of the given paths, for firewall advice."""
    out: dict[str, dict[str, list[str]]] = {}
    for _, p in items:
        proto = "UDP" if p.get("transport") == "udp" else "TCP"
        if p.get("kind") == "sfu":
            continue  # the SFU's own ports are named separately
        port = _port(p.get("address")) or _port(p.get("server"))
        if port is None:
            continue
        host = _host(str(p.get("server")))
        ip = _ip(p)
        who = f"{host} ({ip})" if ip and ip != host else host
        out.setdefault(proto, {}).setdefault(port, [])
        if who not in out[proto][port]:
            out[proto][port].append(who)
    return out


def _open_rules(ports: dict[str, dict[str, list[str]]]) -> list[str]:
    rules = []
    for proto in ("UDP", "TCP"):
        for port, hosts in sorted(ports.get(proto, {}).items(), key=lambda kv: int(kv[0])):
            rules.append(f"outbound {proto} port {port} to {_join(hosts)}")
    return rules


def _sfu_udp_rule(ctx: _Ctx) -> str | None:
    if not ctx.livekit:
        return None
    hosts = ctx.signal_hosts() or [
        _host(str(p.get("server"))) for p in ctx.paths if p.get("kind") == "sfu"
    ]
    if not hosts:
        return None
    return (
        f"outbound UDP {LIVEKIT_UDP_RANGE} to the LiveKit SFU {_join(hosts)} (LiveKit's default "
        "ICE/UDP port range; the operator can confirm the configured range)"
    )


# --------------------------------------------------------------------------- rules


def _rule_interrupted(ctx: _Ctx) -> list[Finding]:
    out = []
    cut = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) in ("deadline", "interrupted")]
    if ctx.report.get("interrupted"):
        out.append(
            _finding(
                "interrupted",
                "warning",
                "The test was stopped before it finished, so these results are incomplete.",
                "Paths that had not finished are neither counted as working nor as failing; the "
                "quality figures cover only the part of the run that completed.",
                [f"{len(cut)} of {len(ctx.paths)} paths did not finish"]
                + [_path_evidence(p) for _, p in cut],
                "Run the test again and let it finish (it takes a few seconds).",
                [i for i, _ in cut],
            )
        )
    elif cut:
        # Nothing usable within the time limit is the answer "no usable path" (exit 2), but
        # only that: the unfinished paths are not called blocked.
        usable = any(p.get("ok") for p in ctx.paths)
        out.append(
            _finding(
                "incomplete",
                "warning" if usable else "critical",
                f"{len(cut)} of {len(ctx.paths)} paths did not finish before the overall time "
                "limit, so the results are incomplete."
                if usable
                else f"No path worked within the overall time limit: {len(cut)} of "
                f"{len(ctx.paths)} paths had not finished when it was reached.",
                "Those paths are neither counted as working nor as failing."
                if usable
                else "Within this time no call could have connected; whether the unfinished "
                "paths would have worked later is not known from this run.",
                [_path_evidence(p) for _, p in cut],
                "Run the test again with a longer deadline (--deadline).",
                [i for i, _ in cut],
            )
        )
    return out


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


def _rule_signal(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or signal.get("ok"):
        return []
    err = signal.get("error") or {}
    kind = str(err.get("kind") or "")
    if kind in ("proxy", "tls_verify", "token_rejected", "not_tested"):
        return []  # their own rules
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


def _rule_proxy(ctx: _Ctx) -> list[Finding]:
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


def _canonical(url: str) -> str | None:
    try:
        return str(parse_ice_uri(url))
    except UsageError:
        return None


def _advertised(ctx: _Ctx) -> list[str]:
    signal = ctx.report.get("signal")
    if not signal:
        return []
    urls: list[str] = []
    for entry in signal.get("ice_servers") or []:
        urls.extend(str(u) for u in entry.get("urls") or [])
    return urls


def _paths_for(ctx: _Ctx, url: str) -> list[tuple[int, Path]]:
    canon = _canonical(url)
    if canon is None:
        return []
    return [
        (i, p)
        for i, p in ctx.indexed
        if p.get("kind") in ("stun", "turn") and _canonical(str(p.get("uri") or "")) == canon
    ]


def _same_host_answers(ctx: _Ctx, dead: Sequence[tuple[int, Path]]) -> list[tuple[int, Path]]:
    hosts = {_host(str(p.get("server"))) for _, p in dead}
    ips = {ip for _, p in dead if (ip := _ip(p))}
    dead_ids = {i for i, _ in dead}
    return [
        (i, p)
        for i, p in ctx.indexed
        if i not in dead_ids
        and p.get("ok")
        and p.get("kind") in ("stun", "turn")
        and not p.get("proxy")  # through the web proxy says nothing of the server's own ports
        and (_host(str(p.get("server"))) in hosts or _ip(p) in ips)
    ]


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


# ---- quality


@dataclass(frozen=True)
class _Measure:
    index: int
    path: Path
    source: TrainSource
    q: QualityDoc

    @property
    def legs(self) -> int:
        """How many times a round trip crosses this network's leg each way."""
        return 2 if self.source == "relay_quality" or self.path.get("kind") == "sfu" else 1

    @property
    def crossings(self) -> int:
        """How many times a probe crosses this network (``crossings`` in the report; reports
        from before it: 2 per leg, there and back)."""
        value = self.q.get("crossings")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return 2 * self.legs

    @property
    def lost(self) -> int | None:
        received = self.q.get("received")
        if not isinstance(received, int) or not 0 <= received <= self.samples:
            return None
        return self.samples - received

    @property
    def what(self) -> str:
        if self.source == "relay_quality":
            return "relay echo (data through the TURN relay and back)"
        if self.path.get("kind") == "sfu":
            return "data round trip through the SFU"
        return "round trip to the server"

    @property
    def rtt(self) -> float | None:
        rtt = self.q.get("rtt_ms") or {}
        value = rtt.get("p50")
        return None if value is None else float(value)

    @property
    def samples(self) -> int:
        return int(self.q.get("samples") or 0)

    def count(self) -> str:
        received = self.q.get("received")
        extra = f", {received} answered" if received is not None else ""
        return f"{self.samples} probes{extra}"

    def head(self) -> str:
        return f"{_label(self.path)}, {self.what}"


def _measures(ctx: _Ctx, transport: str, media: bool) -> list[_Measure]:
    """One measurement per working path of the class: the media path (relay echo) when
    ``media``, else the single-leg round trip where there is one."""
    out = []
    for i, p in ctx.of(transport):
        if not p.get("ok"):
            continue
        order: tuple[TrainSource, ...] = TRAINS[::-1] if media else TRAINS
        for source in order:
            q = p.get(source)
            if q and q.get("samples"):
                out.append(_Measure(i, p, source, q))
                break
    if media and any(m.path.get("kind") != "stun" for m in out):
        # A STUN Binding is not the media path: judge media on the paths that carry it.
        out = [m for m in out if m.path.get("kind") != "stun"]
    return out


def _best(measures: Sequence[_Measure]) -> _Measure | None:
    def key(m: _Measure) -> tuple[float, float]:
        mos = m.q.get("mos")
        rtt = m.rtt
        return (
            -(float(mos) if mos is not None else 0.0),
            (rtt / m.legs) if rtt is not None else float("inf"),
        )

    return min(measures, key=key) if measures else None


def _cap(severity: str, m: _Measure | int, preferred: bool) -> str:
    """Full severity only on the class the client will use; critical only from MIN_SAMPLES
    probes or more (``m``: the measure, or the probe count)."""
    if not preferred:
        return "info"
    samples = m if isinstance(m, int) else m.samples
    if severity == "critical" and samples < MIN_SAMPLES:
        return "warning"
    return severity


def _interval(low: float, high: float) -> str:
    return f"95 % interval {low * 100:.1f}-{high * 100:.1f} %"


def _loss_interval(m: _Measure) -> str:
    """The Wilson 95 % interval of a train's loss, converted per crossing ("" without counts)."""
    lost = m.lost
    if lost is None or m.samples <= 0:
        return ""
    low, high = wilson_interval(lost, m.samples)
    return _interval(loss_each_way(low, m.crossings), loss_each_way(high, m.crossings)) + "; "


def _train_counts(m: _Measure) -> tuple[int, int, int] | None:
    """(samples, received, crossings) of a train that got something back, else None."""
    if m.lost is None or m.samples <= 0 or m.lost == m.samples:
        return None
    return m.samples, m.samples - m.lost, m.crossings


def _relay_lost_more(m: _Measure) -> bool:
    """A UDP relay echo that lost clearly more than its own path's Binding train (the same
    network crossed): the difference was lost at the relay (``same_loss``)."""
    if m.source != "relay_quality" or m.path.get("transport") != "udp":
        return False
    binding = m.path.get("quality") or {}
    echo = _train_counts(m)
    own = _train_counts(_Measure(m.index, m.path, "quality", binding)) if binding else None
    if echo is None or own is None:
        return False
    return loss_each_way(1 - echo[1] / echo[0], echo[2]) > loss_each_way(
        1 - own[1] / own[0], own[2]
    ) and not same_loss([[own], [echo]])


def _udp_trains(ctx: _Ctx) -> tuple[list[tuple[int, int, int]], list[str], list[int], list[int]]:
    """The run's UDP trains that got something back (not through a proxy): their counts, a
    group key each (server and train: a relay echo is compared with its own Binding too), the
    lost counts and the path indices."""
    trains: list[tuple[int, int, int]] = []
    keys: list[str] = []
    lost: list[int] = []
    indices: list[int] = []
    for i, p in ctx.of("udp"):
        if not p.get("ok") or p.get("proxy"):
            continue
        for source in TRAINS:
            q = p.get(source)
            if not q:
                continue
            m = _Measure(i, p, source, q)
            counts = _train_counts(m)
            if counts is None:
                continue  # nothing back: a broken relay or path, never loss
            trains.append(counts)
            keys.append(f"{p.get('server')} {source}")
            lost.append(counts[0] - counts[1])
            indices.append(i)
    return trains, keys, lost, indices


def _one_loss(trains: Sequence[tuple[int, int, int]], keys: Sequence[str]) -> bool:
    """Whether trains grouped by ``keys`` (``_udp_trains``) agree on one loss (``same_loss``),
    so that a loss they measured is this network's and not one server's or one relay's."""
    groups = [
        [t for t, k in zip(trains, keys, strict=True) if k == key] for key in dict.fromkeys(keys)
    ]
    return same_loss(groups)


def _pooled_udp_loss(ctx: _Ctx) -> tuple[str, float, int, list[int]] | None:
    """Every UDP train of the run that worked, pooled: one network's loss, so that the best of
    several noisy trains cannot hide it (``lkice.quality.pooled_loss``). (evidence, loss each
    way, probes, path indices), or None with fewer than two trains, or when the trains do not
    agree on one loss: where one server (or one relay echo against its own Binding) lost
    clearly more or less, the per-path figures speak; pooling would blame this network for
    one far server's or one relay's loss."""
    trains, keys, lost, indices = _udp_trains(ctx)
    pooled = pooled_loss(trains)
    if pooled is None or pooled.trains < 2 or not _one_loss(trains, keys):
        return None
    crossings = {c for _, _, c in trains}
    servers = {str(ctx.paths[i].get("server")) for i in indices}
    low, high = pooled.each_way_ci
    times = " or ".join(str(c) for c in sorted(crossings))
    evidence = (
        f"all {pooled.trains} UDP trains of this run pooled ({len(servers)} server(s)): "
        f"{pooled.lost} of {pooled.samples} probes lost (per train {min(lost)}-{max(lost)}), "
        f"about {_pct(pooled.each_way)} each way ({_interval(low, high)}; maximum likelihood "
        f"over trains crossing this network {times} times, loss assumed the same each way"
    )
    return evidence, pooled.each_way, pooled.samples, indices


def _rule_quality(ctx: _Ctx) -> list[Finding]:
    preferred = ctx.preferred()
    results: dict[str, list[tuple[str, str, int]]] = {}

    def add(fid: str, severity: str, evidence: str, index: int | Sequence[int]) -> None:
        for i in [index] if isinstance(index, int) else index:
            results.setdefault(fid, []).append((severity, evidence, i))

    lim = limits_of(ctx.report)
    pooled = _pooled_udp_loss(ctx)
    for c in CLASSES:
        pref = c == preferred
        if c == "udp" and pooled is not None and pooled[1] > lim.loss_warn:
            # One network's loss over every UDP train: a warning even where the best train,
            # by chance, lost less (picking the best of noisy trains must not hide it).
            evidence, pooled_each_way, probes, indices = pooled
            sev = "critical" if pooled_each_way >= lim.loss_crit else "warning"
            bad = lim.source("loss_crit", "Daily 'bad'")
            evidence += (
                f"; {lim.source('loss_warn', 'Teams')}: under {_pct(lim.loss_warn)}"
                + (f"; {bad} from {_pct(lim.loss_crit)}" if sev == "critical" else "")
                + ")"
            )
            add("high-loss", _cap(sev, probes, pref), evidence, indices)
        rtt_m = _best(_measures(ctx, c, media=False))
        media_m = _best(_measures(ctx, c, media=True))
        if rtt_m is not None and rtt_m.rtt is not None:
            warn, crit = lim.rtt_warn_ms * rtt_m.legs, lim.rtt_crit_ms * rtt_m.legs
            rtt = rtt_m.rtt
            if rtt > warn:
                sev = "critical" if rtt >= crit else "warning"
                target = lim.source("rtt_warn_ms", "Teams target")
                limit = (
                    f"{target} {lim.rtt_warn_ms:.0f} ms"
                    if rtt_m.legs == 1
                    else f"crosses this network twice: {target} 2 x {lim.rtt_warn_ms:.0f} ms"
                )
                if sev == "critical":
                    bad = lim.source("rtt_crit_ms", "Daily 'bad'")
                    limit += f"; {bad} from {lim.rtt_crit_ms * rtt_m.legs:.0f} ms"
                add(
                    "high-rtt",
                    _cap(sev, rtt_m, pref),
                    f"{rtt_m.head()}: p50 {_ms(rtt)} ms over {rtt_m.count()} ({limit})",
                    rtt_m.index,
                )
        if media_m is None:
            continue
        q = media_m.q
        jitter = q.get("jitter_ms")
        if jitter is not None and jitter > lim.jitter_warn_ms:
            who = lim.source("jitter_warn_ms", "Teams and Twilio")
            add(
                "high-jitter",
                _cap("warning", media_m, pref),
                f"{media_m.head()}: jitter {_ms(jitter)} ms over {media_m.count()} ({who}: "
                f"under {lim.jitter_warn_ms:.0f} ms)",
                media_m.index,
            )
        loss = q.get("loss")
        # The thresholds are for one direction of a stream; a probe crosses this network
        # ``crossings`` times (2 per leg: there and back), so the loss one way is estimated
        # from it (lkice.quality.loss_each_way: the same each way).
        crossings = media_m.crossings
        each_way: float | None = None
        if isinstance(loss, (int, float)) and 0 <= loss <= 1:
            each_way = loss_each_way(float(loss), crossings)
        if loss is not None and each_way is not None and each_way > lim.loss_warn:
            sev = "critical" if each_way >= lim.loss_crit else "warning"
            bad = lim.source("loss_crit", "Daily 'bad'")
            # Over TCP/TLS this network loses nothing the application sees (TCP repairs it):
            # what a relay echo loses there is lost at the server or beyond it.
            # The same holds for an SFU echo over a TCP/TLS leg. Over UDP, a relay echo that
            # lost clearly more than the same path's Binding train lost it at the relay.
            server_side = (
                (media_m.source == "relay_quality" or media_m.path.get("kind") == "sfu")
                and c in ("tcp", "tls")
            ) or _relay_lost_more(media_m)
            add(
                "relay-loss" if server_side else "high-loss",
                _cap(sev, media_m, pref),
                f"{media_m.head()}: {_pct(loss)} lost over {media_m.count()}, about "
                f"{_pct(each_way)} each way ({_loss_interval(media_m)}the probe crosses this "
                f"network {crossings} times; {lim.source('loss_warn', 'Teams')}: under "
                f"{_pct(lim.loss_warn)}"
                + (f"; {bad} from {_pct(lim.loss_crit)}" if sev == "critical" else "")
                + ")",
                media_m.index,
            )
        mos = q.get("mos")
        if mos is not None and mos < lim.mos_warn:
            sev = "critical" if mos < lim.mos_crit else "warning"
            g109 = lim.source("mos_crit", "ITU-T G.109 'not recommended'")
            add(
                "low-mos",
                _cap(sev, media_m, pref),
                f"{media_m.head()}: MOS {mos:.2f} over {media_m.count()} "
                f"({lim.source('mos_warn', 'Twilio')} warns under {lim.mos_warn:g}; {g109} "
                f"under {lim.mos_crit:g})",
                media_m.index,
            )
    texts = {
        "high-rtt": (
            "The connection to the media servers has a long delay.",
            "People will talk over each other: answers arrive late, conversation feels sluggish.",
            "Use a media server (region) closer to this network, or check for a VPN or proxy "
            "that sends traffic the long way round.",
        ),
        "high-jitter": (
            "The delay on this network varies a lot from packet to packet (jitter).",
            "Clients must buffer more audio to smooth it out: more delay, and choppy sound when "
            "the buffer runs dry.",
            "Check for a congested link (uploads, backups, Wi-Fi contention) or ask IT for QoS "
            "on real-time traffic.",
        ),
        "high-loss": (
            "This network loses packets on the way to the media servers.",
            "Audio drops out or sounds robotic, video freezes or blurs; over TCP/TLS the loss "
            "turns into stalls instead.",
            "Check Wi-Fi signal and congestion, or try a wired connection; ask IT whether a "
            "link or firewall is dropping traffic.",
        ),
        "relay-loss": (
            "The TURN server's relay loses packets (or holds them longer than the test waited).",
            "Media relayed by this server drops out; the connection to it is TCP/TLS, which "
            "loses nothing on the way, so the loss is at the server or on its own network "
            "(or answers were held past the test's wait), not lost on this one.",
            "Ask the operator to check the TURN server (its load, its relay addresses, the "
            "network between its relays).",
        ),
        "low-mos": (
            "The estimated call quality is poor.",
            "Expect a call most people would find annoying: the delay, jitter and loss above "
            "combine into an estimated MOS below 3 (of 4.4 at best).",
            "Fix the delay, jitter or loss named in the other findings.",
        ),
    }
    out = []
    for fid in ("high-rtt", "high-jitter", "high-loss", "relay-loss", "low-mos"):
        items = results.get(fid)
        if not items:
            continue
        severity = "info"
        for sev, _, _ in items:
            severity = _max_severity(severity, sev)
        summary, impact, advice = texts[fid]
        if severity == "info":
            impact = (
                "Only on a transport the client will not use here (a better one works), so "
                "calls should not feel it unless that one breaks. " + impact
            )
        out.append(
            _finding(
                fid,
                severity,
                summary,
                impact,
                [e for _, e, _ in items],
                advice,
                [i for _, _, i in items],
            )
        )
    return out


def _repairs(q: QualityDoc) -> tuple[int | None, str]:
    """Losses the kernel repaired on a train's TCP connection(s) (None: not fully counted
    here), with the evidence in words ("" when there is none)."""
    tcp = q.get("tcp")
    if not tcp:
        return None, ""
    retransmits = int(tcp.get("retransmits") or 0)
    spurious = tcp.get("spurious")
    behind = tcp.get("out_of_order")
    if spurious is None:
        # No DSACK count (macOS, Windows): a hold longer than the tail-loss probe or the RTO
        # makes the kernel resend with nothing lost, so a resend alone proves no loss.
        if behind:
            return int(behind), (
                f"; the kernel says {behind} segment(s) came in behind a gap (the server "
                "resent them) during the train"
            )
        if retransmits:
            return None, (
                f"; this computer resent {retransmits} segment(s) during the train, which a "
                "hold alone can also cause (this platform does not tell needless resends)"
            )
        return None, ""
    resent = max(0, retransmits - int(spurious))
    words = []
    if resent:
        words.append(f"this computer resent {resent} segment(s)")
    if behind:
        words.append(f"{behind} segment(s) came in behind a gap (the server resent them)")
    if words:
        return resent + int(behind or 0), f"; the kernel says {_join(words)} during the train"
    if behind is None:
        # A direction the platform does not count: no claim either way.
        return None, ""
    return 0, "; the kernel resent nothing and received nothing out of order during the train"


def _udp_loss(ctx: _Ctx) -> list[str]:
    """Evidence of loss on this network measured over UDP (where nothing is repaired): none
    when the run's UDP trains do not agree on one loss (a far server's or a relay's own)."""
    if not _one_loss(*_udp_trains(ctx)[:2]):
        return []
    out = []
    for i, p in ctx.of("udp"):
        for source in TRAINS:
            q = p.get(source) or {}
            if p.get("ok") and q.get("samples") and float(q.get("loss") or 0.0) > 0:
                m = _Measure(i, p, source, q)
                out.append(f"{m.head()}: {_pct(float(q['loss']))} lost over {m.count()}")
    return out


def _rule_hol(ctx: _Ctx) -> list[Finding]:
    """Head-of-line stalls on TCP/TLS, worded by the evidence of loss behind them: repairs the
    kernel counted (loss and HOL), loss measured over UDP on this network (HOL plausible), or
    none (a hold without loss, never called loss). Holds that a UDP train of the run had at the
    same moment are not TCP's doing: said apart (``shared-hold``), never as HOL."""
    hits: list[_Hit] = []
    held: list[_Hit] = []
    shared: list[_Hit] = []
    for i, p in ctx.indexed:
        if not p.get("ok") or p.get("transport") not in ("tcp", "tls"):
            continue
        for source in TRAINS:
            q = p.get(source) or {}
            hol = q.get("hol") or {}
            if hol.get("detected"):
                # The kernel counted every repair either way and there was none: the stalls
                # were holds without a loss behind them here (a freeze on the way that no UDP
                # train of the run happened to witness, a middlebox), not head-of-line blocking.
                # Through a web proxy the counters see only the hop to the proxy.
                unrepaired = _repairs(q)[0] == 0 and not p.get("proxy")
                (held if unrepaired else hits).append((i, p, source, q, hol))
            if hol.get("shared"):
                shared.append((i, p, source, q, hol))
    out = []
    if hits:
        out.append(_hol_blocking(ctx, hits))
    if held:
        out.append(_stream_hold(ctx, held))
    if shared:
        out.append(_shared_hold(shared))
    return out


def _stream_hold(ctx: _Ctx, held: Sequence[_Hit]) -> Finding:
    """Stalls on TCP/TLS trains whose kernel counters show no repair: holds, said as holds."""
    n_ms = max(float(h[4].get("max_stall_ms") or 0.0) for h in held)
    stalls = sum(int(h[4].get("stalls") or 0) for h in held)
    udp_ok = ctx.works("udp")
    evidence = []
    for i, p, source, q, hol in held:
        m = _Measure(i, p, source, q)
        evidence.append(
            f"{m.head()}: {hol.get('stalls')} stall(s), longest {_ms(hol.get('max_stall_ms'))} "
            f"ms beyond the typical RTT, over {m.count()}{_repairs(q)[1]}"
        )
    return _finding(
        "stream-hold",
        "info" if udp_ok else "warning",
        f"TCP/TLS was held {stalls} time(s), for up to {_ms(n_ms)} ms, while this computer's "
        "kernel repaired nothing: something on the way or on this computer held the data (a "
        "busy link, a Wi-Fi scan, a middlebox that repairs traffic beyond it).",
        "When media goes over TCP or TLS, a hold stops all the audio behind it: freezes of up "
        f"to {_ms(n_ms)} ms, then a burst."
        + (
            " Here UDP works, so clients will use it and should not feel this."
            if udp_ok
            else " Here UDP does not work, so calls will go this way."
        ),
        evidence,
        "Nothing to do while UDP stays open."
        if udp_ok
        else "If calls freeze now and then, check the Wi-Fi and any middlebox on the way; "
        "opening UDP avoids holds on TCP altogether.",
        [h[0] for h in held],
    )


def _hol_blocking(ctx: _Ctx, hits: Sequence[_Hit]) -> Finding:
    worst = max(hits, key=lambda h: float(h[4].get("max_stall_ms") or 0.0))
    n_ms = worst[4].get("max_stall_ms")
    udp_ok = ctx.works("udp")
    evidence = []
    repaired: list[int | None] = []
    for i, p, source, q, hol in hits:
        m = _Measure(i, p, source, q)
        count, kernel = _repairs(q)
        repaired.append(count)
        evidence.append(
            f"{m.head()}: {hol.get('stalls')} stalls, longest {_ms(hol.get('max_stall_ms'))} ms "
            f"beyond the typical RTT, {_pct(float(hol.get('stalled_fraction') or 0.0))} of the "
            f"train held, over {m.count()}{kernel}"
        )
    stalls = sum(int(h[4].get("stalls") or 0) for h in hits)
    classes = {str(h[1].get("transport")) for h in hits}
    transports = _join(f"TURN/{c.upper()}" for c in CLASSES if c in classes)
    udp_loss = _udp_loss(ctx)
    lossy = any(r for r in repaired)
    works = f"{transports} {'works' if len(classes) == 1 else 'work'}, but"
    up_to = f"stalls of up to {_ms(n_ms)} ms were measured."
    # Loss is named only where it was measured: repairs the kernel counted, or UDP losing.
    said_loss = True
    if all(h[1].get("proxy") for h in hits):
        summary = f"{works} TCP through the web proxy holds audio back: {up_to}"
        said_loss = lossy
    elif lossy:
        summary = f"{works} packet loss on this network makes TCP hold audio back: {up_to}"
    elif udp_loss and not all(r == 0 for r in repaired):
        summary = (
            f"{works} packets are lost on this network (measured over UDP), and TCP most "
            f"likely holds audio back while it resends them: {up_to}"
        )
        evidence += udp_loss
    else:
        summary = (
            f"{works} TCP/TLS stalled {stalls} times, for up to {_ms(n_ms)} ms, with no loss "
            "measured: something on the way held the data (a proxy, a busy link)."
        )
        said_loss = False
    impact = (
        "When media goes over TCP or TLS, "
        + (
            "every lost packet stops the audio behind it until TCP has resent it"
            if said_loss
            else "anything held on the way stops all the audio behind it"
        )
        + f": freezes of up to {_ms(n_ms)} ms, then a burst."
        + (
            " Here UDP works, so clients will use it and should not feel this."
            if udp_ok
            else " Here UDP does not work, so calls will go this way."
        )
    )
    advice = (
        "Nothing to do while UDP stays open."
        if udp_ok
        else "Ask IT to open UDP (see the UDP advice): UDP has no head-of-line blocking."
    )
    return _finding(
        "hol-blocking",
        "info" if udp_ok else "warning",
        summary,
        impact,
        evidence,
        advice,
        [h[0] for h in hits],
    )


def _shared_hold(
    shared: Sequence[_Hit],
) -> Finding:
    count = sum(int(h[4].get("shared") or 0) for h in shared)
    longest = max(float(h[4].get("shared_max_ms") or 0.0) for h in shared)
    evidence = [
        f"{_Measure(i, p, source, q).head()}: {hol.get('shared')} hold(s) of up to "
        f"{_ms(hol.get('shared_max_ms'))} ms, each at a moment when a UDP train of this run "
        f"was held at least half as long{_repairs(q)[1]}"
        for i, p, source, q, hol in shared
    ]
    # A repair on the same train means TCP may have held for longer than the shared moment
    # alone: the holds are then not cleared of TCP.
    repaired = any((_repairs(h[3])[0] or 0) > 0 for h in shared)
    tail = (
        "; the kernel also repaired segments on these trains, so TCP may have added to them."
        if repaired
        else ", so they were not TCP's doing."
    )
    return _finding(
        "shared-hold",
        "info",
        f"All traffic was held at the same moments, UDP too: {count} hold(s) of up to "
        f"{_ms(longest)} ms on TCP/TLS matched holds on UDP{tail}",
        "Something on the way or on this computer held every connection at once (a Wi-Fi "
        "scan or roaming, a busy router, a VPN client, a paused virtual machine): a call would "
        "freeze for a moment at such times whatever the transport. They are not counted as "
        "head-of-line stalls.",
        evidence,
        "If calls freeze now and then, check the Wi-Fi (background scans, roaming), VPN "
        "software and what else this computer is doing.",
        [h[0] for h in shared],
    )


# An agent stall this long holds at least two audio packets' worth of timing; this much in all
# during the trains is past scheduling noise (the loop monitor's threshold is 10 ms per wake-up).
AGENT_STALL_MS = 50.0
AGENT_STALLED_TOTAL_MS = 100.0
# A stall the loop's own thread spent computing for at least this share was lkice's own work.
AGENT_OWN_SHARE = 0.5


def _rule_agent_busy(ctx: _Ctx) -> list[Finding]:
    """lkice's own event loop stalled while trains ran: answers that came in then were left
    out (``lkice.quality``), and what held the loop is named from the CPU time its thread used
    over the stalls: lkice's own work, or the computer (a processor busy with other programs,
    a paused process). Never the network, and never a warning: the network's verdict stands on
    the figures that were kept. Stalls outside the trains (start-up, handshakes) touch no figure
    and are not reported here."""
    stalls = (ctx.report.get("agent") or {}).get("loop_stalls") or {}
    during = stalls.get("during_trains")
    if not isinstance(during, dict):
        return []  # no train ran (or a report from before the trains were told apart)
    longest = float(during.get("max_ms") or 0.0)
    total_ms = float(during.get("total_ms") or 0.0)
    if longest < AGENT_STALL_MS and total_ms < AGENT_STALLED_TOTAL_MS:
        return []
    own_ms = min(total_ms, float(during.get("own_ms") or 0.0))
    excluded = discounted = trains = 0
    for p in ctx.paths:
        for source in TRAINS:
            q = p.get(source) or {}
            left = int(q.get("excluded") or 0)
            agent = int((q.get("hol") or {}).get("discounted") or 0)
            if left or agent:
                trains += 1
                excluded += left
                discounted += agent
    window = float(during.get("window_ms") or 0.0)
    evidence = [
        f"while the trains ran ({_ms(window)} ms), lkice's event loop woke late "
        f"{during.get('stalls')} times (more than {_ms(stalls.get('threshold_ms'))} ms late "
        f"counts), longest {_ms(longest)} ms, {_ms(total_ms)} ms in all; its own thread "
        f"computed for {_ms(own_ms)} ms of that"
    ]
    if excluded:
        evidence.append(
            f"{excluded} answers on {trains} train(s) arrived while lkice could not look: left "
            "out of jitter, late answers and stall figures"
        )
    if discounted:
        evidence.append(f"{discounted} stall(s) released while lkice was held: not counted")
    if own_ms >= AGENT_OWN_SHARE * total_ms:
        return [
            _finding(
                "agent-busy",
                "info",
                f"lkice itself could not keep up during {_ms(total_ms)} ms of the test (its own "
                "work held its clock); figures in those moments were left out.",
                "Answers that came in while lkice was busy are not counted against the network. "
                "This says nothing about the network or about calls on this computer.",
                evidence,
                "For figures of the network alone, test fewer servers at once or use a longer "
                "--quality-interval.",
            )
        ]
    return [
        _finding(
            "agent-busy",
            "info",
            f"This computer was too busy during {_ms(total_ms)} ms of the test (lkice waited "
            "for the processor); figures in those moments were left out.",
            "Answers that came in then are not counted against the network. A computer this "
            "busy may also make a call stutter, whatever the network does.",
            evidence,
            "Close programs that keep the processor busy (or let updates and backups finish) "
            "and run lkice again for figures of the network alone.",
        )
    ]


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


def _rule_media_unproven(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or not signal.get("ok") or ctx.indexed:
        return []
    return [
        _finding(
            "media-unproven",
            "warning",
            "The LiveKit server is reachable, but no media path could be tested.",
            "Whether audio and video will flow from this network is not known.",
            [f"signaling to {_mask(str(signal.get('url')))}: works; no path was measured"],
            "Run lkice with the LiveKit API key and secret so it can open test sessions, or "
            "give the TURN servers explicitly.",
        )
    ]


def _rule_works(ctx: _Ctx) -> list[Finding]:
    out = []
    signal = ctx.report.get("signal")
    if signal and signal.get("ok"):
        t = signal.get("timings_ms") or {}
        out.append(
            _finding(
                "signal-ok",
                "info",
                f"The LiveKit server {_join(ctx.signal_hosts())} is reachable"
                + (f" through the web proxy {signal['proxy']}" if signal.get("proxy") else "")
                + " and accepted the join.",
                "Calls can start from this network.",
                [
                    f"signaling to {_mask(str(signal.get('url')))}: join in {_ms(t.get('join'))} ms"
                    f" (connect {_ms(t.get('connect'))} ms)"
                ],
                "Nothing to do.",
            )
        )
    sfu = [(i, p) for i, p in ctx.indexed if p.get("kind") == "sfu" and p.get("ok")]

    def sfu_evidence(p: Path) -> str:
        t = p.get("timings_ms") or {}
        text = f"{_label(p)}: ICE {_ms(t.get('ice'))} ms, DTLS {_ms(t.get('dtls'))} ms"
        q = p.get("quality")
        if q and q.get("samples"):
            m = _Measure(0, p, "quality", q)
            text += (
                f"; data round trip p50 {_ms(m.rtt)} ms, loss {_pct(float(q.get('loss') or 0))}"
                f" over {m.count()}"
            )
        return text

    direct = [(i, p) for i, p in sfu if not p.get("relay") and p.get("transport") == "udp"]
    if direct:
        forced = bool((ctx.report.get("signal") or {}).get("force_relay"))
        out.append(
            _finding(
                "sfu-direct-ok",
                "info",
                "Direct UDP to the LiveKit SFU works"
                + (
                    ", but the server tells clients to relay through TURN (force_relay): calls "
                    "use the relay, not this path."
                    if forced
                    else ": the best path for calls."
                ),
                "The server's force_relay setting sends media through TURN instead."
                if forced
                else "Audio and video go straight to the SFU over UDP, with the least delay.",
                [sfu_evidence(p) for _, p in direct],
                "Nothing to do.",
                [i for i, _ in direct],
            )
        )
    icetcp = [(i, p) for i, p in sfu if not p.get("relay") and p.get("transport") == "tcp"]

    def icetcp_evidence(p: Path) -> str:
        t = p.get("timings_ms") or {}
        return (
            f"{_label(p)}: STUN connectivity check answered in {_ms(t.get('binding'))} ms "
            f"(TCP connect {_ms(t.get('connect'))} ms); DTLS and media over ICE/TCP not tested"
        )

    if icetcp:
        out.append(
            _finding(
                "sfu-ice-tcp-ok",
                "info",
                "ICE over TCP to the LiveKit SFU works: the first fallback when UDP is blocked.",
                "If UDP breaks, clients can still reach the SFU directly over TCP.",
                [icetcp_evidence(p) for _, p in icetcp],
                "Nothing to do.",
                [i for i, _ in icetcp],
            )
        )
    relayed = [(i, p) for i, p in sfu if p.get("relay")]
    if relayed:
        seen = {str(p.get("transport")) for _, p in relayed}
        legs = _join(c.upper() for c in CLASSES if c in seen)
        out.append(
            _finding(
                "sfu-relay-ok",
                "info",
                f"Calls through the TURN relay to the LiveKit SFU work (over {legs}).",
                "If direct paths break, clients can fall back to the relay.",
                [sfu_evidence(p) for _, p in relayed],
                "Nothing to do.",
                [i for i, _ in relayed],
            )
        )
    turn_ok = [(i, p) for i, p in ctx.of(kinds=("turn",)) if p.get("ok")]
    if turn_ok:
        classes = [c for c in CLASSES if any(p.get("transport") == c for _, p in turn_ok)]
        names = _join(f"TURN/{c.upper()}" for c in classes)
        best = classes[0]
        out.append(
            _finding(
                "turn-ok",
                "info",
                f"The TURN relay works over {names}"
                + (": UDP, the best transport, is available." if best == "udp" else "."),
                "Clients have a relay to fall back on"
                + (" and can use it over UDP." if best == "udp" else "."),
                [_turn_evidence(p) for _, p in turn_ok],
                "Nothing to do.",
                [i for i, _ in turn_ok],
            )
        )
    return out


def _turn_evidence(p: Path) -> str:
    t = p.get("timings_ms") or {}
    text = f"{_label(p)}: relay allocated"
    if t.get("allocate") is not None:
        text += f" (authenticated Allocate {_ms(t.get('allocate'))} ms)"
    if p.get("relayed_address"):
        text += f", relayed address {p['relayed_address']}"
    return text


def _rule_regions(ctx: _Ctx) -> list[Finding]:
    """Regions whose own signaling failed (measured: not cut by the deadline or Ctrl-C)."""
    failed = []
    for region in ctx.report.get("regions") or []:
        signal = region.get("signal") or {}
        kind = str((signal.get("error") or {}).get("kind") or "")
        if signal.get("ok") or not kind or kind in NOT_EVIDENCE_KINDS:
            continue
        failed.append((str(region.get("region")), _mask(str(region.get("url"))), signal))
    if not failed:
        return []
    names = _join(name for name, _, _ in failed)
    return [
        _finding(
            "region-failed",
            "warning",
            f"LiveKit signaling to region {names} failed from this network.",
            "Clients sent to that region cannot start calls from here; other regions may work.",
            [
                f"region {name} ({url}): {_message(signal.get('error'))}"
                for name, url, signal in failed
            ],
            "Check the region's URL with the operator; if it is right, ask IT whether "
            "connections to it are allowed (the errors name the step that failed).",
        )
    ]


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


def _rule_local(ctx: _Ctx) -> list[Finding]:
    """Paths this computer could not even open a socket for: said as such, never as a network
    fault (they are not evidence: see NOT_EVIDENCE_KINDS)."""
    local = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) == "local"]
    if not local:
        return []
    return [
        _finding(
            "agent-local",
            "warning",
            f"{len(local)} path(s) could not be tested because this computer could not open "
            "the connection (no free local port, or too many open files).",
            "This says nothing about the network: those paths are neither counted as working "
            "nor as failing.",
            [_path_evidence(p) for _, p in local],
            "Close other programs that hold many connections, or test fewer servers at once, "
            "and run lkice again.",
            [i for i, _ in local],
        )
    ]


def _rule_nothing_tested(ctx: _Ctx) -> list[Finding]:
    """No path was tried, or none could be (every one not testable here) and no signaling
    either: the verdict must not read as "ok" on no evidence."""
    if ctx.report.get("signal") is not None or ctx.report.get("interrupted"):
        return []
    untestable = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) == "not_tested"]
    if len(untestable) != len(ctx.paths):
        return []
    return [
        _finding(
            "nothing-tested",
            "warning",
            "No connection could be tested: "
            + (
                f"lkice could not test any of the {len(untestable)} path(s) from here."
                if untestable
                else "no path was tried."
            ),
            "Nothing here says whether calls would work from this network.",
            [_path_evidence(p) for _, p in untestable] or ["no path in the report"],
            "See each path's reason; run lkice with a STUN/TURN or LiveKit target it can test.",
            [i for i, _ in untestable],
        )
    ]


_RULES: tuple[Callable[[_Ctx], list[Finding]], ...] = (
    _rule_signal,
    _rule_proxy,
    _rule_tls,
    _rule_token,
    _rule_credentials,
    _rule_no_path,
    _rule_udp_blocked,
    _rule_only,
    _rule_via_proxy,
    _rule_turn_tls,
    _rule_advertised_dead,
    _rule_server_refused,
    _rule_media_unproven,
    _rule_quality,
    _rule_hol,
    _rule_nat,
    _rule_interrupted,
    _rule_local,
    _rule_nothing_tested,
    _rule_agent_busy,
    _rule_relay_failed,
    _rule_regions,
    _rule_works,
)


def evaluate(report: ReportDoc) -> list[dict[str, Any]]:
    """Findings for ``report`` (a ``Report.to_dict()``), most severe first."""
    paths: list[Path] = list(report.get("paths") or [])
    indexed = [(i, p) for i, p in enumerate(paths) if _evidential(p, paths)]
    ctx = _Ctx(report, paths, indexed)
    findings: list[Finding] = []
    for rule in _RULES:
        findings.extend(rule(ctx))
    # An info finding explains a failure only when it says so (a proxy refusing one port of a
    # server it lets through on another); "works" findings explain nothing.
    covered = {
        i
        for f in findings
        if f["severity"] != "info" or f["id"].startswith("proxy-")
        for i in f["paths"]
    }
    findings.extend(_rule_unexplained(ctx, covered))
    return sorted(findings, key=lambda f: _RANK[f["severity"]])


def _rule_unexplained(ctx: _Ctx, covered: set[int]) -> list[Finding]:
    """Every failure that was really tested is part of the answer: a failed path that no rule
    above explained (one server of several down, one address of a name, one port) still makes
    the verdict degraded, with the path's own message as evidence."""
    failed = [(i, p) for i, p in ctx.indexed if not p.get("ok") and i not in covered]
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
