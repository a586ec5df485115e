"""Path-quality figures from synthetic probe trains (pure: no sockets, no clocks).

The stream trains are built by ``tcp_train``, a small model of TCP's in-order delivery: each
answer has its own arrival time on the wire, a lost segment's answer arrives ``hold`` ms late,
and the application sees each answer no earlier than the one before it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections.abc import Callable, Sequence

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lkice.quality import (
    ECHO_CROSSINGS,
    JITTER_BUFFER_MS,
    Hol,
    HolSettings,
    Quality,
    Sample,
    Warmup,
    baseline_ms,
    count_reordered,
    detect_hol,
    e_model_mos,
    loss_each_way,
    loss_over,
    percentile,
    pooled_loss,
    rfc3550_jitter,
    summarize,
    wilson_interval,
)
from lkice.report import load_schema

INTERVAL = 0.020
START = 1000.0  # a monotonic clock does not start at zero
DEFAULT = HolSettings()


def train(rtts_ms: Sequence[float | None], interval: float = INTERVAL) -> list[Sample]:
    """Probes at a fixed cadence with the given RTTs (None: lost), each answer independent."""
    return [
        Sample(
            seq, START + seq * interval, None if r is None else START + seq * interval + r / 1000
        )
        for seq, r in enumerate(rtts_ms)
    ]


def tcp_train(
    n: int,
    *,
    base_ms: float = 40.0,
    holds: dict[int, float] | None = None,
    rtt_ms: Callable[[int], float] | None = None,
    interval: float = INTERVAL,
) -> list[Sample]:
    """A stream path: the answer to probe k reaches the kernel ``holds[k]`` ms late (its segment
    was lost and retransmitted), and the stream delivers every answer in order."""
    holds = holds or {}
    delivered = -math.inf
    samples = []
    for seq in range(n):
        sent = START + seq * interval
        wire = rtt_ms(seq) if rtt_ms else base_ms
        delivered = max(delivered, sent + (wire + holds.get(seq, 0.0)) / 1000)
        samples.append(Sample(seq, sent, delivered))
    return samples


def uniform_noise(seed: int, amplitude_ms: float, base_ms: float = 40.0) -> Callable[[int], float]:
    rng = random.Random(seed)
    noise = [rng.uniform(-amplitude_ms, amplitude_ms) for _ in range(10_000)]
    return lambda seq: base_ms + noise[seq]


def hol_of(samples: Sequence[Sample], hol: HolSettings = DEFAULT) -> Hol:
    return detect_hol(samples, interval=INTERVAL, settings=hol)


# --- percentile -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 0, 1),
        ([1, 2, 3, 4], 100, 4),
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 25, 1.75),  # position 0.75
        ([10, 20, 30, 40, 50], 95, 48),  # position 3.8: 40 + 0.8 * 10
        ([10, 20, 30, 40, 50], 50, 30),  # exact rank, no interpolation
        ([7], 0, 7),
        ([7], 99, 7),
        ([0, 100], 99, 99),
    ],
)
def test_percentile_by_hand(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_rejects_q_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


values_strategy = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=60
).map(sorted)


@given(values_strategy)
def test_percentile_agrees_with_statistics_inclusive(values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in range(1, 100):
        assert math.isclose(percentile(values, q), cuts[q - 1], rel_tol=1e-9, abs_tol=1e-6)


@given(values_strategy, st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_bounded_and_monotonic(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert values[0] <= percentile(values, lo) <= percentile(values, hi) <= values[-1]


# --- jitter -----------------------------------------------------------------------------------


def test_jitter_of_constant_rtt_is_zero() -> None:
    assert rfc3550_jitter(train([40.0] * 100)) == 0.0


@pytest.mark.parametrize("rtts", [[], [None, None], [40.0], [None, 40.0, None]])
def test_jitter_needs_two_answers(rtts: list[float | None]) -> None:
    assert rfc3550_jitter(train(rtts)) is None


def test_jitter_of_alternating_rtt_is_the_mean_difference_from_the_start() -> None:
    # |D| is always 10 ms: RFC 3550's estimate tends to 10 ms; the whole-train figure is 10 ms
    # already over 4 differences (the running estimate would still read 10 * (1 - (15/16)^4)).
    rtts = [40.0 if i % 2 == 0 else 50.0 for i in range(200)]
    samples = train(rtts)
    assert rfc3550_jitter(samples) == pytest.approx(10.0, rel=1e-12)
    assert rfc3550_jitter(samples[:5]) == pytest.approx(10.0, rel=1e-12)


def test_jitter_does_not_depend_on_where_the_train_stopped() -> None:
    """Periodic 150 ms holds (one every 45 probes): the running estimate's last value swings
    with the last hold's phase; the whole-train figure stays put."""
    rtts = [40.0 + (150.0 if i % 45 == 0 else 0.0) for i in range(1, 251)]
    ends = [rfc3550_jitter(train(rtts[:n])) for n in range(200, 251)]
    assert all(e is not None for e in ends)
    figures = [e for e in ends if e is not None]
    assert max(figures) - min(figures) < 2.0  # one hold more or less: 300 ms over ~200 pairs
    running = []
    for n in range(200, 251):
        j = 0.0
        for a, b in itertools.pairwise(rtts[:n]):
            j += (abs(b - a) - j) / 16
        running.append(j)
    assert max(running) - min(running) > 10.0  # what the end-of-train value did


