"""Property-based fuzzing of every parser that reads what a server, a user or a file sends:
each fails only with its own named error, whatever the input (bounded example counts: CI)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lkice import stun as codec
from lkice.credentials import Secret
from lkice.errors import Phase, ProbeError, UsageError
from lkice.livekit import check_token_fresh, check_token_text, parse_livekit_url, token_expiry
from lkice.probe.channel import UdpChannel
from lkice.probe.signal import MAX_VALIDATE, HttpError, _Http
from lkice.probedef import DefinitionError, parse
from lkice.uri import parse_ice_uri


def _kind_of(action: Callable[[], object]) -> str | None:
    """The error kind ``action`` failed with, or None; any other exception escapes the test."""
    try:
        action()
    except ProbeError as exc:
        return exc.kind.value
    return None


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_VALID = bytes(
    stun.Message(
        stun.Method.BINDING,
        stun.Class.RESPONSE,
        attributes={"XOR-MAPPED-ADDRESS": ("198.18.0.9", 4000), "SOFTWARE": "x"},
    )
)


def _mutated() -> st.SearchStrategy[bytes]:
    """A real STUN response with bytes flipped, cut or appended: closer to what a broken server
    sends than random bytes, so the attribute decoders are reached."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(_VALID)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) + draw(st.binary(max_size=16))

    return build()


@FUZZ
@given(st.one_of(st.binary(max_size=600), _mutated()))
def test_stun_parse_fails_only_as_protocol(data: bytes) -> None:
    assert _kind_of(lambda: codec.parse(data, Phase.BINDING)) in (None, "protocol")


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), _mutated()), max_size=8))
def test_udp_channel_survives_any_datagram(datagrams: list[bytes]) -> None:
    """Nothing a server sends raises out of the datagram callback (asyncio would print a
    traceback and the path would be called filtered); garbage is counted for the report."""
    channel = UdpChannel("198.18.0.9:3478", 1.0)
    for data in datagrams:
        channel.datagram_received(data, ("198.18.0.9", 3478))
    assert channel.malformed <= len(datagrams)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_stream_framer_fails_only_as_protocol(chunks: list[bytes], channel_data: bool) -> None:
    framer = codec.StreamFramer(allow_channel_data=channel_data, max_buffer=4096)

    def feed() -> None:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                assert len(frame) >= 4

    assert _kind_of(feed) in (None, "protocol")


class _Sink:
    """The write side of a connection: what lkice sends is not under test here."""

    def write(self, data: bytes) -> None:
        pass


async def _answer(data: bytes) -> Any:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await _Http(reader, _Sink()).get(  # type: ignore[arg-type]
        "/rtc/validate", "lk.lab.test", Secret("t"), MAX_VALIDATE
    )


_HEADS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 99999999999\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"",
    ]
)


@FUZZ
@given(_HEADS, st.binary(max_size=400), st.integers(0, 64))
def test_http_answer_fails_only_as_http_error(head: bytes, tail: bytes, cut: int) -> None:
    data = head[: len(head) - cut] + tail if cut < len(head) else tail
    try:
        answer = asyncio.run(_answer(data))
    except HttpError:
        return
    assert len(answer.body.encode("utf-8", "surrogatepass")) <= 4 * MAX_VALIDATE


def test_http_body_is_capped() -> None:
    body = b"x" * (MAX_VALIDATE + 10)
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with pytest.raises(HttpError, match="more than 16 KiB"):
        asyncio.run(_answer(data))


def _jwt(payload: bytes) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    header = b64(b'{"alg":"HS256"}')
    return f"{header}.{b64(payload)}.c2ln"


_PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b'{"exp": 1e400}',
            b'{"exp": -Infinity}',
            b'{"exp": NaN}',
            b'{"exp": true}',
            b'{"exp": 10' + b"0" * 400 + b"}",
            b"[" * 30000 + b"]" * 30000,
        ]
    ),
    st.recursive(
        st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=20,
    ).map(lambda v: json.dumps({"exp": v}).encode()),
)


@FUZZ
@given(_PAYLOADS)
def test_token_reading_fails_only_as_usage_error(payload: bytes) -> None:
    token = Secret(_jwt(payload))
    exp = token_expiry(token)
    assert exp is None or exp == exp  # never NaN
    message = ""
    try:
        check_token_text(token)
        check_token_fresh(token, now=1e9)
    except UsageError as exc:
        message = str(exc)
    assert token.reveal() not in message


