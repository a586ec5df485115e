"""Probe trains: probes at audio cadence on an open path, each answer timestamped on arrival.

Two kinds of probe share one schedule and one bookkeeping:
- STUN Binding requests to the server (works against any STUN/TURN server);
- data through the TURN relay: the path's allocation sends to a second allocation of the agent's,
  which echoes it back (the real media path through the relay, both directions).

No retransmissions: a probe that gets no answer by the end of the train plus a grace period is
lost. The statistics come from the pure ``lkice.quality`` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from lkice.errors import ProbeError
from lkice.quality import Sample


@dataclass(frozen=True)
class TrainSettings:
    interval: float = 0.020  # one probe every 20 ms: an audio packet's cadence
    duration: float = 5.0
    grace: float = 1.0  # how long to wait for answers after the last send
    relay: bool = True  # also measure through the TURN relay where an allocation exists
    payload: int = 172  # bytes of relay probe data: a 20 ms Opus frame plus RTP header

    @property
    def count(self) -> int:
        return max(1, round(self.duration / self.interval))


@dataclass(frozen=True)
class TrainResult:
    samples: list[Sample]  # one per probe actually sent
    cut_short: ProbeError | None  # why the train stopped before sending every probe


class Train:
    """Bookkeeping for one train: the I/O layer calls ``arrived`` for every answer it matches."""

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = settings
        self.sent_at: list[float] = []
        self.received: dict[int, float] = {}
        self._all_in = asyncio.Event()

    def arrived(self, seq: int, when: float) -> None:
        if 0 <= seq < len(self.sent_at) and seq not in self.received:
            self.received[seq] = when
            if len(self.received) == self.settings.count:
                self._all_in.set()

    async def run(
        self, send: Callable[[int], None], failure: Callable[[], ProbeError | None]
    ) -> TrainResult:
        """Call ``send(seq)`` on schedule; ``failure()`` says whether the path has died."""
        cut_short: ProbeError | None = None
        start = time.perf_counter()
        for seq in range(self.settings.count):
            # A fixed schedule from the start, so one late wake-up does not shift later probes.
            delay = start + seq * self.settings.interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Recorded before sending, so an answer can never look older than its probe.
            self.sent_at.append(time.perf_counter())
            try:
                send(seq)
            except ProbeError as exc:
                self.sent_at.pop()
                cut_short = exc
                break
        if cut_short is None and len(self.received) < len(self.sent_at):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_in.wait(), self.settings.grace)
        if cut_short is None and len(self.received) < len(self.sent_at):
            cut_short = failure()
        samples = [Sample(seq, t, self.received.get(seq)) for seq, t in enumerate(self.sent_at)]
        return TrainResult(samples, cut_short)

    def partial(self, now: float) -> list[Sample]:
        """The samples of a train cut short at ``now``: probes sent within the last grace period
        and not yet answered are still in flight, so they are left out rather than counted lost."""
        return [
            Sample(seq, t, self.received.get(seq))
            for seq, t in enumerate(self.sent_at)
            if seq in self.received or now - t >= self.settings.grace
        ]


class LoopMonitor:
    """Measures the agent's own event-loop stalls while trains run.

    A stalled loop (garbage collection, a slow callback, a busy machine) hands over answers
    late and together, exactly like a head-of-line release on the path. The monitor ticks every
    ``tick`` seconds and records each wake-up later than ``threshold`` as a blind interval, so
    the statistics can set such bursts aside and the report can say how often it happened."""

    def __init__(self, tick: float = 0.005, threshold: float = 0.010) -> None:
        self.tick = tick
        self.threshold = threshold
        self.stalls: list[tuple[float, float]] = []  # (start, end), time.perf_counter() seconds
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.tick
            await asyncio.sleep(self.tick)
            now = time.perf_counter()
            if now - due > self.threshold:
                self.stalls.append((due, now))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def summary(self) -> dict[str, float | int | None]:
        longest = max((b - a for a, b in self.stalls), default=None)
        return {
            "stalls": len(self.stalls),
            "max_ms": None if longest is None else round(longest * 1000, 3),
            "threshold_ms": self.threshold * 1000,
        }
