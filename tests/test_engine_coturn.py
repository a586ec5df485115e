"""The probe engine against real TURN servers on loopback: every transport, every failure kind.

Tests that take ``turn_server`` or ``turn_kind`` run twice, against coturn and against pion/turn
(LiveKit's built-in TURN); where the servers differ the test says how. Tests of coturn-only
features (ALTERNATE-SERVER, user quota) say so; the rest need no TURN server at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import TurnTransport, create_turn_endpoint

from lkice.credentials import Secret, TurnCredentials, rest_credentials
from lkice.engine import EngineSettings, run
from lkice.errors import ProbeError
from lkice.findings import evaluate
from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.pki import LabPki
from lkice.probe.path import ProbeSettings
from lkice.report import PathResult, Report
from lkice.uri import parse_ice_uri
from tests.conftest import TurnKind, TurnLab, needs_coturn, validate_report


def tls_context(ca: LabPki | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca.ca_file))
    return ctx


async def probe(
    *uris: str,
    user: str | None = None,
    password: str | None = None,
    creds: TurnCredentials | None = None,
    ca: LabPki | None = None,
    udp_timeout: float = 3.0,
    timeout: float = 5.0,
    deadline: float = 20.0,
) -> Report:
    if creds is None and user is not None and password is not None:
        creds = TurnCredentials(Secret(user), Secret(password))
    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=udp_timeout, timeout=timeout, credentials=creds, tls_context=tls_context(ca)
        ),
        deadline=deadline,
    )
    report = await run([parse_ice_uri(u) for u in uris], settings)
    validate_report(report.to_dict())
    return report


def only(report: Report) -> PathResult:
    assert len(report.paths) == 1, report.paths
    return report.paths[0]


async def test_turn_all_transports_succeed_with_every_phase_timed(
    turn_server: TurnLab, pki: LabPki
) -> None:
    report = await probe(
        f"turn:127.0.0.1:{turn_server.port}?transport=udp",
        f"turn:127.0.0.1:{turn_server.port}?transport=tcp",
        f"turns:127.0.0.1:{turn_server.tls_port}?transport=tcp",
        user=turn_server.user,
        password=turn_server.password,
        ca=pki,
    )
    assert report.verdict == "ok"
    by_transport = {p.transport: p for p in report.paths}
    assert set(by_transport) == {"udp", "tcp", "tls"}
    for transport, path in by_transport.items():
        assert path.ok, path.error
        assert path.kind == "turn"
        assert path.auth == "static"
        t = path.timings_ms
        for phase in ("allocate_challenge", "allocate", "deallocate"):
            value = t[phase]
            assert value is not None, (transport, phase, t)
            assert value > 0, (transport, phase, t)
        # No Binding before the Allocate: the mapped address is the Allocate's answer's.
        assert t["binding"] is None
        assert path.binding_sends is None
        assert path.relayed_address is not None
        assert path.relayed_address.startswith("127.0.0.1:")
        assert path.mapped_address is not None
        assert path.mapped_address.startswith("127.0.0.1:")
        assert path.lifetime_s == 600  # both servers' default; lkice asks for none
        assert path.deallocated is True
        if turn_server.name == "coturn":  # the Allocate's answer says it (no Binding was sent)
            assert path.server_software is not None
            assert "Coturn" in path.server_software
        else:
            assert path.server_software is None  # pion/turn sends no SOFTWARE attribute
        assert t["dns"] is None  # an IP literal needs no lookup
    assert by_transport["udp"].timings_ms["connect"] is None
    for transport in ("tcp", "tls"):
        assert by_transport[transport].timings_ms["connect"] is not None
        assert by_transport[transport].socket_options == ["TCP_NODELAY"]
    tls = by_transport["tls"]
    assert tls.timings_ms["tls"] is not None
    assert tls.timings_ms["tls"] > 0
    assert tls.tls is not None
    assert tls.tls.verified is True
    assert tls.tls.version in ("TLSv1.2", "TLSv1.3")
    assert tls.tls.cipher
    assert tls.tls.issuer == "OU=lkice lab CA,O=lkice lab"
    assert by_transport["tcp"].timings_ms["tls"] is None


async def test_stun_binding_gives_mapped_address(turn_server: TurnLab) -> None:
    report = await probe(f"stun:127.0.0.1:{turn_server.port}")
    path = only(report)
    assert path.ok
    assert path.kind == "stun"
    assert path.transport == "udp"
    assert path.mapped_address is not None
    assert path.timings_ms["binding"] is not None
    assert path.binding_sends == 1
    assert path.timings_ms["allocate"] is None
    assert path.relayed_address is None
    if turn_server.name == "coturn":
        assert path.server_software is not None
        assert "Coturn" in path.server_software
    else:
        assert path.server_software is None  # pion/turn sends no SOFTWARE attribute


async def test_turn_without_transport_is_probed_over_udp_and_tcp(turn_server: TurnLab) -> None:
    report = await probe(
        f"turn:127.0.0.1:{turn_server.port}", user=turn_server.user, password=turn_server.password
    )
    assert sorted(p.transport for p in report.paths) == ["tcp", "udp"]
    assert all(p.ok for p in report.paths)


@pytest.mark.parametrize("wrong", ["password", "user"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_wrong_credentials_are_auth_rejected(
    turn_server: TurnLab, wrong: str, transport: str, request: pytest.FixtureRequest
) -> None:
    """coturn answers 401 again; pion/turn answers 400 with no reason phrase (and no
    REALM/NONCE), for an unknown user and a wrong password alike."""
    user, password = (
        (turn_server.user, "not-the-password") if wrong == "password" else ("mallory", "pw")
    )
    report = await probe(
        f"turn:127.0.0.1:{turn_server.port}?transport={transport}", user=user, password=password
    )
    path = only(report)
    assert not path.ok
    assert path.error is not None
    assert path.timings_ms["allocate_challenge"] is not None  # the challenge round itself worked
    assert report.verdict == "failed"
    assert path.error.phase == "allocate"
    assert ("401" if turn_server.name == "coturn" else "400") in path.error.message
    assert path.error.kind == "auth_rejected"
    assert "credentials" in {f["id"] for f in evaluate(report.to_dict())}


async def test_untrusted_ca_is_tls_verify_naming_the_issuer(
    turn_kind: TurnKind, pki: LabPki, rogue_pki: LabPki
) -> None:
    # The server presents a certificate from a CA the client does not trust, as an inspecting proxy does.
    with turn_kind.server(users={"u": "p"}, pki=rogue_pki) as server:
        report = await probe(f"turns:127.0.0.1:{server.tls_port}", user="u", password="p", ca=pki)
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "tls_verify"
    assert path.error.phase == "tls"
    assert "Contoso TLS Inspection CA" in path.error.message
    assert "TLS-inspecting proxy" in path.error.message
    assert path.timings_ms["connect"] is not None


async def test_trusting_the_ca_via_settings_makes_it_pass(
    turn_kind: TurnKind, rogue_pki: LabPki
) -> None:
    with turn_kind.server(users={"u": "p"}, pki=rogue_pki) as server:
        report = await probe(
            f"turns:127.0.0.1:{server.tls_port}", user="u", password="p", ca=rogue_pki
        )
    assert only(report).ok


async def test_closed_tcp_port_is_connect_refused(closed_port: int) -> None:
    report = await probe(f"turn:127.0.0.1:{closed_port}?transport=tcp", user="u", password="p")
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "connect_refused"
    assert path.error.phase == "connect"


async def test_udp_port_without_server_is_udp_refused_within_bound(closed_port: int) -> None:
    """Loopback answers with ICMP port unreachable: refused (nothing listens), not filtered."""
    start = time.monotonic()
    report = await probe(f"stun:127.0.0.1:{closed_port}", udp_timeout=1.5)
    elapsed = time.monotonic() - start
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "udp_refused"
    assert "ICMP port unreachable" in path.error.message
    assert path.error.phase == "binding"
    # Decided by the bound, not by a retransmission chain of tens of seconds. This is a
    # behavioural bound (the run must not wait for RFC 5389's 39.5 s), not a performance assert.
    assert elapsed < 1.5 + 5


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A bound UDP socket that never answers: no ICMP, just silence, like a filtering firewall."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_silent_udp_is_likely_filtered_after_retransmissions(silent_udp: int) -> None:
    report = await probe(f"stun:127.0.0.1:{silent_udp}", udp_timeout=1.0)
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "udp_no_response"
    assert "likely filtered" in path.error.message
    assert "2 sends" in path.error.message  # sent at 0 s and 0.5 s within a 1 s bound


async def test_turn_rest_secret_mode(turn_kind: TurnKind, pki: LabPki) -> None:
    """coturn's use-auth-secret; on pion, a handler checking coturn's username form (pion's own
    handler wants another form: tests/test_pion_differences.py)."""
    secret = secrets.token_urlsafe(16)
    with turn_kind.server(static_auth_secret=secret, pki=pki, rest_form="coturn") as server:
        good = await probe(
            f"turn:127.0.0.1:{server.port}?transport=udp", creds=rest_credentials(Secret(secret))
        )
    assert only(good).ok, only(good).error
    assert only(good).auth == "rest"


@pytest.mark.parametrize("fault", ["expired", "wrong secret"])
async def test_refused_rest_credentials_point_at_secret_and_clock(
    turn_kind: TurnKind, pki: LabPki, fault: str, request: pytest.FixtureRequest
) -> None:
    secret = secrets.token_urlsafe(16)
    creds = (
        rest_credentials(Secret(secret), now=time.time() - 7200)
        if fault == "expired"
        else rest_credentials(Secret("not-" + secret))
    )
    with turn_kind.server(static_auth_secret=secret, pki=pki, rest_form="coturn") as server:
        report = await probe(f"turn:127.0.0.1:{server.port}?transport=udp", creds=creds)
    error = only(report).error
    assert error is not None
    assert error.kind == "auth_rejected"
    assert "clock" in error.message
    assert "credentials" in {f["id"] for f in evaluate(report.to_dict())}


@needs_coturn
async def test_try_alternate_is_followed_once_and_both_reported(turn_server: TurnLab) -> None:
    """The redirecting front is coturn (pion/turn has no ALTERNATE-SERVER); the server it
    redirects to is each of coturn and pion."""
    alternate = f"127.0.0.1:{turn_server.port}"
    user, password = turn_server.user, turn_server.password
    with Coturn(CoturnConfig(users={user: password}, alternate_servers=[alternate])) as front:
        report = await probe(
            f"turn:127.0.0.1:{front.port}?transport=udp", user=user, password=password
        )
    assert len(report.paths) == 2
    first, followed = report.paths
    assert first.error is not None
    assert first.error.kind == "try_alternate"
    assert first.alternate_server == alternate
    assert followed.redirected_from == first.address
    assert followed.address == alternate
    assert followed.ok, followed.error
    assert report.verdict == "ok"  # the redirect was honoured, so the user can connect


async def probe_until_ok(uri: str, user: str, password: str, within: float) -> Report:
    end = time.monotonic() + within
    while True:
        report = await probe(uri, user=user, password=password)
        if only(report).ok or time.monotonic() > end:
            return report
        await asyncio.sleep(0.2)


async def leak_allocation(port: int, user: str, password: str, within: float) -> TurnTransport:
    end = time.monotonic() + within
    while True:
        try:
            transport, _ = await create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=("127.0.0.1", port),
                username=user,
                password=password,
            )
        except TransactionFailed:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)
        else:
            return transport


@needs_coturn
async def test_no_allocation_left_behind_with_quota_one(pki: LabPki) -> None:
    """coturn frees a released allocation on its next 1-second timer tick; an allocation that is
    not released holds the user's only quota slot for its whole lifetime (600 s). coturn only:
    pion/turn has no user quota (test_release_frees_the_five_tuple covers both servers)."""
    with Coturn(CoturnConfig(users={"q": "pw"}, user_quota=1, pki=pki)) as server:
        uri = f"turn:127.0.0.1:{server.port}?transport=udp"
        first = await probe(uri, user="q", password="pw")
        assert only(first).ok, only(first).error
        assert only(first).deallocated is True
        second = await probe_until_ok(uri, "q", "pw", within=5.0)
        assert only(second).ok, only(second).error
        assert only(second).deallocated is True

        # Control: the same check fails when an allocation is left behind (aioice's client
        # holds it; it may first have to wait out the tick that frees ours).
        transport = await leak_allocation(server.port, "q", "pw", within=5.0)
        try:
            blocked = await probe_until_ok(uri, "q", "pw", within=2.5)
        finally:
            transport.close()
        error = only(blocked).error
        assert error is not None
        assert error.kind == "quota"
        assert "486" in error.message


async def allocate_from(
    local: tuple[str, int], port: int, creds: TurnCredentials, within: float
) -> PathResult:
    """Allocate from ``local`` and leave the allocation on the server (closed unreleased),
    retrying while the server still answers 437 for that 5-tuple."""
    from lkice.probe.channel import open_udp
    from lkice.probe.turn import allocate

    end = time.monotonic() + within
    while True:
        channel = await open_udp(("127.0.0.1", port), 2.0, local)
        scratch = PathResult(server="x", transport="udp", kind="turn", uri="x")
        try:
            await allocate(channel, scratch, creds, False)
            return scratch
        except ProbeError as exc:
            if exc.stun_code != 437 or time.monotonic() > end:
                raise
        finally:
            channel.close()
            await asyncio.sleep(0.1)  # the transport lets go of the port on a later iteration
        await asyncio.sleep(0.2)


async def test_release_frees_the_five_tuple(turn_server: TurnLab) -> None:
    """After a probe, the server holds no allocation for its 5-tuple: an Allocate from the same
    local port succeeds (pion frees it at once, coturn on its next 1-second tick). Control: an
    allocation left there makes the next probe from that port meet 437."""
    from lkice.probe.path import probe_path
    from lkice.uri import Transport

    creds = TurnCredentials(Secret(turn_server.user), Secret(turn_server.password))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()
    uri = parse_ice_uri(f"turn:127.0.0.1:{turn_server.port}?transport=udp")
    settings = ProbeSettings(udp_timeout=2.0, credentials=creds, udp_local=local)

    async def probe_from_local() -> PathResult:
        result = PathResult(server=uri.server, transport="udp", kind="turn", uri=str(uri))
        await probe_path(uri, Transport.UDP, ("127.0.0.1", turn_server.port), result, settings)
        return result

    first = await probe_from_local()
    assert first.ok, first.error
    assert first.deallocated is True
    assert first.mapped_address == f"{local[0]}:{local[1]}"
    await asyncio.sleep(0.1)
    leaked = await allocate_from(local, turn_server.port, creds, within=5.0)
    assert leaked.relayed_address is not None

    second = await probe_from_local()
    assert second.ok, second.error
    assert any("437" in note for note in second.notes), second.notes


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so connect times
    out exactly as behind a dropping firewall."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        listener.close()


async def test_dropped_syn_is_connect_timeout(full_backlog: int) -> None:
    report = await probe(
        f"turn:127.0.0.1:{full_backlog}?transport=tcp", user="u", password="p", timeout=1.0
    )
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "connect_timeout"
    assert "likely filtered" in path.error.message


class OneShotServer:
    """A loopback TCP server that reads a request, answers ``reply`` (or nothing) and holds the
    connection ``hold`` seconds; it closes every connection before the test ends."""

    def __init__(self, reply: bytes, hold: float = 0.2) -> None:
        self.reply = reply
        self.hold = hold
        self.handlers: list[asyncio.Task[None]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(100)
            if self.reply:
                writer.write(self.reply)
                await writer.drain()
            await asyncio.sleep(self.hold)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.append(asyncio.ensure_future(self._handle(reader, writer)))

    async def __aenter__(self) -> OneShotServer:
        self.server = await asyncio.start_server(self._spawn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def test_tls_to_a_plain_port_is_tls_handshake() -> None:
    async with OneShotServer(b"HTTP/1.1 400 Bad Request\r\n\r\n") as server:
        report = await probe(f"turns:127.0.0.1:{server.port}", user="u", password="p", timeout=2.0)
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "tls_handshake"
    assert path.error.phase == "tls"


async def test_http_server_on_a_turn_port_is_a_protocol_error() -> None:
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    async with OneShotServer(reply) as server:
        tcp_report = await probe(
            f"turn:127.0.0.1:{server.port}?transport=tcp", user="u", password="p", timeout=2.0
        )
    path = only(tcp_report)
    assert path.error is not None
    assert path.error.kind == "protocol"
    assert "HTTP" in path.error.message


async def test_silent_tcp_server_is_tcp_no_response() -> None:
    async with OneShotServer(b"", hold=1.5) as server:
        report = await probe(
            f"turn:127.0.0.1:{server.port}?transport=tcp", user="u", password="p", timeout=0.5
        )
    path = only(report)
    assert path.error is not None
    assert path.error.kind == "tcp_no_response"


async def test_overall_deadline_keeps_partial_results(
    turn_server: TurnLab, silent_udp: int
) -> None:
    report = await probe(
        f"stun:127.0.0.1:{turn_server.port}",
        f"stun:127.0.0.1:{silent_udp}",
        udp_timeout=5.0,
        deadline=1.0,
    )
    ok_path, cut = report.paths
    assert ok_path.ok
    assert cut.error is not None
    assert cut.error.kind == "deadline"
    assert cut.error.phase == "binding"
    assert report.verdict == "degraded"
    assert not report.interrupted


async def test_allocation_mismatch_is_retried_from_a_new_port(turn_server: TurnLab) -> None:
    """An allocation left on the server for the same 5-tuple (an earlier run from this host got
    the same ephemeral port) makes the next Allocate fail with 437; the probe retries once from
    a new local port (RFC 8656) and says so."""
    from lkice.probe.channel import open_udp
    from lkice.probe.path import probe_path
    from lkice.probe.turn import allocate
    from lkice.uri import Transport

    creds = TurnCredentials(Secret(turn_server.user), Secret(turn_server.password))
    server = ("127.0.0.1", turn_server.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()
    leftover = await open_udp(server, 2.0, local)
    scratch = PathResult(server="x", transport="udp", kind="turn", uri="x")
    await allocate(leftover, scratch, creds, False)
    leftover.close()  # closed without releasing: the server keeps the allocation for a while
    await asyncio.sleep(0.1)  # the transport lets go of the port on a later loop iteration
    uri = parse_ice_uri(f"turn:127.0.0.1:{turn_server.port}?transport=udp")
    result = PathResult(server=uri.server, transport="udp", kind="turn", uri=str(uri))
    settings = ProbeSettings(udp_timeout=2.0, credentials=creds, udp_local=local)
    await probe_path(uri, Transport.UDP, server, result, settings)
    assert result.ok, result.error
    assert any("437" in note for note in result.notes)
    assert result.mapped_address != f"{local[0]}:{local[1]}"  # the retry's own port


@needs_coturn
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_relay_that_carries_nothing_is_the_servers_fault(transport: str) -> None:
    """coturn told a wrong external-ip (a classic misconfiguration) grants allocations whose
    relayed address nobody can reach: the relay echo gets nothing back while every Binding on
    the same connection is answered. That is relay_failed, released, and never 'this network
    loses packets' (over TCP no loss on this network is even possible)."""
    from lkice.probe.train import TrainSettings

    user, password = "alice", secrets.token_urlsafe(12)
    config = CoturnConfig(users={user: password}, extra=["external-ip=127.0.0.9"])
    with Coturn(config) as server:
        settings = EngineSettings(
            probe=ProbeSettings(
                credentials=TurnCredentials(Secret(user), Secret(password)),
                train=TrainSettings(duration=0.4, grace=0.3),
            )
        )
        report = await run(
            [parse_ice_uri(f"turn:127.0.0.1:{server.port}?transport={transport}")], settings
        )
    validate_report(report.to_dict())
    path = only(report)
    assert path.error is not None, path
    assert path.error.kind == "relay_failed"
    assert "external-ip" in path.error.message
    assert path.deallocated is True
    assert path.quality is not None
    assert path.quality["received"] > 0
    assert "relay-failed" in {f["id"] for f in evaluate(report.to_dict())}
    findings = evaluate(report.to_dict())
    ids = {f["id"] for f in findings}
    assert "high-loss" not in ids
    text = json.dumps(findings)
    assert "Wi-Fi" not in text
    assert "Ask IT to allow" not in text