@FUZZ
@given(st.text(max_size=120))
def test_token_text_fails_only_as_usage_error(text: str) -> None:
    try:
        check_token_text(Secret(text))
        check_token_fresh(Secret(text))
    except UsageError:
        pass


@FUZZ
@given(
    st.one_of(
        st.text(max_size=80),
        st.tuples(
            st.sampled_from(["stun:", "turn:", "turns:", "stuns:", "wss://", "https://"]),
            st.text(max_size=60),
        ).map("".join),
    )
)
def test_uris_fail_only_as_usage_errors(text: str) -> None:
    for parser in (parse_ice_uri, parse_livekit_url):
        try:
            parsed: Any = parser(text)
        except UsageError:
            continue
        assert 0 < parsed.port < 65536


_TOML_PIECES = st.sampled_from(
    [
        "[probe]\n",
        'name = "x"\n',
        'every = "5m"\n',
        'targets = ["stun:198.18.0.1"]\n',
        "[thresholds]\n",
        "rtt_warn_ms = nan\n",
        "rtt_warn_ms = 1e400\n",
        "[credentials]\n",
        'turn_password = { env = "X" }\n',
        'turn_password = { file = "/nonexistent" }\n',
        "[[region]]\n",
        'name = "eu"\n',
        'uris = ["turn:198.18.0.1"]\n',
        "deadline = -1\n",
        "deadline = inf\n",
        "x = [[[[[[[[[[[[[[1]]]]]]]]]]]]]]\n",
    ]
)


@FUZZ
@given(st.lists(st.one_of(_TOML_PIECES, st.text(max_size=30)), max_size=12))
def test_probe_definitions_fail_only_as_definition_errors(pieces: list[str]) -> None:
    with contextlib.suppress(DefinitionError):
        parse("".join(pieces), Path("fuzz.toml"))


def test_codec_struct_error_is_protocol() -> None:
    """A wrong-length attribute made aioice raise struct.error inside asyncio's callback."""
    header = struct.pack("!HHI12s", 0x0101, 8, stun.COOKIE, b"0123456789ab")
    broken = header + struct.pack("!HH", 0x0020, 4) + b"\x00\x01"  # XOR-MAPPED-ADDRESS cut
    with pytest.raises(ProbeError) as caught:
        codec.parse(broken, Phase.BINDING)
    assert caught.value.kind.value == "protocol"


def _open_websocket() -> tuple[Any, list[Any]]:
    """A client protocol past a real handshake (answered by websockets' own server side)."""
    from websockets.client import ClientProtocol
    from websockets.http11 import Request
    from websockets.server import ServerProtocol
    from websockets.uri import parse_uri

    from lkice.probe.signal import MAX_JOIN

    client = ClientProtocol(parse_uri("ws://lk.lab.test/rtc"), max_size=MAX_JOIN)
    server = ServerProtocol()
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    request = server.events_received()[0]
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    return client, client.events_received()[1:]


async def _join_from(frames: bytes) -> bytes:
    from lkice.probe.signal import _first_message

    client, early = _open_websocket()
    reader = asyncio.StreamReader()
    reader.feed_data(frames)
    reader.feed_eof()
    return await _first_message(client, reader, early)


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + struct.pack("!H", len(payload)) + payload


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.tuples(
                st.sampled_from([0, 1, 2, 8, 9, 10, 3]), st.binary(max_size=300), st.booleans()
            ).map(lambda t: _frame(*t)),
        ),
        max_size=12,
    )
)
def test_websocket_join_fails_only_named(parts: list[bytes]) -> None:
    def join() -> None:
        # The connection ending before a message is reported as connection_closed.
        with contextlib.suppress(ConnectionError):
            asyncio.run(_join_from(b"".join(parts)))

    assert _kind_of(join) in (None, "protocol")


def test_websocket_giant_frame_is_named() -> None:
    giant = bytes([0x82, 127]) + struct.pack("!Q", 1 << 62)
    with pytest.raises(ProbeError, match="larger than 1024 KiB"):
        asyncio.run(_join_from(giant))


def test_websocket_fragment_bomb_is_named() -> None:
    bomb = _frame(2, b"", fin=False) + _frame(0, b"", fin=False) * 10_000
    with pytest.raises(ProbeError, match="frames without a complete message"):
        asyncio.run(_join_from(bomb))
