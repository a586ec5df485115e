"""JSON Lines history of reports: one report per line, appended by scheduled probes.

- An append is one ``write()`` of the whole line on an ``O_APPEND`` descriptor, under an
  exclusive ``flock`` shared with rotation: concurrent writers (a daemon and a cron run) never
  interleave, and a reader never sees half a line except after a crash mid-write, which the next
  writer repairs by cutting the file back to its last complete line before appending.
- Rotation bounds the size: when the next line would take the file past ``max_bytes``, it is
  renamed to ``.1`` (older ones shift to ``.2`` .. ``.keep``, the oldest is dropped) and a new
  file is started.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "append", "read"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 3


def append(
    path: Path | str,
    report: Mapping[str, Any],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    keep: int = DEFAULT_KEEP,
) -> None:
    """Append ``report`` as one line. Raises OSError when the file cannot be written (the
    caller reports it; a probe keeps running)."""
    path = Path(path)
    line = (json.dumps(report, separators=(",", ":")) + "\n").encode()
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _repair(path)
            if path.exists() and path.stat().st_size + len(line) > max_bytes:
                _rotate(path, keep)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = os.write(fd, line)
                if written != len(line):  # a full disk: leave no torn line behind
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                    raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _repair(path: Path) -> None:
    """Cut a torn last line (a writer died mid-write) so the next append starts a line."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the last newline, reading backwards in bounded chunks.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                f.truncate(start + at + 1)
                return
            end = start
        f.truncate(0)


def _rotate(path: Path, keep: int) -> None:
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if keep >= 1:
        os.replace(path, path.with_name(f"{path.name}.1"))
    else:
        path.unlink()


def read(path: Path | str) -> Iterator[dict[str, Any]]:
    """The reports in one history file, oldest first; a torn last line is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)
