"""From a run to a ticket and back: ``lkice run --paste`` writes the block, an email client
mangles it, ``lkice explain`` reads it and shows the same report; damage gets a named error."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from lkice.paste import MAX_TEXT, _encode, encode_paste, paste_summary
from tests.conftest import TurnLab, needs_coturn

FIXTURE = Path(__file__).parent / "data" / "report-udp-blocked.json"
TITLE = "\x1b]0;owned\x07"
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07"
CLEAR = "\x1b[2J\x1b[H"
FAKE = "\nlkice: error: FAKE LINE"


def lkice(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lkice", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
    )


def emailed(block: str) -> str:
    """What a reply in a mail client does to a pasted block: quoted, CRLF, re-wrapped."""
    lines = block.splitlines()
    rewrapped: list[str] = []
    for line in lines:
        # Long lines broken at 40 columns, as a client with a narrow wrap setting does.
        rewrapped += [line[i : i + 40] for i in range(0, max(len(line), 1), 40)]
    quoted = [f"> {line}" for line in rewrapped]
    return "Hello support,\r\n\r\nhere is what the tool said:\r\n" + "\r\n".join(quoted) + "\r\n"


@needs_coturn
def test_paste_survives_an_email_and_explains_the_same(coturn: TurnLab, tmp_path: Path) -> None:
    paste, original = tmp_path / "paste.txt", tmp_path / "report.json"
    run = lkice(
        "run",
        f"turn:127.0.0.1:{coturn.port}",
        "-u",
        coturn.user,
        "-p",
        coturn.password,
        "--quality-duration",
        "0.5",
        "--paste",
        str(paste),
        "--output",
        str(original),
    )
    assert run.returncode == 0, run.stderr
    block = paste.read_text()
    assert "-----BEGIN LKICE REPORT-----" in block
    assert coturn.password not in block  # no secret in what users paste
    ticket = tmp_path / "ticket.txt"
    ticket.write_text(emailed(block))
    shown = lkice("explain", str(ticket))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == run.stdout  # the same human view as the run itself
    decoded = lkice("explain", "--json", stdin=emailed(block))
    assert json.loads(decoded.stdout) == json.loads(original.read_text())


@needs_coturn
def test_paste_to_stdout_follows_the_report(coturn: TurnLab) -> None:
    run = lkice("run", f"stun:127.0.0.1:{coturn.port}", "--quality-duration", "0", "--paste", "-")
    assert run.returncode == 0, run.stderr
    report, _, block = run.stdout.partition("Paste everything below into your ticket:")
    assert report.startswith("Verdict: OK")
    assert block.strip().endswith("-----END LKICE REPORT-----")
    assert lkice("explain", stdin=run.stdout).stdout == report.rstrip("\n") + "\n"


def test_damaged_or_missing_paste_is_named(tmp_path: Path) -> None:
    nothing = lkice("explain", stdin="Hi, the call does not connect. Thanks!")
    assert nothing.returncode == 3
    assert "no lkice report block found" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    cut = lkice(
        "explain",
        stdin="-----BEGIN LKICE REPORT-----\nlkice-paste: 1 codec=xz len=10 sha256=0123456789abcdef\nAAAA\n",
    )
    assert cut.returncode == 3
    assert "cut off" in cut.stderr
    missing = lkice("explain", str(tmp_path / "nope.txt"))
    assert missing.returncode == 3
    assert "cannot read" in missing.stderr


def fixture() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(FIXTURE.read_text("utf-8"))
    return report


def raw_controls(text: str) -> list[str]:
    return [
        ch
        for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Cn")
    ]


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bare": True}, "the report: missing lkice_version, started_at, duration_ms"),
        ({"paths": "abc"}, 'paths: expected array, got a string "abc"'),
        ({"duration_ms": "12"}, 'duration_ms: expected number, got a string "12"'),
        ({"findings": {"a": 1}}, "findings: expected array or null, got an object"),
        ({"settings": {"x": nested(900)}}, "nested deeper than 64 levels"),
        (
            {"schema": "lkice.report/99"},
            "the report was written by a newer lkice: lkice.report/99; "
            "this lkice reads lkice.report/1",
        ),
    ],
)
def test_intact_paste_of_a_wrong_shape_is_named(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    """issue 12: valid checksums, wrong shapes: each was "internal error" (or accepted)."""
    report = {"schema": "lkice.report/1"} if change.get("bare") else {**fixture(), **change}
    paste = tmp_path / "paste.txt"
    paste.write_text(encode_paste(report, ""))
    html = tmp_path / "report.html"
    shown = lkice("explain", str(paste), "--redact", "--html", str(html))
    assert shown.returncode == 3
    assert shown.stdout == ""
    assert shown.stderr.startswith(
        "lkice: error: cannot read the pasted report: the paste is intact, but "
    )
    assert named in shown.stderr
    assert "internal error" not in shown.stderr
    assert "Traceback" not in shown.stderr
    assert not html.exists()


def hostile_report() -> dict[str, Any]:
    """The fixture with escape codes wherever a server or a paste puts text lkice shows."""
    report = fixture()
    tls_path = next(p for p in report["paths"] if p.get("tls"))
    tls_path["tls"]["subject"] = f"CN=turn{TITLE}"
    tls_path["tls"]["issuer"] = f"CN=Corp Proxy CA{FAKE}"
    tls_path["server_software"] = f"coturn \x1b[31m4.6\x1b[0m{CLEAR}"
    failed = next(p for p in report["paths"] if not p["ok"])
    failed["error"]["message"] = f"certificate from issuer CN=Corp Proxy CA{FAKE}{CLIPBOARD}"
    failed["notes"] = [f"server said {CLEAR}"]
    report["signal"] = {
        "url": f"wss://lk.example.com{TITLE}",
        "ok": True,
        "error": None,
        "timings_ms": dict.fromkeys(
            ["dns", "connect", "tls", "validate", "websocket", "join"], 1.0
        ),
        "server": {"version": f"1.9.0\x1b[2J\x1b[3J{TITLE}", "region": f"eu\u202e{FAKE}"},
        "notes": [f"note{CLIPBOARD}"],
    }
    report["findings"] = [
        {
            "id": "x",
            "severity": "critical",
            "summary": f"UDP blocked{CLEAR}{FAKE}",
            "impact": f"impact{TITLE}",
            "evidence": [f"evidence\u2028{FAKE}"],
            "advice": f"advice{CLIPBOARD}",
            "paths": [0],
        }
    ]
    return report


def test_explain_shows_hostile_text_and_never_obeys_it(tmp_path: Path) -> None:
    """A certificate subject with OSC 0, an issuer with a fake lkice line, SOFTWARE and a server
    version with CSI codes, a paste with CSI 2J and OSC 52: shown, not obeyed, in every view."""
    report = hostile_report()
    paste = tmp_path / "paste.txt"
    paste.write_text(encode_paste(report, paste_summary(report)))
    assert raw_controls(paste.read_text()) == []  # the summary above the block too
    html = tmp_path / "report.html"
    shown = lkice("explain", str(paste), "--html", str(html))
    assert shown.returncode == 1, shown.stderr  # the fixture's own verdict: degraded
    for out in (shown.stdout, shown.stderr, html.read_text()):
        assert raw_controls(out) == []
        assert not [line for line in out.splitlines() if line.startswith("lkice: error: FAKE")]
    assert "UDP blocked\\x1b[2J\\x1b[H\\nlkice: error: FAKE LINE" in shown.stdout
    assert "1.9.0\\x1b[2J\\x1b[3J\\x1b]0;owned\\x07" in shown.stdout
    assert "CN=Corp Proxy CA\\nlkice: error: FAKE LINE\\x1b]52;c;" in shown.stdout
    decoded = lkice("explain", "--json", str(paste))  # JSON: escaped by JSON itself
    assert json.loads(decoded.stdout) == report
    assert raw_controls(decoded.stdout) == []


def child_peak_rss_kib(*args: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run lkice under a fresh parent, so its children's peak RSS is lkice's alone."""
    probe = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(p.returncode)\n"
        "print(p.stderr, end='')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "lkice", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rss, status, stderr = run.stdout.split("\n", 2)
    return int(rss), subprocess.CompletedProcess(args, int(status), "", stderr)


