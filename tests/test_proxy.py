"""HTTP proxies (lkice.probe.proxy): which proxy applies to a destination, and CONNECT tunnels
through a real tinyproxy to a real coturn's TLS port, with refusals and 407 named."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
from typing import Any

import pytest
from aioice import stun

from lkice import stun as codec
from lkice.credentials import Secret
from lkice.errors import ErrorKind, ProbeError, UsageError
from lkice.lab.pki import LabPki
from lkice.lab.server import free_port
from lkice.lab.tinyproxy import TinyProxy, tinyproxy_path
from lkice.probe.proxy import (
    Proxies,
    connect_via_proxy,
    parse_proxy_url,
    proxy_for,
    system_proxy_env,
    tunnelled,
)
from tests.conftest import TurnLab, validate_report

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


@pytest.mark.parametrize(
    ("host", "no_proxy", "direct"),
    [
        ("127.0.0.1", "", True),
        ("::1", "", True),
        ("localhost", "", True),
        ("127.0.0.1", "<-loopback>", False),
        ("127.0.0.1", "<-loopback>, 127.0.0.0/8", True),
        ("198.18.0.1", "", False),
    ],
)
def test_loopback_is_direct_unless_asked(host: str, no_proxy: str, direct: bool) -> None:
    env = {"https_proxy": "http://proxy:3128", "no_proxy": no_proxy}
    assert (proxy_for(host, 443, env) is None) is direct


def test_proxies_keep_only_proxy_variables_and_say_where_from() -> None:
    env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x", "LIVEKIT_API_SECRET": "s3cr3t"}
    proxies = Proxies.from_environment(env)
    assert dict(proxies.env) == {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x"}
    assert proxies.source() == "HTTPS_PROXY"
    assert Proxies.from_environment(env, parse_proxy_url("http://q:2")).source() == "--proxy"
    assert Proxies.from_environment({}).configured() is None
    with pytest.raises(UsageError, match="not supported"):
        Proxies.from_environment({"https_proxy": "socks5://p:1"})
    # The environment's own proxy wins over the system's settings.
    assert system_proxy_env({"https_proxy": "http://p:1", "PATH": "/bin"}) == {
        "https_proxy": "http://p:1"
    }


def test_tunnelled_transports() -> None:
    assert tunnelled("tls", 5349)
    assert tunnelled("tcp", 443)
    assert not tunnelled("tcp", 3478)
    assert not tunnelled("udp", 443)


def _run_through_proxy(
    coturn: TurnLab, pki: LabPki, proxy_url: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {
        **os.environ,
        "LKICE_TURN_USERNAME": coturn.user,
        "LKICE_TURN_CREDENTIAL": coturn.password,
        "NO_PROXY": "<-loopback>",  # the lab is on loopback, which is otherwise never proxied
    }
    env.pop("https_proxy", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lkice",
            "run",
            f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp",
            f"turn:127.0.0.1:{coturn.port}?transport=udp",
            "--ca-file",
            str(pki.ca_file),
            "--quality-duration",
            "0.5",
            "--json",
            "-vv",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HTTPS_PROXY": proxy_url},
        check=False,
    )
    return done, json.loads(done.stdout)


@needs_tinyproxy
def test_turn_tls_through_the_proxy_beside_the_direct_paths(coturn: TurnLab, pki: LabPki) -> None:
    with TinyProxy(connect_ports=[coturn.tls_port]) as proxy:
        done, report = _run_through_proxy(coturn, pki, proxy.url)
    validate_report(report)
    assert done.returncode == 0, done.stderr
    by_route = {(p["transport"], p["proxy"]): p for p in report["paths"]}
    label = proxy.url.removeprefix("http://")
    tunnelled_tls = by_route[("tls", label)]
    assert tunnelled_tls["ok"], tunnelled_tls["error"]
    assert tunnelled_tls["address"] is None  # the proxy resolved the name
    assert tunnelled_tls["timings_ms"]["proxy"] > 0
    assert tunnelled_tls["relayed_address"]
    assert tunnelled_tls["relay_quality"]["samples"] > 0  # the relayed echo, through the tunnel
    assert tunnelled_tls["tls"]["verified"] is True
    # The direct paths are still tried, and UDP never goes to the proxy.
    assert by_route[("tls", None)]["ok"]
    assert by_route[("udp", None)]["ok"]
    assert ("udp", label) not in by_route
    assert report["settings"]["proxy"] == {
        "address": label,
        "source": "HTTPS_PROXY",
        "credentials": False,
        "no_proxy": "<-loopback>",
    }


@needs_tinyproxy
def test_proxy_failures_are_named_and_credentials_never_echoed(
    coturn: TurnLab, pki: LabPki
) -> None:
    password = f"pw-{secrets.token_hex(6)}"
    with TinyProxy(connect_ports=[coturn.tls_port], auth=("alice", password)) as proxy:
        anonymous, report = _run_through_proxy(coturn, pki, proxy.url)
        wrong = f"wrong-{secrets.token_hex(6)}"
        bad_url = proxy.url.replace("http://", f"http://alice:{wrong}@")
        rejected, bad_report = _run_through_proxy(coturn, pki, proxy.url, "--proxy", bad_url)
        good_url = proxy.url.replace("http://", f"http://alice:{password}@")
        good, good_report = _run_through_proxy(coturn, pki, proxy.url, "--proxy", good_url)
    label = proxy.url.removeprefix("http://")

    def tunnelled_path(r: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in r["paths"] if p["proxy"] == label)

    assert anonymous.returncode == 1  # the direct paths work: degraded, not failed
    error = tunnelled_path(report)["error"]
    assert error["kind"] == "proxy"
    assert "requires authentication (407" in error["message"]
    error = tunnelled_path(bad_report)["error"]
    assert "rejected the credentials" in error["message"]
    assert good_report["settings"]["proxy"]["credentials"] is True
    assert tunnelled_path(good_report)["ok"]
    for text in (rejected.stdout, rejected.stderr, good.stdout, good.stderr):
        assert wrong not in text
        assert password not in text


def test_proxy_user_without_password_and_no_terminal_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lkice", "run", "stun:127.0.0.1", "--proxy", "http://bob@p:3128"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    assert "no password" in done.stderr
    assert "Traceback" not in done.stderr


async def _misbehaving_proxy(
    answer: bytes | None, done: asyncio.Event
) -> tuple[asyncio.AbstractServer, int]:
    """A 'proxy' on loopback that reads the CONNECT and answers ``answer`` (None: never),
    holding the connection until ``done``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            if answer is not None:
                writer.write(answer)
                await writer.drain()
            await asyncio.wait_for(done.wait(), 5)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (None, "accepted the connection but did not answer CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "is broken: it is not an HTTP proxy"),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n"
            b"Proxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n",
            "accepts only negotiate, ntlm logins",
        ),
    ],
    ids=["silent", "not-http", "ntlm-only"],
)
async def test_a_misbehaving_proxy_is_named_as_the_proxy(answer: bytes | None, words: str) -> None:
    from lkice.probe.proxy import ProxyConfig, connect_via_proxy

    done = asyncio.Event()
    server, port = await _misbehaving_proxy(answer, done)
    try:
        with pytest.raises(ProbeError) as caught:
            await connect_via_proxy(
                ProxyConfig("127.0.0.1", port, Secret("u"), Secret("pw")),
                ("turn.lab.test", 443),
                0.5,
            )
    finally:
        done.set()
        await asyncio.sleep(0.05)  # the handler closes its side
        server.close()
        await server.wait_closed()
    assert caught.value.kind.value == "proxy"
    assert words in caught.value.message
    assert "pw" not in caught.value.message
