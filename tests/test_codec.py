"""The STUN glue (pure): framing, error mapping, credentials, ALTERNATE-SERVER."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from aioice import stun

from lkice import stun as codec
from lkice.credentials import Secret, TurnCredentials, rest_credentials
from lkice.errors import ErrorKind, Phase, ProbeError


def frames(framer: codec.StreamFramer, *chunks: bytes) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_framer_reassembles_split_and_joined_messages() -> None:
    a, b = bytes(codec.binding_request()), bytes(codec.allocate_request())
    data = a + b
    framer = codec.StreamFramer()
    assert frames(framer, data[:7], data[7:30], data[30:]) == [a, b]
    assert frames(codec.StreamFramer(), data) == [a, b]


def test_framer_pads_channel_data_when_allowed() -> None:
    channel_data = struct.pack("!HH", 0x4000, 5) + b"hello" + b"\0\0\0"
    framer = codec.StreamFramer(allow_channel_data=True)
    assert frames(framer, channel_data) == [channel_data]


def test_framer_names_an_http_answer() -> None:
    with pytest.raises(ProbeError, match="answered with HTTP") as info:
        frames(codec.StreamFramer(), b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert info.value.kind is ErrorKind.PROTOCOL


def test_framer_names_a_tls_answer_on_a_plain_port() -> None:
    with pytest.raises(ProbeError, match="speaks TLS on this port"):
        frames(codec.StreamFramer(), b"\x16\x03\x03\x00\x7a\x02\x00\x00")


def test_framer_rejects_stun_without_magic_cookie() -> None:
    with pytest.raises(ProbeError, match="not STUN"):
        frames(codec.StreamFramer(), b"\x01\x01\x00\x08" + b"\xde\xad\xbe\xef" + b"\0" * 20)


def test_framer_bounds_its_buffer() -> None:
    framer = codec.StreamFramer(max_buffer=64)
    header = struct.pack("!HHI12s", 0x0101, 60000, stun.COOKIE, b"x" * 12)
    with pytest.raises(ProbeError, match="oversized"):
        frames(framer, header, b"\0" * 100)


def test_parse_translates_codec_errors() -> None:
    with pytest.raises(ProbeError, match="malformed STUN response") as info:
        codec.parse(b"\x01\x01\x00", Phase.BINDING)
    assert info.value.phase is Phase.BINDING


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (300, ErrorKind.TRY_ALTERNATE),
        (401, ErrorKind.AUTH_REJECTED),
        (403, ErrorKind.FORBIDDEN),
        (486, ErrorKind.QUOTA),
        (508, ErrorKind.CAPACITY),
        (437, ErrorKind.PROTOCOL),
        (500, ErrorKind.PROTOCOL),
    ],
)
def test_error_codes_map_to_kinds(code: int, kind: ErrorKind) -> None:
    msg = stun.Message(
        stun.Method.ALLOCATE, stun.Class.ERROR, attributes={"ERROR-CODE": (code, "Reason")}
    )
    error = codec.error_for_response(msg, Phase.ALLOCATE)
    assert error.kind is kind
    assert error.message.startswith(f"{code} 'Reason'")
    assert error.phase is Phase.ALLOCATE


def test_alternate_server_round_trips() -> None:
    msg = stun.Message(
        stun.Method.ALLOCATE,
        stun.Class.ERROR,
        attributes={"ERROR-CODE": (300, "Try Alternate"), "ALTERNATE-SERVER": ("192.0.2.7", 3479)},
    )
    parsed = stun.parse_message(bytes(msg))
    assert parsed.attributes["ALTERNATE-SERVER"] == ("192.0.2.7", 3479)


def test_authenticate_signs_with_the_long_term_key() -> None:
    creds = TurnCredentials(Secret("alice"), Secret("wonderland"))
    msg = codec.allocate_request()
    old_id = msg.transaction_id
    key = codec.authenticate(msg, creds, "lab.test", b"nonce-1")
    assert msg.transaction_id != old_id
    assert key == hashlib.md5(b"alice:lab.test:wonderland").digest()  # noqa: S324 (RFC 8489 9.2.2)
    parsed = stun.parse_message(bytes(msg))
    assert parsed.attributes["USERNAME"] == "alice"
    assert parsed.attributes["NONCE"] == b"nonce-1"
    assert parsed.check_message_integrity(key)
    assert not parsed.check_message_integrity(b"wrong")


def test_rest_credentials_follow_coturn_scheme() -> None:
    creds = rest_credentials(Secret("s3cret"), user="probe", ttl_s=300, now=1_700_000_000)
    assert creds.username.reveal() == "1700000300:probe"
    digest = hmac.new(b"s3cret", b"1700000300:probe", hashlib.sha1).digest()
    assert creds.password.reveal() == base64.b64encode(digest).decode()
    assert creds.mode == "rest"


def test_secret_never_prints_itself() -> None:
    secret = Secret("hunter2-very-secret")
    rendered = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % (secret,)]  # noqa: UP031
    rendered.append(repr(TurnCredentials(secret, secret)))
    for text in rendered:
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2-very-secret"
    assert secret == Secret("hunter2-very-secret")