@given(st.lists(st.floats(0, 2000), min_size=2, max_size=100))
def test_jitter_matches_an_independent_mean(rtts: list[float]) -> None:
    # Answers arrive in send order here (cadence 10 s, RTT at most 2 s).
    samples = [Sample(i, float(i) * 10, float(i) * 10 + r / 1000) for i, r in enumerate(rtts)]
    diffs = [abs(b - a) for a, b in itertools.pairwise(rtts)]
    got = rfc3550_jitter(samples)
    assert got is not None
    assert math.isclose(got, sum(diffs) / len(diffs), rel_tol=1e-6, abs_tol=1e-6)


def test_jitter_takes_answers_in_arrival_order() -> None:
    # seq 1 (RTT 100) arrives after seq 2 (RTT 40): arrival order is RTT 40, 40, 100.
    samples = train([40.0, 100.0, 40.0])
    expected = (0 + 60) / 2  # first difference 0, then |100 - 40| = 60
    assert rfc3550_jitter(samples) == pytest.approx(expected)


@given(st.lists(st.floats(0, 500), min_size=2, max_size=50), st.floats(0, 1000))
def test_jitter_ignores_a_constant_delay(rtts: list[float], offset: float) -> None:
    a = rfc3550_jitter(train(rtts, interval=1.0))
    b = rfc3550_jitter(train([r + offset for r in rtts], interval=1.0))
    assert a is not None
    assert b is not None
    assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


# --- reordering and loss ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtts", "expected"),
    [
        ([40.0] * 10, 0),
        ([40.0, 70.0, 40.0, 40.0], 1),  # seq 1 arrives after seq 2
        ([200.0, 40.0, 40.0, 40.0, 40.0], 1),  # seq 0 arrives last: one late answer, not four
        ([40.0, None, 40.0], 0),  # a loss is not a reordering
        ([40.0, 20.0], 0),  # seq 1 sent 20 ms later, RTT 20 ms less: same instant, seq order
    ],
)
def test_reordering(rtts: list[float | None], expected: int) -> None:
    assert count_reordered(train(rtts)) == expected


def test_reordering_of_a_reversed_train() -> None:
    samples = [Sample(i, START + i * 0.02, START + 1.0 - i * 0.01) for i in range(5)]
    assert count_reordered(samples) == 4  # every answer after the first (seq 4) is late


def test_loss() -> None:
    q = summarize(train([40.0] * 7 + [None] * 3), stream=False, interval=INTERVAL)
    assert (q.samples, q.received) == (10, 7)
    assert q.loss == pytest.approx(0.3)


def test_all_lost() -> None:
    q = summarize(train([None] * 5), stream=True, interval=INTERVAL)
    assert q.loss == 1.0
    assert q.rtt_ms is None
    assert q.jitter_ms is None
    assert q.mos is None
    assert q.late == 0
    assert q.hol == Hol(detected=False, stalls=0, max_stall_ms=None, stalled_fraction=0.0)


def test_empty_train() -> None:
    q = summarize([], stream=True, interval=INTERVAL)
    assert (q.samples, q.received, q.loss, q.reordered, q.duration_ms) == (0, 0, 0.0, 0, 0.0)
    assert q.mos is None
    assert q.hol is not None
    assert not q.hol.detected


