"""LiveKit signaling failures a user can hit before LiveKit is even reached, and the pure
helpers. (The lab LiveKit server's own tests cover a real join.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import jwt as pyjwt
import pytest
from aiohttp import web

from lkice.credentials import Secret
from lkice.errors import UsageError
from lkice.livekit import (
    check_token_fresh,
    diagnostic_token,
    mint_token,
    parse_livekit_url,
    token_expiry,
)
from lkice.probe.signal import SignalSettings, probe_signal
from tests.conftest import validate_report

LKICE = [sys.executable, "-m", "lkice"]


def lkice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    full.update(env or {})
    return subprocess.run(
        [*LKICE, *args], capture_output=True, text=True, timeout=60, env=full, check=False
    )


@pytest.mark.parametrize(
    ("text", "host", "port", "secure", "ws"),
    [
        ("wss://demo.livekit.cloud", "demo.livekit.cloud", 443, True, "wss://demo.livekit.cloud"),
        (
            "https://demo.livekit.cloud/",
            "demo.livekit.cloud",
            443,
            True,
            "wss://demo.livekit.cloud",
        ),
        ("ws://127.0.0.1:7880", "127.0.0.1", 7880, False, "ws://127.0.0.1:7880"),
        (
            "wss://lk.example.com:8443/livekit/rtc",
            "lk.example.com",
            8443,
            True,
            "wss://lk.example.com:8443/livekit",
        ),
    ],
)
def test_parse_livekit_url(text: str, host: str, port: int, secure: bool, ws: str) -> None:
    url = parse_livekit_url(text)
    assert (url.host, url.port, url.secure, url.ws_url) == (host, port, secure, ws)


@pytest.mark.parametrize("text", ["ftp://x", "wss://", "wss://key:secret@host", "wss://host:99999"])
def test_bad_livekit_urls(text: str) -> None:
    with pytest.raises(UsageError, match=r".+"):
        parse_livekit_url(text)


def test_diagnostic_token_is_short_lived_and_unique() -> None:
    a = diagnostic_token("APIkey", Secret("s" * 32))
    b = diagnostic_token("APIkey", Secret("s" * 32))
    assert a != b  # a unique identity and room per run
    exp = token_expiry(a)
    assert exp is not None
    assert time.time() < exp <= time.time() + 601
    check_token_fresh(a)


@pytest.mark.parametrize("secret", ["s" * 32, "ünïcode-secret-é" * 3])
def test_minted_tokens_are_what_livekits_own_library_mints(secret: str) -> None:
    """lkice signs its tokens with the standard library; LiveKit's verifier accepts them and
    reads the same grants ``livekit.api.AccessToken`` would write."""
    from livekit import api

    token = mint_token("APIkey", Secret(secret), "lkice-x", "lkice-diag-x").reveal()
    claims = api.TokenVerifier("APIkey", secret).verify(token)
    assert claims.identity == "lkice-x"
    assert claims.name == "lkice diagnostic"
    assert claims.video is not None
    video = claims.video
    assert (video.room_join, video.room) == (True, "lkice-diag-x")
    assert (video.can_publish, video.can_subscribe, video.can_publish_data) == (True, True, True)
    reference = (
        api.AccessToken("APIkey", secret)
        .with_identity("lkice-x")
        .with_name("lkice diagnostic")
        .with_ttl(timedelta(minutes=10))
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room="lkice-diag-x",
                can_publish=True,
                can_publish_data=True,
                can_subscribe=True,
            )
        )
        .to_jwt()
    )
    mine = {k: v for k, v in pyjwt.decode(token, options={"verify_signature": False}).items()}
    theirs = pyjwt.decode(reference, options={"verify_signature": False})
    for field in ("nbf", "exp"):
        assert abs(mine.pop(field) - theirs.pop(field)) <= 2
    assert mine == theirs
    with pytest.raises(pyjwt.InvalidSignatureError):
        api.TokenVerifier("APIkey", secret + "x").verify(token)


def test_expired_token_is_refused_locally() -> None:
    expired = diagnostic_token("APIkey", Secret("s" * 32), ttl=timedelta(seconds=-120))
    with pytest.raises(UsageError, match="expired"):
        check_token_fresh(expired)
    result = lkice("run", "ws://127.0.0.1:9", "--token", expired.reveal())
    assert result.returncode == 3
    assert "token expired" in result.stderr
    assert expired.reveal() not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "wss://lk.example.com"], "needs a token"),
        (["run", "ftp://lk.example.com"], "not a STUN/TURN URI"),
        (["run", "wss://a.example.com", "wss://b.example.com", "--token", "x"], "one LiveKit URL"),
        (["run"], "nothing to probe"),
    ],
)
def test_livekit_usage_errors(args: list[str], message: str) -> None:
    result = lkice(*args)
    assert result.returncode == 3, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_signaling_is_critical() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "never-printed-" + "x" * 20
    result = lkice(
        "run", f"ws://127.0.0.1:{port}", "--json", "--quality-duration", "0",
        env={"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": secret},
    )  # fmt: skip
    assert result.returncode == 2
    report = json.loads(result.stdout)
    validate_report(report)
    assert report["signal"]["error"]["kind"] == "connect_refused"
    assert report["verdict"] == "failed"
    assert secret not in result.stdout + result.stderr


@pytest.fixture
async def impostor() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Web servers that are not LiveKit: one answers 200 with a web page, one is a proxy that
    wants credentials."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>Welcome to nginx!</html>", headers={"Server": "nginx"})

    async def proxy(request: web.Request) -> web.Response:
        return web.Response(
            status=407, text="Proxy Authentication Required", headers={"Via": "1.1 squid"}
        )

    runners = []
    ports: dict[str, int] = {}
    for name, handler in (("page", page), ("proxy", proxy)):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports[name] = runner.addresses[0][1]
    try:
        yield "127.0.0.1", ports
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_a_web_server_that_is_not_livekit_is_named(
    impostor: tuple[str, dict[str, int]],
) -> None:
    host, ports = impostor
    token = diagnostic_token("APIkey", Secret("s" * 32))
    result, servers = await probe_signal(
        parse_livekit_url(f"ws://{host}:{ports['page']}"), token, SignalSettings(timeout=2)
    )
    assert not result.ok
    assert result.error is not None
    assert result.error.kind == "not_livekit"
    assert "nginx" in result.error.message
    assert result.timings_ms["connect"] is not None
    assert result.timings_ms["validate"] is not None
    assert servers == []


async def test_a_proxy_demanding_credentials_is_named(impostor: tuple[str, dict[str, int]]) -> None:
    host, ports = impostor
    token = diagnostic_token("APIkey", Secret("s" * 32))
    result, _ = await probe_signal(
        parse_livekit_url(f"ws://{host}:{ports['proxy']}"), token, SignalSettings(timeout=2)
    )
    assert result.error is not None
    assert result.error.kind == "proxy"
    assert "407" in result.error.message


async def _join_glued_to_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A server that answers /rtc/validate, then sends the 101 and its join in one write, as a
    fast LiveKit server can: the join must not be lost with the handshake's bytes."""
    from livekit.protocol import models, rtc

    try:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"/rtc/validate" in head
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess")
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, not a secret
        accept = base64.b64encode(hashlib.sha1(key + guid).digest())  # noqa: S324 (RFC 6455)
        join = rtc.SignalResponse(
            join=rtc.JoinResponse(server_info=models.ServerInfo(version="9.9.9", region="glued"))
        ).SerializeToString()
        assert len(join) < 126
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + bytes([0x82, len(join)]) + join
        )
        await writer.drain()
        await reader.read(1024)  # the client's leave and close
    finally:
        writer.close()


