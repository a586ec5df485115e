"""From a run to a ticket and back: ``lkice run --paste`` writes the block, an email client
mangles it, ``lkice explain`` reads it and shows the same report; damage gets a named error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TurnLab, needs_coturn


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
