"""Class 9: terminal escape injection. Strings from a server (a certificate's subject and
issuer, a STUN SOFTWARE attribute, a JoinResponse's ``server_info.version`` and ``region``) and
from a paste made of them reach the terminal with control characters made visible: the text
view (no ``--json``) and the ``-v`` logs hold no raw ESC, BEL or CR and no line the server
wrote."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.hostile.harness import Checks, Outcome, finish, run_lkice
from tests.hostile.kit import (
    ESCAPES,
    HostileLiveKit,
    StunServer,
    StunStreamServer,
    hostile_certificate,
)

VERBOSITY = [[], ["-v"]]
IDS = ["text", "text-v"]


def _judge(name: str, outcome: Outcome, *, secrets_: Sequence[str] = ()) -> Checks:
    check = Checks(outcome, name)
    check.that(outcome.status in (0, 1, 2), f"exit status {outcome.status}")
    check.that(bool(outcome.stdout.strip()), "nothing on stdout (no text view to check)")
    check.clean(secrets=secrets_)
    return check


@pytest.mark.parametrize("verbose", VERBOSITY, ids=IDS)
@pytest.mark.parametrize("trust", ["untrusted", "insecure"])
def test_certificate_names_with_escapes(tmp_path: Path, verbose: list[str], trust: str) -> None:
    cert = hostile_certificate(tmp_path)
    with StunStreamServer(tls=cert.server_context(), software=ESCAPES) as server:
        host, port = server.address
        extra = ["--insecure"] if trust == "insecure" else []
        outcome = run_lkice(
            ["run", f"stuns:{host}:{port}", "--quality-duration", "0", "--deadline", "5",
             *extra, *verbose],
            timeout=60,
        )  # fmt: skip
    _judge(f"escapes_certificate[{trust},{'-v' if verbose else 'quiet'}]", outcome).done()


@pytest.mark.parametrize("verbose", VERBOSITY, ids=IDS)
def test_stun_software_with_escapes(verbose: list[str]) -> None:
    with StunServer(software=ESCAPES) as server:
        outcome = run_lkice(
            ["run", server.uri, "--quality-duration", "0", "--udp-timeout", "1", *verbose],
            timeout=60,
        )
        answered = bool(server.requests)
    assert answered, "lkice sent nothing to the STUN server"
    _judge(f"escapes_software[{'-v' if verbose else 'quiet'}]", outcome).done()


@pytest.mark.parametrize("verbose", VERBOSITY, ids=IDS)
def test_join_server_info_with_escapes(tmp_path: Path, verbose: list[str]) -> None:
    token = "tok" + secrets.token_hex(16)
    paste = tmp_path / "ticket.txt"
    with HostileLiveKit(server_version=ESCAPES, server_region=ESCAPES, node_id=ESCAPES) as lk:
        outcome = run_lkice(
            ["run", lk.url, "--token", token, "--quality-duration", "0", "--deadline", "5",
             "--paste", str(paste), *verbose],
            timeout=60,
        )  # fmt: skip
    name = "-v" if verbose else "quiet"
    checks = [_judge(f"escapes_join[{name}]", outcome, secrets_=[token])]
    # The paste carries the server's strings to a support desk: explain shows them safely too.
    assert paste.exists(), "no paste was written (cannot test explain)"
    explained = run_lkice(["explain", str(paste)], timeout=60)
    checks.append(_judge(f"escapes_join_explain[{name}]", explained, secrets_=[token]))
    finish(*checks)
