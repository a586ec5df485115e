"""Offline builds of the lab's Go servers (pion/turn, the pion/webrtc media plane) in GOPATH
mode against Debian's Go sources (``/usr/share/gocode``), cached per source hash under
``~/.cache/lkice/<name>-<hash>/<name>``: never the network (``GOPROXY=off``), never half a
binary (built beside the target and renamed)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lkice.lab.server import LabError, visible

__all__ = [
    "BUILD_TIMEOUT",
    "GOCODE",
    "build_go_program",
    "built_program",
    "cache_root",
    "source_hash",
]

GOCODE = Path("/usr/share/gocode/src")
BUILD_TIMEOUT = 180.0  # a cold build takes ~10-30 s here; the bound is for a starved machine


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lkice"


def source_hash(source_dir: Path) -> str:
    """Names a build: the program's source files (a changed source is a new binary)."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def built_program(name: str, source_dir: Path, root: Path | None = None) -> Path:
    """Where the build of this source lives (whether or not it exists yet)."""
    return (root or cache_root()) / f"{name}-{source_hash(source_dir)}" / name


def _gopath_links(gopath: Path) -> None:
    """GOPATH mode resolves ``github.com/pion/X/vN`` only where a ``vN`` directory exists;
    Debian installs most major versions (webrtc v3, transport v2) at the package root, so
    link them."""
    pion = GOCODE / "github.com" / "pion"
    for gomod in sorted(pion.glob("*/go.mod")):
        match = re.search(r"^module\s+(\S+/v(\d+))\s*$", gomod.read_text(), re.MULTILINE)
        if match is None or (gomod.parent / f"v{match.group(2)}").exists():
            continue
        link = gopath / "src" / match.group(1)
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another build made it meanwhile
            link.symlink_to(gomod.parent, target_is_directory=True)


def build_go_program(
    name: str,
    source_dir: Path,
    timeout: float = BUILD_TIMEOUT,
    root: Path | None = None,
) -> Path:
    """Build ``source_dir`` into ``<cache>/<name>-<source hash>/<name>`` and return its path; a
    build already there is reused. Raises :class:`LabError` with the compiler's output on
    failure or timeout."""
    go = shutil.which("go")
    if go is None:
        raise LabError(f"building {name} needs Go: apt-get install golang-go")
    root = root or cache_root()
    binary = built_program(name, source_dir, root)
    if binary.is_file():
        return binary
    gopath = root / "gopath"
    gopath.mkdir(parents=True, exist_ok=True)
    _gopath_links(gopath)
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.parent / f".{name}-{os.getpid()}.partial"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE.parent}",
        "GOCACHE": str(root / "go-build"),
        "GOFLAGS": "",
        "GOPROXY": "off",  # never the network, whatever the environment says
        "CGO_ENABLED": "0",
    }
    start = time.monotonic()
    process = subprocess.Popen(
        [go, "build", "-o", str(partial), "."],
        cwd=source_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the compiler's children are stopped with it on a timeout
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        partial.unlink(missing_ok=True)
        raise LabError(
            f"building {name} did not finish within {timeout:g} s: "
            f"{visible(output.decode(errors='replace')) or '(no output)'}"
        ) from None
    if process.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise LabError(
            f"building {name} ({source_dir}) failed with status {process.returncode} "
            f"after {time.monotonic() - start:.1f} s:\n"
            f"{visible(output.decode(errors='replace')) or '(no output)'}"
        )
    os.replace(partial, binary)
    return binary
