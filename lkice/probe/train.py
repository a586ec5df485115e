"""Probe trains: probes at audio cadence on an open path, each answer timestamped on arrival.

Two kinds of probe share one schedule and one bookkeeping:
- STUN Binding requests to the server (works against any STUN/TURN server);
- data through the TURN relay: the path's allocation sends to a second allocation of the agent's,
  which echoes it back (the real media path through the relay, both directions).

No retransmissions: a probe that gets no answer by the end of the train plus a grace period is
lost. The statistics come from the pure ``lkice.quality`` module.

Every train of an event loop is sent by one ``Pacer``: probes on a fixed schedule from one
timer, batched, the run's trains staggered over the interval, each probe's send-time slip kept
(``Pacing``, the train's ``pacing`` figure). When the agent itself cannot keep up, the pacer
lowers the cadence and the train's note says so; the network is never blamed for it.

On stream paths the kernel's own TCP counters are read before and after a train (``TcpCounters``,
``read_tcp_counters``, ``tcp_evidence``): whether this computer resent segments, and whether data
came in behind a gap, is the evidence that a stall was a repair of a loss. The parsers follow the
documented layouts and read only what the kernel filled in:

- Linux ``getsockopt(IPPROTO_TCP, TCP_INFO)``, ``struct tcp_info`` (``linux/tcp.h``):
  ``tcpi_retrans`` (u32 at 36, segments resent and not yet acknowledged), ``tcpi_rtt`` and
  ``tcpi_rttvar`` (u32 at 68 and 72, us), ``tcpi_total_retrans`` (u32 at 100, since the
  connection began; Linux 2.6.x), ``tcpi_dsack_dups`` (u32 at 216, DSACK blocks received: resent
  segments the peer already had; Linux 5.0) and ``tcpi_rcv_ooopack`` (u32 at 224, packets
  received out of order; Linux 5.4).
- macOS ``getsockopt(IPPROTO_TCP, TCP_CONNECTION_INFO = 0x106)``, ``struct tcp_connection_info``
  (XNU ``netinet/tcp.h``): ``tcpi_srtt`` and ``tcpi_rttvar`` (u32 at 44 and 48, ms) and
  ``tcpi_txretransmitpackets`` (u64 at 104; 112 bytes in all). Its out-of-order count is in
  bytes (``tcpi_rxoutoforderbytes``), not segments, so it is not used.
- Windows ``WSAIoctl(SIO_TCP_INFO = 0xD8000027)`` with version 0, ``TCP_INFO_v0``
  (``mstcpip.h``, Windows 10 1703): ``RttUs`` (u32 at 20), ``FastRetrans`` and
  ``TimeoutEpisodes`` (u32 at 72 and 80: the repairs this computer made; 88 bytes in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import socket
import struct
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from lkice.errors import ProbeError
from lkice.quality import Hold, Sample, TcpEvidence, TrainRecord, percentile


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
    tcp: TcpEvidence | None = None  # stream paths: the kernel's counters over the train
    pacing: Pacing | None = None  # how the probes were sent against their schedule


# The pacer's overload rule (see ``Pacer``).
BUSY_LIMIT = 0.85  # share of the wall clock the event loop's thread computed
SLIP_LIMIT = 0.005  # s: 90th percentile of the probes' send-time slip
SKIP_LIMIT = 0.1  # share of the probes due that were skipped, overdue by a whole interval
TRAIN_SHARE = 0.25  # the trains' own estimated share of the loop's time, at least
CONTROL_PERIOD = 0.25  # s between two looks at the load
SETTLE = 0.5  # s after a change before the next one: let its effect show
MAX_FACTOR = 8  # the cadence is lowered at most to 1/8 (20 ms -> 160 ms)
EARLY = 0.0005  # s: a probe due this soon is sent with the batch being sent now
SLOT = 0.001  # s: the phase slots trains start in (see ``Pacer``)
SLOT_FILL = 32  # trains a slot takes before the next one opens (see ``Pacer``)


@dataclass(frozen=True)
class Pacing:
    """How one train was sent (all times ms), reported as the train's ``pacing`` figure.

    ``slip_ms``: each probe's send time minus its schedule (negative: sent up to ``EARLY``
    ahead, with a batch); the send time itself is stamped right before the probe's own send,
    so slip never enters an RTT. ``cadences``: (first probe, interval) for each cadence used,
    in order; more than one, or a first one above ``interval_ms``, when the agent lowered it
    (``reason`` says why). ``start_delay_ms``: how long the start waited for its phase slot.
    ``skipped``: probes not sent, overdue by a whole interval when their turn came.
    ``arrivals``: what timed the answers ("kernel": the kernel's receive stamps, "user": when
    the event loop read them; see ``lkice.probe.channel``)."""

    interval_ms: float  # the cadence asked for
    cadences: tuple[tuple[int, float], ...]
    slip_ms: tuple[float, ...]
    start_delay_ms: float
    arrivals: str = "user"
    reason: str | None = None  # why the cadence was lowered
    skipped: int = 0  # probes not sent: overdue by a whole interval when their turn came

    @property
    def lowered(self) -> bool:
        return len(self.cadences) > 1 or (
            bool(self.cadences) and self.cadences[0][1] > self.interval_ms
        )

    @property
    def final_interval_ms(self) -> float:
        return self.cadences[-1][1] if self.cadences else self.interval_ms

    def figures(self) -> dict[str, Any]:
        slips = sorted(self.slip_ms)
        return {
            "interval_ms": self.interval_ms,
            "lowered": self.lowered,
            "cadences": [{"from_probe": seq, "interval_ms": ms} for seq, ms in self.cadences],
            "slip_ms": None
            if not slips
            else {
                "p50": round(percentile(slips, 50), 3),
                "p95": round(percentile(slips, 95), 3),
                "max": round(slips[-1], 3),
            },
            "start_delay_ms": round(self.start_delay_ms, 3),
            "skipped": self.skipped,
            "arrivals": self.arrivals,
        }

    def note(self, name: str) -> str | None:
        """What the report says when the agent lowered this train's cadence; None otherwise."""
        if not self.lowered:
            return None
        steps = ", then ".join(
            f"every {ms:g} ms from probe {seq}"
            for seq, ms in self.cadences
            if ms > self.interval_ms
        )
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"{name}: lkice could not keep up with its probe trains at {self.interval_ms:g} ms "
            f"on this computer{why}, so it sent this train's probes {steps}: the agent's limit, "
            "not the network's; the figures are the network's at that cadence"
        )


