"""Probe trains: probes at audio cadence on an open path, each answer timestamped on arrival.

Two kinds of probe share one schedule and one bookkeeping:
- STUN Binding requests to the server (works against any STUN/TURN server);
- data through the TURN relay: the path's allocation sends to a second allocation of the agent's,
  which echoes it back (the real media path through the relay, both directions).

No retransmissions: a probe that gets no answer by the end of the train plus a grace period is
lost. The statistics come from the pure ``lkice.quality`` module.

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
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lkice.errors import ProbeError
from lkice.quality import Sample, TcpEvidence


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
        # Per stall: the CPU time the loop's own thread used over it (seconds). A stall the
        # thread spent computing was lkice's own work; one it did not was the computer's (the
        # process waited for a processor, or was paused).
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.tick
            cpu = time.thread_time()
            await asyncio.sleep(self.tick)
            now = time.perf_counter()
            if now - due > self.threshold:
                self.stalls.append((due, now))
                self.cpu.append(min(time.thread_time() - cpu, now - due))

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
