"""The one-file binary (packaging/binary): built once per session with PyInstaller, then run with
an empty environment and no Python on PATH, as an end user's machine has it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lkice.paste import encode_paste, paste_summary
from tests.conftest import TurnLab, needs_coturn

ROOT = Path(__file__).parent.parent
BUILD = ROOT / "packaging" / "binary" / "build.sh"


def _pyinstaller() -> bool:
    import importlib.util

    return importlib.util.find_spec("PyInstaller") is not None


pytestmark = pytest.mark.skipif(
    not _pyinstaller(), reason="PyInstaller is not installed (pip install '.[build]')"
)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(["bash", str(BUILD), "--dist", str(dist)], check=True, timeout=900)
    return dist / "lkice"


def bare(
    binary: Path, *args: str, cwd: Path | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The binary with an empty environment: PATH holds nothing, so no Python either. ``home``
    (default: the binary's folder) is where the launcher's cache goes (~/.cache/lkice)."""
    empty = binary.parent / "empty-path"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [str(binary), *args],
        env={"PATH": str(empty), "HOME": str(home or binary.parent)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
    )


def test_help_and_version(binary: Path) -> None:
    assert os.path.getsize(binary) > 10_000_000  # everything inside: Python, aiortc, PyAV
    version = bare(binary, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("lkice, version ")
    helped = bare(binary, "--help")
    assert helped.returncode == 0
    assert "explain" in helped.stdout
    assert "Traceback" not in helped.stderr


def test_explain_a_paste(binary: Path, tmp_path: Path) -> None:
    report = json.loads((ROOT / "tests" / "data" / "report-udp-blocked.json").read_text())
    paste = tmp_path / "ticket.txt"
    paste.write_text("Hi,\n\n" + encode_paste(report, paste_summary(report)))
    shown = bare(binary, "explain", str(paste))
    assert shown.returncode == 1, shown.stderr  # the report's own verdict: degraded
    assert shown.stdout.startswith("Verdict: DEGRADED")


@needs_coturn
def test_a_real_run(binary: Path, coturn: TurnLab, tmp_path: Path) -> None:
    run = bare(binary, "run", f"stun:127.0.0.1:{coturn.port}", "--json", "--quality-duration", "0")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["schema"] == "lkice.report/1"
    assert report["verdict"] == "ok"
    # The double-click mode: a definition next to the binary, outputs written beside it.
    (binary.parent / "lkice.toml").write_text(
        f'[probe]\nname = "desk"\n[settings]\nquality = {{ duration_s = 0 }}\n'
        f'[[targets]]\nuri = "stun:127.0.0.1:{coturn.port}"\n'
    )
    try:
        clicked = bare(binary, cwd=tmp_path)
        assert clicked.returncode == 0, clicked.stderr
        assert len(list(binary.parent.glob("lkice-*-paste.txt"))) == 1
        assert len(list(binary.parent.glob("lkice-*.html"))) == 1
    finally:
        (binary.parent / "lkice.toml").unlink()


def _builds(home: Path) -> list[Path]:
    root = home / ".cache" / "lkice"
    return sorted(root.iterdir()) if root.exists() else []


def test_unpacked_once_into_the_cache(binary: Path, tmp_path: Path) -> None:
    """The launcher unpacks the program into ~/.cache/lkice/<build key> at the first start,
    completely (a marker written last), and runs it from there afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    first = bare(binary, "--version", home=home)
    assert first.returncode == 0, first.stderr
    (build,) = _builds(home)
    assert build.name.startswith(first.stdout.split()[-1] + "-")  # version-hash
    assert (build / ".complete").read_text() == build.name
    program = build / "lkice" / "lkice"
    assert os.access(program, os.X_OK)  # file modes survive the zip
    stamp = program.stat().st_mtime_ns
    again = bare(binary, "--version", home=home)
    assert again.stdout == first.stdout
    assert program.stat().st_mtime_ns == stamp  # not unpacked again
    assert _builds(home) == [build]


def test_concurrent_first_starts(binary: Path, tmp_path: Path) -> None:
    """Four copies starting at once on an empty cache: all work, one build is left, no
    half-unpacked folder remains."""
    home = tmp_path / "home"
    home.mkdir()
    empty = binary.parent / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty), "HOME": str(home)}
    procs = [
        subprocess.Popen(
            [str(binary), "--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outs]
    (build,) = _builds(home)
    assert (build / ".complete").exists()


def test_unwritable_cache_falls_back_to_a_temporary_copy(binary: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("a file where the cache folder would go")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    empty = binary.parent / "empty-path"
    empty.mkdir(exist_ok=True)
    done = subprocess.run(
        [str(binary), "--version"],
        env={"PATH": str(empty), "HOME": str(home), "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("lkice, version ")
    # The temporary copy is removed after the run (PyInstaller's own _MEI folder too).
    assert list(tmp.iterdir()) == []


def test_the_workflow_builds_with_build_py() -> None:
    """The hosted-runner workflow (not runnable here) uses the same build as CI."""
    workflow = (ROOT / ".github" / "workflows" / "binary.yml").read_text()
    assert "python packaging/binary/build.py --dist dist" in workflow
    assert "exec python3 packaging/binary/build.py" in BUILD.read_text()
