"""RFC 7064/7065 URI parsing: strict, with messages that say what is wrong."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lkice.errors import UsageError
from lkice.uri import IceUri, Transport, parse_ice_uri


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "transports"),
    [
        ("stun:stun.example.com", "stun", "stun.example.com", 3478, ("udp",)),
        ("stuns:stun.example.com", "stuns", "stun.example.com", 5349, ("tls",)),
        ("turn:turn.example.com", "turn", "turn.example.com", 3478, ("udp", "tcp")),
        ("turn:turn.example.com:80?transport=tcp", "turn", "turn.example.com", 80, ("tcp",)),
        ("TURN:Turn.Example.COM?transport=UDP", "turn", "turn.example.com", 3478, ("udp",)),
        ("turns:turn.example.com:443?transport=tcp", "turns", "turn.example.com", 443, ("tls",)),
        ("turns:turn.example.com", "turns", "turn.example.com", 5349, ("tls",)),
        ("turn:192.0.2.1:3478", "turn", "192.0.2.1", 3478, ("udp", "tcp")),
        ("turn:[2001:db8::1]:3478?transport=udp", "turn", "2001:db8::1", 3478, ("udp",)),
        ("  stun:[::1]  ", "stun", "::1", 3478, ("udp",)),
    ],
)
def test_valid(text: str, scheme: str, host: str, port: int, transports: tuple[str, ...]) -> None:
    uri = parse_ice_uri(text)
    assert (uri.scheme, uri.host, uri.port) == (scheme, host, port)
    assert tuple(t.value for t in uri.transports()) == transports


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("turn.example.com", "not a STUN/TURN URI"),
        ("http://turn.example.com", "not a STUN/TURN URI"),
        ("turn://turn.example.com", "take no '//'"),
        ("turn:", "no host"),
        ("turn::3478", "no host"),
        ("turn:host:", "empty port"),
        ("turn:host:0", "from 1 to 65535"),
        ("turn:host:70000", "from 1 to 65535"),
        ("turn:host:abc", "from 1 to 65535"),
        ("turn:host?transport=sctp", "unknown transport"),
        ("turn:host?proto=udp", "only query parameter"),
        ("stun:host?transport=udp", "take no transport parameter"),
        ("turns:host?transport=udp", "DTLS"),
        ("turn:user:pw@host", "credentials do not belong"),
        ("turn:2001:db8::1", "in brackets"),
        ("turn:[2001:db8::1", "unclosed"),
        ("turn:[not-v6]:3478", "not an IPv6 address"),
        ("turn:bad_host!", "not a valid host"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_ice_uri(text)


def test_server_and_kind() -> None:
    uri = parse_ice_uri("turns:[2001:db8::1]:443?transport=tcp")
    assert uri.server == "[2001:db8::1]:443"
    assert uri.kind == "turn"
    assert uri.secure
    assert uri.transports() == (Transport.TLS,)
    assert parse_ice_uri("stuns:h").kind == "stun"


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-")
)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: a.compressed),
)


@given(
    scheme=st.sampled_from(["stun", "stuns", "turn", "turns"]),
    host=hosts,
    port=st.integers(1, 65535),
    transport=st.sampled_from([None, "udp", "tcp"]),
)
def test_round_trip(scheme: str, host: str, port: int, transport: str | None) -> None:
    if scheme.startswith("stun") or (scheme == "turns" and transport == "udp"):
        transport = None
    uri = IceUri(scheme, host, port, transport)
    assert parse_ice_uri(str(uri)) == uri
