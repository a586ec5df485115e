"""Class 8: secrets that cannot be used, and secrets in URLs. A TURN password (or username)
that is not valid UTF-8, from argv or the environment, is a usage error (exit 3) without a
traceback and without the secret; so is a probe definition whose secret file is not UTF-8 (the
message names the file). ``--push`` to a URL with a password never shows the password."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import TurnLab
from tests.hostile.harness import Checks, finish, run_lkice
from tests.hostile.kit import StunServer, closed_port


def _bad_bytes() -> bytes:
    """A secret that is not UTF-8, with distinctive printable runs either side of the bad byte
    (what a traceback or a repr would show)."""
    return b"pw" + secrets.token_hex(6).encode() + b"\xff" + secrets.token_hex(6).encode()


@pytest.mark.parametrize("how", ["argv", "env"])
@pytest.mark.parametrize("which", ["password", "username"])
def test_non_utf8_turn_secret_is_a_usage_error(coturn: TurnLab, how: str, which: str) -> None:
    bad = _bad_bytes()
    user: str | bytes = bad if which == "username" else coturn.user
    password: str | bytes = bad if which == "password" else coturn.password
    uri = f"turn:127.0.0.1:{coturn.port}?transport=udp"
    args: list[str | bytes] = ["run", uri, "--quality-duration", "0", "--deadline", "5"]
    env: dict[str, str | bytes] = {}
    if how == "argv":
        args += ["-u", user, "-p", password]
    else:
        env = {"LKICE_TURN_USERNAME": user, "LKICE_TURN_CREDENTIAL": password}
    outcome = run_lkice(args, env=env, timeout=60)
    check = Checks(outcome, f"non_utf8_turn[{which},{how}]")
    check.that(outcome.status == 3, f"exit status {outcome.status} (expected 3, a usage error)")
    check.that("error" in outcome.stderr.lower(), "stderr says nothing about the error")
    check.clean(secrets=[bad, coturn.password])
    check.done()


def _definition(path: Path, uri: str, extra: str = "") -> Path:
    path.write_text(
        f"""
[probe]
name = "secrets"
[settings]
quality = {{ duration_s = 0 }}
udp_timeout_s = 1
deadline_s = 4
{extra}
[[targets]]
uri = "{uri}"
"""
    )
    return path


def test_probe_definition_with_non_utf8_secret_file(tmp_path: Path) -> None:
    bad = _bad_bytes()
    secret_file = tmp_path / "turn-password.bin"
    secret_file.write_bytes(bad + b"\n")
    with StunServer() as server:
        config = _definition(
            tmp_path / "bad-secret.toml",
            server.turn_uri("udp"),
            extra='[credentials]\nturn_username = { env = "HOSTILE_USER" }\n'
            'turn_password = { file = "turn-password.bin" }\n',
        )
        env = {"HOSTILE_USER": "alice"}
        ran = run_lkice(["probe", "--config", str(config)], env=env, timeout=60)
        checked = run_lkice(["probe", "--check", str(config)], env=env, timeout=60)
    check = Checks(ran, "probe_non_utf8_secret_file[--config]")
    check.that(ran.status == 3, f"exit status {ran.status} (expected 3)")
    check.that(
        secret_file.name in ran.stderr, f"stderr does not name {secret_file.name}: {ran.stderr!a}"
    )
    check.clean(secrets=[bad])
    validated = Checks(checked, "probe_non_utf8_secret_file[--check]")
    # --check validates the definition; if it also reads the secrets, it must name the file.
    validated.that(
        checked.status == 0 or (checked.status == 3 and secret_file.name in checked.stderr),
        f"--check: exit {checked.status} without naming {secret_file.name}",
    )
    validated.clean(secrets=[bad])
    finish(check, validated)


@pytest.mark.parametrize("mode", ["once", "daemon"])
def test_push_url_password_is_never_shown(tmp_path: Path, mode: str) -> None:
    password = "S3CRET" + secrets.token_hex(10)
    with StunServer() as server:
        config = _definition(tmp_path / "push.toml", server.uri)
        push = f"http://pushuser:{password}@127.0.0.1:{closed_port()}"
        args = ["probe", "--config", str(config), "--push", push]
        if mode == "daemon":
            args += ["--every", "1s", "--max-runs", "1"]
        outcome = run_lkice(args, timeout=60)
    check = Checks(outcome, f"push_password[{mode}]")
    check.that(outcome.status != 3 or "error" in outcome.stderr, "exit 3 with no message")
    check.that("push" in outcome.stderr.lower(), "the failed push is not reported on stderr")
    check.clean(secrets=[password])
    check.done()