# --- head-of-line blocking --------------------------------------------------------------------


def test_one_lost_segment_released_by_rto_is_one_stall() -> None:
    k = 100
    samples = tcp_train(250, holds={k: 200.0})
    # The answers to k..k+9 reach the application together; k..k+7 exceed 40 + 40 ms.
    assert {s.received for s in samples[k : k + 10]} == {samples[k].received}
    hol = hol_of(samples)
    assert hol.detected
    assert hol.stalls == 1
    assert hol.max_stall_ms == pytest.approx(200.0, abs=1.0)  # probe k itself waited 200 ms
    assert hol.stalled_fraction == pytest.approx(200 / 5000, abs=1e-3)


def test_fast_retransmit_stall_is_found() -> None:
    # Fast retransmit: about one RTT plus three more segments after the loss.
    hol = hol_of(tcp_train(250, holds={50: 40.0 + 3 * 20.0}))
    assert (hol.detected, hol.stalls) == (True, 1)
    assert hol.max_stall_ms == pytest.approx(100.0, abs=1.0)


def test_stall_at_the_first_probe() -> None:
    hol = hol_of(tcp_train(100, holds={0: 300.0}))
    assert hol.stalls == 1
    assert hol.max_stall_ms == pytest.approx(300.0, abs=1.0)


def test_two_separated_losses_are_two_stalls() -> None:
    hol = hol_of(tcp_train(250, holds={40: 200.0, 150: 400.0}))
    assert hol.stalls == 2
    assert hol.max_stall_ms == pytest.approx(400.0, abs=1.0)
    assert hol.stalled_fraction == pytest.approx(600 / 5000, abs=1e-3)


def test_a_second_loss_inside_a_stall_prolongs_it() -> None:
    # Probe 103's segment is lost while 100's is still outstanding: its answers come in a
    # second burst 60 ms after the first. One outage, one stall.
    hol = hol_of(tcp_train(250, holds={100: 200.0, 103: 200.0}))
    assert hol.stalls == 1
    assert hol.max_stall_ms == pytest.approx(200.0, abs=1.0)


def test_recovery_paced_by_slow_start_is_one_stall() -> None:
    # A 1 s outage: after the RTO the held answers come back in bursts one RTT apart, doubling
    # (1, 2, 4, 8, ...), not all at once. Still far faster than they were sent.
    k, outage, n = 100, 50, 250
    sent = [START + seq * INTERVAL for seq in range(n)]
    arrival = [t + 0.040 for t in sent]
    seq, burst, t = k, 1, sent[k] + 1.0
    while seq < k + outage:
        for s in range(seq, min(seq + burst, k + outage)):
            arrival[s] = t
        seq, burst, t = seq + burst, burst * 2, t + 0.040
    delivered = list(itertools.accumulate(arrival, max))  # the stream keeps order
    samples = [Sample(i, sent[i], delivered[i]) for i in range(n)]
    assert len(set(delivered[k : k + outage])) == 6  # six bursts, not one
    hol = hol_of(samples)
    assert hol.stalls == 1
    # Probe k+1 came in the second burst: 1000 + 40 - 20 ms RTT, 980 ms over the baseline.
    assert hol.max_stall_ms == pytest.approx(980.0, abs=1.0)


def test_no_loss_no_stall() -> None:
    hol = hol_of(tcp_train(250))
    assert hol == Hol(detected=False, stalls=0, max_stall_ms=None, stalled_fraction=0.0)


def test_bufferbloat_ramp_is_not_a_stall() -> None:
    # RTT climbs from 40 to 300 ms; answers stay spaced by about the interval.
    n = 250
    samples = tcp_train(n, rtt_ms=lambda seq: 40 + 260 * seq / (n - 1))
    assert not hol_of(samples).detected


def test_steep_bufferbloat_is_not_a_stall() -> None:
    # RTT jumps by 50 ms per probe: each step exceeds the threshold, but answers spread out.
    samples = tcp_train(100, rtt_ms=lambda seq: 40.0 if seq < 50 else 40 + 50 * (seq - 49))
    assert not hol_of(samples).detected


def test_route_change_is_not_a_stall() -> None:
    samples = tcp_train(250, rtt_ms=lambda seq: 40.0 if seq < 100 else 200.0)
    assert not hol_of(samples).detected


