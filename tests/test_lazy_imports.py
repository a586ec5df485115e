"""``lkice --help`` and ``lkice explain`` stay light: they never import the WebRTC stack, PyAV,
the LiveKit SDK, TLS/crypto libraries or the monitoring libraries (start-up time, and the
binary's, depends on it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lkice.paste import encode_paste, paste_summary

HEAVY = ("aiortc", "av", "livekit.rtc", "livekit.api", "aioice", "cryptography", "dns.resolver")
PROBE = """
import json, sys
from lkice.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def modules_after(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["probe", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    loaded = modules_after(*args)
    assert "lkice.cli" in loaded  # the probe really ran the CLI
    assert not loaded & set(HEAVY)


def test_explain_imports_nothing_heavy(tmp_path: Path) -> None:
    report = json.loads((Path(__file__).parent / "data" / "report-udp-blocked.json").read_text())
    paste = tmp_path / "paste.txt"
    paste.write_text(encode_paste(report, paste_summary(report)))
    loaded = modules_after("explain", str(paste))
    assert "lkice.paste" in loaded
    assert not loaded & set(HEAVY)
