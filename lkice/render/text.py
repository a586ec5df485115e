"""The human view of a report: findings first, then what was measured. Fits 80 columns, needs no
colour, and reads the same in a terminal, a ticket or an email (``lkice explain`` renders a
pasted report with it)."""

from __future__ import annotations

import textwrap

from lkice.report.read import (
    FindingDoc,
    NatDoc,
    PathDoc,
    QualityDoc,
    RecommendationDoc,
    RegionDoc,
    ReportDoc,
    SignalDoc,
)
from lkice.report.views import error_kind, step_order
from lkice.report.views import ms as _ms
from lkice.report.views import number as _num
from lkice.report.views import percent as _pct
from lkice.textsafe import clipped, visible_report

__all__ = ["render"]

WIDTH = 80
_PHASES = (("connect", "conn"), ("tls", "tls"), ("binding", "bind"), ("allocate", "alloc"))
_SEVERITY = {"critical": "CRITICAL", "warning": "WARNING", "info": "info"}


def _clip(text: str, width: int) -> str:
    """Fit a column: a cut is marked with '~' so it is never mistaken for the whole value."""
    return text if len(text) <= width else text[: width - 1] + "~"


def _wrap(text: str, first: str, rest: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest if rest is not None else " " * len(first),
        break_on_hyphens=False,
        break_long_words=True,
    ) or [first.rstrip()]


