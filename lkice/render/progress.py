"""Live progress on stderr while probing, for people at a terminal: one line per finished path
above a status line that says what is still running. Plain text marks (no colour needed, no
Unicode needed); nothing at all when stderr is not a terminal, so pipes, files and monitoring
get only the report.

Server names, relays and stage texts are shown through :func:`lkice.textsafe.visible` and as
``rich.text.Text`` (never markup): a name like ``[bold]x`` or one holding escape codes prints as
the characters it is made of."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from lkice.textsafe import visible

if TYPE_CHECKING:
    from lkice.report import PathResult

__all__ = ["Progress", "progress_for"]


class Progress:
    """Does nothing; :class:`LiveProgress` shows it. The CLI calls these at each step."""

    def stage(self, text: str) -> None:
        """A step starts (signaling, the ICE servers, the media sessions)."""

    def path_done(self, path: PathResult) -> None:
        """One path has its answer."""

    def close(self) -> None:
        """The run is over: remove the status line."""


class LiveProgress(Progress):
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # lazy: only for terminals
        from rich.live import Live

        self._console = Console(file=stream, highlight=False, emoji=False, soft_wrap=False)
        self._start = time.perf_counter()
        self._stage = "starting"
        self._done = 0
        self._ok = 0
        self._live = Live(
            self._status(), console=self._console, refresh_per_second=8, transient=True
        )
        self._live.start()

    def _status(self) -> Any:
        from rich.text import Text

        elapsed = time.perf_counter() - self._start
        return Text(
            f"... {visible(self._stage)}: {self._done} paths answered ({self._ok} ok), "
            f"{elapsed:.1f} s"
        )

    def _refresh(self) -> None:
        self._live.update(self._status(), refresh=True)

    def stage(self, text: str) -> None:
        self._stage = text
        self._refresh()

    def path_done(self, path: PathResult) -> None:
        from rich.text import Text

        self._done += 1
        self._ok += path.ok
        mark = "ok  " if path.ok else "FAIL"
        what = f"{path.kind} {path.server} {path.transport}"
        if path.relay:
            what += f" via {path.relay}"
        outcome = "" if path.ok or path.error is None else f"  ({path.error.kind})"
        line = visible(f"[{mark}] {what}{outcome}")
        self._console.print(Text(line), overflow="ellipsis", no_wrap=True)
        self._refresh()

    def close(self) -> None:
        self._live.stop()


def progress_for(enabled: bool, stream: TextIO | None = None) -> Progress:
    """A live display on ``stream`` (stderr) when it is a terminal and ``enabled``."""
    stream = stream or sys.stderr
    if enabled and stream.isatty():
        return LiveProgress(stream)
    return Progress()