@pytest.mark.parametrize("seed", range(20))
def test_random_jitter_is_not_a_stall(seed: int) -> None:
    # +-10 ms per answer, delivered in order: small holds happen but stay below the threshold.
    assert not hol_of(tcp_train(250, rtt_ms=uniform_noise(seed, 10.0))).detected
    rng = random.Random(seed)
    independent = train([40 + rng.uniform(-10, 10) for _ in range(250)])
    assert not hol_of(independent).detected


@pytest.mark.parametrize("seed", range(20))
def test_bufferbloat_with_jitter_is_not_a_stall(seed: int) -> None:
    # Above the baseline for most of the train, with in-order micro-holds from the jitter: the
    # sudden-jump rule keeps these from counting as stalls.
    noise = uniform_noise(seed, 10.0, base_ms=0.0)
    n = 250
    samples = tcp_train(n, rtt_ms=lambda seq: 40 + 260 * seq / (n - 1) + noise(seq))
    assert not hol_of(samples).detected


def test_stall_on_a_bloated_path_is_found() -> None:
    # RTT climbs from 40 to 200 ms over the first 100 probes, then a segment is lost.
    samples = tcp_train(250, rtt_ms=lambda seq: 40 + min(seq, 100) * 1.6, holds={150: 250.0})
    hol = hol_of(samples)
    assert hol.stalls == 1
    # Measured from the path's typical (median) RTT: the hold itself, not the queue before it.
    assert hol.max_stall_ms == pytest.approx(250, abs=1.0)


def test_a_single_late_probe_is_not_a_stall() -> None:
    rtts: list[float | None] = [40.0] * 100
    rtts[50] = 400.0  # no answer waited behind it (as on a datagram path)
    assert not hol_of(train(rtts)).detected


def test_late_probes_not_released_together_are_not_a_stall() -> None:
    rtts: list[float | None] = [40.0] * 100
    rtts[50] = rtts[51] = rtts[52] = 400.0  # each 400 ms late, arriving 20 ms apart
    assert not hol_of(train(rtts)).detected


def test_min_burst_and_thresholds_are_honoured() -> None:
    samples = tcp_train(250, holds={100: 90.0})  # k..k+4 arrive together (90, 70, 50, 30, 10)
    assert hol_of(samples).stalls == 1
    assert hol_of(samples, HolSettings(min_burst=5)).stalls == 1  # k..k+3 held, k+4 with them
    assert hol_of(samples, HolSettings(min_burst=6)).stalls == 0
    assert hol_of(samples, HolSettings(min_excess_ms=85.0)).stalls == 1  # k held, k+1.. with it
    assert hol_of(samples, HolSettings(min_excess_ms=95.0)).stalls == 0  # nothing held enough
    assert hol_of(samples, HolSettings(baseline_factor=2.0)).stalls == 1  # tau 80: k alone held
    assert hol_of(samples, HolSettings(baseline_factor=2.5)).stalls == 0  # tau 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_burst": 1},
        {"min_excess_ms": -1.0},
        {"baseline_factor": -0.5},
        {"release_window_ms": 0},
    ],
)
def test_hol_settings_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        HolSettings(**kwargs)  # type: ignore[arg-type]


@st.composite
def separated_losses(draw: st.DrawFn) -> tuple[float, float, dict[int, float]]:
    base = draw(st.floats(10, 100))
    tau = max(DEFAULT.min_excess_ms, DEFAULT.baseline_factor * base)
    holds: dict[int, float] = {}
    seq = draw(st.integers(0, 20))
    for _ in range(draw(st.integers(1, 3))):
        hold = draw(st.floats(tau + 40, 600))
        holds[seq] = hold
        seq += math.ceil(hold / 20) + 4 + draw(st.integers(0, 20))
    return base, draw(st.floats(0, 5)), holds


@settings(max_examples=200)
@given(separated_losses(), st.integers(0, 2**32))
def test_each_separated_loss_is_one_stall(
    case: tuple[float, float, dict[int, float]], seed: int
) -> None:
    base, jitter, holds = case
    samples = tcp_train(300, holds=holds, rtt_ms=uniform_noise(seed, jitter, base_ms=base))
    hol = hol_of(samples)
    assert hol.stalls == len(holds)
    assert hol.max_stall_ms is not None
    assert abs(hol.max_stall_ms - max(holds.values())) <= 2 * jitter + 1e-6