def render(report: ReportDoc) -> str:
    """The report (as :func:`lkice.intake.load_report` accepts it) as text; every string from
    it is shown with control characters made visible."""
    report = clipped(visible_report(report))
    paths: list[PathDoc] = report["paths"]
    summary = report.get("summary") or {
        "ok": sum(1 for p in paths if p["ok"]),
        "paths": len(paths),
    }
    verdict = str(report["verdict"]).upper()
    head = f"Verdict: {verdict}  ({summary['ok']} of {summary['paths']} paths usable"
    duration = _num(report.get("duration_ms"))
    head += f", {duration:.0f} ms)" if duration is not None else ")"
    if report.get("interrupted"):
        head += "  [INTERRUPTED: partial report]"
    lines = [head]
    stages = report.get("stages_ms")
    if isinstance(stages, dict) and stages:
        shown = [f"{k} {_ms(v)}" for k, v in stages.items() if _num(v) is not None]
        lines.append("  stages: " + ", ".join(shown) + " ms (TURN and SFU run at once)")
    lines.append("")
    sections = [
        _findings(report.get("findings") or []),
        _recommendation(report.get("recommendation")),
        _signal(signal) if (signal := report.get("signal")) else [],
        _regions(report.get("regions")),
        _nat(report.get("nat")),
        _table([p for p in paths if p["kind"] != "sfu"]),
        _quality([p for p in paths if p["kind"] != "sfu"]),
        _sfu([p for p in paths if p["kind"] == "sfu"]),
        _details(paths),
    ]
    for section in sections:
        if section:
            lines += [*section, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _findings(findings: list[FindingDoc]) -> list[str]:
    if not findings:
        return []
    out = ["What lkice found"]
    for f in findings:
        label = _SEVERITY.get(str(f.get("severity")), str(f.get("severity")))
        out += _wrap(str(f.get("summary", "")), f"[{label}] ", "    ")
        if f.get("severity") == "info":
            continue  # good news and side notes: one line each; the report has the rest
        if f.get("impact"):
            out += _wrap(str(f["impact"]), "    Effect: ", "      ")
        if f.get("advice"):
            out += _wrap(str(f["advice"]), "    What to do: ", "      ")
        for evidence in (f.get("evidence") or [])[:4]:
            out += _wrap(str(evidence), "    - ", "      ")
        hidden = len(f.get("evidence") or []) - 4
        if hidden > 0:
            out.append(f"      (and {hidden} more measurements in the full report)")
    return out


def _recommendation(rec: RecommendationDoc | None) -> list[str]:
    if not rec:
        return []
    if not rec.get("transport"):
        # Nothing usable was found: there is nothing to recommend, only the reason.
        out = ["Recommended: nothing (no usable path was found)"]
    else:
        where = rec.get("region") or "this deployment"
        how = str(rec["transport"]).upper()
        if rec.get("proxy"):
            how += f" through the web proxy {rec['proxy']}"
        out = _wrap(
            f"{where} over {how}" + (f" ({rec['server']})" if rec.get("server") else ""),
            "Recommended: ",
        )
    if rec.get("reason"):
        out += _wrap(str(rec["reason"]), "  ")
    ranking = rec.get("ranking") or []
    if len(ranking) > 1:
        out.append(f"  {'#':>2} {'region':<16} {'best':<5} {'rtt':>7} {'jit':>6} {'loss':>6} MOS")
        for i, r in enumerate(ranking, 1):
            best = str(r.get("transport") or "none") if r.get("usable") else "none"
            loss = _pct(r.get("loss"))
            mos = "-" if _num(r.get("mos")) is None else f"{r['mos']:.1f}"
            out.append(
                f"  {i:>2} {_clip(str(r.get('region')), 16):<16} {best:<5} "
                f"{_ms(r.get('rtt_ms')):>7} {_ms(r.get('jitter_ms')):>6} {loss:>6} {mos}"
            )
    return out


def _signal(signal: SignalDoc) -> list[str]:
    through = f" (through the web proxy {signal['proxy']})" if signal.get("proxy") else ""
    out = _wrap(
        f"{signal['url']}{through}  {'ok' if signal['ok'] else 'FAILED'}", "LiveKit signaling: "
    )
    server = signal.get("server") or {}
    if server:
        facts = [f"{k} {v}" for k, v in server.items() if v]
        out += _wrap(", ".join(facts), "  server: ", "    ")
    # In the order the steps run (a paste's canonical JSON sorts the keys).
    steps = [
        f"{k} {_ms(v)}"
        for k, v in sorted(signal["timings_ms"].items(), key=lambda kv: step_order(kv[0]))
        if v is not None
    ]
    if steps:
        out.append("  " + "  ".join(steps) + " (ms)")
    if (error := signal.get("error")) is not None:
        out += _wrap(str(error.get("message")), "x ", "  ")
    for entry in signal.get("ice_servers", []):
        auth = " (with credentials)" if entry["credentials"] else ""
        out += _wrap(", ".join(entry["urls"]) + auth, "  ICE server: ", "    ")
    if signal.get("force_relay"):
        out.append("  the server asks clients to force relay (TURN)")
    for note in signal.get("notes", []):
        out += _wrap(str(note), "  note: ", "    ")
    return out


def _regions(regions: list[RegionDoc] | None) -> list[str]:
    """Each region's own signaling: which answered, and why the others did not."""
    if not regions:
        return []
    out = ["Regions (LiveKit signaling of each):"]
    for region in regions:
        signal = region.get("signal") or {}
        error = signal.get("error") or {}
        state = "ok" if signal.get("ok") else f"FAILED: {error.get('message') or error.get('kind')}"
        out += _wrap(f"{region.get('region')} ({region.get('url')}): {state}", "  ", "    ")
    return out


def _nat(nat: NatDoc | None) -> list[str]:
    if not nat or nat.get("nat") is None:
        return []  # no answer to learn from: the paths above say why
    behind = "behind NAT" if nat["nat"] else "no NAT seen"
    text = (
        f"{behind}; mapping {nat.get('mapping')}, filtering {nat.get('filtering')} "
        f"(RFC 5780, against {nat.get('server')})"
    )
    return _wrap(text, "NAT: ", "  ")


def _table(paths: list[PathDoc]) -> list[str]:
    if not paths:
        return []
    out = [
        f"{'kind':<4} {'server':<21} {'via':<5} {'result':<15} "
        f"{'conn':>6} {'tls':>6} {'bind':>6} {'alloc':>6}"
    ]
    for p in paths:
        t = p["timings_ms"]
        result = "ok" if p["ok"] else error_kind(p)
        server = _clip(p["server"], 21)
        cells = " ".join(f"{_ms(t.get(key)):>6}" for key, _ in _PHASES)
        out.append(f"{p['kind']:<4} {server:<21} {_via(p):<5} {result[:15]:<15} {cells}")
    out.append(f"{'':<49}(milliseconds)")
    out += _proxy_legend(paths)
    return out


def _via(p: PathDoc) -> str:
    """The transport, marked "/p" when the path went through the web proxy."""
    return f"{p['transport']}/p" if p.get("proxy") else str(p["transport"])


def _proxy_legend(paths: list[PathDoc]) -> list[str]:
    proxies = list(dict.fromkeys(str(p["proxy"]) for p in paths if p.get("proxy")))
    if not proxies:
        return []
    return _wrap(
        f"/p: through the web proxy {', '.join(proxies)} (HTTP CONNECT; conn is the TCP "
        "connect to the proxy)",
        "",
        "  ",
    )


def _quality_cells(q: QualityDoc) -> str:
    rtt = q["rtt_ms"] or {}
    hol = q["hol"]
    if hol is None:
        stall = "n/a"
    elif hol["detected"]:
        stall = f"{hol['stalls']}x{_ms(hol['max_stall_ms'])}"
    else:
        stall = "none"
    mos = "-" if _num(q["mos"]) is None else f"{q['mos']:.1f}"
    jitter = "-" if _num(q["jitter_ms"]) is None else f"{q['jitter_ms']:.1f}"
    loss = _pct(q["loss"])
    return (
        f"{q['samples']:>4} {_ms(rtt.get('p50')):>6} {_ms(rtt.get('p95')):>6} {jitter:>5} "
        f"{loss:>5} {stall:>9} {mos:>4}"
    )


def _quality(paths: list[PathDoc]) -> list[str]:
    rows: list[tuple[PathDoc, str, QualityDoc]] = [
        (p, p["kind"], q) for p in paths if (q := p.get("quality"))
    ]
    rows += [(p, "echo", q) for p in paths if (q := p.get("relay_quality"))]
    if not rows:
        return []
    out = [
        "Path quality (probe train)",
        f"{'kind':<4} {'server':<21} {'via':<5} {'n':>4} {'p50':>6} {'p95':>6} {'jit':>5} "
        f"{'loss':>5} {'stall':>9} {'MOS':>4}",
    ]
    for p, kind, q in rows:
        out.append(f"{kind:<4} {_clip(p['server'], 21):<21} {_via(p):<5} {_quality_cells(q)}")
    out.append("(ms; n probes sent; stall: head-of-line stalls x longest, TCP/TLS only;")
    out.append(" echo: data through the TURN relay and back, the path's transport both ways)")
    return out


def _route(p: PathDoc) -> str:
    """How a media path reached the SFU, as a user would name it."""
    relay = p.get("relay")
    if relay:
        scheme = str(relay).split(":", 1)[0]
        return f"TURN/{p['transport'].upper()}" + (" (turns)" if scheme == "turns" else "")
    if p["transport"] == "tcp":
        return f"ICE/TCP {p['server']}"
    return "direct UDP"


def _sfu(paths: list[PathDoc]) -> list[str]:
    if not paths:
        return []
    out = [
        "Media through the SFU (WebRTC sessions of lkice's own)",
        f"{'route':<21} {'result':<15} {'ice':>6} {'dtls':>6}  data round trip",
    ]
    for p in paths:
        t = p["timings_ms"]
        result = "ok" if p["ok"] else error_kind(p)
        if q := p.get("quality"):
            rtt = (q.get("rtt_ms") or {}).get("p50")
            data = f"p50 {_ms(rtt)}, loss {_pct(q['loss'])}, n {q['samples']}"
        elif p["transport"] == "tcp" and not p.get("relay") and p["ok"]:
            data = f"STUN check {_ms(t.get('binding'))} ms"
        else:
            data = "-"
        out.append(
            f"{_clip(_route(p), 21):<21} {result[:15]:<15} {_ms(t.get('ice')):>6} "
            f"{_ms(t.get('dtls')):>6}  {data}"
        )
    out.append("(ms from the start of negotiation; data: A -> SFU -> B -> SFU -> A)")
    # The sessions' method is the same on every route: said once, from the first path.
    for note in paths[0].get("notes", [])[:1]:
        out += _wrap(str(note), "  note: ", "    ")
    return out


def _details(paths: list[PathDoc]) -> list[str]:
    out: list[str] = []
    for p in paths:
        where = f"{p['kind']} {p['server']} {p['transport']}"
        if p["address"] and p["address"] != p["server"]:
            where += f" ({p['address']})"
        if p.get("relay"):
            where += f" via {p['relay']}"
        if p.get("proxy"):
            tunnel = p["timings_ms"].get("proxy")
            where += f" through the web proxy {p['proxy']}"
            if tunnel is not None:
                where += f" (CONNECT {_ms(tunnel)} ms)"
        if p["error"] is not None:
            out += _wrap(f"{where}: {p['error']['message']}", "x ", "  ")
        elif p["relayed_address"]:
            text = f"{where}: relay {p['relayed_address']}"
            if p["mapped_address"]:
                text += f", mapped {p['mapped_address']}"
            out += _wrap(text, "+ ", "  ")
        elif p["mapped_address"]:
            out += _wrap(f"{where}: mapped {p['mapped_address']}", "+ ", "  ")
        else:
            out += _wrap(f"{where}: ok", "+ ", "  ")
        if p["kind"] != "sfu":  # SFU sessions' notes: once, under their table
            for note in p.get("notes", []):
                out += _wrap(str(note), "  note: ", "    ")
    return out