@dataclass(frozen=True)
class PacedRecord(TrainRecord):
    """A ``TrainRecord`` whose figures also say how the train was sent (``pacing``)."""

    pacing: Pacing | None = None

    def figures(
        self, blind: Sequence[tuple[float, float]] = (), shared: Sequence[Hold] = ()
    ) -> dict[str, object]:
        out = super().figures(blind=blind, shared=shared)
        if self.pacing is not None:
            out["pacing"] = self.pacing.figures()
        return out


class Train:
    """Bookkeeping for one train: the I/O layer calls ``arrived`` for every answer it matches.

    The probes are sent by the event loop's ``Pacer`` (one timer for every train), on a fixed
    schedule from the train's start: a late wake-up does not shift later probes, and how late
    each probe left is kept (``Pacing``)."""

    def __init__(self, settings: TrainSettings, pacer: Pacer | None = None) -> None:
        self.settings = settings
        self.sent_at: list[float] = []
        self.scheduled: list[float] = []  # when each probe was due
        self.received: dict[int, float] = {}
        self.interval = settings.interval  # the cadence now
        self.cadences: list[tuple[int, float]] = []
        self.reason: str | None = None
        self.arrivals = "user"
        self.start_delay = 0.0
        self.skipped = 0  # probes not sent because they were overdue (see ``_fire``)
        self._pacer = pacer
        self._all_in = asyncio.Event()
        self._sending: asyncio.Future[ProbeError | None] | None = None
        self._send: Callable[[int], None] | None = None
        self._end = math.inf  # no probe is due at or after this (perf_counter seconds)
        self._phase: tuple[float, int] | None = None  # the pacer's slot for it

    def arrived(self, seq: int, when: float) -> None:
        if 0 <= seq < len(self.sent_at) and seq not in self.received:
            # Never before its probe: a kernel stamp converted from the wall clock may be off by
            # the microseconds between two clock readings.
            self.received[seq] = max(when, self.sent_at[seq])
            sending = self._sending
            if sending is not None and sending.done() and len(self.received) == len(self.sent_at):
                self._all_in.set()

    async def run(
        self, send: Callable[[int], None], failure: Callable[[], ProbeError | None]
    ) -> TrainResult:
        """Have ``send(seq)`` called on schedule; ``failure()`` says whether the path has died."""
        loop = asyncio.get_running_loop()
        pacer = self._pacer if self._pacer is not None else Pacer.of(loop)
        self._send = send
        self._sending = loop.create_future()
        pacer.add(self)
        try:
            cut_short = await self._sending
        finally:
            pacer.remove(self)
        if cut_short is None and len(self.received) < len(self.sent_at):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_in.wait(), self.settings.grace)
        if cut_short is None and len(self.received) < len(self.sent_at):
            cut_short = failure()
        samples = [Sample(seq, t, self.received.get(seq)) for seq, t in enumerate(self.sent_at)]
        return TrainResult(samples, cut_short, pacing=self.pacing())

    def pacing(self) -> Pacing:
        return Pacing(
            interval_ms=self.settings.interval * 1000,
            cadences=tuple((seq, interval * 1000) for seq, interval in self.cadences),
            slip_ms=tuple(
                (t - due) * 1000 for t, due in zip(self.sent_at, self.scheduled, strict=True)
            ),
            start_delay_ms=self.start_delay * 1000,
            arrivals=self.arrivals,
            reason=self.reason,
            skipped=self.skipped,
        )

    def record(
        self,
        samples: Sequence[Sample],
        stream: bool,
        *,
        legs: int = 1,
        tcp: TcpEvidence | None = None,
        **more: Any,
    ) -> PacedRecord:
        """The train as ``lkice.quality`` judges it, at the cadence it was really sent at."""
        pacing = self.pacing()
        return PacedRecord(
            samples=tuple(samples),
            interval=pacing.final_interval_ms / 1000,
            stream=stream,
            legs=legs,
            tcp=tcp,
            pacing=pacing,
            **more,
        )

    def note(self, name: str) -> str | None:
        return self.pacing().note(name)

    # The pacer's side.

    def _started(self, start: float, interval: float, delay: float, reason: str | None) -> None:
        self.start_delay = delay
        self.interval = interval
        self.cadences = [(0, interval)]
        if interval > self.settings.interval:
            self.reason = reason
        # Within the duration asked for: ``settings.count`` probes at the nominal cadence.
        self._end = start + (self.settings.count - 0.5) * self.settings.interval

    def _lower(self, interval: float, reason: str) -> None:
        """From the probe after the one already scheduled on, send every ``interval``."""
        if interval <= self.interval:
            return
        self.interval = interval
        self.reason = self.reason or reason
        self.cadences.append((len(self.sent_at) + 1, interval))

    def _fire(self, due: float) -> float | None:
        """Send the probe due at ``due``; returns when the next one is due, None when done."""
        sending, send = self._sending, self._send
        if sending is None or sending.done() or send is None:
            return None
        seq = len(self.sent_at)
        now = time.perf_counter()
        # Probes a whole interval overdue (the loop was held) are skipped, not sent in a burst
        # to catch up: of the slots that passed, only the latest is sent.
        while now - due >= self.interval and due + self.interval < self._end:
            due += self.interval
            self.skipped += 1
        # Recorded before sending, so an answer can never look older than its probe.
        self.sent_at.append(now)
        self.scheduled.append(due)
        try:
            send(seq)
        except ProbeError as exc:
            self.sent_at.pop()
            self.scheduled.pop()
            sending.set_result(exc)
            return None
        except Exception as exc:  # a bug in the I/O layer: the train's caller sees it
            self.sent_at.pop()
            self.scheduled.pop()
            sending.set_exception(exc)
            return None
        following = due + self.interval
        if following >= self._end:
            sending.set_result(None)
            if len(self.received) == len(self.sent_at):
                self._all_in.set()
            return None
        return following

    def partial(self, now: float) -> list[Sample]:
        """The samples of a train cut short at ``now``: probes sent within the last grace period
        and not yet answered are still in flight, so they are left out rather than counted lost."""
        return [
            Sample(seq, t, self.received.get(seq))
            for seq, t in enumerate(self.sent_at)
            if seq in self.received or now - t >= self.settings.grace
        ]