@given(st.lists(st.floats(0, 50), min_size=1, max_size=200), st.floats(1, 200))
def test_a_path_never_faster_than_sent_has_no_stall(steps: list[float], start_ms: float) -> None:
    # Non-decreasing RTT, whatever its shape: answers never arrive closer than they were sent.
    rtts: list[float | None] = list(itertools.accumulate(steps, initial=start_ms))
    assert not hol_of(train(rtts)).detected


# --- MOS --------------------------------------------------------------------------------------


def test_mos_of_a_perfect_path() -> None:
    # eff = 10 ms, R = 92.95: the E-model's best for narrowband voice.
    assert e_model_mos(0, 0, 0) == pytest.approx(4.404, abs=1e-3)


def test_mos_by_hand() -> None:
    # eff = 100 + 20 + 10 = 130 -> R = 93.2 - 3.25 - 2.5 = 87.45
    r = 87.45
    expected = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    assert e_model_mos(100, 10, 0.01) == pytest.approx(expected, rel=1e-12)
    # eff = 400 + 0 + 10 = 410 -> R = 93.2 - 29 = 64.2 (the long-delay branch)
    r = 64.2
    expected = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    assert e_model_mos(400, 0, 0) == pytest.approx(expected, rel=1e-12)


def test_mos_penalties() -> None:
    perfect = e_model_mos(20, 2, 0)
    assert e_model_mos(20, 2, 0.01) < perfect
    assert e_model_mos(400, 2, 0) < 3.5
    assert e_model_mos(20, 2, 1.0) == 1.0  # all lost: R clamps to 0
    assert e_model_mos(10_000, 0, 0) == 1.0


def test_mos_with_a_stall_by_hand() -> None:
    # The buffer rides out a 130 ms stall: eff = 40 + max(2 x 5, 130) + 10 = 180 ms, past the
    # knee: R = 93.2 - (180 - 120) / 10 = 87.2.
    r = 87.2
    expected = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    assert e_model_mos(40, 5, 0, stall_ms=130) == pytest.approx(expected, rel=1e-12)
    # A stall shorter than the jitter allowance changes nothing.
    assert e_model_mos(40, 5, 0, stall_ms=8) == e_model_mos(40, 5, 0)


def test_mos_is_continuous_at_the_delay_knee() -> None:
    # eff = 160 is where the slope changes from 1/40 to 1/10.
    assert e_model_mos(150 - 1e-9, 0, 0) == pytest.approx(e_model_mos(150, 0, 0), abs=1e-9)


finite = st.floats(0, 5000)
fraction = st.floats(0, 1)


@given(finite, finite, finite, fraction, fraction, finite)
def test_mos_is_bounded_and_monotonic(
    rtt1: float, rtt2: float, jitter: float, loss1: float, loss2: float, stall: float
) -> None:
    (ra, rb), (la, lb) = sorted((rtt1, rtt2)), sorted((loss1, loss2))
    assert 1.0 <= e_model_mos(ra, jitter, la) <= 4.5
    eps = 1e-12  # the polynomial may wobble by an ulp
    assert e_model_mos(ra, jitter, la) >= e_model_mos(rb, jitter, la) - eps
    assert e_model_mos(ra, jitter, la) >= e_model_mos(ra, jitter, lb) - eps
    assert e_model_mos(ra, 0, la) >= e_model_mos(ra, jitter, la) - eps
    assert e_model_mos(ra, jitter, la) >= e_model_mos(ra, jitter, la, stall_ms=stall) - eps


# --- loss each way, confidence, pooling -------------------------------------------------------


def test_loss_each_way_by_hand() -> None:
    # 2 % each way: a Binding (2 crossings) loses 3.96 %, an echo (4 crossings) 7.76 %.
    assert loss_over(0.02, 2) == pytest.approx(0.0396)
    assert loss_over(0.02, 4) == pytest.approx(1 - 0.98**4)
    assert loss_each_way(1 - 0.98**4, 4) == pytest.approx(0.02)
    assert loss_each_way(0.0396, 2) == pytest.approx(0.02)
    assert loss_each_way(0.0, 4) == 0.0
    assert loss_each_way(1.0, 4) == 1.0
    with pytest.raises(ValueError, match="crossings"):
        loss_each_way(0.1, 0)
    with pytest.raises(ValueError, match="fraction"):
        loss_each_way(1.5, 2)


