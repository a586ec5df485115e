"""A plain-text summary for people: fits 80 columns, needs no colour."""

from __future__ import annotations

from typing import Any

_PHASES = (("connect", "conn"), ("tls", "tls"), ("binding", "bind"), ("allocate", "alloc"))


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _clip(text: str, width: int) -> str:
    """Fit a column: a cut is marked with '~' so it is never mistaken for the whole value."""
    return text if len(text) <= width else text[: width - 1] + "~"


def render(report: dict[str, Any]) -> str:
    paths: list[dict[str, Any]] = report["paths"]
    summary = report["summary"]
    verdict = str(report["verdict"]).upper()
    head = f"Verdict: {verdict}  ({summary['ok']} of {summary['paths']} paths usable"
    head += f", {report['duration_ms']:.0f} ms)"
    if report.get("interrupted"):
        head += "  [INTERRUPTED: partial report]"
    lines = [head, ""]
    if report.get("signal"):
        lines += [*_signal(report["signal"]), ""]
    if not paths:
        return "\n".join(lines) + "\n"
    lines.append(
        f"{'kind':<4} {'server':<21} {'via':<3} {'result':<15} "
        f"{'conn':>6} {'tls':>6} {'bind':>6} {'alloc':>6}"
    )
    for p in paths:
        t = p["timings_ms"]
        result = "ok" if p["ok"] else p["error"]["kind"]
        server = _clip(p["server"], 21)
        cells = " ".join(f"{_ms(t.get(key)):>6}" for key, _ in _PHASES)
        lines.append(f"{p['kind']:<4} {server:<21} {p['transport']:<3} {result[:15]:<15} {cells}")
    lines.append(f"{'':<47}(milliseconds)")
    quality = _quality(paths)
    if quality:
        lines += ["", *quality]
    details = _details(paths)
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"


def _signal(signal: dict[str, Any]) -> list[str]:
    out = [f"LiveKit signaling: {signal['url']}  {'ok' if signal['ok'] else 'FAILED'}"]
    server = signal.get("server") or {}
    if server:
        facts = [f"{k} {v}" for k, v in server.items() if v]
        out.append("  server: " + ", ".join(facts))
    steps = [f"{k} {_ms(v)}" for k, v in signal["timings_ms"].items() if v is not None]
    if steps:
        out.append("  " + "  ".join(steps) + " (ms)")
    if signal["error"] is not None:
        out.append(f"x {signal['error']['message']}")
    for entry in signal.get("ice_servers", []):
        auth = " (with credentials)" if entry["credentials"] else ""
        out.append(f"  ICE server: {', '.join(entry['urls'])}{auth}")
    if signal.get("force_relay"):
        out.append("  the server asks clients to force relay (TURN)")
    out += [f"  note: {n}" for n in signal.get("notes", [])]
    return out


def _quality(paths: list[dict[str, Any]]) -> list[str]:
    rows = [(p, p["kind"], p["server"], p["quality"]) for p in paths if p.get("quality")]
    rows += [(p, "echo", p["server"], p["relay_quality"]) for p in paths if p.get("relay_quality")]
    if not rows:
        return []
    out = [
        "Path quality (probe train)",
        f"{'kind':<4} {'server':<21} {'via':<3} {'n':>4} {'p50':>6} {'p95':>6} {'jit':>5} "
        f"{'loss':>5} {'stall':>9} {'MOS':>4}",
    ]
    for p, kind, where, q in rows:
        rtt = q["rtt_ms"] or {}
        hol = q["hol"]
        if hol is None:
            stall = "n/a"
        elif hol["detected"]:
            stall = f"{hol['stalls']}x{_ms(hol['max_stall_ms'])}"
        else:
            stall = "none"
        server = _clip(where, 21)
        mos = "-" if q["mos"] is None else f"{q['mos']:.1f}"
        jitter = "-" if q["jitter_ms"] is None else f"{q['jitter_ms']:.1f}"
        out.append(
            f"{kind:<4} {server:<21} {p['transport']:<3} {q['samples']:>4} "
            f"{_ms(rtt.get('p50')):>6} {_ms(rtt.get('p95')):>6} {jitter:>5} "
            f"{q['loss'] * 100:>4.1f}% {stall:>9} {mos:>4}"
        )
    out.append("(ms; n probes sent; stall: head-of-line stalls x longest, TCP/TLS only;")
    out.append(" echo: data through the TURN relay and back, the path's transport both ways)")
    return out


def _details(paths: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for p in paths:
        where = f"{p['server']} {p['transport']}"
        if p["address"] and p["address"] != p["server"]:
            where += f" ({p['address']})"
        if p["error"] is not None:
            out.append(f"x {where}: {p['error']['message']}")
        elif p["relayed_address"]:
            out.append(f"+ {where}: relay {p['relayed_address']}, mapped {p['mapped_address']}")
        elif p["mapped_address"]:
            out.append(f"+ {where}: mapped {p['mapped_address']}")
        out += [f"  note: {n}" for n in p.get("notes", [])]
    return out
