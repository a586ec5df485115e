"""Path quality from a probe train (pure: no I/O, no clocks).

The I/O layer (``lkice.probe.train``) sends a STUN Binding request every ``interval`` seconds and
records, per probe, its send time and its answer's arrival time on one monotonic clock, or None
when no answer came by the end of the train plus a grace period. This module turns those samples
into the figures below. These are the product's documented definitions.

RTT
    ``received - sent`` of each answered probe, in ms. ``rtt_ms`` gives p50, p95, p99, max, min
    and mean over answered probes; percentiles interpolate linearly between closest ranks (as
    numpy's default and ``statistics.quantiles(method="inclusive")`` do).

Jitter (``jitter_ms``)
    RFC 3550 interarrival jitter (section 6.4.1, appendix A.8) with the RTT as the transit time:
    taking answers in arrival order, for each consecutive pair ``D = rtt_j - rtt_i`` and
    ``J += (|D| - J) / 16``, starting from ``J = 0``. None with fewer than two answers. Using the
    RTT rather than a one-way transit needs no synchronised clocks; it folds both directions'
    variation into one figure.

Loss
    ``(samples - received) / samples``; 0 for an empty train.

Reordering (``reordered``)
    Answers taken in arrival order; an answer counts when its seq is lower than the highest seq
    already answered. Answers with equal arrival times are taken in seq order (not reordered).

Baseline
    The 5th percentile of the answered RTTs. Stalls and queues only ever add delay, so a low
    percentile is not dragged up by them unless nearly the whole train is delayed; unlike the
    minimum, one freak-fast sample does not set it.

Head-of-line blocking (``hol``, stream transports only; None for UDP)
    On TCP (and TLS over it) a lost segment holds every later byte in the receiver's kernel until
    the retransmission arrives (fast retransmit: about an RTT plus three segments later; RTO: at
    least 200 ms on Linux), and then all held answers reach the application at once. The
    signature is a sudden hold followed by a burst. With ``tau = max(min_excess_ms,
    baseline_factor * baseline)``:

    * A stall starts at an answered probe whose RTT exceeds the baseline by more than ``tau``
      and also exceeds the previous answered probe's RTT (the pre-stall level; the baseline if
      there is none) by more than ``tau``. The second test makes it a sudden hold, not the
      slow climb of a filling queue (bufferbloat), and finds stalls on an already-bloated path.
    * Its members are the longest run of consecutive (by seq) answered probes from there, each
      more than ``tau`` above both the baseline and the pre-stall level ("held"), whose arrivals
      are compressed: the run's arrival spread (last minus first arrival) is less than
      ``max_spread_ratio`` (0.5) times its send spread. A path that is not releasing a backlog
      delivers at the rate it was sent, or slower (a filling queue stretches the spread); a
      release delivers the backlog at line rate, a spread near zero. Half sits between the two
      and tolerates recoveries paced by slow start and answers read in several ``recv`` calls.
    * A stall needs at least ``min_run`` (2) members: one late probe alone is no evidence that
      anything behind it was held.

    ``stalls`` counts stalls, ``detected`` is ``stalls > 0``, ``max_stall_ms`` is the largest
    ``RTT - baseline`` of any member of any stall (None without stalls), and ``stalled_fraction``
    is the sum over stalls of each stall's largest excess, divided by the train's duration,
    capped at 1. The same signature is left by any stall-and-release along the path (a Wi-Fi or
    cellular link retransmitting), which hurts real-time media just the same.

Late answers (``late``, stream transports only; 0 for UDP)
    Answers whose RTT exceeds the baseline by more than ``JITTER_BUFFER_MS``. Real-time audio
    over a stream (TURN over TCP/TLS) cannot skip a held packet, and a receiver's jitter buffer
    plays concealment rather than wait that long, so these count as lost in the MOS.

MOS (``mos``)
    The simplified ITU-T G.107 E-model used by Twilio and others: effective latency ``eff =
    rtt + 2 * jitter + 10`` ms; ``R = 93.2 - eff / 40`` if ``eff < 160`` else ``R = 93.2 -
    (eff - 120) / 10``; ``R -= 2.5 * loss_percent``; R clamped to [0, 100]; ``MOS = 1 + 0.035 R
    + 7e-6 R (R - 60) (100 - R)`` clamped to [1, 4.5]. ``summarize`` feeds it the p50 RTT, the
    RFC 3550 jitter (0 with a single answer) and the loss counting late answers as lost. None
    when nothing was answered.

Duration
    ``duration_ms`` is last send minus first send plus one interval: the time the train covers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

__all__ = [
    "BASELINE_PERCENTILE",
    "JITTER_BUFFER_MS",
    "Hol",
    "HolSettings",
    "Quality",
    "Sample",
    "baseline_ms",
    "count_reordered",
    "detect_hol",
    "e_model_mos",
    "percentile",
    "rfc3550_jitter",
    "summarize",
]

# Stalls and queues only add delay, so a low percentile of RTT is the path's own delay; the 5th
# rather than the minimum so that one freak-fast sample does not set it.
BASELINE_PERCENTILE = 5.0

# An interactive audio jitter buffer adapts to tens of ms of variation; 100 ms beyond the path's
# base delay is a generous bound, past which a receiver conceals the gap instead of waiting, so
# the packet is as good as lost to the listener.
JITTER_BUFFER_MS = 100.0


@dataclass(frozen=True)
class Sample:
    seq: int  # send order, 0..n-1
    sent: float  # seconds, monotonic clock
    received: float | None  # seconds, same clock; None = no answer

    @property
    def rtt_ms(self) -> float | None:
        return None if self.received is None else (self.received - self.sent) * 1000.0


@dataclass(frozen=True)
class HolSettings:
    """Thresholds of the head-of-line stall rule (see the module docstring)."""

    # A probe is held when its RTT exceeds the baseline (and the pre-stall level) by more than
    # max(min_excess_ms, baseline_factor * baseline): an absolute floor above ordinary jitter,
    # and a relative one so long paths with proportionally more variation are not flagged.
    min_excess_ms: float = 30.0
    baseline_factor: float = 1.0
    # A stall needs at least this many consecutive held probes...
    min_run: int = 2
    # ...released together: their arrival spread is below this fraction of their send spread.
    max_spread_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_excess_ms >= 0 or not self.baseline_factor >= 0:
            raise ValueError("min_excess_ms and baseline_factor must be >= 0")
        if self.min_run < 2:
            raise ValueError("min_run must be >= 2: a release needs at least two probes")
        if not 0 < self.max_spread_ratio <= 1:
            raise ValueError("max_spread_ratio must be in (0, 1]")


@dataclass(frozen=True)
class Hol:
    detected: bool
    stalls: int
    max_stall_ms: float | None  # the longest a probe was held beyond baseline, over all stalls
    stalled_fraction: float  # sum of each stall's largest excess over the train duration (0..1)

    def to_dict(self) -> dict[str, object]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Quality:
    samples: int  # probes sent
    received: int
    rtt_ms: dict[str, float] | None  # p50, p95, p99, max, min, mean; None if none received
    jitter_ms: float | None  # RFC 3550 interarrival jitter of the RTT
    loss: float  # fraction 0..1 of probes never answered
    reordered: int  # answers that arrived after an answer to a later-sent probe
    late: int  # stream paths: answers held beyond JITTER_BUFFER_MS, lost to audio (in the MOS)
    hol: Hol | None  # stream transports only; None for datagram paths
    mos: float | None  # E-model estimate; None if nothing received
    interval_ms: float
    duration_ms: float  # last send - first send + interval

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: keys are the field names, floats rounded to 3 decimals."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


def _json_value(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, Hol):
        return value.to_dict()
    return value


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in [0, 100]) of ascending values, interpolating linearly between
    closest ranks: position ``(n - 1) * q / 100``, as numpy's default method."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    value = a + (b - a) * (pos - lo)
    return min(max(value, a), b)  # rounding must not step outside the bracketing values


def _answered(samples: Sequence[Sample]) -> list[tuple[float, int, float]]:
    """(arrival, seq, RTT in ms) of answered samples in arrival order, equal arrivals by seq."""
    return sorted(
        (s.received, s.seq, (s.received - s.sent) * 1000.0)
        for s in samples
        if s.received is not None
    )


def rfc3550_jitter(samples: Sequence[Sample]) -> float | None:
    """RFC 3550 interarrival jitter of the RTT over answers in arrival order, in ms."""
    rtts = [rtt for _, _, rtt in _answered(samples)]
    if len(rtts) < 2:
        return None
    jitter = 0.0
    for previous, current in itertools.pairwise(rtts):
        jitter += (abs(current - previous) - jitter) / 16
    return jitter


def count_reordered(samples: Sequence[Sample]) -> int:
    """Answers that arrived after an answer to a later-sent probe."""
    highest = -math.inf
    count = 0
    for _, seq, _ in _answered(samples):
        if seq < highest:
            count += 1
        else:
            highest = seq
    return count


def baseline_ms(samples: Sequence[Sample]) -> float | None:
    """The path's own RTT: the BASELINE_PERCENTILE of answered RTTs; None if none answered."""
    rtts = sorted(r for s in samples if (r := s.rtt_ms) is not None)
    return percentile(rtts, BASELINE_PERCENTILE) if rtts else None