@given(fraction, st.integers(1, 8))
def test_loss_each_way_inverts_loss_over(loss: float, crossings: int) -> None:
    each = loss_each_way(loss, crossings)
    assert 0.0 <= each <= loss + 1e-12
    assert loss_over(each, crossings) == pytest.approx(loss, abs=1e-9)


def test_wilson_interval_by_hand() -> None:
    # 10 of 250: centre (10 + 1.92) / 253.84, half 1.96 sqrt(10 x 240 / 250 + 0.96) / 253.84.
    z = 1.959963984540054
    centre = (10 + z * z / 2) / (250 + z * z)
    half = z * math.sqrt(10 * 240 / 250 + z * z / 4) / (250 + z * z)
    low, high = wilson_interval(10, 250)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.0219, 0.0721), abs=1e-4)
    # None lost of 250: not "zero", under 1.5 % with 95 % confidence.
    assert wilson_interval(0, 250) == pytest.approx((0.0, z * z / (250 + z * z)))
    assert wilson_interval(0, 250)[0] == 0.0
    assert wilson_interval(250, 250)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no probe, no knowledge


@given(st.integers(1, 2000), st.data())
def test_wilson_interval_holds_the_estimate_and_narrows(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    wide_low, wide_high = wilson_interval(k, n, z=3.0)
    assert wide_low <= low + 1e-12
    assert high <= wide_high + 1e-12
    more_low, more_high = wilson_interval(4 * k, 4 * n)  # four times the evidence
    assert more_high - more_low <= high - low + 1e-12


def test_pooled_loss_of_one_train_is_its_loss_each_way() -> None:
    pooled = pooled_loss([(250, 230, 4)])
    assert pooled is not None
    assert (pooled.trains, pooled.samples, pooled.lost) == (1, 250, 20)
    assert pooled.each_way == pytest.approx(loss_each_way(20 / 250, 4), rel=1e-9)
    low, high = pooled.each_way_ci
    assert low < pooled.each_way < high


def test_pooled_loss_of_trains_alike_is_their_sum() -> None:
    # Trains of the same crossings are one binomial: the sums decide.
    pooled = pooled_loss([(250, 245, 2), (250, 235, 2), (500, 480, 2)])
    assert pooled is not None
    assert pooled.each_way == pytest.approx(loss_each_way(40 / 1000, 2), rel=1e-9)


def test_pooled_loss_weighs_binding_and_echo_on_one_scale() -> None:
    # 2 % each way: a Binding train loses 3.96 %, an echo 7.76 %; pooled, 2 % each way.
    binding = round(1000 * (1 - 0.0396))
    echo = round(1000 * 0.98**4)
    pooled = pooled_loss([(1000, binding, 2), (1000, echo, 4)])
    assert pooled is not None
    assert pooled.each_way == pytest.approx(0.02, abs=5e-4)
    low, high = pooled.each_way_ci
    assert low < 0.02 < high


def test_pooled_loss_leaves_out_trains_that_got_nothing_back() -> None:
    assert pooled_loss([(250, 0, 4), (0, 0, 2)]) is None
    pooled = pooled_loss([(250, 0, 4), (250, 250, 2)])
    assert pooled is not None
    assert (pooled.trains, pooled.lost, pooled.each_way) == (1, 0, 0.0)
    # None lost of 250 Bindings: under 1.92 / 500 each way (likelihood ratio).
    assert pooled.each_way_ci[0] == 0.0
    assert pooled.each_way_ci[1] == pytest.approx(1 - math.exp(-LR / 500), rel=1e-6)


LR = 3.841458820694124 / 2


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(1, 600), st.data(), st.sampled_from([2, 4])), max_size=6))
def test_pooled_loss_is_within_its_interval_and_the_trains(
    drawn: list[tuple[int, st.DataObject, int]],
) -> None:
    trains = [(n, data.draw(st.integers(1, n)), c) for n, data, c in drawn]
    pooled = pooled_loss(trains)
    if not trains:
        assert pooled is None
        return
    assert pooled is not None
    low, high = pooled.each_way_ci
    assert 0.0 <= low <= pooled.each_way <= high <= 1.0
    each = [loss_each_way((n - r) / n, c) for n, r, c in trains]
    assert min(each) - 1e-6 <= pooled.each_way <= max(each) + 1e-6


