"""HTTP proxies (lkice.probe.proxy): which proxy applies to a destination, and CONNECT tunnels
through a real tinyproxy to a real coturn's TLS port, with refusals and 407 named."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aioice import stun

from lkice import stun as codec
from lkice.errors import ErrorKind, ProbeError, UsageError
from lkice.lab.coturn import free_port
from lkice.lab.pki import LabPki
from lkice.lab.proxy import TinyProxy, tinyproxy_path
from lkice.probe.proxy import connect_via_proxy, parse_proxy_url, proxy_for
from tests.conftest import TurnLab

needs_tinyproxy = pytest.mark.skipif(
    tinyproxy_path() is None, reason="tinyproxy is not installed (apt-get install tinyproxy)"
)


def test_parse_proxy_url() -> None:
    proxy = parse_proxy_url("http://alice:p%40ss@proxy.corp.example:8080")
    assert (proxy.host, proxy.port) == ("proxy.corp.example", 8080)
    assert proxy.username is not None
    assert proxy.username.reveal() == "alice"
    assert proxy.password is not None
    assert proxy.password.reveal() == "p@ss"
    assert "p@ss" not in repr(proxy)
    assert parse_proxy_url("proxy.corp.example").port == 3128
    with pytest.raises(UsageError, match="not supported") as caught:
        parse_proxy_url("socks5://bob:hunter2@proxy:1080")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("", "turn.example.com", 443, False),
        ("*", "turn.example.com", 443, True),
        ("example.com", "turn.example.com", 443, True),
        (".example.com", "turn.example.com", 443, True),
        ("example.com", "example.com", 443, True),
        ("ample.com", "turn.example.com", 443, False),
        ("10.0.0.0/8, 192.168.1.5", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("turn.example.com:3478", "turn.example.com", 443, False),
        ("turn.example.com:443", "turn.example.com", 443, True),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(host, port, env) is None) is direct


def test_lower_case_wins_and_explicit_proxy() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}
    found = proxy_for("h", 443, env)
    assert found is not None
    assert found.host == "lower"
    explicit = parse_proxy_url("http://given:3")
    assert proxy_for("h", 443, {}, explicit) is explicit
    assert proxy_for("h", 443, {}) is None


@needs_tinyproxy
async def test_tunnel_to_turn_tls_and_refusals(coturn: TurnLab, pki: LabPki) -> None:
    with TinyProxy(connect_ports=[coturn.tls_port]) as proxy:
        config = parse_proxy_url(proxy.url)
        tunnel = await connect_via_proxy(config, ("127.0.0.1", coturn.tls_port), 5.0)
        assert tunnel.connect_ms > 0
        assert tunnel.tunnel_ms > 0
        # TLS and a STUN Binding through the tunnel, as the TURN/TLS probe does.
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        reader, writer = await asyncio.open_connection(
            sock=tunnel.sock, ssl=context, server_hostname="127.0.0.1"
        )
        request = codec.binding_request()
        writer.write(bytes(request))
        header = await asyncio.wait_for(reader.readexactly(20), 5.0)
        body = await reader.readexactly(int.from_bytes(header[2:4], "big"))
        answer = stun.parse_message(header + body)
        assert answer.transaction_id == request.transaction_id
        assert "XOR-MAPPED-ADDRESS" in answer.attributes
        writer.close()
        # Not an allowed port: refused by policy, and said so.
        with pytest.raises(ProbeError) as refused:
            await connect_via_proxy(config, ("127.0.0.1", coturn.port), 5.0)
        assert refused.value.kind is ErrorKind.PROXY
        assert "refused CONNECT to 127.0.0.1:" in refused.value.message
        assert "403" in refused.value.message


@needs_tinyproxy
async def test_proxy_authentication(coturn: TurnLab) -> None:
    with TinyProxy(connect_ports=[coturn.tls_port], auth=("alice", "right-pass")) as proxy:
        target = ("127.0.0.1", coturn.tls_port)
        with pytest.raises(ProbeError) as anonymous:
            await connect_via_proxy(parse_proxy_url(proxy.url), target, 5.0)
        assert "requires authentication (407" in anonymous.value.message
        wrong = proxy.url.replace("http://", "http://alice:wrong-pass@")
        with pytest.raises(ProbeError) as rejected:
            await connect_via_proxy(parse_proxy_url(wrong), target, 5.0)
        assert "rejected the credentials (401" in rejected.value.message  # tinyproxy says 401
        assert "wrong-pass" not in rejected.value.message
        right = proxy.url.replace("http://", "http://alice:right-pass@")
        tunnel = await connect_via_proxy(parse_proxy_url(right), target, 5.0)
        tunnel.sock.close()


async def test_unreachable_proxy_is_named() -> None:
    port = free_port()
    with pytest.raises(ProbeError) as caught:
        await connect_via_proxy(parse_proxy_url(f"http://127.0.0.1:{port}"), ("h", 443), 2.0)
    assert caught.value.kind is ErrorKind.CONNECT_REFUSED
    assert f"proxy 127.0.0.1:{port} unreachable" in caught.value.message
