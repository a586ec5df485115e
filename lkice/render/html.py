"""A self-contained HTML report: one file, readable offline, printable without colour.

Everything is inline: the CSS, and the charts as SVG drawn here in Python. There is no script,
no font, no image and no URL to fetch; a Content-Security-Policy says so to the browser, so even
a value that slipped through escaping could not run or load anything. Every value taken from the
report is escaped: server names, error messages and notes come from the network.

Colour is an aid only: severities and results are also written out, lost probes are drawn as
crosses, stalls as shaded bands with their count in the caption.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from lkice.redact import redact_report
from lkice.report.fields import SEVERITIES, SIGNAL_STEPS, TIMING_KEYS, VERDICTS
from lkice.report.read import (
    ErrorDoc,
    FindingDoc,
    HolDoc,
    PathDoc,
    QualityDoc,
    RankingDoc,
    RecommendationDoc,
    RegionDoc,
    ReportDoc,
    RttDoc,
    SignalDoc,
    TlsDoc,
)
from lkice.report.views import ms as _ms
from lkice.report.views import number as _num
from lkice.report.views import percent as _pct
from lkice.textsafe import clipped, visible, visible_report

__all__ = ["render"]

# The waterfall draws every step before the verdict, one after the other (the release comes
# after it): a web proxy's CONNECT round trip sits between the TCP connect and TLS.
SETUP_PHASES = tuple(k for k in TIMING_KEYS if k != "deallocate")
SIGNAL_PHASES = SIGNAL_STEPS
PHASE_COLOURS = {
    "dns": "#9a9a9a",
    "connect": "#4e79a7",
    "proxy": "#8c6d31",
    "tls": "#f28e2b",
    "binding": "#59a14f",
    "allocate_challenge": "#b07aa1",
    "allocate": "#76b7b2",
    "validate": "#edc948",
    "websocket": "#ff9da7",
    "join": "#9c755f",
    "ice": "#2f5d8a",
    "dtls": "#e15759",
}
PHASE_SHORT = {
    "dns": "dns",
    "connect": "conn",
    "proxy": "proxy",
    "tls": "tls",
    "binding": "bind",
    "allocate_challenge": "chal",
    "allocate": "alloc",
    "validate": "valid",
    "websocket": "ws",
    "join": "join",
    "ice": "ice",
    "dtls": "dtls",
}
SERIES_COLOUR = "#1f6fd1"  # the probe train's RTT line
ECHO_COLOUR = "#7b3fb8"  # the relay echo's RTT line
LOST_COLOUR = "#d62728"
STALL_COLOUR = "#f5a623"
TRAINS: tuple[Literal["quality", "relay_quality"], ...] = ("quality", "relay_quality")
TIMES = "\u00d7"  # the multiplication sign, as in "12 x 68 ms"

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
  background: #fff; margin: 0 auto; max-width: 1100px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 2px solid #ddd; padding-bottom: 3px; }
h3 { font-size: 15px; margin: 0 0 4px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12.5px; }
header.head { border: 2px solid #999; border-left-width: 10px; padding: 10px 14px;
  border-radius: 4px; }
header.verdict-ok { border-color: #2e7d32; }
header.verdict-degraded { border-color: #c77700; }
header.verdict-failed { border-color: #b00020; }
.badge { display: inline-block; font-weight: 700; letter-spacing: .03em; padding: 1px 8px;
  border: 2px solid currentColor; border-radius: 3px; }
.verdict-ok .badge { color: #2e7d32; } .verdict-degraded .badge { color: #a86400; }
.verdict-failed .badge { color: #b00020; }
.interrupted { font-weight: 700; color: #b00020; border: 2px dashed #b00020; padding: 4px 8px; }
.redacted { font-style: italic; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0 0; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
ul.plain { margin: 0; padding-left: 18px; }
nav.toc { margin: 10px 0 0; font-size: 13px; }
nav.toc a { margin-right: 12px; color: #1f4e8c; }
.finding { border: 1px solid #ccc; border-left: 8px solid #888; padding: 8px 12px;
  margin: 8px 0; border-radius: 3px; break-inside: avoid; }
.finding .sev { font-weight: 700; margin-right: 6px; }
.sev-critical { border-left-color: #b00020; } .sev-critical .sev { color: #b00020; }
.sev-warning { border-left-color: #c77700; } .sev-warning .sev { color: #a86400; }
.sev-info { border-left-color: #1f5fa8; } .sev-info .sev { color: #1f5fa8; }
.finding p { margin: 4px 0; } .finding ul { margin: 4px 0; }
.fid { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td.result { color: #b00020; font-weight: 600; }
tr.ok td.result { color: #2e7d32; font-weight: 600; }
tr.echo td { color: #444; }
figure { margin: 12px 0 20px; break-inside: avoid; }
figcaption { margin-bottom: 4px; }
figcaption .stats { color: #333; font-size: 13px; }
svg.chart { display: block; width: 100%; height: auto; border: 1px solid #e3e3e3;
  background: #fff; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .grid { stroke: #ececec; stroke-width: 1; }
svg .seg-label { fill: #fff; font-size: 10px; }
ul.legend { list-style: none; padding: 0; margin: 4px 0; font-size: 12.5px; }
ul.legend li { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: -2px;
  margin-right: 4px; border: 1px solid #555; }
.details li { margin: 2px 0; } .error { color: #b00020; }
.muted { color: #666; }
footer { margin-top: 32px; color: #666; font-size: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav.toc { display: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; }
  section { break-inside: auto; }
}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    """Escape for HTML text and double-quoted attributes alike; control and bidi characters
    are shown as escapes, so no value can reorder or hide the text around it."""
    return html.escape(visible(str(value)), quote=True)


# No setup step or RTT takes 11 days: a larger value (a hostile or broken report) is drawn at
# this bound, so a chart's sums and scales stay finite.
_CHART_MAX = 1e9


def _chart(value: float) -> float:
    return min(value, _CHART_MAX)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _f(value: float) -> str:
    """A coordinate, short."""
    if not math.isfinite(value):
        return "0"
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / count
    if not 0 < raw < math.inf:  # also a span so small that raw underflows to 0
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def _ticks(top: float, count: int = 5) -> tuple[float, list[float]]:
    """A rounded axis maximum at or above ``top`` and the ticks up to it."""
    step = _nice_step(top, count)
    end = step * max(1, math.ceil(top / step - 1e-9))
    ticks = [step * i for i in range(round(end / step) + 1)]
    return end, ticks


def _tick_label(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.3g}"


def _path_label(path: PathDoc) -> str:
    label = f"{path.get('kind', '?')} {path.get('server', '?')} {path.get('transport', '?')}"
    if path.get("kind") == "sfu":  # the same SFU is reached directly and through each relay
        label += " (relayed)" if path.get("relay") else " (direct)"
    if path.get("proxy"):
        label += f" through the web proxy {path['proxy']}"
    return label


# --------------------------------------------------------------------------- the document


def render(doc: ReportDoc, *, redact: bool = False) -> str:
    """The report as one HTML document; ``redact`` replaces hosts and public addresses first."""
    if redact:
        doc = redact_report(doc)
    # After redaction, which reads the strings as they came. A report reaches this view only
    # validated (lkice.intake) or written by lkice; numbers are still drawn within bounds.
    report: ReportDoc = clipped(visible_report(doc))
    paths = report.get("paths") or []
    verdict = str(report.get("verdict", "unknown"))
    body: list[str] = [_header(report, paths, redacted=redact)]
    if "findings" in report:
        body.append(_findings(report.get("findings")))
    if "recommendation" in report:
        body.append(_recommendation(report.get("recommendation")))
    body.append(_paths_section(paths))
    signal: SignalDoc = report.get("signal") or {}
    if signal or report.get("regions"):
        body.append(_signal_section(signal, report.get("regions") or []))
    body.append(_setup_section(signal, paths))
    body.append(_quality_section(paths))
    version = report.get("lkice_version", "?")
    body.append(
        f"<footer>Generated by lkice {_e(version)} from a report with schema "
        f"{_e(report.get('schema', '?'))}. Times in milliseconds.</footer>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="lkice {_e(version)}">\n'
        f"<title>lkice report: {_e(verdict.upper())}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _header(report: ReportDoc, paths: list[PathDoc], *, redacted: bool) -> str:
    verdict = str(report.get("verdict", "unknown"))
    css = verdict if verdict in VERDICTS else "unknown"
    summary = report.get("summary") or {}
    total = summary.get("paths", len(paths))
    usable = summary.get("ok", sum(1 for p in paths if p.get("ok")))
    out = [
        f'<header class="head verdict-{css}" id="summary">',
        "<h1>lkice: ICE/TURN connectivity report</h1>",
        f'<p class="verdict"><span class="badge">Verdict: {_e(verdict.upper())}</span> '
        f"{_e(usable)} of {_e(total)} paths usable, {_ms(report.get('duration_ms'))} ms</p>",
    ]
    if report.get("interrupted"):
        out.append(
            '<p class="interrupted">INTERRUPTED: this is a partial report; '
            "paths not finished are marked as such.</p>"
        )
    if redacted:
        out.append(
            '<p class="redacted">Redacted: host names and public IP addresses are replaced '
            "by placeholders (host-N, ip-N); the same placeholder means the same value.</p>"
        )
    agent = report.get("agent") or {}
    facts = [
        ("Started", _e(report.get("started_at", "?"))),
        ("lkice version", _e(report.get("lkice_version", "?"))),
    ]
    if agent:
        facts.append(("Agent", _e(f"{agent.get('os', '?')}, Python {agent.get('python', '?')}")))
    targets = [str(t) for t in report.get("targets") or []]
    items = "".join(f"<li><code>{_e(t)}</code></li>" for t in targets) or "<li>none</li>"
    facts.append(("Targets", f'<ul class="plain">{items}</ul>'))
    out.append('<dl class="meta">')
    out += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts]
    out.append("</dl>")
    links = [("findings", "Findings"), ("recommendation", "Recommendation")]
    links = [(a, t) for a, t in links if a in report]
    links += [("paths", "Paths"), ("setup", "Setup times"), ("quality", "Quality")]
    out.append(
        '<nav class="toc">' + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"
    )
    out.append("</header>")
    return "\n".join(out)


# --------------------------------------------------------------------------- findings


def _findings(value: list[FindingDoc] | None) -> str:
    out = ['<section id="findings">', "<h2>Findings</h2>"]
    findings = list(value or [])
    if not findings:
        out.append("<p>No findings: nothing stood out.</p>")
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order.get(str(f.get("severity")), len(order)))
    for finding in findings:
        severity = str(finding.get("severity", "info"))
        css = severity if severity in SEVERITIES else "info"
        out.append(f'<article class="finding sev-{css}">')
        out.append(
            f'<h3><span class="sev">[{_e(severity.upper())}]</span>'
            f"{_e(finding.get('summary', ''))}</h3>"
        )
        if finding.get("impact"):
            out.append(f'<p class="impact"><strong>Impact:</strong> {_e(finding["impact"])}</p>')
        evidence = [str(x) for x in finding.get("evidence") or []]
        if evidence:
            out.append(
                '<p class="evidence-head"><strong>Evidence:</strong></p><ul class="evidence">'
                + "".join(f"<li>{_e(x)}</li>" for x in evidence)
                + "</ul>"
            )
        if finding.get("advice"):
            out.append(f'<p class="advice"><strong>Advice:</strong> {_e(finding["advice"])}</p>')
        if finding.get("id"):
            out.append(f'<p class="fid">finding id: <code>{_e(finding["id"])}</code></p>')
        out.append("</article>")
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- recommendation


def _recommendation(value: RecommendationDoc | None) -> str:
    out = ['<section id="recommendation">', "<h2>Recommendation</h2>"]
    rec: RecommendationDoc = value or {}
    if not rec:
        out.append(
            '<p class="no-rec">No recommendation: no region and transport was measured '
            "well enough to recommend one.</p></section>"
        )
        return "\n".join(out)
    where = [
        f"region <strong>{_e(rec['region'])}</strong>" if rec.get("region") else "",
        f"transport <strong>{_e(rec['transport'])}</strong>" if rec.get("transport") else "",
        f"server <code>{_e(rec['server'])}</code>" if rec.get("server") else "",
        f"through the web proxy <code>{_e(rec['proxy'])}</code>" if rec.get("proxy") else "",
    ]
    text = ", ".join(w for w in where if w) or "the paths below"
    out.append(f'<p class="rec">Recommended: {text}.</p>')
    if rec.get("reason"):
        out.append(f'<p class="reason">{_e(rec["reason"])}</p>')
    ranking = rec.get("ranking") or []
    if ranking:
        out.append(
            '<figure class="ranking"><figcaption><strong>Region ranking</strong> '
            '<span class="stats">(round-trip time per region; hatched bars are unusable)'
            "</span></figcaption>"
        )
        out.append(_ranking_chart(ranking, rec))
        out.append("</figure>")
        out.append(_ranking_table(ranking, rec))
    out.append("</section>")
    return "\n".join(out)


def _is_recommended(row: RankingDoc, rec: RecommendationDoc) -> bool:
    return bool(
        row.get("usable")
        and row.get("region") == rec.get("region")
        and (rec.get("transport") is None or row.get("transport") == rec.get("transport"))
    )


def _ranking_chart(ranking: list[RankingDoc], rec: RecommendationDoc) -> str:
    width, left, right, top, row_h = 900, 230, 250, 26, 24
    height = top + row_h * len(ranking) + 10
    values = [_chart(v) for v in (_num(r.get("rtt_ms")) for r in ranking) if v is not None]
    end, ticks = _ticks(max(values, default=1.0) or 1.0, 5)
    span = width - left - right
    scale = span / end
    out = [
        f'<svg class="chart ranking-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Round-trip time per region">',
        "<defs>"
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#777" stroke-width="2.5"/></pattern>'
        "</defs>",
    ]
    for tick in ticks:
        x = left + tick * scale
        out.append(
            f'<line class="grid" x1="{_f(x)}" y1="{top - 4}" x2="{_f(x)}" y2="{height - 8}"/>'
            f'<text x="{_f(x)}" y="{top - 8}" text-anchor="middle">{_tick_label(tick)}</text>'
        )
    out.append(f'<text x="{left - 8}" y="{top - 8}" text-anchor="end">RTT (ms)</text>')
    for i, row in enumerate(ranking):
        y = top + i * row_h
        usable = bool(row.get("usable"))
        best = _is_recommended(row, rec)
        label = _clip(f"{row.get('region', '?')} · {row.get('transport') or '-'}", 34)
        weight = ' font-weight="700"' if best else ""
        out.append(
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end"{weight}>'
            f"{'★ ' if best else ''}{_e(label)}</text>"
        )
        rtt = _num(row.get("rtt_ms"))
        bar_end = float(left)
        if rtt is not None:
            w = max(1.5, _chart(rtt) * scale)
            fill = SERIES_COLOUR if usable else "url(#hatch)"
            stroke = "#1b4f95" if usable else "#555"
            out.append(
                f'<rect class="bar {"usable" if usable else "unusable"}" x="{left}" y="{y + 4}" '
                f'width="{_f(w)}" height="{row_h - 8}" fill="{fill}" stroke="{stroke}">'
                f"<title>{_e(row.get('region', '?'))}: {_ms(rtt)} ms</title></rect>"
            )
            bar_end = left + w
        note = f"{_ms(rtt)} ms" if rtt is not None else "no RTT"
        if best:
            note += " — recommended"
        if not usable:
            note += " — UNUSABLE"
            if row.get("why"):
                note += f": {_clip(str(row['why']), 40)}"
        out.append(f'<text x="{_f(bar_end + 6)}" y="{y + 16}">{_e(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _ranking_table(ranking: list[RankingDoc], rec: RecommendationDoc) -> str:
    head = ["#", "region", "usable", "via", "server", "RTT", "jitter", "loss", "stall", "MOS"]
    numeric = {"#", "RTT", "jitter", "loss", "stall", "MOS"}
    out = [
        '<table class="ranking-table"><thead><tr>'
        + "".join(f"<th{' class=num' if h in numeric else ''}>{h}</th>" for h in head)
        + "<th>why</th></tr></thead><tbody>"
    ]
    for i, row in enumerate(ranking, 1):
        mos = _num(row.get("mos"))
        star = " ★" if _is_recommended(row, rec) else ""
        cells = [
            f'<td class="num">{i}{star}</td>',
            f"<td>{_e(row.get('region', '?'))}</td>",
            f"<td>{'yes' if row.get('usable') else 'NO'}</td>",
            f"<td>{_e(row.get('transport') or '-')}</td>",
            f"<td><code>{_e(row.get('server') or '-')}</code></td>",
            f'<td class="num">{_ms(row.get("rtt_ms"))}</td>',
            f'<td class="num">{_ms(row.get("jitter_ms"))}</td>',
            f'<td class="num">{_pct(row.get("loss"))}</td>',
            f'<td class="num">{_ms(row.get("hol_max_stall_ms"))}</td>',
            f'<td class="num">{"-" if mos is None else f"{mos:.1f}"}</td>',
            f"<td>{_e(row.get('why') or '')}</td>",
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append('<p class="muted">RTT, jitter and stall (longest head-of-line stall) in ms.</p>')
    return "\n".join(out)


# --------------------------------------------------------------------------- paths


def _paths_section(paths: list[PathDoc]) -> str:
    out = ['<section id="paths">', "<h2>Paths</h2>"]
    if not paths:
        out.append("<p>No paths were probed.</p></section>")
        return "\n".join(out)
    through_proxy = any((p.get("timings_ms") or {}).get("proxy") is not None for p in paths)
    phases = [p for p in SETUP_PHASES if p != "proxy" or through_proxy]
    if any(p.get("kind") == "sfu" for p in paths):
        phases += ["ice", "dtls"]
    with_region = any(p.get("region") for p in paths)
    head = ["kind", *(["region"] if with_region else []), "server", "via", "result"]
    out.append(
        '<table class="paths-table"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "".join(f'<th class="num" title="{p}">{PHASE_SHORT[p]}</th>' for p in phases)
        + "</tr></thead><tbody>"
    )
    for path in paths:
        timings: Mapping[str, object] = path.get("timings_ms") or {}
        error: ErrorDoc = path.get("error") or {}
        ok = bool(path.get("ok"))
        result = "ok" if ok else str(error.get("kind", "failed"))
        if not ok and error.get("phase"):
            result += f" ({error['phase']})"
        cells = [f"<td>{_e(path.get('kind', '?'))}</td>"]
        if with_region:
            cells.append(f"<td>{_e(path.get('region') or '-')}</td>")
        cells += [
            f"<td><code>{_e(path.get('server', '?'))}</code></td>",
            f"<td>{_e(path.get('transport', '?'))}</td>",
            f'<td class="result">{"✓ " if ok else "✗ "}{_e(result)}</td>',
        ]
        cells += [f'<td class="num">{_ms(timings.get(p))}</td>' for p in phases]
        out.append(f'<tr class="{"ok" if ok else "fail"}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="muted">Setup steps in ms: '
        + ", ".join(f"{PHASE_SHORT[p]} = {p.replace('_', ' ')}" for p in phases)
        + (
            ". For SFU paths ice and dtls count from the start of negotiation."
            if "ice" in phases
            else "."
        )
        + "</p>"
    )
    details = _path_details(paths)
    if details:
        out.append('<h3>Details</h3><ul class="details">' + "".join(details) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _path_details(paths: list[PathDoc]) -> list[str]:
    out: list[str] = []
    for path in paths:
        where = f"{path.get('server', '?')} {path.get('transport', '?')}"
        address = path.get("address")
        if address and address != path.get("server"):
            where += f" ({address})"
        if path.get("kind") == "sfu" and path.get("relay"):
            where += f" via relay {path['relay']}"
        error: ErrorDoc = path.get("error") or {}
        items: list[str] = []
        if error:
            items.append(f'<span class="error">✗ {_e(error.get("message", "failed"))}</span>')
        elif path.get("relayed_address"):
            items.append(
                f"✓ relay <code>{_e(path['relayed_address'])}</code>, mapped "
                f"<code>{_e(path.get('mapped_address') or '-')}</code>"
            )
        elif path.get("mapped_address"):
            items.append(f"✓ mapped <code>{_e(path['mapped_address'])}</code>")
        if path.get("server_software"):
            items.append(f"server software: {_e(path['server_software'])}")
        tls: TlsDoc = path.get("tls") or {}
        if tls:
            verified = "verified" if tls.get("verified") else "NOT verified"
            items.append(
                f"TLS {_e(tls.get('version', '?'))}, {_e(verified)}, issuer "
                f"{_e(tls.get('issuer', '?'))}"
            )
        items += [f"note: {_e(n)}" for n in path.get("notes") or []]
        if items:
            out.append(
                f"<li><strong>{_e(path.get('kind', '?'))} <code>{_e(where)}</code></strong>"
                f'<ul class="plain"><li>' + "</li><li>".join(items) + "</li></ul></li>"
            )
    return out


def _signal_section(signal: SignalDoc, regions: list[RegionDoc]) -> str:
    out = ['<section id="signal">', "<h2>LiveKit signaling</h2>"]
    if signal:
        ok = bool(signal.get("ok"))
        out.append(
            f"<p><code>{_e(signal.get('url', '?'))}</code>: "
            f"<strong>{'✓ ok' if ok else '✗ FAILED'}</strong></p>"
        )
        items: list[str] = []
        server: Mapping[str, object] = signal.get("server") or {}
        facts = [f"{k} {v}" for k, v in server.items() if v]
        if facts:
            items.append("server: " + _e(", ".join(facts)))
        steps = [
            f"{k} {_ms(v)}" for k, v in (signal.get("timings_ms") or {}).items() if v is not None
        ]
        if steps:
            items.append(_e("  ".join(steps)) + " (ms)")
        error: ErrorDoc = signal.get("error") or {}
        if error:
            items.append(f'<span class="error">✗ {_e(error.get("message", "failed"))}</span>')
        for entry in signal.get("ice_servers") or []:
            urls = ", ".join(str(u) for u in entry.get("urls") or [])
            auth = " (with credentials)" if entry.get("credentials") else ""
            items.append(f"ICE server: <code>{_e(urls)}</code>{auth}")
        if signal.get("force_relay"):
            items.append("the server asks clients to force relay (TURN)")
        items += [f"note: {_e(n)}" for n in signal.get("notes") or []]
        out.append('<ul class="details">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    rows = regions
    if rows:
        out.append(
            '<table class="regions-table"><thead><tr><th>region</th><th>url</th>'
            '<th class="num">distance</th><th>signaling</th><th class="num">join</th>'
            "</tr></thead><tbody>"
        )
        for row in rows:
            sig: SignalDoc = row.get("signal") or {}
            state = (
                "✓ ok"
                if sig.get("ok")
                else "✗ " + str((sig.get("error") or {}).get("kind", "failed"))
            )
            out.append(
                f"<tr><td>{_e(row.get('region', '?'))}</td><td><code>{_e(row.get('url', '?'))}"
                f'</code></td><td class="num">{_e(row.get("distance") if row.get("distance") is not None else "-")}</td>'
                f'<td>{_e(state)}</td><td class="num">{_ms((sig.get("timings_ms") or {}).get("join"))}</td></tr>'
            )
        out.append("</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- setup waterfall


def _segments(
    timings: Mapping[str, object], phases: Sequence[str]
) -> list[tuple[str, float, float]]:
    """(phase, start, duration) for the sequential steps that have a time."""
    out: list[tuple[str, float, float]] = []
    at = 0.0
    for phase in phases:
        value = _num(timings.get(phase))
        if value is None or value < 0:
            continue
        value = _chart(value)
        out.append((phase, at, value))
        at += value
    return out


def _path_segments(path: PathDoc) -> list[tuple[str, float, float]]:
    timings: Mapping[str, object] = path.get("timings_ms") or {}
    segments = _segments(timings, SETUP_PHASES)
    if path.get("kind") == "sfu":
        # ICE and DTLS both count from the start of negotiation: DTLS is what follows ICE.
        at = sum(d for _, _, d in segments)
        ice, dtls = (_num(timings.get(key)) for key in ("ice", "dtls"))
        ice = None if ice is None else _chart(ice)
        dtls = None if dtls is None else _chart(dtls)
        if ice is not None:
            segments.append(("ice", at, ice))
        if dtls is not None:
            start = at + (ice or 0.0)
            segments.append(("dtls", start, max(0.0, at + dtls - start)))
    return segments


def _setup_section(signal: SignalDoc, paths: list[PathDoc]) -> str:
    rows: list[tuple[str, str, list[tuple[str, float, float]], str]] = []
    if signal:
        fail = "" if signal.get("ok") else _fail_note(signal.get("error") or {})
        label = f"signaling {signal.get('url', '?')}"
        rows.append(
            (label, "signal", _segments(signal.get("timings_ms") or {}, SIGNAL_PHASES), fail)
        )
    for path in paths:
        fail = "" if path.get("ok") else _fail_note(path.get("error") or {})
        rows.append((_path_label(path), str(path.get("kind", "?")), _path_segments(path), fail))
    out = ['<section id="setup">', "<h2>Setup times (waterfall)</h2>"]
    if not rows:
        out.append("<p>Nothing to show: no signaling and no paths.</p></section>")
        return "\n".join(out)
    used = [p for p in PHASE_COLOURS if any(p == s[0] for r in rows for s in r[2])]
    out.append(
        '<figure class="waterfall"><figcaption><strong>Candidate gathering and setup</strong> '
        '<span class="stats">(each step one after the other, in ms; ✗ marks where a path '
        "failed)</span></figcaption>"
    )
    out.append(_waterfall_chart(rows))
    out.append(_legend((PHASE_COLOURS[p], p.replace("_", " ")) for p in used))
    out.append("</figure></section>")
    return "\n".join(out)


def _fail_note(error: ErrorDoc) -> str:
    note = f"✗ {error.get('kind', 'failed')}"
    if error.get("phase"):
        note += f" at {error['phase']}"
    return note


def _legend(entries: Iterable[tuple[str, str]]) -> str:
    return (
        '<ul class="legend">'
        + "".join(
            f'<li><span class="swatch" style="background:{colour}"></span>{_e(name)}</li>'
            for colour, name in entries
        )
        + "</ul>"
    )


def _waterfall_chart(rows: list[tuple[str, str, list[tuple[str, float, float]], str]]) -> str:
    width, left, right, top, row_h = 900, 290, 150, 28, 24
    height = top + row_h * len(rows) + 10
    total = max((s + d for _, _, segs, _ in rows for _, s, d in segs), default=0.0)
    end, ticks = _ticks(total or 1.0, 6)
    scale = (width - left - right) / end
    out = [
        f'<svg class="chart waterfall-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Setup steps per path">'
    ]
    for tick in ticks:
        x = left + tick * scale
        out.append(
            f'<line class="grid" x1="{_f(x)}" y1="{top - 4}" x2="{_f(x)}" y2="{height - 8}"/>'
            f'<text x="{_f(x)}" y="{top - 9}" text-anchor="middle">{_tick_label(tick)}</text>'
        )
    out.append(f'<text x="{left - 8}" y="{top - 9}" text-anchor="end">ms</text>')
    for i, (label, kind, segments, fail) in enumerate(rows):
        y = top + i * row_h
        out.append(
            f'<g class="row row-{_e(kind if kind in ("signal", "stun", "turn", "sfu") else "other")}">'
            f"<title>{_e(label)}</title>"
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(_clip(label, 44))}</text>'
        )
        bar_end = float(left)
        for phase, start, duration in segments:
            x, w = left + start * scale, max(duration * scale, 1.0)
            out.append(
                f'<rect class="seg seg-{phase}" x="{_f(x)}" y="{y + 4}" width="{_f(w)}" '
                f'height="{row_h - 8}" fill="{PHASE_COLOURS[phase]}" stroke="#fff" '
                f'stroke-width="0.5"><title>{phase.replace("_", " ")}: {_ms(duration)} ms '
                f"(from {_ms(start)} ms)</title></rect>"
            )
            if w >= 34:
                out.append(
                    f'<text class="seg-label" x="{_f(x + w / 2)}" y="{y + 15.5}" '
                    f'text-anchor="middle">{PHASE_SHORT[phase]}</text>'
                )
            bar_end = max(bar_end, x + w)
        done = sum(d for _, _, d in segments)
        note = f"{_ms(done)} ms" if segments else "no timings"
        if fail:
            note += f"  {fail}"
        colour = ' fill="#b00020"' if fail else ""
        out.append(f'<text x="{_f(bar_end + 6)}" y="{y + 16}"{colour}>{_e(note)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- quality


def _quality_section(paths: list[PathDoc]) -> str:
    out = ['<section id="quality">', "<h2>Path quality (probe trains)</h2>"]
    entries: list[tuple[int, PathDoc, str, QualityDoc]] = []
    for i, path in enumerate(paths):
        for which in TRAINS:
            quality = path.get(which)
            if quality:
                entries.append((i, path, which, quality))
    if not entries:
        out.append("<p>No quality measurements in this report.</p></section>")
        return "\n".join(out)
    entries.sort(key=lambda e: (e[0], e[2] != "quality"))
    out.append(_quality_table(entries))
    for i, path, train, quality in entries:
        out.append(_timeline(i, path, train, quality))
    out.append("</section>")
    return "\n".join(out)


def _stall_text(hol: HolDoc | None) -> str:
    if hol is None:
        return "n/a"
    if hol.get("detected"):
        return f"{_e(hol.get('stalls', '?'))}{TIMES}{_ms(hol.get('max_stall_ms'))}"
    return "none"


def _quality_table(entries: list[tuple[int, PathDoc, str, QualityDoc]]) -> str:
    head = [
        "path",
        "series",
        "via",
        "n",
        "recv",
        "p50",
        "p95",
        "p99",
        "jitter",
        "loss",
        "stalls",
        "MOS",
    ]
    out = [
        '<table class="quality-table"><thead><tr>'
        + "".join(f"<th{' class=num' if j >= 3 else ''}>{h}</th>" for j, h in enumerate(head))
        + "</tr></thead><tbody>"
    ]
    for _, path, which, q in entries:
        rtt: RttDoc = q.get("rtt_ms") or {}
        mos = _num(q.get("mos"))
        series = "relay echo" if which == "relay_quality" else "probe train"
        cells = [
            f"<td>{_e(path.get('kind', '?'))} <code>{_e(path.get('server', '?'))}</code></td>",
            f"<td>{series}</td>",
            f"<td>{_e(path.get('transport', '?'))}</td>",
            f'<td class="num">{_e(q.get("samples", "-"))}</td>',
            f'<td class="num">{_e(q.get("received", "-"))}</td>',
            *(f'<td class="num">{_ms(rtt.get(k))}</td>' for k in ("p50", "p95", "p99")),
            f'<td class="num">{_ms(q.get("jitter_ms"))}</td>',
            f'<td class="num">{_pct(q.get("loss"))}</td>',
            f'<td class="num">{_stall_text(q.get("hol"))}</td>',
            f'<td class="num">{"-" if mos is None else f"{mos:.2f}"}</td>',
        ]
        css = ' class="echo"' if which == "relay_quality" else ""
        out.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="muted">RTT and jitter in ms; n probes sent, recv answered; stalls: '
        "head-of-line stalls &times; the longest (TCP/TLS only, n/a over UDP); relay echo: data "
        "through the TURN relay and back over the path's transport both ways.</p>"
    )
    return "\n".join(out)


def stall_threshold(median: float) -> float:
    """RTT above which a probe counts as stalled in the chart: median + max(15, median/4) ms."""
    return median + max(15.0, median / 4)


def stall_intervals(
    sent: Sequence[float], rtt: Sequence[float | None], threshold: float
) -> list[tuple[float, float, int, float]]:
    """Runs of consecutive probes above ``threshold``: (x from, x to, probes, highest RTT).

    A run covers its probes' send times and half the gap to each neighbour."""
    out: list[tuple[float, float, int, float]] = []
    n = len(sent)
    i = 0
    while i < n:
        value = rtt[i]
        if value is None or value <= threshold:
            i += 1
            continue
        j = i
        peak = value
        while j + 1 < n and (nxt := rtt[j + 1]) is not None and nxt > threshold:
            j += 1
            peak = max(peak, nxt)
        lo = sent[i] - ((sent[i] - sent[i - 1]) / 2 if i > 0 else 0.0)
        hi = sent[j] + ((sent[j + 1] - sent[j]) / 2 if j + 1 < n else 0.0)
        out.append((lo, hi, j - i + 1, peak))
        i = j + 1
    return out