def test_paste_bombs_are_refused_with_little_memory(tmp_path: Path) -> None:
    """issue 12: a 7 KB paste of 32 MiB of '{},' took 1.1 GB and 16 s in explain. Now its header
    is refused unread, and one just under the size cap is refused by its object count."""
    claim = tmp_path / "claim.txt"
    claim.write_text(_encode({"schema": "lkice.report/1", "x": [{}] * (11 * 2**20)}, "", 64, "xz"))
    assert claim.stat().st_size < 16_000
    rss, shown = child_peak_rss_kib("explain", str(claim))
    assert shown.returncode == 3
    assert "the header claims 34603041 bytes, more than any report (4194304)" in shown.stderr
    assert rss < 80_000, rss

    dense = tmp_path / "dense.txt"
    report = fixture()
    report["x"] = [{}] * ((4 * 2**20 - len(json.dumps(report))) // 3 - 20)
    dense.write_text(_encode(report, "", 64, "xz"))
    rss, shown = child_peak_rss_kib("explain", str(dense))
    assert shown.returncode == 3
    assert "more than 20000 objects and arrays, more than any report" in shown.stderr
    assert rss < 80_000, rss


def test_input_larger_than_a_ticket_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as f:  # sparse: no 16 MiB written to the disk
        f.truncate(MAX_TEXT + 1)
    shown = lkice("explain", str(huge))
    assert shown.returncode == 3
    assert shown.stderr == (
        f"lkice: error: cannot read the pasted report: {huge} is larger than 16 MiB, more "
        "than a ticket with a report holds: paste only the message with the block\n"
    )
    piped = lkice("explain", stdin=" " * (MAX_TEXT + 1))
    assert piped.returncode == 3
    assert "the input is larger than 16 MiB" in piped.stderr
    # A whole thread just under the cap is read (and, having no block, named as such).
    thread = lkice("explain", stdin="> quoted\n" * (MAX_TEXT // 20))
    assert thread.returncode == 3
    assert "no lkice report block found" in thread.stderr


def test_explain_reads_a_json_report_file(tmp_path: Path) -> None:
    """Support may get the report as the JSON file (--output) instead of a paste: explain
    checks it the same way and shows it."""
    report = tmp_path / "report.json"
    report.write_text((Path(__file__).parent / "data" / "report-udp-blocked.json").read_text())
    shown = subprocess.run(
        [sys.executable, "-m", "lkice", "explain", str(report)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 1, shown.stderr
    assert "UDP" in shown.stdout
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "lkice.report/1", "paths": "x"}')
    refused = subprocess.run(
        [sys.executable, "-m", "lkice", "explain", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 3
    assert "cannot read the pasted report" in refused.stderr
    assert "Traceback" not in refused.stderr
