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
    RFC 3550 interarrival jitter (section 6.4.1, appendix A.8) with the RTT as the transit time,
    over the whole train: taking answers in arrival order, ``D = rtt_j - rtt_i`` for each
    consecutive pair, and the figure is the mean of ``|D|``, the value RFC 3550's running
    estimate ``J += (|D| - J) / 16`` tends to. The running estimate itself remembers only the
    last ~16 answers, so its value at the train's end depends on where the train happened to
    stop (lab: the same periodic 150 ms holds read 10-36 ms depending on the last hold's
    phase); the mean does not, and it starts unbiased (J starts at 0). None with fewer than two
    answers. Using the RTT rather than a one-way transit needs no synchronised clocks; it folds
    both directions' variation into one figure.

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
    the retransmission arrives, and then every held answer reaches the application at the same
    instant. The signature is that release: answers to probes sent an interval apart arriving
    together. Holds are measured from the path's typical RTT (the median of answered RTTs), not
    from its floor, so ordinary jitter is not mistaken for a hold.

    How long a repair takes is physics, and the threshold follows from it. The sender learns of
    a loss only from the peer: a SACK for a later segment (RACK, fast retransmit: one RTT of the
    connection after that later segment, here the next probe, one interval on), the tail-loss
    probe timer (two smoothed RTTs, 10 ms at least) or the retransmission timeout (200 ms at
    least on Linux). So the answer behind a lost segment is held at least about one connection
    RTT (measured in the lab: never under 54 ms at 40 ms RTT, where RTT + interval is 60 ms).
    A round trip may cross several TCP connections in series (a relay echo crosses the client's
    leg twice: ``legs`` 2), each repairing its own losses, so the connection RTT is the median
    divided by ``legs``. A hold counts above ``tau = max(min_excess_ms, baseline_factor *
    median / legs)`` (15 ms; 0.75: a quarter below the physical floor, so the floor's own timing
    noise is kept, and well above the few ms by which a busy host's scheduling delays answers):

    * A stall starts at an answer held suddenly: more than ``tau`` above the median and more
      than ``tau`` above the previous answer (the pre-stall level). A filling queue (bufferbloat)
      climbs gradually and never jumps, so it starts none.
    * It lasts over the consecutive answers still more than ``tau`` above the pre-stall level: a
      second loss while the first is outstanding prolongs the same stall.
    * It counts only if it ends in a release: at least ``min_burst`` (2) answers, the held ones
      plus any answer handed over with the last of them, arriving within ``release_window_ms``
      (5 ms: one kernel release, paced by at most a slow link) of each other although they were
      sent an interval or more apart. One late answer alone is no evidence that anything was
      held behind it, and a slow or jittery path delivers answers spaced out, not together.
      Measured in the lab: no release on lossy UDP (nothing is held there), none on loss-free TCP.

    Two things hold and release answers just the same without being TCP's doing, and a stall
    that is theirs is set aside, not counted:

    * The agent's own event loop (a busy computer): the probe layer measures its stalls
      (``blind`` intervals); a stall whose releases all fall in one is the agent's
      (``hol.discounted``). On an echo through this computer (``legs`` > 1) a probe the agent
      held is echoed late and its answer comes home up to one leg's trip later, so there the
      release may fall up to ``median * (legs - 1) / legs`` after the stall.
    * A shared hold: something on the way or on this host that held every connection at once (a
      Wi-Fi scan, a busy router, a paused VM). All trains of a run share one clock
      (``time.perf_counter()``), so a stall is compared with the run's datagram trains: if an
      answer of one of them (``shared``, from ``held``) was in flight during the stall (from the
      first held probe's send to the release) and held at least ``shared_ratio`` (half) of the
      stall's excess, the hold was the path's or the host's, not TCP's (``hol.shared``, its
      longest excess ``shared_max_ms`` and each one's window ``shared_windows``, in ms since the
      train's first send). UDP has no head-of-line blocking: a loss there is lost, never held,
      so a UDP answer held as long at the same moment is the proof.

    ``stalls`` counts the stalls that remain, ``detected`` is ``stalls > 0``, ``max_stall_ms`` is
    the largest excess over the median of any answer in any of them (None without stalls), and
    ``stalled_fraction`` is the sum over them of each stall's largest excess, divided by the
    train's duration, capped at 1. The same signature is left by any stall-and-release on one
    connection's way (a Wi-Fi or cellular link retransmitting, a proxy), which hurts real-time
    media just the same; whether the kernel repaired a loss is read separately (``tcp``). At a
    near-zero RTT, Linux repairs a loss by a tail-loss probe within about 10 ms: holds that
    short stay under ``tau`` and are not reported (no jitter buffer would notice them).

Answers the agent held (``excluded``)
    Answers whose arrival falls in a ``blind`` interval (within ``release_window_ms`` of its
    end) were timestamped when the agent got round to them, not when they came: they are left
    out of the jitter and of the late answers, a stall they release is the agent's (above; so
    none of them reaches the MOS), and ``excluded`` says how many. RTT percentiles and loss
    still count them.

Kernel evidence (``tcp``, stream transports where the platform tells; None otherwise)
    What the agent's kernel says about its own TCP connection(s) of the train, read before and
    after it (Linux ``TCP_INFO``, macOS ``TCP_CONNECTION_INFO``, Windows ``SIO_TCP_INFO``; see
    ``lkice.probe.train``): ``retransmits`` (segments this computer resent during the train),
    ``spurious`` (of those, how many the peer already had: DSACKs, Linux), ``out_of_order``
    (segments that arrived behind a gap: the server resent them; Linux only), and the kernel's
    smoothed ``rtt_ms`` and ``rttvar_ms`` at the end. A stall with a repair behind it is loss;
    a stall with none measured is a hold without loss.

Late answers (``late``, stream transports only; 0 for UDP)
    Answers whose RTT exceeds the baseline by more than ``JITTER_BUFFER_MS``: what a fixed
    100 ms jitter buffer would have had to conceal. Reported, not in the MOS: a real receiver's
    adaptive buffer (WebRTC's NetEq) waits for held audio rather than concealing it (measured
    against Chrome on TCP at 2 % loss: almost nothing concealed, the buffer held 100-155 ms), so
    a stall costs delay (``call.playout_ms``), not loss. Not counted: answers the agent held
    (``excluded``) and answers held in a stall set aside as a shared hold.

Crossings and loss each way (``crossings``, ``loss_each_way``)
    How many times a probe crosses this network (this computer's access to the server):
    ``BINDING_CROSSINGS`` (2) for the Binding train (request, answer); ``ECHO_CROSSINGS`` (4)
    for the relay echo (to the server, from the relay to the agent's second allocation, echoed
    back to the server, back to the agent) and for the SFU data echo (A -> SFU -> B -> SFU -> A,
    both participants on this computer and on the same path). Assumed: every crossing is alike,
    loss independent and the same each way (symmetric). Then a probe survives with probability
    ``(1 - p) ** crossings`` and the loss of one crossing is ``loss_each_way = 1 - (1 - loss) **
    (1 / crossings)``. An echo that crosses four times loses about twice what a Binding does.

Confidence (``loss_ci``, ``loss_each_way_ci``)
    The Wilson score 95 % interval on ``loss``, ``lost`` of ``samples`` probes: ``(k + z^2/2 +-
    z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2)``, z = 1.96 (0 and 1 exactly at k = 0 and k =
    n); ``loss_each_way_ci`` is the same interval converted per crossing (the conversion is
    monotone, so it keeps the coverage). With 250 probes and none lost, the loss is under 1.5 %
    with 95 % confidence, not "zero".

Pooled loss (``pooled_loss``, read by ``lkice.findings``)
    Trains of one run that cross the same network (all its UDP trains) are one sample of that
    network's loss: the best of several noisy trains must not hide it. The pooled loss each way
    is the maximum-likelihood estimate of one per-crossing loss ``p`` over the trains (train i:
    ``n_i`` probes, ``r_i`` answered, ``c_i`` crossings; log-likelihood ``sum r_i c_i log(1 - p)
    + (n_i - r_i) log(1 - (1 - p) ** c_i)``, concave, solved by bisection), with the 95 %
    likelihood-ratio interval (the ``p`` whose log-likelihood is within 1.92, half the 95 % point
    of chi-squared with one degree of freedom, of the maximum). For a single train it is that
    train's ``loss_each_way``. Trains with nothing answered are left out: a path that carries
    nothing is broken, which is not loss.

Call model (``call``)
    The MOS is of a reference call: audio from this computer through the server to a listener
    on a network like this one, so its media crosses this network ``CALL_CROSSINGS`` (2) times,
    as a Binding round trip does (the lab's two-party call at 2 % loss each way lost 3.8-4.6 %,
    its Binding train 4.4-4.8 %). An echo's figures are converted to it (same assumption as
    above):

    * ``call.rtt_ms = p50 * CALL_CROSSINGS / crossings`` (half an echo's round trip);
    * ``call.loss = 1 - (1 - loss_each_way) ** CALL_CROSSINGS``;
    * ``call.jitter_ms``: the jitter as measured (0 with a single answer). More crossings can
      only add variation, so an echo's jitter is not smaller than the call's: kept, not scaled;
    * ``call.playout_ms = max(2 * jitter, hol.max_stall_ms)``: the delay the receiver's jitter
      buffer adds. The E-model's allowance is twice the jitter; on a stream path that stalls, an
      adaptive buffer grows to ride out the longest hold instead of concealing it (measured:
      Chrome's buffer target 106-135 ms against lkice's largest stall of 110-139 ms on TCP at
      2 % loss, 40 ms RTT). Only the stalls counted (``hol.stalls``) add to it: a shared hold or
      the agent's own is not the path's. Datagram paths have no stall: 2 x jitter;
    * ``call.effective_ms = call.rtt_ms + call.playout_ms + 10``.

MOS (``mos``)
    The simplified ITU-T G.107 E-model used by Twilio and others, of the call above: effective
    latency ``eff = rtt + max(2 * jitter, stall) + 10`` ms (with no stall: the usual ``rtt + 2 *
    jitter + 10``); ``R = 93.2 - eff / 40`` if ``eff < 160`` else ``R = 93.2 - (eff - 120) /
    10``; ``R -= 2.5 * loss_percent``; R clamped to [0, 100]; ``MOS = 1 + 0.035 R + 7e-6 R (R -
    60) (100 - R)`` clamped to [1, 4.5]. ``summarize`` feeds it ``call.rtt_ms``,
    ``call.jitter_ms``, the longest counted stall and ``call.loss``. None when nothing was
    answered.

Warm-up (``warmup``, the SFU data echo; None elsewhere)
    A data channel can take seconds to carry anything end to end after it reports open (an
    SCTP retransmission timeout, 3 s at first, while the far side was not ready): measured, a
    first echo after 3,042 ms and a delay draining for about 3 s: a median of 752 ms on a path
    where the call had 42 ms. So the SFU train starts only once the path has carried an echo
    end to end: warm-up probes go out every interval until one sent after the first echo came
    back has come back too (nothing sent before it is still in the way), for at most
    ``SfuSettings.warmup_timeout`` (5 s; nothing back by then: the path fails; a first echo
    but no second: the train starts anyway, and the note says so). They are not in any
    figure; ``warmup`` says how many
    there were (``probes``, ``answered``), when the first came back (``first_echo_ms``) and how
    long it took (``ms``), all from the first warm-up send.

Duration
    ``duration_ms`` is last send minus first send plus one interval: the time the train covers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

__all__ = [
    "BASELINE_PERCENTILE",
    "BINDING_CROSSINGS",
    "CALL_CROSSINGS",
    "ECHO_CROSSINGS",
    "JITTER_BUFFER_MS",
    "Call",
    "Hol",
    "HolSettings",
    "Hold",
    "PooledLoss",
    "Quality",
    "Sample",
    "TcpEvidence",
    "TrainRecord",
    "Trains",
    "Warmup",
    "baseline_ms",
    "count_reordered",
    "detect_hol",
    "e_model_mos",
    "held",
    "loss_each_way",
    "loss_over",
    "percentile",
    "pooled_loss",
    "rfc3550_jitter",
    "same_loss",
    "summarize",
    "wilson_interval",
]

# Stalls and queues only add delay, so a low percentile of RTT is the path's own delay; the 5th
# rather than the minimum so that one freak-fast sample does not set it.
BASELINE_PERCENTILE = 5.0

# A fixed jitter buffer of 100 ms beyond the path's base delay: answers held longer are counted
# (``late``) as what such a buffer would conceal. Not in the MOS: an adaptive buffer waits.
JITTER_BUFFER_MS = 100.0

# Times a probe crosses this network (module docstring): a Binding there and back; an echo
# (TURN relay, SFU data) out, to the echoing side, back from it and home.
BINDING_CROSSINGS = 2
ECHO_CROSSINGS = 4
# The reference call of the MOS: up to the server and down to a listener on a network like this.
CALL_CROSSINGS = 2

# Two-sided 95 %: the normal quantile (Wilson) and half the chi-squared(1) quantile (likelihood
# ratio).
Z_95 = 1.959963984540054
LR_95 = 3.841458820694124 / 2


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

    # A probe is held when its RTT exceeds the median by more than max(min_excess_ms,
    # baseline_factor * median / legs): a quarter under the fastest TCP repair (one connection
    # RTT), far above a busy host's scheduling noise.
    min_excess_ms: float = 15.0
    baseline_factor: float = 0.75
    # Answers arriving within this many ms of the held one's arrival were released with it.
    release_window_ms: float = 5.0
    # A stall needs at least this many answers released together.
    min_burst: int = 2
    # A datagram answer held at least this share of a stall's excess, at the same moment, makes
    # the stall a shared hold.
    shared_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_excess_ms >= 0 or not self.baseline_factor >= 0:
            raise ValueError("min_excess_ms and baseline_factor must be >= 0")
        if not 0 < self.shared_ratio <= 1:
            raise ValueError("shared_ratio must be within (0, 1]")
        if self.min_burst < 2:
            raise ValueError("min_burst must be >= 2: a release needs at least two answers")
        if not self.release_window_ms > 0:
            raise ValueError("release_window_ms must be > 0")


@dataclass(frozen=True)
class Hol:
    detected: bool
    stalls: int
    max_stall_ms: float | None  # the longest a probe was held beyond baseline, over all stalls
    stalled_fraction: float  # sum of each stall's largest excess over the train duration (0..1)
    discounted: int = 0  # bursts released while the agent's own event loop was stalled
    shared: int = 0  # stalls matched by a datagram train held as long at the same moment
    shared_max_ms: float | None = None  # the largest excess of those, ms
    # (start, end) of each shared hold, ms since the train's first send
    shared_windows: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Hold:
    """A moment a datagram train was held: a probe's flight (send to answer, samples' clock,
    seconds) and how far beyond its train's median RTT it was held (ms)."""

    start: float
    end: float
    excess_ms: float


@dataclass(frozen=True)
class TcpEvidence:
    """The kernel's account of a train's TCP connection(s), from counters read before and
    after it (``lkice.probe.train.tcp_evidence``); None fields: the platform does not say."""

    retransmits: int  # segments this computer resent during the train
    spurious: int | None  # of those, ones the peer already had (DSACK)
    out_of_order: int | None  # segments received behind a gap (the server resent them)
    rtt_ms: float | None  # the kernel's smoothed RTT at the end (first connection)
    rttvar_ms: float | None
    connections: int

    @property
    def repairs(self) -> int | None:
        """Losses the kernel repaired, either way: resent here (less those proven needless)
        plus data received out of order; None when a direction is not counted here."""
        if self.out_of_order is None:
            return None
        return max(0, self.retransmits - (self.spurious or 0)) + self.out_of_order

    def to_dict(self) -> dict[str, object]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Call:
    """The reference call the MOS is of (module docstring, "Call model"), from the train."""

    rtt_ms: float  # p50 * CALL_CROSSINGS / crossings
    jitter_ms: float  # as measured
    playout_ms: float  # max(2 * jitter, longest counted stall)
    loss: float  # 1 - (1 - loss_each_way) ** CALL_CROSSINGS
    effective_ms: float  # rtt_ms + playout_ms + 10: the E-model's effective latency

    def to_dict(self) -> dict[str, object]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Warmup:
    """Probes sent before a train until the path carried an echo end to end (SFU data echo),
    left out of every figure; times in ms from the first warm-up send."""

    probes: int
    answered: int
    first_echo_ms: float | None  # None: nothing came back
    ms: float  # until the train started

    def to_dict(self) -> dict[str, object]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class PooledLoss:
    """One per-crossing loss estimated from several trains over the same network."""

    trains: int
    samples: int
    lost: int
    each_way: float  # maximum-likelihood per-crossing loss
    each_way_ci: tuple[float, float]  # 95 % likelihood-ratio interval


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
    # Per probe, in send order: send time since the first send, and RTT (None: lost). Kept so a
    # reader (the HTML timeline, support staff, a re-analysis) sees the measurement itself.
    series: dict[str, list[float | None]] = field(default_factory=dict)
    excluded: int = 0  # answers that arrived while the agent's own loop stalled (left out)
    tcp: TcpEvidence | None = None  # stream paths: the kernel's counters over the train
    crossings: int = BINDING_CROSSINGS  # times a probe crosses this network
    loss_ci: tuple[float, float] = (0.0, 1.0)  # Wilson 95 % interval on loss
    loss_each_way: float = 0.0  # per crossing: 1 - (1 - loss) ** (1 / crossings)
    loss_each_way_ci: tuple[float, float] = (0.0, 1.0)
    call: Call | None = None  # what the MOS is computed from; None if nothing answered
    warmup: Warmup | None = None  # SFU data echo: the probes before the train (left out)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: keys are the field names, floats rounded to 3 decimals."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


def _json_value(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [None if v is None else round(v, 2) for v in value]
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (Hol, TcpEvidence, Call, Warmup)):
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
    """RFC 3550 interarrival jitter of the RTT over the whole train, in ms: the mean |D| over
    consecutive answers in arrival order (the module docstring says why not the running
    estimate's last value)."""
    rtts = [rtt for _, _, rtt in _answered(samples)]
    if len(rtts) < 2:
        return None
    return math.fsum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (len(rtts) - 1)


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


def _release_bursts(arrivals: Sequence[float], window: float) -> list[tuple[float, int]]:
    """Group ascending arrival times: each group is the arrivals within ``window`` of its first.
    Returns (time of the group's first arrival, size) per group."""
    groups: list[tuple[float, int]] = []
    for t in arrivals:
        if groups and t - groups[-1][0] <= window:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((t, 1))
    return groups


def _check_legs(legs: int) -> None:
    if legs < 1:
        raise ValueError(f"legs must be >= 1, got {legs}")


def _tau(typical: float, settings: HolSettings, legs: int) -> float:
    """The least hold that counts (ms): a quarter under one connection's RTT (module docstring)."""
    return max(settings.min_excess_ms, settings.baseline_factor * typical / legs)


def _in_blind(t: float, blind: Sequence[tuple[float, float]], slack: float) -> bool:
    return any(a - slack <= t <= b + slack for a, b in blind)


def held(
    samples: Sequence[Sample],
    *,
    settings: HolSettings = HolSettings(),
    legs: int = 1,
    blind: Sequence[tuple[float, float]] = (),
) -> list[Hold]:
    """A datagram train's held answers: more than ``tau`` above its median RTT (as for stalls),
    leaving out answers the agent itself held (``blind``). What a stream path's stall is
    compared with to tell a shared hold (module docstring)."""
    _check_legs(legs)
    slack = settings.release_window_ms / 1000.0
    answered = [
        s for s in samples if s.received is not None and not _in_blind(s.received, blind, slack)
    ]
    rtts = sorted((s.received - s.sent) * 1000.0 for s in answered if s.received is not None)
    if not rtts:
        return []
    typical = percentile(rtts, 50)
    tau = _tau(typical, settings, legs)
    out = []
    for s in answered:
        assert s.received is not None
        excess = (s.received - s.sent) * 1000.0 - typical
        if excess > tau:
            out.append(Hold(s.sent, s.received, excess))
    return out


def detect_hol(
    samples: Sequence[Sample],
    *,
    interval: float,
    settings: HolSettings,
    blind: Sequence[tuple[float, float]] = (),
    shared: Sequence[Hold] = (),
    legs: int = 1,
) -> Hol:
    """Head-of-line stalls: sudden holds that end in a release (rule in the module docstring).
    ``blind``: (start, end) times, on the samples' clock, when the agent's loop was stalled;
    ``shared``: the run's datagram holds (``held``), on the same clock; ``legs``: TCP
    connections a round trip crosses in series."""
    return _detect_hol(samples, interval, settings, blind, shared, legs)[0]


def _detect_hol(
    samples: Sequence[Sample],
    interval: float,
    settings: HolSettings,
    blind: Sequence[tuple[float, float]],
    shared: Sequence[Hold],
    legs: int,
) -> tuple[Hol, set[int]]:
    """``detect_hol``, and the seqs of the answers held in the stalls set aside as shared."""
    _check_interval(interval)
    _check_legs(legs)
    in_shared: set[int] = set()
    rtts = sorted(r for s in samples if (r := s.rtt_ms) is not None)
    if not rtts:
        return Hol(detected=False, stalls=0, max_stall_ms=None, stalled_fraction=0.0), in_shared
    typical = percentile(rtts, 50)
    tau = _tau(typical, settings, legs)
    window = settings.release_window_ms / 1000.0
    agent_slack = window + (typical / 1000.0) * (legs - 1) / legs
    by_seq = sorted(samples, key=lambda s: s.seq)
    first_sent = min(s.sent for s in samples)
    excesses: list[float] = []  # each stall's largest excess over the median, ms
    shared_windows: list[tuple[float, float]] = []
    shared_excesses: list[float] = []
    discounted = 0
    previous: float | None = None  # RTT of the previous answer
    i = 0
    while i < len(by_seq):
        rtt = by_seq[i].rtt_ms
        if rtt is None:
            i += 1
            continue
        level = typical if previous is None else previous  # the pre-stall level
        if rtt - typical <= tau or rtt - level <= tau:
            previous = rtt
            i += 1
            continue
        # The stall: consecutive answers held above the pre-stall level (a second loss while the
        # first is outstanding only prolongs it).
        end = i + 1
        while end < len(by_seq) and by_seq[end].seq == by_seq[end - 1].seq + 1:
            nxt = by_seq[end].rtt_ms
            if nxt is None or nxt - level <= tau:
                break
            end += 1
        arrivals = [s.received for s in by_seq[i:end] if s.received is not None]
        # Answers not held themselves but handed over in the same release as the last held one.
        k = end
        while (
            k < len(by_seq)
            and (t := by_seq[k].received) is not None
            and by_seq[k].seq == by_seq[k - 1].seq + 1
            and abs(t - arrivals[-1]) <= window
        ):
            arrivals.append(t)
            k += 1
        bursts = [t for t, size in _release_bursts(arrivals, window) if size >= settings.min_burst]
        if bursts:
            excess = max(r for s in by_seq[i:end] if (r := s.rtt_ms) is not None) - typical
            since, until = by_seq[i].sent, max(arrivals)
            # On an echo through this computer (legs > 1) the answer to a probe the agent held
            # comes home up to one leg's trip after the agent's stall ended.
            if all(_in_blind(t, blind, agent_slack) for t in bursts):
                discounted += 1
            elif any(
                h.start <= until
                and h.end >= since
                and h.excess_ms >= settings.shared_ratio * excess
                for h in shared
            ):
                shared_excesses.append(excess)
                in_shared.update(s.seq for s in by_seq[i:end])
                shared_windows.append(
                    ((since - first_sent) * 1000.0, (until - first_sent) * 1000.0)
                )
            else:
                excesses.append(excess)
        previous = by_seq[end - 1].rtt_ms
        i = end
    shared_max = max(shared_excesses, default=None)
    windows = tuple(shared_windows)
    if not excesses:
        hol = Hol(False, 0, None, 0.0, discounted, len(shared_excesses), shared_max, windows)
        return hol, in_shared
    duration_ms = _duration(samples, interval) * 1000.0
    hol = Hol(
        detected=True,
        stalls=len(excesses),
        max_stall_ms=max(excesses),
        stalled_fraction=min(1.0, sum(excesses) / duration_ms),
        discounted=discounted,
        shared=len(shared_excesses),
        shared_max_ms=shared_max,
        shared_windows=windows,
    )
    return hol, in_shared


def _check_crossings(crossings: int) -> None:
    if crossings < 1:
        raise ValueError(f"crossings must be >= 1, got {crossings}")


def _check_fraction(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"a loss must be a fraction within [0, 1], got {value}")


def loss_each_way(loss: float, crossings: int) -> float:
    """The loss of one crossing, from the loss of a probe that crosses ``crossings`` times
    (symmetric, independent): ``1 - (1 - loss) ** (1 / crossings)``."""
    _check_fraction(loss)
    _check_crossings(crossings)
    return min(max(1.0 - math.pow(1.0 - loss, 1.0 / crossings), 0.0), 1.0)


def loss_over(each_way: float, crossings: int) -> float:
    """The loss over ``crossings`` crossings of ``each_way`` each: ``1 - (1 - p) ** crossings``."""
    _check_fraction(each_way)
    _check_crossings(crossings)
    return min(max(1.0 - (1.0 - each_way) ** crossings, 0.0), 1.0)


def wilson_interval(lost: int, samples: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval on a loss of ``lost`` of ``samples`` (95 % by default); (0, 1),
    no knowledge, for no samples."""
    if samples <= 0:
        return 0.0, 1.0
    if not 0 <= lost <= samples:
        raise ValueError(f"lost must be within [0, samples], got {lost} of {samples}")
    n, k, z2 = samples, lost, z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    low = 0.0 if k == 0 else min(max(centre - half, 0.0), k / n)
    high = 1.0 if k == n else max(min(centre + half, 1.0), k / n)
    return low, high


def _log_likelihood(p: float, trains: Sequence[tuple[int, int, int]]) -> float:
    """Of a per-crossing loss ``p`` given (samples, received, crossings) per train."""
    lost = sum(n - r for n, r, _ in trains)
    if p <= 0.0:
        return 0.0 if lost == 0 else -math.inf
    if p >= 1.0:
        return -math.inf  # every train kept has an answer
    log_q = math.log1p(-p)
    total = 0.0
    for n, r, c in trains:
        total += r * c * log_q
        if n > r:
            dropped = -math.expm1(c * log_q)  # 1 - (1 - p) ** c, exact for small p
            total += (n - r) * math.log(dropped) if dropped > 0 else -math.inf
    return total


def _bisect(f: Callable[[float], bool], low: float, high: float) -> float:
    """The boundary in [low, high] where ``f`` turns from True (at low) to False (at high)."""
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if f(mid):
            low = mid
        else:
            high = mid
    return (low + high) / 2


def pooled_loss(trains: Sequence[tuple[int, int, int]]) -> PooledLoss | None:
    """The per-crossing loss of one network from several trains over it, each given as
    (samples, received, crossings): the maximum-likelihood estimate and its 95 %
    likelihood-ratio interval (module docstring). Trains with no sample or no answer are left
    out; None when none is left."""
    kept = [(n, r, c) for n, r, c in trains if n > 0 and r > 0]
    for n, r, c in kept:
        _check_crossings(c)
        if r > n:
            raise ValueError(f"received must be within [0, samples], got {r} of {n}")
    if not kept:
        return None
    samples = sum(n for n, _, _ in kept)
    lost = sum(n - r for n, r, _ in kept)
    if lost == 0:
        best = 0.0
    else:

        def rising(p: float) -> bool:
            # The score (derivative of the log-likelihood) is positive below the maximum; it
            # falls monotonically with p (the log-likelihood is concave).
            q = 1.0 - p
            score = 0.0
            for n, r, c in kept:
                score -= r * c / q
                if n > r:
                    score += (n - r) * c * q ** (c - 1) / -math.expm1(c * math.log1p(-p))
            return score > 0

        best = _bisect(rising, 0.0, 1.0)
    floor = _log_likelihood(best, kept) - LR_95

    def within(p: float) -> bool:
        return _log_likelihood(p, kept) >= floor

    low = 0.0 if best == 0.0 else _bisect(lambda p: not within(p), 0.0, best)
    high = _bisect(within, best, 1.0)
    return PooledLoss(len(kept), samples, lost, best, (min(low, best), max(high, best)))


# z for a one-sided 0.1 % tail: pooling is refused only on strong evidence that groups differ.
_HETEROGENEITY_Z = 3.090232306167813


def same_loss(groups: Sequence[Sequence[tuple[int, int, int]]]) -> bool:
    """Whether groups of trains (each train (samples, received, crossings), a group per server)
    are consistent with one per-crossing loss: the likelihood-ratio test of one common loss
    against one loss per group, ``2 (LL_groups - LL_common)`` against the chi-squared quantile
    at 99.9 % with ``groups - 1`` degrees of freedom (Wilson-Hilferty). False only on strong
    evidence that a group lost more (or less) on its own way; 250-probe noise stays True."""
    kept = [[(n, r, c) for n, r, c in g if n > 0 and r > 0] for g in groups]
    kept = [g for g in kept if g]
    if len(kept) < 2:
        return True
    common = pooled_loss([t for g in kept for t in g])
    assert common is not None
    own = 0.0
    for g in kept:
        fit = pooled_loss(g)
        assert fit is not None
        own += _log_likelihood(fit.each_way, g)
    stat = 2.0 * (own - _log_likelihood(common.each_way, [t for g in kept for t in g]))
    df = len(kept) - 1
    h = 2.0 / (9.0 * df)
    quantile = df * (1.0 - h + _HETEROGENEITY_Z * math.sqrt(h)) ** 3
    return stat <= quantile


def e_model_mos(rtt_ms: float, jitter_ms: float, loss: float, stall_ms: float = 0.0) -> float:
    """Mean opinion score (1..4.5) by the simplified E-model; ``loss`` is a fraction 0..1 and
    ``stall_ms`` the longest hold a receiver's buffer rides out (it replaces the 2 x jitter
    allowance where it is longer)."""
    effective = rtt_ms + max(2 * jitter_ms, stall_ms) + 10
    r = 93.2 - effective / 40 if effective < 160 else 93.2 - (effective - 120) / 10
    r -= 2.5 * (loss * 100)
    r = min(max(r, 0.0), 100.0)
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return min(max(mos, 1.0), 4.5)


def summarize(
    samples: Sequence[Sample],
    *,
    stream: bool,
    interval: float,
    hol: HolSettings = HolSettings(),
    blind: Sequence[tuple[float, float]] = (),
    shared: Sequence[Hold] = (),
    legs: int = 1,
    tcp: TcpEvidence | None = None,
    crossings: int = BINDING_CROSSINGS,
    warmup: Warmup | None = None,
) -> Quality:
    """All figures for one train. ``stream``: the path is TCP or TLS (HOL and late answers apply).
    ``blind``, ``shared``, ``legs``: as for ``detect_hol``; ``tcp``: the kernel's counters over
    the train (stream paths); ``crossings``: times a probe crosses this network (2 for a
    Binding, 4 for an echo); ``warmup``: what preceded the train, reported as given.

    Raises ValueError for impossible input (an answer before its request, a repeated seq, a
    non-positive interval): that is a bug in the measuring layer, not a property of the path.
    """
    _check_interval(interval)
    _check_legs(legs)
    _check_crossings(crossings)
    if len({s.seq for s in samples}) != len(samples):
        raise ValueError("samples repeat a seq")
    if any(s.received is not None and s.received < s.sent for s in samples):
        raise ValueError("a sample was received before it was sent")

    rtts = sorted(r for s in samples if (r := s.rtt_ms) is not None)
    n, received = len(samples), len(rtts)
    loss = (n - received) / n if n else 0.0
    # Answers timestamped late because the agent itself was stalled: not the network's jitter.
    slack = hol.release_window_ms / 1000.0
    seen = [s for s in samples if s.received is None or not _in_blind(s.received, blind, slack)]
    excluded = len(samples) - len(seen)
    jitter = rfc3550_jitter(seen)

    hol_figures: Hol | None = None
    in_shared: set[int] = set()
    if stream:
        hol_figures, in_shared = _detect_hol(samples, interval, hol, blind, shared, legs)

    rtt_summary: dict[str, float] | None = None
    mos: float | None = None
    call: Call | None = None
    late = 0
    each_way = loss_each_way(loss, crossings)
    lost = n - received
    ci = wilson_interval(lost, n)
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
            # Answers of a shared hold are not late on TCP's account: the UDP train, held as
            # long at the same moment, counts none late either.
            baseline = percentile(rtts, BASELINE_PERCENTILE)
            late = sum(
                1
                for s in seen
                if (r := s.rtt_ms) is not None
                and r - baseline > JITTER_BUFFER_MS
                and s.seq not in in_shared
            )
        # The reference call (module docstring): half an echo's delay and its loss each way
        # twice; a receiver's buffer rides out the longest stall the path itself caused.
        stall = 0.0
        if hol_figures is not None and hol_figures.max_stall_ms is not None:
            stall = hol_figures.max_stall_ms
        call_rtt = rtt_summary["p50"] * CALL_CROSSINGS / crossings
        call_jitter = jitter or 0.0
        playout = max(2 * call_jitter, stall)
        call = Call(
            rtt_ms=call_rtt,
            jitter_ms=call_jitter,
            playout_ms=playout,
            loss=loss_over(each_way, CALL_CROSSINGS),
            effective_ms=call_rtt + playout + 10,
        )
        mos = e_model_mos(call.rtt_ms, call.jitter_ms, call.loss, stall_ms=stall)

    return Quality(
        samples=n,
        received=received,
        rtt_ms=rtt_summary,
        jitter_ms=jitter,
        loss=loss,
        reordered=count_reordered(samples),
        late=late,
        hol=hol_figures,
        mos=mos,
        interval_ms=interval * 1000.0,
        duration_ms=_duration(samples, interval) * 1000.0,
        series=_series(samples),
        excluded=excluded,
        tcp=tcp if stream else None,
        crossings=crossings,
        loss_ci=ci,
        loss_each_way=each_way,
        loss_each_way_ci=(loss_each_way(ci[0], crossings), loss_each_way(ci[1], crossings)),
        call=call,
        warmup=warmup,
    )


@dataclass(frozen=True)
class TrainRecord:
    """One train as measured, kept until the whole run has ended so its figures can be judged
    with every other train of the run (shared holds, the agent's stalls; see ``lkice.engine``)."""

    samples: tuple[Sample, ...]
    interval: float
    stream: bool
    legs: int = 1
    tcp: TcpEvidence | None = None
    crossings: int = BINDING_CROSSINGS  # times a probe crosses this network (2 Binding, 4 echo)
    warmup: Warmup | None = None  # what preceded the train (SFU data echo), left out of it
    # A datagram train whose holds may speak for the run's other trains (a shared hold): not
    # one carried over TCP somewhere (an SFU echo through TURN/TLS holds as TCP does).
    witness: bool = True

    def figures(
        self, blind: Sequence[tuple[float, float]] = (), shared: Sequence[Hold] = ()
    ) -> dict[str, object]:
        return summarize(
            self.samples,
            stream=self.stream,
            interval=self.interval,
            blind=blind,
            shared=shared,
            legs=self.legs,
            tcp=self.tcp,
            crossings=self.crossings,
            warmup=self.warmup,
        ).to_dict()

    def window(self) -> tuple[float, float] | None:
        """From the first send to the last answer (or send), the samples' clock; None if empty."""
        if not self.samples:
            return None
        ends = [s.received if s.received is not None else s.sent for s in self.samples]
        return min(s.sent for s in self.samples), max(ends)

    def holds(self, blind: Sequence[tuple[float, float]] = ()) -> list[Hold]:
        """This train's held answers, when it is a datagram train (a stream's are its own)."""
        if self.stream or not self.witness:
            return []
        return held(self.samples, legs=self.legs, blind=blind)


class Trains:
    """A path's trains as measured (name -> TrainRecord), not reported. Deep copies share it:
    ``dataclasses.asdict`` copies every field of a report object, and these records never
    change once their train has ended."""

    def __init__(self) -> None:
        self.by_name: dict[str, TrainRecord] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> Trains:
        return self


def _series(samples: Sequence[Sample]) -> dict[str, list[float | None]]:
    by_seq = sorted(samples, key=lambda s: s.seq)
    if not by_seq:
        return {"sent_ms": [], "rtt_ms": []}
    first = by_seq[0].sent
    return {
        "sent_ms": [(s.sent - first) * 1000.0 for s in by_seq],
        "rtt_ms": [s.rtt_ms for s in by_seq],
    }