class SendBatch:
    """Sends deferred while the pacer prepares a batch of probes, then made back to back.

    A send that wakes the receiving process (the server, idle between two batches) costs this
    process far more CPU than one made while it is still awake: measured on this project's
    2-core VM, 60 us against 5 us per datagram. So the pacer first prepares every probe due
    (encoding, bookkeeping), with channels handing their sends to ``SendBatch.current``, then
    sends them all in a tight loop; each probe's send time is stamped right before its own
    send, so the deferral is in its slip, never in its RTT."""

    current: ClassVar[SendBatch | None] = None

    def __init__(self) -> None:
        self.sends: list[tuple[Callable[[bytes], None], bytes, Train | None, int]] = []
        self.probe: tuple[Train, int] | None = None  # the probe being prepared

    def add(self, send: Callable[[bytes], None], data: bytes) -> None:
        train, seq = self.probe if self.probe is not None else (None, -1)
        self.sends.append((send, data, train, seq))

    def flush(self) -> None:
        perf = time.perf_counter
        for send, data, train, seq in self.sends:
            if train is not None and seq < len(train.sent_at):
                train.sent_at[seq] = perf()
            try:
                send(data)
            except Exception as exc:  # a bug below the channel: the train's caller sees it
                sending = None if train is None else train._sending
                if sending is not None and not sending.done():
                    sending.set_exception(exc)
        self.sends.clear()


