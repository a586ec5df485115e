"""Finding and removing what a lab left behind: everything a lab creates carries its token
(namespaces ``lk-<token>-*``, interfaces ``lk<token>*``, /etc/netns entries, temporary
directories, processes), so :func:`leftovers` lists it and :func:`destroy` removes it, even after
``kill -9`` of the process that built the lab."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lkice.lab.netlab.addressing import _TOKEN_RE
from lkice.lab.netlab.procs import _run
from lkice.lab.server import LabError

_NETNS_DIR = Path("/run/netns")
_ETC_NETNS = Path("/etc/netns")
# Namespace inodes per token, so leftovers() still finds a process whose namespace has lost its
# name (a namespace lives on, unnamed, while any process is inside it).
_NS_INODES: dict[str, set[int]] = {}


def _lab_prefix(token: str) -> str:
    return f"lk-{token}-"


def _token_namespaces(token: str) -> list[str]:
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(_lab_prefix(token)))


def _token_etc_dirs(token: str) -> list[Path]:
    try:
        return sorted(p for p in _ETC_NETNS.iterdir() if p.name.startswith(_lab_prefix(token)))
    except FileNotFoundError:
        return []


def _token_temp_dirs(token: str) -> list[Path]:
    """The lab's working directory and its servers' (named after their namespace, so carrying
    the token: ``lkice-<server>-lk-<token>-...``)."""
    temp = Path(tempfile.gettempdir())
    return sorted(
        set(temp.glob(f"lkice-netlab-{token}-*")) | set(temp.glob(f"lkice-*-lk-{token}-*"))
    )


def _token_pids(token: str) -> dict[int, str]:
    """Processes whose command line names the lab (namespace or interface names) or that run in
    one of its namespaces, named or not: pid -> command line."""
    marks = (f"lk-{token}", f"lk{token}")
    inodes = set(_NS_INODES.get(token, set()))
    for ns in _token_namespaces(token):
        with contextlib.suppress(OSError):
            inodes.add((_NETNS_DIR / ns).stat().st_ino)
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            ns_inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue  # gone, or a kernel thread
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if ns_inode in inodes or any(m in cmdline for m in marks):
            found[int(entry)] = cmdline
    return found


def _token_root_links(token: str) -> list[str]:
    """Interfaces carrying the token in the *root* namespace: there should never be any."""
    try:
        out = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if f"lk{token}" in n]


def leftovers(token: str) -> list[str]:
    """Everything still carrying ``token``: namespaces, /etc/netns entries, temporary
    directories, processes (by command line or by namespace), interfaces in the root namespace.
    Empty after a clean teardown."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"not a lab token: {token!r}")
    items = [f"namespace {n}" for n in _token_namespaces(token)]
    items += [f"directory {p}" for p in _token_etc_dirs(token) + _token_temp_dirs(token)]
    items += [f"process {pid}: {cmd}" for pid, cmd in sorted(_token_pids(token).items())]
    items += [f"interface {n} in the root namespace" for n in _token_root_links(token)]
    return items


def _kill_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def destroy(token: str) -> list[str]:
    """Remove everything carrying ``token``: kill the processes in its namespaces (and any naming
    it), delete the namespaces, their /etc/netns entries and the lab's temporary directories.
    Returns what could not be removed. Safe to call on a lab that is half built, gone, or owned
    by a process that was killed (``kill -9``)."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"not a lab token: {token!r}")
    problems: list[str] = []
    pids: set[int] = set(_token_pids(token))
    for ns in _token_namespaces(token):
        with contextlib.suppress(LabError):
            out = _run(["ip", "netns", "pids", ns], timeout=5).stdout
            pids.update(int(p) for p in out.split() if p.isdigit())
    pids.discard(os.getpid())
    _kill_pids(sorted(pids))
    for ns in _token_namespaces(token):
        try:
            _run(["ip", "netns", "delete", ns], timeout=10)
        except LabError as exc:
            problems.append(str(exc))
    for directory in _token_etc_dirs(token) + _token_temp_dirs(token):
        try:
            shutil.rmtree(directory)
        except OSError as exc:
            problems.append(f"cannot remove {directory}: {exc}")
    return problems
