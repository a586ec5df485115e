"""The command line as users meet it: exit statuses, messages, secrets, Ctrl-C."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkice.credentials import Secret, rest_credentials
from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.pki import LabPki
from tests.conftest import TurnLab, needs_coturn, validate_report

LKICE = [sys.executable, "-m", "lkice"]


def lkice(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LKICE_DEBUG", None)
    return subprocess.run(
        [*LKICE, *args], capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "turn.example.com"], "not a STUN/TURN URI"),
        (["run", "turn:host:99999", "-u", "a", "-p", "b"], "from 1 to 65535"),
        (["run", "turn:127.0.0.1"], "needs credentials"),
        (["run", "turn:127.0.0.1", "-u", "a"], "--username and --credential go together"),
        (["run", "turn:127.0.0.1", "-u", "a", "-p", "b", "--turn-secret", "s"], "not both"),
        (
            ["run", "stun:127.0.0.1", "--ca-file", "/nonexistent/ca.pem"],
            "cannot load trust anchors",
        ),
        (["run", "stun:127.0.0.1", "--nameserver", "dns.example"], "expected IP or IP:PORT"),
        (["run", "stun:127.0.0.1", "--bogus"], "No such option"),
        (["run", "stun:127.0.0.1", "--deadline", "soon"], "Invalid value"),
        (["run"], "nothing to probe"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_exit_3_without_traceback(args: list[str], message: str) -> None:
    result = lkice(*args)
    assert result.returncode == 3, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_and_version_exit_0() -> None:
    assert lkice("--help").returncode == 0
    version = lkice("--version")
    assert version.returncode == 0
    assert "lkice, version" in version.stdout


@needs_coturn
def test_demo_runs_the_full_diagnosis(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = lkice("demo", "--json", "--output", str(out), "--quality-duration", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    validate_report(report)
    assert report == json.loads(out.read_text())
    assert report["verdict"] == "ok"
    assert report["signal"]["ok"] is True  # the lab LiveKit's signaling, step by step
    assert {(p["kind"], p["transport"]) for p in report["paths"]} == {
        ("stun", "udp"),
        ("turn", "udp"),
        ("turn", "tcp"),
        ("turn", "tls"),
        ("sfu", "udp"),  # direct to the SFU, and through TURN/UDP
        ("sfu", "tcp"),  # through TURN/TCP, and ICE/TCP to the SFU's passive candidate
        ("sfu", "tls"),  # through turns: with the lab's CA handed to aiortc's TURN client
    }
    sfu = [p for p in report["paths"] if p["kind"] == "sfu"]
    assert sum(p["ok"] for p in sfu) == 5
    assert sum(p["kind"] == "sfu" and p["relay"] is None for p in report["paths"]) == 2
    human = lkice("demo", "--quality-duration", "1")
    assert human.returncode == 0
    assert "Verdict: OK" in human.stdout


def test_demo_without_coturn_says_how_to_install() -> None:
    result = lkice("demo", env={"LKICE_TURNSERVER": "/nonexistent/turnserver"})
    assert result.returncode == 3
    assert "apt-get install coturn" in result.stderr
    assert "Traceback" not in result.stderr


def test_human_summary_fits_80_columns(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = lkice(
        "run",
        f"turns:very-long-host-name.example.invalid:{closed}",
        f"turn:127.0.0.1:{closed}",
        "-u",
        "a",
        "-p",
        "b",
        "--timeout",
        "1",
        "--deadline",
        "3",
    )
    assert result.returncode == 2
    wide = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not wide, wide
    assert "connect_refused" in result.stdout
    assert "turn very-long-host-name.~ tls" in result.stdout  # clipped, marked as cut


@needs_coturn
def test_exit_status_follows_the_verdict(coturn: TurnLab) -> None:
    ok = lkice("run", f"stun:127.0.0.1:{coturn.port}")
    assert ok.returncode == 0, ok.stdout
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    degraded = lkice(
        "run",
        f"turn:127.0.0.1:{coturn.port}?transport=tcp",
        f"turn:127.0.0.1:{closed}?transport=tcp",
        "-u",
        coturn.user,
        "-p",
        coturn.password,
    )
    assert degraded.returncode == 1, degraded.stdout
    assert "Verdict: DEGRADED" in degraded.stdout
    assert "connect_refused" in degraded.stdout
    failed = lkice("run", f"turn:127.0.0.1:{closed}?transport=tcp", "-u", "a", "-p", "b")
    assert failed.returncode == 2, failed.stdout


def assert_no_secret(texts: list[str], secret_values: list[str]) -> None:
    for text in texts:
        for value in secret_values:
            assert value not in text


@needs_coturn
def test_credentials_never_appear_in_any_output(
    coturn: TurnLab, pki: LabPki, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    base = [
        f"turn:127.0.0.1:{coturn.port}",
        f"turns:127.0.0.1:{coturn.tls_port}",
        "--ca-file",
        str(pki.ca_file),
        "-vv",
        "--output",
        str(out),
    ]
    good = lkice(
        "run",
        *base,
        "--json",
        env={"LKICE_TURN_USERNAME": coturn.user, "LKICE_TURN_CREDENTIAL": coturn.password},
    )
    assert good.returncode == 0, good.stderr
    assert "INFO" in good.stderr or "DEBUG" in good.stderr  # the log really was written
    assert_no_secret([good.stdout, good.stderr, out.read_text()], [coturn.password])
    # The username is a credential too, and a wrong password must not be echoed in the error.
    wrong = f"wrong-{secrets.token_hex(8)}"
    user = f"user-{secrets.token_hex(8)}"
    bad = lkice("run", *base, "-u", user, "-p", wrong)
    assert bad.returncode == 2
    assert "auth_rejected" in bad.stdout
    assert_no_secret([bad.stdout, bad.stderr, out.read_text()], [wrong, user])


@needs_coturn
def test_turn_rest_secret_never_appears(tmp_path: Path) -> None:
    secret = f"rest-{secrets.token_hex(12)}"
    with Coturn(CoturnConfig(static_auth_secret=secret)) as server:
        start = time.time()
        result = lkice(
            "run",
            f"turn:127.0.0.1:{server.port}",
            "--json",
            "-vv",
            env={"LKICE_TURN_SECRET": secret},
        )
        end = time.time()
    assert result.returncode == 0, result.stdout
    # Every password lkice could have derived during the run.
    derived = [
        rest_credentials(Secret(secret), now=t).password.reveal()
        for t in range(int(start) - 1, int(end) + 2)
    ]
    assert_no_secret([result.stdout, result.stderr], [secret, *derived])


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@needs_coturn
def test_ctrl_c_writes_a_partial_report(
    coturn: TurnLab, silent_udp_port: int, tmp_path: Path
) -> None:
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [
            *LKICE,
            "run",
            f"stun:127.0.0.1:{coturn.port}",
            f"stun:127.0.0.1:{silent_udp_port}",
            "--udp-timeout",
            "20",
            "--deadline",
            "30",
            "--json",
            "--output",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "partial" in stderr
    report = json.loads(stdout)
    validate_report(report)
    assert report == json.loads(out.read_text())
    assert report["interrupted"] is True
    done, cut = report["paths"]
    # Connectivity was proven before the cut; the train keeps what it measured until then.
    assert done["ok"] is True
    assert 0 < done["quality"]["samples"] < 250
    assert done["quality"]["loss"] == 0
    assert any("cut short" in note for note in done["notes"])
    assert cut["error"]["kind"] == "interrupted"
    assert cut["error"]["phase"] == "binding"


@needs_coturn
def test_live_progress_only_on_a_terminal() -> None:
    """At a terminal, stderr shows each path as it finishes; piped, stderr stays empty."""
    import pty

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lkice", "demo", "--quality-duration", "0.5"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=120,
            check=False,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown
    assert "[ok  ] turn 127.0.0.1:" in shown
    assert "[ok  ] sfu 127.0.0.1:" in shown
    assert "Verdict: OK" in proc.stdout.decode()
    piped = lkice("demo", "--quality-duration", "0.5")
    assert piped.returncode == 0
    assert piped.stderr == ""