# --- summarize --------------------------------------------------------------------------------


def test_summary_of_a_clean_datagram_path() -> None:
    q = summarize(train([40.0, 42.0, 41.0, 39.0] * 25), stream=False, interval=INTERVAL)
    assert q.hol is None
    assert q.late == 0
    assert q.rtt_ms is not None
    assert q.rtt_ms["min"] == pytest.approx(39.0)
    assert q.rtt_ms["max"] == pytest.approx(42.0)
    assert q.rtt_ms["mean"] == pytest.approx(40.5)
    assert q.rtt_ms["p50"] == pytest.approx(40.5)
    assert q.interval_ms == pytest.approx(20.0)
    assert q.duration_ms == pytest.approx(2000.0)
    assert q.mos is not None
    assert q.mos > 4.3


def test_a_stall_costs_the_call_playout_delay_not_loss() -> None:
    samples = tcp_train(250, holds={100: 210.0})
    stream = summarize(samples, stream=True, interval=INTERVAL)
    datagram = summarize(samples, stream=False, interval=INTERVAL)
    # Excess over the 40 ms baseline: 210, 190, 170, 150, 130, 110 ms exceed a fixed 100 ms
    # buffer; they are counted, but a receiver buffers longer rather than conceal them.
    assert JITTER_BUFFER_MS == 100.0
    assert stream.late == 6
    assert stream.loss == 0.0
    assert stream.hol is not None
    assert stream.hol.stalls == 1
    assert stream.hol.max_stall_ms is not None
    assert stream.rtt_ms is not None
    assert stream.jitter_ms is not None
    call = stream.call
    assert call is not None
    assert call.loss == 0.0
    assert call.playout_ms == pytest.approx(stream.hol.max_stall_ms)
    assert call.effective_ms == pytest.approx(stream.rtt_ms["p50"] + call.playout_ms + 10)
    assert stream.mos == pytest.approx(
        e_model_mos(stream.rtt_ms["p50"], stream.jitter_ms, 0.0, stall_ms=stream.hol.max_stall_ms)
    )
    assert datagram.late == 0
    assert datagram.call is not None
    assert datagram.call.playout_ms == pytest.approx(2 * stream.jitter_ms)
    assert datagram.mos is not None
    assert stream.mos is not None
    assert stream.mos < datagram.mos


def test_to_dict_is_json_ready_and_rounded() -> None:
    q = summarize(tcp_train(250, holds={100: 200.123456}), stream=True, interval=INTERVAL)
    data = q.to_dict()
    assert list(data) == [
        "samples",
        "received",
        "rtt_ms",
        "jitter_ms",
        "loss",
        "reordered",
        "late",
        "hol",
        "mos",
        "interval_ms",
        "duration_ms",
        "series",
        "excluded",
        "tcp",
        "crossings",
        "loss_ci",
        "loss_each_way",
        "loss_each_way_ci",
        "call",
        "warmup",
    ]
    assert json.loads(json.dumps(data)) == data
    call = data["call"]
    assert isinstance(call, dict)
    assert list(call) == ["rtt_ms", "jitter_ms", "playout_ms", "loss", "effective_ms"]
    assert data["loss_ci"] == [0.0, round(wilson_interval(0, 250)[1], 3)]
    assert data["warmup"] is None
    series = data["series"]
    assert isinstance(series, dict)
    assert len(series["sent_ms"]) == len(series["rtt_ms"]) == 250
    assert series["sent_ms"][0] == 0
    assert series["rtt_ms"][100] == round(200.123456 + 40, 2)  # the held probe, as measured
    hol = data["hol"]
    assert isinstance(hol, dict)
    assert list(hol) == [
        "detected",
        "stalls",
        "max_stall_ms",
        "stalled_fraction",
        "discounted",
        "shared",
        "shared_max_ms",
        "shared_windows",
    ]
    assert hol["detected"] is True
    assert hol["max_stall_ms"] == round(hol["max_stall_ms"], 3)
    rtt = data["rtt_ms"]
    assert isinstance(rtt, dict)
    assert list(rtt) == ["p50", "p95", "p99", "max", "min", "mean"]
    assert all(v == round(v, 3) for v in rtt.values())
    assert summarize(train([40.0]), stream=False, interval=INTERVAL).to_dict()["hol"] is None


