"""The HTML report: pure checks on the markup, then the real thing in a headless Chromium.

The browser tests use Debian's chromium (/usr/bin/chromium) through the playwright package; no
browser is downloaded. They load the report from a file:// URL and check that it makes no request,
logs no error, and that the charts are really drawn (pixels in the screenshot).
"""

from __future__ import annotations

import copy
import json
import re
import struct
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lkice.render import html as html_render
from lkice.render.html import render, stall_intervals, stall_threshold
from tests.conftest import as_doc
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Route

DATA = Path(__file__).parent / "data" / "report-html.json"
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def _report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(DATA.read_text("utf-8"))
    return report


def _timelines(report: dict[str, Any]) -> int:
    return sum(1 for p in report["paths"] for k in ("quality", "relay_quality") if p.get(k))


class _Elements(HTMLParser):
    """Tags and attributes as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.ids: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
            if name == "class" and value:
                self.classes += value.split()


def _parse(document: str) -> _Elements:
    parser = _Elements()
    parser.feed(document)
    parser.close()
    return parser


def _hostile_report() -> dict[str, Any]:
    report = _report()
    report["targets"].append(f"turn:{HOSTILE}:3478")
    path = report["paths"][0]
    path["server"] = HOSTILE
    path["kind"] = HOSTILE
    path["error"]["message"] = f"no answer from {HOSTILE}"
    path["error"]["kind"] = HOSTILE
    path["notes"] = [HOSTILE]
    report["paths"][2]["quality"]["hol"]["stalls"] = HOSTILE
    report["signal"]["url"] = HOSTILE
    report["signal"]["server"]["version"] = HOSTILE
    report["verdict"] = HOSTILE
    report["lkice_version"] = HOSTILE
    finding = report["findings"][0]
    finding.update(summary=HOSTILE, advice=HOSTILE, impact=HOSTILE, id=HOSTILE, severity=HOSTILE)
    finding["evidence"] = [HOSTILE]
    rec = report["recommendation"]
    rec.update(reason=HOSTILE, server=HOSTILE)
    rec["ranking"][1].update(region=HOSTILE, why=HOSTILE, server=HOSTILE)
    return report


# --------------------------------------------------------------------------- pure


def test_document_has_every_section() -> None:
    report = _report()
    document = render(as_doc(report))
    assert document.startswith("<!DOCTYPE html>")
    parsed = _parse(document)
    for section in ("summary", "findings", "recommendation", "paths", "signal", "setup", "quality"):
        assert section in parsed.ids
    assert parsed.classes.count("ranking-chart") == 1
    assert parsed.classes.count("waterfall-chart") == 1
    assert parsed.classes.count("timeline-chart") == _timelines(report) == 7
    assert parsed.tags.count("svg") == 2 + _timelines(report)
    assert "Verdict: DEGRADED" in document
    assert "relay echo" in document
    assert "[CRITICAL]" in document
    assert "[WARNING]" in document
    assert "[INFO]" in document
    assert "UNUSABLE" in document
    assert "lkice 0.1.0" in document


def test_self_contained() -> None:
    document = render(as_doc(_report()))
    parsed = _parse(document)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    for name, value in parsed.attributes:
        assert not name.startswith("on")
        if name in ("href", "src", "xlink:href"):
            assert value is not None
            assert value.startswith("#")
    assert "@import" not in document
    assert not re.search(r"url\((?!#)", document)
    assert "Content-Security-Policy" in document


def test_hostile_values_are_escaped() -> None:
    document = render(as_doc(_hostile_report()))
    assert "<script" not in document
    assert "<img" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in document
    parsed = _parse(document)
    assert "script" not in parsed.tags
    assert "img" not in parsed.tags
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    # a hostile kind or severity cannot become a class name either
    assert not [c for c in parsed.classes if "<" in c or '"' in c]


def test_control_characters_are_shown_not_passed_to_the_browser() -> None:
    """Bidi overrides would reorder the page's text, C0/C1 controls are not HTML; both from a
    certificate, a SOFTWARE attribute, a server version or a paste are shown as escapes."""
    import unicodedata

    report = _report()
    hostile = "\x1b]0;title\x07\u202eevil\u2028\x1b[2J\x1b]52;c;eA==\x07\nlkice: error: FAKE LINE"
    tls_path = next(p for p in report["paths"] if p.get("tls"))
    tls_path["tls"]["subject"] = f"CN=x{hostile}"
    tls_path["tls"]["issuer"] = f"CN=y{hostile}"
    tls_path["server_software"] = f"coturn{hostile}"
    report["paths"][0]["error"]["message"] = f"issuer {hostile}"
    if report.get("signal"):
        report["signal"]["server"] = {"version": f"1.9{hostile}"}
    for redact in (False, True):
        document = render(as_doc(report), redact=redact)
        odd = [c for c in document if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl")]
        assert odd == []
        assert "coturn\\x1b]0;title\\x07\\u202eevil\\u2028" in document


def test_absurd_numbers_still_draw() -> None:
    """A schema-valid report may hold 1.8e308 or 5e-324 ms: the charts' arithmetic stays finite
    (found by tests/test_fuzz_render.py)."""
    for value in (1.7976931348623157e308, 5e-324):
        report = _report()
        for path in report["paths"]:
            path["timings_ms"] = dict.fromkeys(path["timings_ms"], value)
            for key in ("quality", "relay_quality"):
                if path.get(key):
                    path[key]["series"] = {"sent_ms": [0, value, value], "rtt_ms": [value, None, 0]}
                    path[key]["rtt_ms"] = dict.fromkeys(("p50", "p95", "p99", "max"), value)
        report["duration_ms"] = value
        document = render(as_doc(report))
        assert "inf" not in document.lower().replace("info", "")
        assert "nan" not in document.lower()


def test_timeline_states_hol_and_shades_stalls() -> None:
    report = _report()
    document = render(as_doc(report))
    hol = report["paths"][2]["quality"]["hol"]
    assert f"Head-of-line stalls: <strong>{hol['stalls']}</strong>" in document
    assert f"longest <strong>{hol['max_stall_ms']:.1f} ms</strong>" in document
    assert 'class="stall"' in document
    assert 'class="lost"' in document  # the SFU path lost four probes
    assert document.count('class="lost"') == 4
    assert "not measured" in document  # the SFU path has no HOL detection


def test_waterfall_rows() -> None:
    report = _report()
    document = render(as_doc(report))
    chart = document[document.index('class="chart waterfall-chart"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count('<g class="row') == 1 + len(report["paths"])
    assert "signaling wss://eu.livekit.lab.test" in chart
    for phase in ("dns", "connect", "tls", "binding", "allocate_challenge", "allocate"):
        assert f"seg-{phase}" in chart
    assert "seg-ice" in chart
    assert "seg-dtls" in chart
    assert "udp_no_response at binding" in chart


def test_a_web_proxys_connect_step_is_drawn_and_tabled_where_a_path_took_one() -> None:
    report = _report()
    assert "seg-proxy" not in render(as_doc(report))  # no path through a proxy: no such column
    tls = next(p for p in report["paths"] if p["transport"] == "tls" and p["ok"])
    tls["timings_ms"]["proxy"] = 21.5
    document = render(as_doc(report))
    chart = document[document.index('class="chart waterfall-chart"') :]
    assert "seg-proxy" in chart[: chart.index("</svg>")]
    table = document[document.index('class="paths-table"') :]
    assert '<th class="num" title="proxy">proxy</th>' in table[: table.index("</thead>")]
    assert "21.5" in table[: table.index("</table>")]


def test_stall_intervals() -> None:
    assert stall_threshold(40.0) == 55.0
    assert stall_threshold(100.0) == 125.0
    sent = [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
    rtt: list[float | None] = [40.0, 90.0, 80.0, 40.0, None, 70.0, 41.0]
    assert stall_intervals(sent, rtt, 55.0) == [(10.0, 50.0, 2, 90.0), (90.0, 110.0, 1, 70.0)]
    assert stall_intervals(sent, [100.0] * 7, 55.0) == [(0.0, 120.0, 7, 100.0)]
    assert stall_intervals([], [], 55.0) == []


def test_without_findings_and_recommendation() -> None:
    report = _report()
    del report["findings"], report["recommendation"]
    document = render(as_doc(report))
    ids = _parse(document).ids
    assert "findings" not in ids
    assert "recommendation" not in ids
    assert "ranking-chart" not in document
    assert "timeline-chart" in document


def test_empty_findings_and_no_recommendation() -> None:
    report = _report()
    report["findings"] = []
    report["recommendation"] = None
    document = render(as_doc(report))
    assert "No findings" in document
    assert "No recommendation" in document
    assert "ranking-chart" not in document


def test_zero_paths() -> None:
    report = _report()
    report.update(paths=[], signal=None, summary={"paths": 0, "ok": 0, "failed": 0})
    report["verdict"] = "failed"
    document = render(as_doc(report))
    assert "No paths were probed" in document
    assert "timeline-chart" not in document
    assert "waterfall-chart" not in document
    assert "No quality measurements" in document
    assert "Verdict: FAILED" in document


def test_interrupted_report() -> None:
    report = _report()
    report["interrupted"] = True
    for path in report["paths"][3:]:
        path.update(ok=False, quality=None, relay_quality=None)
        path["error"] = {"kind": "interrupted", "message": "interrupted during tls", "phase": "tls"}
        path["timings_ms"] = dict.fromkeys(path["timings_ms"]) | {"dns": 3.9, "connect": 41.0}
    del report["findings"], report["recommendation"]
    report["signal"]["timings_ms"]["join"] = None
    document = render(as_doc(report))
    assert "INTERRUPTED" in document
    assert "interrupted during tls" in document
    assert "✗ interrupted at tls" in document
    assert _parse(document).classes.count("timeline-chart") == 2  # path 2: train and echo


def test_minimal_report_and_missing_series() -> None:
    """Old or partial reports: no series, no signal, hardly anything."""
    report = _report()
    for path in report["paths"]:
        for key in ("quality", "relay_quality"):
            if path.get(key):
                del path[key]["series"]
    document = render(as_doc(report))
    assert "No per-probe series" in document
    assert "timeline-chart" not in document
    assert render(as_doc({"verdict": "ok", "paths": []})).startswith("<!DOCTYPE html>")


def test_redacted_document_leaks_no_host() -> None:
    report = _report()
    text = json.dumps(report)
    originals = set(re.findall(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.lab\.test", text))
    originals |= set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text))
    assert len(originals) > 5
    document = render(as_doc(report), redact=True)
    assert sorted(o for o in originals if o in document) == []
    assert "host-1" in document
    assert "ip-1" in document
    assert "Redacted:" in document
    assert report == _report()  # the caller's report is left alone
    assert "Redacted:" not in render(as_doc(report))


# --------------------------------------------------------------------------- in a browser


def _png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) with the stdlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8
            assert interlace == 0
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind_byte, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind_byte == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind_byte == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind_byte == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind_byte == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        pixels += [(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels)]
        previous = line
    return width, height, pixels


def _near(pixels: list[tuple[int, int, int]], colour: str, tolerance: int = 60) -> int:
    target = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(
        1 for p in pixels if sum(abs(x - y) for x, y in zip(p, target, strict=True)) <= tolerance
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright Python package (pip install playwright; no download)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class _Visit:
    """Load one HTML file and record everything the page tried to do."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.url = path.as_uri()
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []

        def route(route: Route) -> None:
            self.requests.append(route.request.url)
            if route.request.url == self.url:
                route.continue_()
            else:
                route.abort()

        def console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                self.errors.append(f"{message.type}: {message.text}")

        def dialog(dialog: Dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.context.route("**/*", route)
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", dialog)
        self.page.goto(self.url, wait_until="load")

    def close(self) -> None:
        self.context.close()


def test_in_chromium(browser: Browser, tmp_path: Path) -> None:
    report = _report()
    file = tmp_path / "report.html"
    file.write_text(render(as_doc(report)), "utf-8")
    visit = _Visit(browser, file)
    try:
        page = visit.page
        assert visit.errors == []
        assert visit.dialogs == []
        assert set(visit.requests) == {visit.url}
        assert page.title() == "lkice report: DEGRADED"
        assert page.locator("svg.chart").count() == 2 + _timelines(report)
        assert page.locator("figure.timeline").count() == _timelines(report)
        assert page.locator('figure.timeline[data-series="relay"]').count() == 3
        assert page.locator("article.finding").count() == 3
        assert page.locator("article.finding .sev").first.inner_text() == "[CRITICAL]"
        assert page.locator("table.paths-table tbody tr").count() == len(report["paths"])
        for section in ("#findings", "#recommendation", "#paths", "#setup", "#quality"):
            assert page.locator(section).is_visible()
        for svg in page.locator("svg.chart").all():
            box = svg.bounding_box()
            assert box is not None
            assert box["width"] > 500
            assert box["height"] > 80

        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert (tmp_path / "report.png").stat().st_size > 10_000

        # the first TCP path's probe train: blue RTT line and shaded stalls, both really drawn
        timeline = page.locator("#timeline-2-quality svg")
        png = timeline.screenshot(path=str(tmp_path / "timeline.png"))
        width, height, pixels = _png_pixels(png)
        assert width > 500
        assert height > 100
        line = _near(pixels, html_render.SERIES_COLOUR)
        stall = _near(pixels, "#fce7c4", 24)  # the stall colour at 28 % over white
        white = _near(pixels, "#ffffff", 6)
        assert line > 800, line
        assert stall > 2000, stall
        assert white < len(pixels) * 0.95

        echo = page.locator("#timeline-2-relay svg").screenshot()
        assert _near(_png_pixels(echo)[2], html_render.ECHO_COLOUR) > 800

        sfu = page.locator(f"#timeline-{len(report['paths']) - 1}-quality svg").screenshot()
        assert _near(_png_pixels(sfu)[2], html_render.LOST_COLOUR) > 40  # the four crosses

        ranking = page.locator("svg.ranking-chart").screenshot()
        assert _near(_png_pixels(ranking)[2], html_render.SERIES_COLOUR) > 2000

        waterfall = page.locator("svg.waterfall-chart").screenshot()
        waterfall_pixels = _png_pixels(waterfall)[2]
        for phase in ("connect", "tls", "allocate_challenge", "ice", "dtls"):
            colour = html_render.PHASE_COLOURS[phase]
            assert _near(waterfall_pixels, colour, 30) > 300, phase

        pdf = page.pdf()  # the print stylesheet lays out without error
        assert pdf.startswith(b"%PDF")
        assert visit.errors == []
        assert set(visit.requests) == {visit.url}
    finally:
        visit.close()


def test_hostile_values_in_chromium(browser: Browser, tmp_path: Path) -> None:
    file = tmp_path / "hostile.html"
    file.write_text(render(as_doc(_hostile_report())), "utf-8")
    visit = _Visit(browser, file)
    try:
        page = visit.page
        assert visit.dialogs == []
        assert visit.errors == []
        assert set(visit.requests) == {visit.url}
        assert page.locator("script, img, iframe").count() == 0
        assert HOSTILE in page.locator("#paths").inner_text()
    finally:
        visit.close()


def test_redacted_in_chromium(browser: Browser, tmp_path: Path) -> None:
    report = _report()
    file = tmp_path / "redacted.html"
    file.write_text(render(as_doc(copy.deepcopy(report)), redact=True), "utf-8")
    visit = _Visit(browser, file)
    try:
        text = visit.page.inner_text("body")
        assert "lab.test" not in text
        assert "198.19." not in text
        assert "host-1" in text
        assert visit.page.locator("svg.chart").count() == 2 + _timelines(report)
        assert visit.errors == []
    finally:
        visit.close()
