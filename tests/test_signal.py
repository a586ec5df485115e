"""LiveKit signaling failures a user can hit before LiveKit is even reached, and the pure
helpers. (The lab LiveKit server's own tests cover a real join.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web

from lkice.credentials import Secret
from lkice.errors import UsageError
from lkice.livekit import check_token_fresh, diagnostic_token, parse_livekit_url, token_expiry
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
