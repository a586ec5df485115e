"""TURN allocations released after the verdict: a path that concluded hands its allocation over
(``ProbeSettings.releases``), the release (Refresh lifetime 0) is sent at once, and the caller
(``lkice run``) prints the verdict without waiting the round trip for the answer, then waits for
it, bounded, before it exits. No allocation is left behind by a run that ends normally; one that
gets no answer in time expires after its lifetime, and its path says so.

Light to import (the probes' modules are imported when a release is sent): the command line
makes the collector before it knows whether its request is good.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from lkice.errors import ProbeError

if TYPE_CHECKING:
    from lkice.probe.channel import StreamChannel, UdpChannel
    from lkice.probe.turn import Allocation
    from lkice.report import PathResult

    Channel = UdpChannel | StreamChannel

__all__ = ["RELEASE_GRACE_S", "Releases"]

log = logging.getLogger(__name__)

# How long, after the verdict, the releases still unanswered may hold the process's exit.
RELEASE_GRACE_S = 1.0
# Cancelled transactions end at once; this only collects them.
_COLLECT_S = 0.1


class Releases:
    """Allocations whose release their paths handed over. Each is sent at once, in the
    background; :meth:`finish` waits for the ones still unanswered, bounded. The path's
    ``deallocated`` and ``timings_ms.deallocate`` are filled in when the answer comes (the
    round trip then overlaps the printing of the verdict: it may include lkice's own time); a
    release that got no answer in time is noted on its path."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], Channel | None] = {}

    def start(self, channel: Channel, allocation: Allocation, result: PathResult) -> None:
        """Send the release on ``channel``, which this object now owns and closes."""
        task = asyncio.ensure_future(_release(channel, allocation, result))
        self._tasks[task] = channel

    def later(self, goodbye: Coroutine[Any, Any, None]) -> None:
        """Any other goodbye a concluded path owes a server (the SFU sessions' leave and
        closes), sent at once and awaited, bounded, with the releases."""
        self._tasks[asyncio.ensure_future(goodbye)] = None

    @property
    def pending(self) -> int:
        return sum(not task.done() for task in self._tasks)

    async def finish(
        self, timeout: float = RELEASE_GRACE_S, stop: asyncio.Event | None = None
    ) -> None:
        """Wait for the releases, ``timeout`` seconds at most, or until ``stop`` is set
        (Ctrl-C); the ones still unanswered are given up and their connections closed."""
        pending = {task for task in self._tasks if not task.done()}
        if pending:
            stopper = None if stop is None else asyncio.ensure_future(stop.wait())
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            try:
                while pending and (stopper is None or not stopper.done()):
                    remaining = end - loop.time()
                    if remaining <= 0:
                        break
                    waiting: set[asyncio.Future[Any]] = set(pending)
                    if stopper is not None:
                        waiting.add(stopper)
                    await asyncio.wait(waiting, timeout=remaining, return_when=FIRST_COMPLETED)
                    pending = {task for task in pending if not task.done()}
            finally:
                if stopper is not None:
                    stopper.cancel()
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=_COLLECT_S)
        for task, channel in self._tasks.items():
            if not task.done():
                task.add_done_callback(_retrieve)
            elif not task.cancelled():
                task.result()  # a bug in the release: never dropped
            if channel is not None:
                channel.close()
        self._tasks.clear()


async def _release(channel: Channel, allocation: Allocation, result: PathResult) -> None:
    from lkice.probe.turn import release

    try:
        await release(channel, allocation, result)
    except ProbeError as exc:
        result.notes.append(
            f"the allocation could not be released ({exc.message}); it expires after its lifetime"
        )
        log.info("%s %s: release failed: %s", result.address, result.transport, exc.kind.value)
    except asyncio.CancelledError:
        lifetime = f" ({result.lifetime_s} s)" if result.lifetime_s else ""
        result.notes.append(
            "the server had not answered the release (Refresh lifetime 0) when lkice exited; "
            f"the allocation expires after its lifetime{lifetime}"
        )
        raise
    finally:
        result.phase = None  # the path concluded before its release
        channel.close()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
