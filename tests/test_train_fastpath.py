"""The probe train's fast path: pre-encoded probes, answers read without aioice's ``Message``,
kernel receive stamps on UDP, and a pacer that says when the agent could not keep up.

Every assertion is about behaviour (bytes, equalities, orderings, what the report says), never
about how long something took."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lkice import stun as codec
from lkice.credentials import Secret, TurnCredentials
from lkice.engine import EngineSettings, run
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe import channel as channel_mod
from lkice.probe import train as train_mod
from lkice.probe.channel import StreamChannel, UdpChannel, kernel_ns, open_udp, to_perf_counter
from lkice.probe.path import ProbeSettings
from lkice.probe.train import (
    SLOT,
    PacedRecord,
    Pacer,
    Pacing,
    SendBatch,
    Train,
    TrainResult,
    TrainSettings,
)
from lkice.quality import Sample, TrainRecord
from lkice.uri import parse_ice_uri
from tests.conftest import TurnLab, needs_coturn, plain, validate_report

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIDS = st.binary(min_size=12, max_size=12)
PEERS = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)


# ----------------------------------------------------------------------------------- templates


@FUZZ
@given(TIDS)
def test_binding_template_is_aioices_binding_request(tid: bytes) -> None:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    msg.add_fingerprint()
    assert codec.BindingTemplate().encode(tid) == bytes(msg)


@FUZZ
@given(PEERS, st.binary(max_size=300), TIDS)
def test_send_template_is_aioices_send_indication(
    peer: tuple[str, int], data: bytes, tid: bytes
) -> None:
    """Byte for byte, the IPv6 XOR-PEER-ADDRESS (XORed with the transaction id) included."""
    template = codec.SendTemplate(peer, len(data))
    assert template.encode(tid, data) == bytes(codec.send_indication(peer, data, tid))


def test_templates_patch_each_probe_afresh() -> None:
    """One template, many probes: each carries its own id, data and FINGERPRINT."""
    template = codec.SendTemplate(("2001:db8::7", 3478), 16)
    ids = codec.TransactionIds(block=2)
    out = []
    for n in range(5):
        tid, data = ids.next(), n.to_bytes(16, "big")
        out.append((template.encode(tid, data), tid, data))
    assert len({tid for _, tid, _ in out}) == 5
    for encoded, tid, data in out:
        parsed = stun.parse_message(encoded)  # checks the FINGERPRINT
        assert parsed.transaction_id == tid
        assert parsed.attributes["DATA"] == data
        assert parsed.attributes["XOR-PEER-ADDRESS"] == ("2001:db8::7", 3478)
    with pytest.raises(ValueError, match="16 bytes"):
        template.encode(ids.next(), b"short")


# ---------------------------------------------------------------------------------- fast parse


def _full(data: bytes) -> codec.FastMessage | None:
    """What the fast path must give: aioice's full parse, in the fast path's terms."""
    try:
        msg = stun.parse_message(data)
    except Exception:
        return None
    relayed = codec.data_indication(msg)
    peer, payload = relayed if relayed is not None else (None, None)
    return int(msg.message_method), int(msg.message_class), msg.transaction_id, peer, payload


def _answers() -> list[bytes]:
    """Answers as servers send them: Binding responses (coturn's attributes), errors, Data
    indications over IPv4 and IPv6, one behind MESSAGE-INTEGRITY, one without FINGERPRINT."""
    binding = stun.Message(
        stun.Method.BINDING,
        stun.Class.RESPONSE,
        attributes={
            "XOR-MAPPED-ADDRESS": ("198.18.0.9", 4000),
            "MAPPED-ADDRESS": ("198.18.0.9", 4000),
            "RESPONSE-ORIGIN": ("198.19.0.2", 3478),
            "OTHER-ADDRESS": ("198.19.0.3", 3479),
            "SOFTWARE": "Coturn-4.6.1 'Gorst'",
        },
    )
    binding.add_fingerprint()
    error = stun.Message(
        stun.Method.ALLOCATE,
        stun.Class.ERROR,
        attributes={"ERROR-CODE": (401, "Unauthorized"), "REALM": "lab.test", "NONCE": b"n"},
    )
    error.add_fingerprint()
    data4 = stun.Message(
        stun.Method.DATA,
        stun.Class.INDICATION,
        attributes={"XOR-PEER-ADDRESS": ("198.19.0.2", 50000), "DATA": bytes(range(172))},
    )
    data4.add_fingerprint()
    data6 = stun.Message(
        stun.Method.DATA,
        stun.Class.INDICATION,
        attributes={"XOR-PEER-ADDRESS": ("2001:db8::2", 50001), "DATA": b"abc"},
    )
    signed = stun.Message(
        stun.Method.DATA,
        stun.Class.INDICATION,
        attributes={"XOR-PEER-ADDRESS": ("198.19.0.2", 9), "DATA": b"abcd"},
    )
    signed.add_message_integrity(b"key")
    return [bytes(m) for m in (binding, error, data4, data6, signed)] + [
        codec.BindingTemplate().encode(os.urandom(12))
    ]


ANSWERS = _answers()


def _mutated() -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(ANSWERS)))
        for _ in range(draw(st.integers(0, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
            if len(data) >= 20 and draw(st.booleans()):
                data[2:4] = (len(data) - 20).to_bytes(2, "big")  # a consistent length
        return bytes(data) + draw(st.binary(max_size=8))

    return build()


INPUTS = st.one_of(st.binary(max_size=120), st.sampled_from(ANSWERS), _mutated())


@pytest.mark.parametrize("data", ANSWERS)
def test_fast_parse_reads_real_answers_as_the_full_parse(data: bytes) -> None:
    assert codec.fast_parse(data) is not None
    assert codec.fast_parse(data) == _full(data)


@FUZZ
@given(INPUTS)
def test_fast_parse_equals_the_full_parse(data: bytes) -> None:
    """None exactly where aioice raises (garbage, short, cut, wrong type or length, a broken
    FINGERPRINT or attribute); otherwise the same method, class, id, peer and data."""
    assert codec.fast_parse(data) == _full(data)


@FUZZ
@given(st.lists(INPUTS, max_size=12))
def test_a_parser_that_remembers_layouts_equals_the_full_parse(datagrams: list[bytes]) -> None:
    """The layout cache of one socket's parser never accepts what the full parse rejects."""
    parser = codec.FastParser()
    for data in [*ANSWERS, *datagrams, *ANSWERS]:
        assert parser.parse(data) == _full(data)


def test_a_remembered_layout_still_checks_the_fingerprint_and_length() -> None:
    parser = codec.FastParser()
    answer = ANSWERS[0]
    assert parser.parse(answer) is not None  # remembered
    broken = bytearray(answer)
    broken[-1] ^= 1
    assert parser.parse(bytes(broken)) is None
    other_id = bytearray(answer)
    other_id[8] ^= 1  # same layout, another id: the FINGERPRINT no longer matches
    assert parser.parse(bytes(other_id)) is None
    assert parser.parse(answer + b"\0\0\0\0") is None


def test_fast_attribute_table_matches_aioice() -> None:
    """The fast path must know exactly the attribute types aioice decodes, each with the
    failure rules of its decoder."""
    table = codec.aioice_stun().ATTRIBUTES_BY_TYPE
    assert set(codec.FAST_ATTRIBUTES) == set(table)
    rules = {
        stun.unpack_address: {codec._ADDRESS},
        stun.unpack_xor_address: {codec._XOR_ADDRESS},
        stun.unpack_unsigned: {codec._U32, codec._FINGERPRINT},
        stun.unpack_unsigned_short: {codec._U16},
        stun.unpack_unsigned_64: {codec._U64},
        stun.unpack_string: {codec._TEXT},
        stun.unpack_error_code: {codec._ERROR_CODE},
        stun.unpack_bytes: {codec._ANY, codec._INTEGRITY},
        stun.unpack_none: {codec._ANY},
    }
    for code, (_, name, _, unpack) in table.items():
        assert codec.FAST_ATTRIBUTES[code] in rules[unpack], name
    assert codec.FAST_ATTRIBUTES[0x8028] == codec._FINGERPRINT
    assert codec.FAST_ATTRIBUTES[0x0008] == codec._INTEGRITY


def test_the_codec_module_does_not_import_aioice() -> None:
    """``lkice.stun`` serves the framer, ``format_address`` and the fast path without aioice
    (start-up time); the first message built or fully parsed imports it."""
    probe = (
        "import sys, json; from lkice import stun; "
        "stun.fast_parse(stun.BindingTemplate().encode(bytes(12))); "
        "a = 'aioice' in sys.modules; stun.binding_request(); "
        "print(json.dumps([a, 'aioice' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [False, True]


# ------------------------------------------------------------------------------- receive path


def _response(tid: bytes) -> bytes:
    msg = stun.Message(
        stun.Method.BINDING,
        stun.Class.RESPONSE,
        transaction_id=tid,
        attributes={"XOR-MAPPED-ADDRESS": ("198.18.0.9", 4000)},
    )
    msg.add_fingerprint()
    return bytes(msg)


@FUZZ
@given(st.lists(INPUTS, max_size=10))
def test_train_receive_path_never_raises(datagrams: list[bytes]) -> None:
    """With a train listening, nothing a server sends raises out of the datagram or stream
    callbacks; a train answer among the garbage is still matched."""
    tid = os.urandom(12)
    seen: list[bytes] = []
    data_seen: list[bytes] = []
    udp = UdpChannel("198.18.0.9:3478", 1.0)
    udp.on_response = lambda t, when: seen.append(t)
    udp.on_data = lambda peer, data, when: data_seen.append(data)
    for data in [*datagrams, _response(tid)]:
        udp.datagram_received_at(data, None, time.perf_counter(), kernel=True)
    assert tid in seen
    assert udp.kernel_stamps == len(datagrams) + 1

    class Sink(asyncio.Transport):
        def write(self, data: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def abort(self) -> None:
            pass

    stream = StreamChannel("198.18.0.9:3478", 1.0, tls=False)
    stream.connection_made(Sink())
    stream.on_response = lambda t, when: seen.append(t)
    for data in datagrams:
        stream.data_received(data)  # garbage fails the stream as protocol, never raises
    failure = stream.failure
    assert failure is None or failure.kind is ErrorKind.PROTOCOL


def test_fast_path_keeps_transactions_whole() -> None:
    """An answer to a pending request still reaches it as a full message; a train answer
    reaches the train; an answer to nothing is counted, as before."""
    channel = UdpChannel("198.18.0.9:3478", 1.0)
    loop = asyncio.new_event_loop()
    try:
        pending = os.urandom(12)
        fut: asyncio.Future[stun.Message] = loop.create_future()
        channel._pending[pending] = fut
        train_ids: list[bytes] = []
        channel.on_response = lambda t, when: train_ids.append(t)
        train_tid = os.urandom(12)
        channel.datagram_received(_response(pending), ("198.18.0.9", 3478))
        channel.datagram_received(_response(train_tid), ("198.18.0.9", 3478))
        assert fut.done()
        assert fut.result().attributes["XOR-MAPPED-ADDRESS"] == ("198.18.0.9", 4000)
        assert train_ids == [pending, train_tid]
        assert channel.answered == ["Binding"]
        channel.on_response = None
        channel.datagram_received(_response(os.urandom(12)), ("198.18.0.9", 3478))
        assert channel.unmatched == 1
        assert channel.answers == 3
        channel.datagram_received(b"\x01\x01\x00\x08" + bytes(20), ("198.18.0.9", 3478))
        assert channel.malformed == 1
    finally:
        loop.close()


# ----------------------------------------------------------------------------- kernel stamps


def test_kernel_stamp_helpers() -> None:
    stamp = (1_700_000_000, 123_456_789)
    anc = [
        (socket.SOL_SOCKET, 1, b"other"),
        (socket.SOL_SOCKET, channel_mod._SO_TIMESTAMPNS, struct.pack("=qq", *stamp)),
    ]
    assert kernel_ns(anc) == 1_700_000_000_123_456_789
    assert kernel_ns(
        [(socket.SOL_SOCKET, channel_mod._SO_TIMESTAMPNS, struct.pack("=ii", 5, 6))]
    ) == (5_000_000_006)
    assert kernel_ns([]) is None
    wall = 1_700_000_000_500_000_000
    assert to_perf_counter(wall - 2_000_000, 100.0, wall) == pytest.approx(99.998)
    assert to_perf_counter(None, 100.0, wall) is None
    assert to_perf_counter(wall + 1, 100.0, wall) is None  # in the future: not right
    assert to_perf_counter(wall - int(10e9), 100.0, wall) is None  # the wall clock stepped


async def _arrival_while_blocked(
    monkeypatch: pytest.MonkeyPatch | None,
) -> tuple[UdpChannel, float, float, float]:
    """A Binding answer that reaches the socket while the event loop is blocked: returns the
    channel, when it was sent, when the loop was released, and the arrival time the train saw."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    try:
        channel = await open_udp(server.getsockname(), 1.0)
        try:
            arrivals: list[float] = []
            channel.on_response = lambda tid, when: arrivals.append(when)
            assert channel.transport is not None
            local = channel.transport.get_extra_info("sockname")
            sent = time.perf_counter()
            server.sendto(_response(os.urandom(12)), local)
            # The loop is held until the answer waits in the socket: on a busy machine the kernel
            # may deliver even a loopback datagram late (softirq deferred), so wait for it to be
            # readable (select does not consume it) rather than for a fixed time.
            sock = channel.transport.get_extra_info("socket")
            readable, _, _ = select.select([sock.fileno()], [], [], 5.0)
            assert readable, "the answer never reached the socket"
            time.sleep(0.01)  # noqa: ASYNC251 (held a little longer: arrival and release differ)
            released = time.perf_counter()
            for _ in range(100):
                await asyncio.sleep(0.001)
                if arrivals:
                    break
            assert len(arrivals) == 1
            return channel, sent, released, arrivals[0]
        finally:
            channel.close()
            await asyncio.sleep(0)
    finally:
        server.close()


@pytest.mark.skipif(not channel_mod.kernel_stamps_supported(), reason="no SO_TIMESTAMPNS here")
async def test_udp_arrivals_are_timed_by_the_kernel() -> None:
    channel, sent, released, arrived = await _arrival_while_blocked(None)
    assert channel.kernel_stamped
    assert channel.kernel_stamps == 1
    # When it reached this computer, not when the loop got round to reading it.
    assert sent <= arrived < released


async def test_udp_arrivals_fall_back_to_user_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform cannot stamp (or the option is refused), asyncio's transport reads
    the datagrams and the arrival is when the loop read it."""
    monkeypatch.setattr(channel_mod, "kernel_stamps_supported", lambda: False)
    channel, _, released, arrived = await _arrival_while_blocked(monkeypatch)
    assert not channel.kernel_stamped
    assert channel.user_stamps == 1
    assert arrived >= released


async def test_udp_falls_back_when_the_option_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket.setsockopt

    def refuse(self: socket.socket, level: int, option: int, value: Any, *rest: Any) -> None:
        if option == channel_mod._SO_TIMESTAMPNS:
            raise OSError(92, "Protocol not available")
        real(self, level, option, value, *rest)

    monkeypatch.setattr(channel_mod, "kernel_stamps_supported", lambda: True)
    monkeypatch.setattr(socket.socket, "setsockopt", refuse)
    channel, _, released, arrived = await _arrival_while_blocked(monkeypatch)
    assert not channel.kernel_stamped
    assert arrived >= released


@pytest.mark.skipif(not channel_mod.kernel_stamps_supported(), reason="no SO_TIMESTAMPNS here")
async def test_stamped_udp_reports_icmp_refusal(closed_port: int) -> None:
    """The kernel-stamped transport reports ICMP port unreachable as asyncio's does."""
    channel = await open_udp(("127.0.0.1", closed_port), 1.0)
    try:
        assert channel.kernel_stamped
        with pytest.raises(ProbeError) as err:
            await channel.request(codec.binding_request(), Phase.BINDING)
        assert err.value.kind is ErrorKind.UDP_REFUSED
    finally:
        channel.close()
        await asyncio.sleep(0)


# -------------------------------------------------------------------------------------- pacer


async def _run_train(
    settings: TrainSettings, send: Callable[[int], None], pacer: Pacer | None = None
) -> tuple[Train, TrainResult]:
    train = Train(settings, pacer)
    outcome = await train.run(send, lambda: None)
    return train, outcome


def _pacing(outcome: TrainResult) -> Pacing:
    assert outcome.pacing is not None
    return outcome.pacing


def _intervals(span: float, interval: float) -> int:
    """How many whole intervals ``span`` is (schedules are computed, so this is exact)."""
    count = round(span / interval)
    assert span == pytest.approx(count * interval, abs=1e-9)
    return count


async def test_probes_keep_their_schedule_and_slip_is_recorded() -> None:
    answered: list[Train] = []

    def send(seq: int) -> None:
        answered[0].arrived(seq, time.perf_counter())

    train = Train(TrainSettings(interval=0.01, duration=0.1, grace=0.2))
    answered.append(train)
    outcome = await train.run(send, lambda: None)
    pacing = outcome.pacing
    assert isinstance(pacing, Pacing)
    n = len(outcome.samples)
    assert n + pacing.skipped == 10  # a probe the loop was too late for is skipped, not sent
    assert all(s.received is not None for s in outcome.samples)
    assert len(pacing.slip_ms) == n
    assert all(slip >= -0.5 - 1e-6 for slip in pacing.slip_ms)  # at most EARLY ahead
    figures = pacing.figures()
    assert figures["slip_ms"]["p50"] <= figures["slip_ms"]["p95"] <= figures["slip_ms"]["max"]
    assert figures["lowered"] is False
    assert pacing.note("quality") is None
    # On the train's own schedule: due a whole number of intervals apart, never in a burst.
    assert all(_intervals(b - a, 0.01) >= 1 for a, b in itertools.pairwise(train.scheduled))


async def _first_slots(count: int) -> set[int]:
    pacer = Pacer()
    settings = TrainSettings(interval=0.02, duration=0.04, grace=0.05)
    trains = [Train(settings, pacer) for _ in range(count)]
    outcomes = await asyncio.gather(*(t.run(lambda seq: None, lambda: None) for t in trains))
    assert all(o.pacing is not None and 0 <= o.pacing.start_delay_ms < 20 for o in outcomes)
    return {round((t.scheduled[0] % 0.02) / SLOT) % round(0.02 / SLOT) for t in trains}


async def test_trains_share_a_batch_until_it_is_full_then_spread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few trains started at once go out in one batch (one wake-up); once a slot holds
    SLOT_FILL trains the next ones take the following slots, each waiting less than one
    interval."""
    assert len(await _first_slots(3)) == 1
    monkeypatch.setattr(train_mod, "SLOT_FILL", 1)
    assert len(await _first_slots(3)) == 3


async def test_a_held_loop_skips_probes_instead_of_bursting() -> None:
    def send(seq: int) -> None:
        if seq == 2:
            time.sleep(0.08)  # the agent is held for four intervals

    train, outcome = await _run_train(TrainSettings(interval=0.02, duration=0.3, grace=0.05), send)
    pacing = _pacing(outcome)
    assert pacing.skipped >= 2
    gaps = [_intervals(b - a, 0.02) for a, b in itertools.pairwise(train.scheduled)]
    assert all(gap >= 1 for gap in gaps)  # no catch-up burst: one probe per slot at most
    assert max(gaps) >= 3  # the slots that passed while the loop was held were skipped
    assert len(outcome.samples) + pacing.skipped == 15
    assert [s.seq for s in outcome.samples] == list(range(len(outcome.samples)))


async def test_an_agent_that_cannot_keep_up_lowers_the_cadence_and_says_so() -> None:
    """Probes whose sending takes more than the interval: the pacer lowers the cadence of
    every train, and the note and the figures say it was the agent, not the network."""

    def send(seq: int) -> None:
        end = time.thread_time() + 0.004
        while time.thread_time() < end:  # this probe costs 4 ms of CPU; two trains at 5 ms
            pass

    pacer = Pacer()
    settings = TrainSettings(interval=0.005, duration=1.5, grace=0.05)
    trains = [Train(settings, pacer) for _ in range(2)]
    outcomes = await asyncio.gather(*(t.run(send, lambda: None) for t in trains))
    assert pacer.lowered
    for train, outcome in zip(trains, outcomes, strict=True):
        pacing = _pacing(outcome)
        assert pacing.lowered
        assert pacing.final_interval_ms > 5
        note = train.note("quality")
        assert note is not None
        assert "lkice could not keep up" in note
        assert "not the network's" in note
        assert "loss" not in note
        record = train.record(outcome.samples, stream=False)
        assert record.interval == pytest.approx(pacing.final_interval_ms / 1000)
        figures = record.figures()
        shown = figures["pacing"]
        assert isinstance(shown, dict)
        assert shown["lowered"] is True
        assert shown["cadences"][-1]["interval_ms"] == pacing.final_interval_ms
        assert figures["loss"] == 1.0  # nothing answered here: the figures are the train's
    # Nothing runs any more: the next train starts at the cadence asked for.
    assert not pacer.trains
    _, fresh = await _run_train(
        TrainSettings(interval=0.02, duration=0.06, grace=0.01), lambda s: None, pacer
    )
    assert not _pacing(fresh).lowered


async def test_a_busy_loop_that_is_not_the_trains_does_not_lower_the_cadence() -> None:
    """Other work holding the loop (or other programs): fewer probes would not help, so the
    cadence stays; the slip figure shows it."""
    stop = asyncio.Event()

    async def hog() -> None:
        while not stop.is_set():
            end = time.thread_time() + 0.002
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)

    hogs = [asyncio.ensure_future(hog()) for _ in range(3)]
    try:
        pacer = Pacer()
        _, outcome = await _run_train(
            TrainSettings(interval=0.01, duration=1.0, grace=0.01), lambda s: None, pacer
        )
    finally:
        stop.set()
        await asyncio.gather(*hogs)
    assert not pacer.lowered
    assert not _pacing(outcome).lowered
    assert max(_pacing(outcome).slip_ms) > 0


def test_send_batch_stamps_each_probe_at_its_own_send() -> None:
    train = Train(TrainSettings())
    train.sent_at[:] = [1.0, 2.0]
    order: list[tuple[bytes, float]] = []
    batch = SendBatch()
    batch.probe = (train, 0)
    batch.add(lambda data: order.append((data, train.sent_at[0])), b"a")
    batch.probe = (train, 1)
    batch.add(lambda data: order.append((data, train.sent_at[1])), b"b")
    before = time.perf_counter()
    batch.flush()
    assert [d for d, _ in order] == [b"a", b"b"]
    assert before <= order[0][1] <= order[1][1]  # stamped right before each send
    assert not batch.sends


def test_paced_record_adds_pacing_to_the_same_figures() -> None:
    samples = tuple(Sample(i, i * 0.02, i * 0.02 + 0.001) for i in range(10))
    pacing = Pacing(20.0, ((0, 20.0),), (0.1,) * 10, 0.0, arrivals="kernel")
    plain = TrainRecord(samples, 0.02, False).figures()
    paced = PacedRecord(samples, 0.02, False, pacing=pacing).figures()
    assert paced.pop("pacing") == pacing.figures()
    assert paced == plain
    assert pacing.figures()["arrivals"] == "kernel"


# --------------------------------------------------------------------------- on real coturn


@needs_coturn
async def test_trains_on_coturn_use_templates_kernel_stamps_and_report_pacing(
    coturn: TurnLab,
) -> None:
    """Binding and relay trains from templates over UDP and TCP: every probe answered, the UDP
    answers timed by the kernel (where the platform can), slip and cadence reported."""
    train = TrainSettings(interval=0.02, duration=0.4)
    settings = EngineSettings(
        probe=ProbeSettings(
            credentials=TurnCredentials(Secret(coturn.user), Secret(coturn.password)),
            train=train,
        ),
        deadline=10.0,
    )
    uris = [
        f"turn:127.0.0.1:{coturn.port}?transport=udp",
        f"turn:127.0.0.1:{coturn.port}?transport=tcp",
    ]
    report = await run([parse_ice_uri(u) for u in uris], settings)
    data = plain(report.to_dict())
    validate_report(data)
    assert report.verdict == "ok"
    for path in data["paths"]:
        for name in ("quality", "relay_quality"):
            q = path[name]
            assert q is not None, path["notes"]
            pacing = q["pacing"]
            assert q["received"] == q["samples"] > 0
            assert q["samples"] + pacing["skipped"] == train.count
            assert pacing["interval_ms"] == 20
            assert pacing["slip_ms"] is not None
            expected = (
                "kernel"
                if path["transport"] == "udp" and channel_mod.kernel_stamps_supported()
                else "user"
            )
            assert pacing["arrivals"] == expected
            if not pacing["lowered"]:
                assert not any("could not keep up" in n for n in path["notes"])
