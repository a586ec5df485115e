"""Pastes made by an earlier lkice (0.1.0 at 3a252e3, before the typed report, the findings
registry and the closed schema) still decode and explain exactly as that lkice explained them:
the same text, the same JSON, the same HTML, the same exit status."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

OLD = Path(__file__).parent / "data" / "pastes-0.1.0-3a252e3"
EXPECTED = json.loads((OLD / "expected.json").read_text())["outputs"]


def explain(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lkice", "explain", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_paste_explains_as_it_did(name: str, tmp_path: Path) -> None:
    paste = str(OLD / f"{name}.paste")
    expected = EXPECTED[name]
    text = explain(paste)
    assert text.returncode == expected["exit"], text.stderr
    assert text.stdout.decode() == (OLD / f"{name}.explain.txt").read_text()
    as_json = explain(paste, "--json")
    assert as_json.returncode == expected["exit"], as_json.stderr
    assert hashlib.sha256(as_json.stdout).hexdigest() == expected["json_sha256"]
    html = tmp_path / "r.html"
    shown = explain(paste, "--html", str(html))
    assert shown.returncode == expected["exit"], shown.stderr
    assert hashlib.sha256(html.read_bytes()).hexdigest() == expected["html_sha256"]