class Pacer:
    """Sends every train's probes of one event loop from one timer.

    Each train's probes are due at ``start + k * interval``; the pacer keeps them in one heap
    and, when the earliest is due, prepares every probe due within ``EARLY`` of now and sends
    them back to back (``SendBatch``): one wake-up for many trains instead of one per probe,
    which is where an event loop (and, on loopback, the server's) spends its time at scale. A
    probe a whole interval overdue when its turn comes (the loop was held) is
    skipped rather than sent in a burst with the next: ``Pacing.skipped`` counts them.

    Staggering: a new train starts in the soonest of its interval's ``SLOT``-wide phase slots
    that holds fewer than ``SLOT_FILL`` trains (all full: the least used, the soonest among
    equals), waiting less than one interval for it. A few trains share one batch, so one
    wake-up sends them all (each wake-up from idle is what costs the most CPU here); many are
    spread over the interval instead of bunched where set-ups happened to end, so that each
    batch stays small enough for a server to answer it without queueing probes behind each
    other, which would read as network delay.

    Cadence: the agent must not blame the network for its own limits. Every ``CONTROL_PERIOD``
    the pacer reads how busy the event loop's thread was (CPU time over wall time) and how late
    probes left (the 90th percentile send-time slip, and the share of probes skipped). When the
    thread was more than ``BUSY_LIMIT`` busy, or slip exceeded ``SLIP_LIMIT`` or skips
    ``SKIP_LIMIT``, and the trains themselves account for at least ``TRAIN_SHARE`` of the loop
    (estimated as twice the CPU spent sending: each probe's answer costs about what sending it
    did), the cadence of every running train and of trains still to start is halved (down to
    1/``MAX_FACTOR``), at most once per ``SETTLE`` seconds. It is not raised again while trains
    run (each train's figures then tell one story), and resets once none runs. Each train keeps
    the cadences it was sent at; its note and its ``pacing`` figure say so. A loop busy with
    other work (or a computer busy with other programs) does not lower the cadence: fewer
    probes would not help; the ``LoopMonitor``'s stalls cover that case, and the slip figure
    shows it."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Train]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.trains: set[Train] = set()
        self.factor = 1
        self.lowered: list[tuple[float, int, str]] = []  # (perf_counter, factor, why)
        self._phases: dict[float, list[int]] = {}
        self._changed = -math.inf
        self._period_start = time.perf_counter()
        self._period_cpu = time.thread_time()
        self._send_cpu = 0.0  # CPU spent in sending batches this period
        self._slips: list[float] = []
        self._skipped = 0  # probes skipped this period (overdue by a whole interval)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Pacer:
        pacer = cls._by_loop.get(loop)
        if pacer is None:
            pacer = cls._by_loop[loop] = cls(loop)
        return pacer

    def _bins(self, interval: float) -> list[int]:
        bins = self._phases.get(interval)
        if bins is None:
            bins = self._phases[interval] = [0] * max(1, round(interval / SLOT))
        return bins

    def add(self, train: Train) -> None:
        now = time.perf_counter()
        if not self.trains:
            self._reset(now)
        base = train.settings.interval
        bins = self._bins(base)
        width = base / len(bins)
        phase = now % base

        def delay_of(b: int) -> float:
            return (b * width - phase) % base

        # The soonest slot with room (each batch a wake-up, however many probes it sends), else
        # the least used, the soonest among equals.
        pick = min(range(len(bins)), key=lambda b: (max(bins[b], SLOT_FILL - 1), delay_of(b)))
        bins[pick] += 1
        delay = delay_of(pick)
        start = now + delay
        reason = self.lowered[-1][2] if self.lowered else None
        train._started(start, base * self.factor, delay, reason)
        train._phase = (base, pick)
        self.trains.add(train)
        heapq.heappush(self._heap, (start, next(self._order), train))
        self._arm()

    def remove(self, train: Train) -> None:
        if train not in self.trains:
            return
        self.trains.discard(train)
        if train._phase is not None:
            base, pick = train._phase
            bins = self._bins(base)
            bins[pick] = max(0, bins[pick] - 1)
            train._phase = None
        if not self.trains:
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _arm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        loop = self._loop_now()
        self._timer_at = due
        self._timer = loop.call_at(loop.time() + (due - time.perf_counter()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        cpu = time.thread_time()
        now = time.perf_counter()
        horizon = now + EARLY
        heap = self._heap
        batch = SendBatch()
        fired: list[tuple[Train, int]] = []
        SendBatch.current = batch
        try:
            while heap and heap[0][0] <= horizon:
                due, _, train = heapq.heappop(heap)
                if train not in self.trains:
                    continue
                seq, skipped = len(train.sent_at), train.skipped
                batch.probe = (train, seq)
                following = train._fire(due)
                self._skipped += train.skipped - skipped
                if len(train.sent_at) > seq:
                    fired.append((train, seq))
                if following is not None:
                    heapq.heappush(heap, (following, next(self._order), train))
        finally:
            SendBatch.current = None
        batch.flush()
        self._slips.extend(train.sent_at[seq] - train.scheduled[seq] for train, seq in fired)
        self._send_cpu += time.thread_time() - cpu
        self._control(time.perf_counter())
        self._arm()

    def _reset(self, now: float) -> None:
        self.factor = 1
        self._changed = -math.inf
        self._period_start, self._period_cpu = now, time.thread_time()
        self._send_cpu = 0.0
        self._slips = []
        self._skipped = 0

    def _control(self, now: float) -> None:
        span = now - self._period_start
        if span < CONTROL_PERIOD:
            return
        cpu = time.thread_time()
        busy = (cpu - self._period_cpu) / span
        share = 2 * self._send_cpu / span
        slips = sorted(self._slips)
        slip = percentile(slips, 90) if slips else 0.0
        skipped = self._skipped / max(1, self._skipped + len(slips))
        self._period_start, self._period_cpu, self._send_cpu, self._slips = now, cpu, 0.0, []
        self._skipped = 0
        late = slip > SLIP_LIMIT or skipped > SKIP_LIMIT
        if not (busy > BUSY_LIMIT or late) or share < TRAIN_SHARE:
            return
        if self.factor >= MAX_FACTOR or now - self._changed < SETTLE or not self.trains:
            return
        self.factor *= 2
        self._changed = now
        why = (
            f"its event loop was {busy:.0%} busy, {min(share, busy):.0%} of the time sending and "
            f"reading {len(self.trains)} trains' probes; probes left up to {slip * 1000:.1f} ms "
            "late" + (f" and {skipped:.0%} were too late to send" if skipped > SKIP_LIMIT else "")
        )
        self.lowered.append((now, self.factor, why))
        for train in self.trains:
            train._lower(train.settings.interval * self.factor, why)


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
        # Per stall: the CPU time lkice's threads used over it (seconds). A stall spent
        # computing was lkice's own work; one it did not was the computer's (the process
        # waited for a processor, or was paused).
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.tick
            cpu = time.process_time()
            await asyncio.sleep(self.tick)
            now = time.perf_counter()
            if now - due > self.threshold:
                self.stalls.append((due, now))
                # Every thread of lkice: one of its threads holding the interpreter keeps the
                # loop from running as surely as the loop's own work.
                self.cpu.append(min(time.process_time() - cpu, now - due))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def summary(self, windows: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
        """The run's stalls, and those that overlapped a train (``windows``: each train's first
        send to its last answer, same clock): only those touched the figures."""
        out: dict[str, Any] = {
            **_stall_figures(self.stalls, self.cpu),
            "threshold_ms": self.threshold * 1000,
        }
        if windows:
            merged = _merged(windows)
            during = [
                (i, overlap)
                for i, (a, b) in enumerate(self.stalls)
                if (overlap := sum(max(0.0, min(b, y) - max(a, x)) for x, y in merged)) > 0
            ]
            out["during_trains"] = {
                **_stall_figures(
                    [(0.0, overlap) for _, overlap in during],
                    [min(self.cpu[i], overlap) for i, overlap in during],
                ),
                "window_ms": round(sum(b - a for a, b in merged) * 1000, 3),
            }
        return out


def _stall_figures(stalls: Sequence[tuple[float, float]], cpu: Sequence[float]) -> dict[str, Any]:
    longest = max((b - a for a, b in stalls), default=None)
    return {
        "stalls": len(stalls),
        "max_ms": None if longest is None else round(longest * 1000, 3),
        "total_ms": round(sum(b - a for a, b in stalls) * 1000, 3),
        "own_ms": round(sum(cpu) * 1000, 3),
    }


def _merged(windows: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) intervals merged where they overlap (concurrent trains), sorted."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(windows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --------------------------------------------------------------------------- kernel TCP counters


@dataclass(frozen=True)
class TcpCounters:
    """One reading of a connection's kernel counters (cumulative); None: not counted here."""

    retransmits: int | None  # segments this end resent since the connection began
    spurious: int | None  # resent segments the peer already had (DSACKs received)
    out_of_order: int | None  # packets received out of order since the connection began
    rtt_ms: float | None  # the kernel's smoothed RTT
    rttvar_ms: float | None
    outstanding: int | None = None  # resent segments not yet acknowledged (Linux tcpi_retrans)