def _series(quality: QualityDoc) -> tuple[list[float], list[float | None]]:
    series = quality.get("series") or {}
    sent_raw, rtt_raw = series.get("sent_ms") or [], series.get("rtt_ms") or []
    sent: list[float] = []
    rtt: list[float | None] = []
    for s, r in zip(sent_raw, rtt_raw, strict=False):
        x, y = _num(s), _num(r)
        if x is None:
            continue
        sent.append(_chart(x))
        rtt.append(None if y is None else _chart(y))
    return sent, rtt


def _timeline(index: int, path: PathDoc, which: str, quality: QualityDoc) -> str:
    echo = which == "relay_quality"
    colour = ECHO_COLOUR if echo else SERIES_COLOUR
    name = "relay echo" if echo else "probe train"
    sent, rtt = _series(quality)
    received = [r for r in rtt if r is not None]
    rtt_stats: RttDoc = quality.get("rtt_ms") or {}
    p50 = _num(rtt_stats.get("p50"))
    median = statistics.median(received) if received else None if p50 is None else _chart(p50)
    threshold = stall_threshold(median) if median is not None else None
    intervals = stall_intervals(sent, rtt, threshold) if threshold is not None else []
    lost = sum(1 for r in rtt if r is None)

    mos = _num(quality.get("mos"))
    stats = (
        f"{_e(quality.get('samples', '?'))} probes, {_e(quality.get('received', '?'))} answered, "
        f"loss {_pct(quality.get('loss'))}; RTT p50 {_ms(rtt_stats.get('p50'))}, "
        f"p95 {_ms(rtt_stats.get('p95'))}, p99 {_ms(rtt_stats.get('p99'))}, "
        f"max {_ms(rtt_stats.get('max'))} ms; jitter {_ms(quality.get('jitter_ms'))} ms; "
        f"MOS {'-' if mos is None else f'{mos:.2f}'}"
    )
    hol = quality.get("hol")
    if hol is None:
        hol_text = (
            "Head-of-line stalls: not measured (detection applies to TCP/TLS transports only)."
        )
    elif hol.get("detected"):
        hol_text = (
            f"Head-of-line stalls: <strong>{_e(hol.get('stalls', '?'))}</strong>, longest "
            f"<strong>{_ms(hol.get('max_stall_ms'))} ms</strong>, "
            f"{_pct(hol.get('stalled_fraction'))} of the time stalled."
        )
    else:
        hol_text = "Head-of-line stalls: none detected."
    shaded = ""
    if threshold is not None and sent:
        shaded = (
            f" Shaded: {len(intervals)} interval{'s' if len(intervals) != 1 else ''} with RTT "
            f"above {_ms(threshold)} ms (median {_ms(median)} + max(15, median/4))."
        )
    title = f"{_path_label(path)}: {name}"
    if echo:
        title += " (through the TURN relay and back)"
    out = [
        f'<figure class="timeline" id="timeline-{index}-{"relay" if echo else "quality"}" '
        f'data-path="{index}" data-series="{"relay" if echo else "quality"}">',
        f"<figcaption><strong>{_e(title)}</strong><br>"
        f'<span class="stats">{stats}.</span><br>'
        f'<span class="stats hol">{hol_text}{_e(shaded)}</span></figcaption>',
    ]
    if not sent:
        out.append('<p class="muted">No per-probe series in this report.</p></figure>')
        return "\n".join(out)
    out.append(_timeline_chart(sent, rtt, intervals, median, threshold, colour, title))
    legend = [(colour, f"RTT ({name})")]
    if lost:
        legend.append((LOST_COLOUR, f"{TIMES} lost probe ({lost})"))
    if intervals:
        legend.append((STALL_COLOUR, "shaded: RTT far above the median (stall)"))
    out.append(_legend(legend))
    out.append("</figure>")
    return "\n".join(out)


