"""The double-click mode (lkice.enduser): no arguments, a definition next to the program or a
built-in default; the paste block and the HTML report land next to the program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lkice import enduser
from lkice.paste import decode_paste
from tests.conftest import TurnLab, needs_coturn

LAUNCH = "import sys; sys.argv = [{exe!r}]; from lkice.cli import main; main()"


def launch(exe: Path) -> subprocess.CompletedProcess[str]:
    """Start lkice as if ``exe`` were the double-clicked program, with no arguments."""
    return subprocess.run(
        [sys.executable, "-c", LAUNCH.format(exe=str(exe))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=exe.parent,
    )


@needs_coturn
def test_definition_next_to_the_program(coturn: TurnLab, tmp_path: Path) -> None:
    (tmp_path / "lkice.toml").write_text(
        f'[probe]\nname = "desk"\n[settings]\nquality = {{ duration_s = 0.5 }}\n'
        f'[[targets]]\nuri = "stun:127.0.0.1:{coturn.port}"\n'
    )
    result = launch(tmp_path / "lkice")
    assert result.returncode == 0, result.stderr
    assert f"testing stun:127.0.0.1:{coturn.port}" in result.stdout
    pastes = list(tmp_path.glob("lkice-*-paste.txt"))
    pages = list(tmp_path.glob("lkice-*.html"))
    assert len(pastes) == 1
    assert len(pages) == 1
    assert str(pastes[0]) in result.stdout
    assert decode_paste(pastes[0].read_text())["verdict"] == "ok"
    assert "<svg" in pages[0].read_text()


def test_nothing_to_run_shows_the_help(tmp_path: Path) -> None:
    result = launch(tmp_path / "lkice")
    assert result.returncode == 0
    assert "Usage: lkice" in result.stdout
    assert not list(tmp_path.glob("lkice-*"))


def test_broken_definition_next_to_the_program_is_named(tmp_path: Path) -> None:
    (tmp_path / "lkice.toml").write_text("[probe]\nname = 'desk'\n")
    result = launch(tmp_path / "lkice")
    assert result.returncode == 3
    assert "lkice.toml:1: targets: nothing to probe" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert enduser.embedded() is None  # a source checkout has no built-in default
    monkeypatch.setattr(
        enduser, "embedded", lambda: {"target": "wss://lk.example.com", "token": "t0k"}
    )
    found = enduser.default_request(tmp_path)
    assert found is not None
    request, source = found
    assert request.targets == ("wss://lk.example.com",)
    assert request.token == "t0k"
    assert "built into" in source
    assert "t0k" not in repr(request)


def test_output_goes_to_the_current_folder_when_the_program_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert enduser.output_dir(Path("/proc")) == tmp_path
    assert enduser.output_dir(tmp_path / "..") == tmp_path / ".."


def test_a_toml_beside_the_program_reads_secrets_only_from_files_beside_it(
    tmp_path: Path,
) -> None:
    """A planted lkice.toml must not send an environment variable or a file from elsewhere to a
    server it names (as a TURN username or credential)."""
    from lkice import enduser
    from lkice.errors import UsageError

    (tmp_path / "lkice.toml").write_text(
        '[probe]\nname = "x"\n\n[credentials]\nturn_username = { env = "AWS_SECRET_ACCESS_KEY" }\n'
        'turn_password = { file = "/etc/passwd" }\n\n[[targets]]\nuri = "turn:198.18.0.9"\n'
    )
    with pytest.raises(UsageError) as caught:
        enduser.default_request(tmp_path)
    message = str(caught.value)
    assert "may not read environment variables" in message
    assert "only files next to it" in message


def test_the_write_check_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    from lkice import enduser

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".lkice-write-test").symlink_to(victim)
    assert enduser.output_dir(tmp_path) == tmp_path
    assert victim.read_text() == "precious"