class TcpSocket(Protocol):
    """A TCP socket, or asyncio's view of one (``transport.get_extra_info("socket")``)."""

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


LINUX_TCP_INFO = 11  # the socket option (socket.TCP_INFO on Linux)
MACOS_TCP_CONNECTION_INFO = 0x106
MACOS_TCP_CONNECTION_INFO_SIZE = 112
WINDOWS_SIO_TCP_INFO = 0xD8000027  # _WSAIORW(IOC_VENDOR, 39)
WINDOWS_TCP_INFO_V0_SIZE = 88


def _u32(data: bytes, offset: int) -> int | None:
    """A native-endian u32 at ``offset``, None if the kernel's answer stops before it."""
    return struct.unpack_from("=I", data, offset)[0] if len(data) >= offset + 4 else None


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000.0


def parse_linux_tcp_info(data: bytes) -> TcpCounters:
    """``struct tcp_info`` as Linux filled it (offsets in the module docstring). An older
    kernel fills less: what it leaves out is None."""
    if len(data) < 104:
        raise ValueError(f"tcp_info of {len(data)} bytes: too short for tcpi_total_retrans")
    return TcpCounters(
        retransmits=_u32(data, 100),
        spurious=_u32(data, 216),
        out_of_order=_u32(data, 224),
        rtt_ms=_ms(_u32(data, 68)),
        rttvar_ms=_ms(_u32(data, 72)),
        outstanding=_u32(data, 36),
    )