def _timeline_chart(
    sent: list[float],
    rtt: list[float | None],
    intervals: list[tuple[float, float, int, float]],
    median: float | None,
    threshold: float | None,
    colour: str,
    title: str,
) -> str:
    width, height = 900, 230
    left, right, top, bottom = 56, 14, 16, 36
    pw, ph = width - left - right, height - top - bottom
    received = [r for r in rtt if r is not None]
    x_end, x_ticks = _ticks(max(sent[-1], max(sent), 1.0), 8)
    y_top = max([*received, threshold or 0.0], default=1.0) * 1.05
    y_end, y_ticks = _ticks(y_top or 1.0, 5)

    def px(x: float) -> float:
        return left + x / x_end * pw

    def py(y: float) -> float:
        return top + ph - min(y, y_end) / y_end * ph

    out = [
        f'<svg class="chart timeline-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>',
    ]
    for tick in y_ticks:
        y = py(tick)
        out.append(
            f'<line class="grid" x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}"/>'
            f'<text x="{left - 5}" y="{_f(y + 4)}" text-anchor="end">{_tick_label(tick)}</text>'
        )
    for tick in x_ticks:
        x = px(tick)
        out.append(
            f'<line class="axis" x1="{_f(x)}" y1="{top + ph}" x2="{_f(x)}" y2="{top + ph + 4}"/>'
            f'<text x="{_f(x)}" y="{top + ph + 16}" text-anchor="middle">{_tick_label(tick)}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">'
        "probe sent at (ms since the first)</text>"
        f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2})">RTT (ms)</text>'
    )
    for lo, hi, count, peak in intervals:
        x0, x1 = px(lo), px(hi)
        out.append(
            f'<rect class="stall" x="{_f(x0)}" y="{top}" width="{_f(max(x1 - x0, 2.0))}" '
            f'height="{ph}" fill="{STALL_COLOUR}" fill-opacity="0.28">'
            f"<title>stall: {count} probe{'s' if count != 1 else ''} from {_ms(lo)} to "
            f"{_ms(hi)} ms, up to {_ms(peak)} ms RTT</title></rect>"
        )
    if median is not None:
        y = py(median)
        out.append(
            f'<line class="median" x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" '
            f'stroke="#555" stroke-dasharray="2 3"><title>median {_ms(median)} ms</title></line>'
        )
    if threshold is not None and intervals:
        y = py(threshold)
        out.append(
            f'<line class="threshold" x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" '
            f'stroke="#a86400" stroke-dasharray="6 4"><title>stall threshold {_ms(threshold)} ms'
            "</title></line>"
        )
    run: list[str] = []
    runs: list[list[str]] = []
    for t, v in zip(sent, rtt, strict=True):
        if v is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(f"{_f(px(t))},{_f(py(v))}")
    if run:
        runs.append(run)
    for points in runs:
        if len(points) == 1:
            dot_x, dot_y = points[0].split(",")
            out.append(f'<circle class="rtt" cx="{dot_x}" cy="{dot_y}" r="2" fill="{colour}"/>')
        else:
            out.append(
                f'<polyline class="rtt" points="{" ".join(points)}" fill="none" '
                f'stroke="{colour}" stroke-width="1.6" stroke-linejoin="round"/>'
            )
    for t, v in zip(sent, rtt, strict=True):
        if v is not None:
            continue
        cx, cy = px(t), top + 7.0
        out.append(
            f'<path class="lost" d="M{_f(cx - 4)} {_f(cy - 4)}L{_f(cx + 4)} {_f(cy + 4)}'
            f'M{_f(cx - 4)} {_f(cy + 4)}L{_f(cx + 4)} {_f(cy - 4)}" stroke="{LOST_COLOUR}" '
            f'stroke-width="2"><title>lost probe sent at {_ms(t)} ms</title></path>'
        )
    out.append("</svg>")
    return "\n".join(out)