def _duration(samples: Sequence[Sample], interval: float) -> float:
    """Seconds the train covers: last send - first send + interval; 0 for no samples."""
    if not samples:
        return 0.0
    sent = [s.sent for s in samples]
    return max(sent) - min(sent) + interval


def _check_interval(interval: float) -> None:
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a positive number of seconds, got {interval}")


def _longest_compressed_run(
    by_seq: Sequence[Sample], start: int, baseline: float, level: float, tau: float, ratio: float
) -> int:
    """Members of a stall starting at ``by_seq[start]``: the length of the longest run of
    consecutive held probes from there whose arrival spread is below ``ratio`` times their send
    spread (0 if no run longer than one probe qualifies)."""
    first = by_seq[start]
    assert first.received is not None
    earliest = latest = first.received
    best = 0
    i = start + 1
    while i < len(by_seq):
        s, previous = by_seq[i], by_seq[i - 1]
        rtt = s.rtt_ms
        if s.seq != previous.seq + 1 or s.received is None or rtt is None:
            break
        if not (rtt - baseline > tau and rtt - level > tau):
            break
        earliest, latest = min(earliest, s.received), max(latest, s.received)
        if latest - earliest < ratio * (s.sent - first.sent):
            best = i - start + 1
        i += 1
    return best


def detect_hol(samples: Sequence[Sample], *, interval: float, settings: HolSettings) -> Hol:
    """Head-of-line stalls: sudden holds released as a burst (rule in the module docstring)."""
    _check_interval(interval)
    baseline = baseline_ms(samples)
    if baseline is None:
        return Hol(detected=False, stalls=0, max_stall_ms=None, stalled_fraction=0.0)
    tau = max(settings.min_excess_ms, settings.baseline_factor * baseline)
    by_seq = sorted(samples, key=lambda s: s.seq)
    excesses: list[float] = []  # each stall's largest excess over baseline, ms
    level: float | None = None  # RTT of the last answered probe before i
    i = 0
    while i < len(by_seq):
        rtt = by_seq[i].rtt_ms
        if rtt is None:
            i += 1
            continue
        before = baseline if level is None else level
        if rtt - baseline > tau and rtt - before > tau:
            members = _longest_compressed_run(
                by_seq, i, baseline, before, tau, settings.max_spread_ratio
            )
            if members >= settings.min_run:
                run = [r for s in by_seq[i : i + members] if (r := s.rtt_ms) is not None]
                excesses.append(max(run) - baseline)
                level = run[-1]
                i += members
                continue
        level = rtt
        i += 1
    if not excesses:
        return Hol(detected=False, stalls=0, max_stall_ms=None, stalled_fraction=0.0)
    duration_ms = _duration(samples, interval) * 1000.0
    return Hol(
        detected=True,
        stalls=len(excesses),
        max_stall_ms=max(excesses),
        stalled_fraction=min(1.0, sum(excesses) / duration_ms),
    )