async def test_a_join_sent_with_the_upgrade_is_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, websockets' included, at its most verbose
    server = await asyncio.start_server(_join_glued_to_upgrade, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    token = diagnostic_token("APIkey", Secret("s" * 32))
    async with server:
        result, _ = await probe_signal(
            parse_livekit_url(f"ws://127.0.0.1:{port}"),
            token,
            SignalSettings(timeout=2, join_timeout=2),
        )
    assert result.ok, result.error
    assert result.server is not None
    assert result.server["region"] == "glued"
    assert token.reveal() not in caplog.text


def test_websockets_would_log_the_token_without_lkices_guard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The control for the test above: websockets' own logger, at DEBUG, writes the
    Authorization header. lkice's WebSocket protocol uses a logger pinned above DEBUG."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    caplog.set_level(logging.DEBUG)
    control = ClientProtocol(
        parse_uri("ws://lk.example.invalid/rtc"), logger=logging.getLogger("websockets.client")
    )
    request = control.connect()
    request.headers["Authorization"] = "Bearer control-token-123"
    control.send_request(request)
    assert "control-token-123" in caplog.text


@pytest.mark.parametrize(
    ("project", "region", "allowed"),
    [
        ("wss://p.livekit.cloud", "wss://p.oregon1.production.livekit.cloud", True),
        ("wss://p.livekit.cloud", "ws://p.oregon1.production.livekit.cloud", False),
        ("wss://lk.example.com", "wss://lk.example.com:8443/other", True),
        ("wss://lk.example.com", "ws://lk.example.com", False),
        ("ws://lk.example.com", "ws://lk.example.com:7880", True),
        ("wss://lk.example.com", "wss://eu.example.com", False),
        ("wss://mycompany.co.uk", "wss://attacker.co.uk", False),
        ("wss://lk.fly.dev", "wss://evil.fly.dev", False),
        ("wss://198.18.0.1", "wss://198.18.0.2", False),
        ("wss://p.livekit.cloud", "wss://livekit.cloud.evil.test", False),
    ],
)
def test_which_regions_may_receive_the_token(project: str, region: str, allowed: bool) -> None:
    from lkice.livekit import parse_livekit_url
    from lkice.probe.signal import may_receive_token

    assert may_receive_token(parse_livekit_url(project), parse_livekit_url(region)) is allowed


async def test_a_gateway_answering_for_a_down_livekit_is_the_deployments() -> None:
    """A 502 with Via from a load balancer, with no web proxy in use: the deployment's own
    gateway with LiveKit down behind it, told to the operator; not "a proxy on this network"."""
    from lkice.findings import evaluate
    from lkice.report import Report

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="Bad Gateway", headers={"Via": "1.1 google"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        token = diagnostic_token("APIkey", Secret("s" * 32))
        result, _ = await probe_signal(
            parse_livekit_url(f"ws://127.0.0.1:{port}"), token, SignalSettings(timeout=2)
        )
    finally:
        await runner.cleanup()
    assert result.error is not None
    assert result.error.kind == "gateway"
    report = Report(
        started_at=datetime.now(timezone.utc),
        duration_ms=1.0,
        targets=[],
        paths=[],
        verdict="failed",
        settings={},
        signal=result,
    )
    findings = {f["id"]: f for f in evaluate(report.to_dict())}
    assert "proxy-required" not in findings
    assert "operator" in findings["signal-failed"]["advice"]
