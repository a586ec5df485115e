"""What every findings rule shares: the thresholds, the error-kind classes, the run's context
(``_Ctx``: the report and its evidential paths), the finding record (``_finding``), how paths are
named and quoted (``_label``, ``_path_evidence``, masking of secrets), firewall advice
(``_open_rules``), the advertised ICE URLs and a measured train (``_Measure``).

Pure: no I/O, nothing from the rule modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lkice.errors import UsageError
from lkice.report.fields import SEVERITIES
from lkice.report.read import (
    ErrorDoc,
    ErrorKindName,
    HolDoc,
    PathDoc,
    QualityDoc,
    ReportDoc,
)
from lkice.report.views import percent
from lkice.uri import parse_ice_uri

_RANK = {s: i for i, s in enumerate(SEVERITIES)}
CLASSES = ("udp", "tcp", "tls")

# Thresholds (sources in lkice.findings' docstring and docs/findings.md).
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
    # Paths the findings so far explain: filled as the rules run (registry.run), read by the
    # one that runs last (path-failed: a failure no other rule explained).
    covered: set[int] = field(default_factory=set)

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


# --------------------------------------------------------------------------- advertised URLs


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


# --------------------------------------------------------------------------- measurements


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


def _best(measures: Sequence[_Measure]) -> _Measure | None:
    def key(m: _Measure) -> tuple[float, float]:
        mos = m.q.get("mos")
        rtt = m.rtt
        return (
            -(float(mos) if mos is not None else 0.0),
            (rtt / m.legs) if rtt is not None else float("inf"),
        )

    return min(measures, key=key) if measures else None