def parse_macos_connection_info(data: bytes) -> TcpCounters:
    """``struct tcp_connection_info`` as XNU filled it (offsets in the module docstring)."""
    if len(data) < 52:
        raise ValueError(f"tcp_connection_info of {len(data)} bytes: too short for tcpi_rttvar")
    srtt, rttvar = struct.unpack_from("=II", data, 44)
    retransmits = struct.unpack_from("=Q", data, 104)[0] if len(data) >= 112 else None
    return TcpCounters(
        retransmits=retransmits,
        spurious=None,
        out_of_order=None,
        rtt_ms=float(srtt),
        rttvar_ms=float(rttvar),
    )


def parse_windows_tcp_info_v0(data: bytes) -> TcpCounters:
    """``TCP_INFO_v0`` as Windows filled it (offsets in the module docstring)."""
    if len(data) < 84:
        raise ValueError(f"TCP_INFO_v0 of {len(data)} bytes: too short for TimeoutEpisodes")
    (rtt_us,) = struct.unpack_from("<I", data, 20)
    fast, _dupacks, timeouts = struct.unpack_from("<III", data, 72)
    return TcpCounters(
        retransmits=fast + timeouts,
        spurious=None,
        out_of_order=None,
        rtt_ms=rtt_us / 1000.0,
        rttvar_ms=None,
    )