def e_model_mos(rtt_ms: float, jitter_ms: float, loss: float) -> float:
    """Mean opinion score (1..4.5) by the simplified E-model; ``loss`` is a fraction 0..1."""
    effective = rtt_ms + 2 * jitter_ms + 10
    r = 93.2 - effective / 40 if effective < 160 else 93.2 - (effective - 120) / 10
    r -= 2.5 * (loss * 100)
    r = min(max(r, 0.0), 100.0)
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return min(max(mos, 1.0), 4.5)


def summarize(
    samples: Sequence[Sample], *, stream: bool, interval: float, hol: HolSettings = HolSettings()
) -> Quality:
    """All figures for one train. ``stream``: the path is TCP or TLS (HOL and late answers apply).

    Raises ValueError for impossible input (an answer before its request, a repeated seq, a
    non-positive interval): that is a bug in the measuring layer, not a property of the path.
    """
    _check_interval(interval)
    if len({s.seq for s in samples}) != len(samples):
        raise ValueError("samples repeat a seq")
    if any(s.received is not None and s.received < s.sent for s in samples):
        raise ValueError("a sample was received before it was sent")

    rtts = sorted(r for s in samples if (r := s.rtt_ms) is not None)
    n, received = len(samples), len(rtts)
    loss = (n - received) / n if n else 0.0
    jitter = rfc3550_jitter(samples)

    rtt_summary: dict[str, float] | None = None
    mos: float | None = None
    late = 0
    if rtts:
        rtt_summary = {
            "p50": percentile(rtts, 50),
            "p95": percentile(rtts, 95),
            "p99": percentile(rtts, 99),
            "max": rtts[-1],
            "min": rtts[0],
            "mean": min(max(math.fsum(rtts) / received, rtts[0]), rtts[-1]),  # no ulp outside
        }
        if stream:
            baseline = percentile(rtts, BASELINE_PERCENTILE)
            late = sum(1 for r in rtts if r - baseline > JITTER_BUFFER_MS)
        mos = e_model_mos(rtt_summary["p50"], jitter or 0.0, (n - received + late) / n)

    return Quality(
        samples=n,
        received=received,
        rtt_ms=rtt_summary,
        jitter_ms=jitter,
        loss=loss,
        reordered=count_reordered(samples),
        late=late,
        hol=detect_hol(samples, interval=interval, settings=hol) if stream else None,
        mos=mos,
        interval_ms=interval * 1000.0,
        duration_ms=_duration(samples, interval) * 1000.0,
    )
