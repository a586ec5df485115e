"""Writing output files so a failure never leaves a broken one: the text goes to a temporary
file beside the target, is flushed to disk, and replaces the target in one rename. A full disk or
a crash leaves the old file (or none), never a 0-byte or truncated one."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], text: str, *, follow_symlinks: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; raises OSError with the reason.

    A symlink stays a symlink (its target is replaced); a device or a pipe (``/dev/stdout``,
    a FIFO) is written to as it is, never replaced by a file; a directory is refused. With
    ``follow_symlinks`` False (a folder others can write to, such as Downloads) a symlink at
    ``path`` is replaced by the file, never written through."""
    given = Path(path)
    try:
        mode: int | None = (os.stat(given) if follow_symlinks else os.lstat(given)).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        mode = None  # not followed: the link itself is replaced
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a directory", str(given))
    if mode is not None and not stat.S_ISREG(mode):
        with open(given, "w", encoding="utf-8") as out:
            out.write(text)
        return
    target = Path(os.path.realpath(given)) if follow_symlinks else given
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file private (0600); the report gets the usual mode instead.
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