if sys.platform == "win32":
    import ctypes  # Python's socket.ioctl does not know SIO_TCP_INFO
    from ctypes import wintypes

    def _windows_tcp_info(sock: TcpSocket) -> bytes | None:
        version = wintypes.DWORD(0)
        out = ctypes.create_string_buffer(WINDOWS_TCP_INFO_V0_SIZE)
        returned = wintypes.DWORD(0)
        status = ctypes.WinDLL("ws2_32").WSAIoctl(
            ctypes.c_size_t(sock.fileno()),
            wintypes.DWORD(WINDOWS_SIO_TCP_INFO),
            ctypes.byref(version),
            ctypes.sizeof(version),
            out,
            ctypes.sizeof(out),
            ctypes.byref(returned),
            None,
            None,
        )
        return None if status != 0 else out.raw[: returned.value]

else:

    def _windows_tcp_info(sock: TcpSocket) -> bytes | None:
        return None


# Compared as a plain string so that every platform's branch is type-checked everywhere.
_PLATFORM: str = sys.platform


def read_tcp_counters(sock: TcpSocket | None) -> TcpCounters | None:
    """The kernel's counters of a TCP socket; None where the platform does not tell or the call
    fails (a closed socket): the evidence is then simply missing, never a failure of the path."""
    if sock is None:
        return None
    try:
        if _PLATFORM.startswith("linux"):
            data = sock.getsockopt(socket.IPPROTO_TCP, LINUX_TCP_INFO, 256)
            return parse_linux_tcp_info(data)
        if _PLATFORM == "darwin":
            data = sock.getsockopt(
                socket.IPPROTO_TCP, MACOS_TCP_CONNECTION_INFO, MACOS_TCP_CONNECTION_INFO_SIZE
            )
            return parse_macos_connection_info(data)
        if _PLATFORM == "win32":
            raw = _windows_tcp_info(sock)
            return None if raw is None else parse_windows_tcp_info_v0(raw)
    except (OSError, ValueError, AttributeError):
        return None
    return None


def tcp_evidence(
    before: Sequence[TcpCounters | None], after: Sequence[TcpCounters | None]
) -> TcpEvidence | None:
    """What the kernel counted on a train's connections between two readings (summed over
    them); None without a retransmission count on every one of them."""
    pairs = list(zip(before, after, strict=True))
    if not pairs or any(
        a is None or b is None or a.retransmits is None or b.retransmits is None for a, b in pairs
    ):
        return None

    def delta(name: str) -> int | None:
        total = 0
        for a, b in pairs:
            first, last = getattr(a, name), getattr(b, name)
            if first is None or last is None:
                return None
            total += max(0, last - first)  # u32 counters: never report a wrap as negative
        return total

    retransmits = delta("retransmits")
    assert retransmits is not None
    last = pairs[0][1]
    assert last is not None
    return TcpEvidence(
        retransmits=retransmits,
        spurious=delta("spurious"),
        out_of_order=delta("out_of_order"),
        rtt_ms=last.rtt_ms,
        rttvar_ms=last.rttvar_ms,
        connections=len(pairs),
    )