def quality_schema() -> dict[str, object]:
    schema = load_schema()
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/quality"}


def test_to_dict_fits_the_report_schema() -> None:
    warmup = Warmup(probes=160, answered=150, first_echo_ms=3042.0, ms=3120.0)
    for samples, stream, extra in [
        (tcp_train(250, holds={100: 200.0}), True, {}),
        (train([40.0, None, 45.0]), False, {}),
        (train([None, None]), True, {}),
        (train([80.0, None, 82.0]), False, {"crossings": ECHO_CROSSINGS, "warmup": warmup}),
    ]:
        q = summarize(samples, stream=stream, interval=INTERVAL, **extra)  # type: ignore[arg-type]
        jsonschema.validate(q.to_dict(), quality_schema())


@pytest.mark.parametrize(
    ("samples", "interval", "message"),
    [
        ([Sample(0, 1.0, 0.5)], INTERVAL, "received before it was sent"),
        ([Sample(0, 1.0, 1.1), Sample(0, 1.02, 1.1)], INTERVAL, "repeat a seq"),
        ([Sample(0, 1.0, 1.1)], 0.0, "interval"),
        ([Sample(0, 1.0, 1.1)], math.inf, "interval"),
    ],
)
def test_impossible_input_is_rejected(samples: list[Sample], interval: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(samples, stream=True, interval=interval)


def test_baseline_is_a_low_percentile_not_dragged_up_by_stalls() -> None:
    samples = tcp_train(250, holds={20: 400.0, 120: 400.0, 220: 400.0})
    assert baseline_ms(samples) == pytest.approx(40.0)
    assert baseline_ms(train([None])) is None


@st.composite
def random_trains(draw: st.DrawFn) -> tuple[list[Sample], float]:
    interval = draw(st.floats(0.001, 1.0))
    start = draw(st.floats(0, 1e6))
    delays = draw(st.lists(st.one_of(st.none(), st.floats(0, 10)), max_size=80))
    samples = []
    for seq, delay in enumerate(delays):
        sent = start + seq * interval + draw(st.floats(0, interval))
        samples.append(Sample(seq, sent, None if delay is None else sent + delay))
    return draw(st.permutations(samples)), interval


@settings(max_examples=300)
@given(random_trains(), st.booleans())
def test_summarize_never_raises_and_stays_in_range(
    case: tuple[list[Sample], float], stream: bool
) -> None:
    samples, interval = case
    q = summarize(samples, stream=stream, interval=interval)
    assert isinstance(q, Quality)
    assert 0.0 <= q.loss <= 1.0
    assert q.samples == len(samples)
    assert 0 <= q.received <= q.samples
    assert 0 <= q.reordered < max(q.received, 1)
    assert 0 <= q.late <= q.received
    if q.received == 0:
        assert q.mos is None
        assert q.rtt_ms is None
    else:
        assert q.mos is not None
        assert 1.0 <= q.mos <= 4.5
        assert q.rtt_ms is not None
        r = q.rtt_ms
        assert 0 <= r["min"] <= r["p50"] <= r["p95"] <= r["p99"] <= r["max"]
        assert r["min"] <= r["mean"] * (1 + 1e-9)
        assert r["mean"] <= r["max"] * (1 + 1e-9)
    assert (q.jitter_ms is None) == (q.received < 2)
    low, high = q.loss_ci
    assert 0.0 <= low <= q.loss <= high <= 1.0
    assert 0.0 <= q.loss_each_way <= q.loss + 1e-12
    assert (q.call is None) == (q.received == 0)
    if q.call is not None:
        assert q.call.loss == pytest.approx(q.loss)  # a Binding train: the call's crossings
        assert q.call.playout_ms >= 2 * (q.jitter_ms or 0.0)
    if stream:
        assert q.hol is not None
        assert q.hol.detected == (q.hol.stalls > 0)
        assert 0.0 <= q.hol.stalled_fraction <= 1.0
        assert (q.hol.max_stall_ms is None) == (q.hol.stalls == 0)
    else:
        assert q.hol is None
    json.dumps(q.to_dict())
