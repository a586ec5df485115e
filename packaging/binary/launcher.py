"""The one-file lkice binary's launcher: the whole program (a PyInstaller one-folder build) is a
zip appended to this executable; it is unpacked once per build into the user's cache and run
from there, so later starts pay no unpacking (PyInstaller's own one-file mode unpacks ~200 MB
on every start). Only the standard library, and on the common path (already unpacked) only
``os`` and ``sys``: this program must start fast.

Cache: $XDG_CACHE_HOME or ~/.cache (Linux), ~/Library/Caches (macOS), %LOCALAPPDATA% (Windows),
then ``lkice/<build key>``; a folder counts only once it holds ``.complete`` (written last,
then the folder is renamed into place, so a crash or a second copy starting at the same time
never runs a half-unpacked program). Builds not used for 30 days are removed. Where no cache can
be written, the program is unpacked into a temporary folder for this run only.
"""

from __future__ import annotations

import contextlib
import os
import sys

from _lkice_payload import KEY, PROGRAM  # written by build.py

MARK = ".complete"
STALE_S = 30 * 86400


def cache_root() -> str:
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.environ.get("TEMP") or home
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "lkice")


def unpack(into: str) -> None:
    """The appended zip into ``into``: file modes kept, symbolic links recreated."""
    import shutil
    import stat
    import zipfile

    with zipfile.ZipFile(sys.executable) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            target = os.path.join(into, *info.filename.split("/"))
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if stat.S_ISLNK(mode):
                os.symlink(archive.read(info).decode(), target)
                continue
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            if mode:
                os.chmod(target, stat.S_IMODE(mode))
    with open(os.path.join(into, MARK), "w") as mark:
        mark.write(KEY)


def cached() -> str | None:
    """The unpacked program's folder in the cache, unpacking it first if needed; None if the
    cache cannot be written."""
    root = cache_root()
    here = os.path.join(root, KEY)
    if os.path.isfile(os.path.join(here, MARK)):
        return here
    import shutil
    import tempfile

    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        fresh = tempfile.mkdtemp(prefix=f".{KEY}-", dir=root)
    except OSError:
        return None
    try:
        unpack(fresh)
        os.replace(fresh, here)
    except OSError:
        shutil.rmtree(fresh, ignore_errors=True)
        # Another copy may have put it in place meanwhile; otherwise the cache is unusable.
        return here if os.path.isfile(os.path.join(here, MARK)) else None
    _prune(root)
    return here


def _prune(root: str) -> None:
    """Remove other builds not used for a while (a build in use is touched at each start)."""
    import shutil
    import time

    now = time.time()
    for name in os.listdir(root):
        if name == KEY:
            continue
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if now - os.stat(path).st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    folder = cached()
    temporary = None
    if folder is None:
        import tempfile

        temporary = folder = tempfile.mkdtemp(prefix="lkice-")
        unpack(folder)
    else:
        with contextlib.suppress(OSError):
            os.utime(folder)  # in use: not pruned
    program = os.path.join(folder, "lkice", PROGRAM)
    # The program finds lkice.toml and writes its reports next to this file, not the cache.
    os.environ["LKICE_PROGRAM"] = sys.executable
    args = [program, *sys.argv[1:]]
    if temporary is None and os.name == "posix":
        # The same process: signals and exit status as if run directly. The program is ours.
        os.execv(program, args)  # noqa: S606
    # Windows (no exec) or a temporary copy to remove afterwards: run it, pass its status on.
    # Ctrl-C reaches the program itself (same console / process group), not this launcher.
    import shutil
    import signal
    import subprocess

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status = subprocess.call(args)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
