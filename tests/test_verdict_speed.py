"""The verdict at the physical limit (issue 14): no round trip or import the verdict does not need.

- A TURN path sends no Binding before its Allocate (the Allocate's success carries the mapped
  address); a Binding still goes where the Allocate cannot say it: beside an Allocate nobody
  answers (a STUN-only server is not a filtered port), after a refused one, and on STUN paths.
- ``lkice run`` prints the verdict, then waits for the release (Refresh lifetime 0), bounded,
  before it exits; Ctrl-C during that wait still ends it at once, with the report's status.
- ``lkice --version``, ``--help`` and usage errors load no STUN, DNS, TLS-certificate or rich
  console stack; a run loads none of cryptography's X.509 (a verified certificate is read from
  what the ssl module decoded), structlog or rich.

Behaviour only: message counts and order as a small TURN server saw them, never wall-clock
thresholds (timeouts below only keep a broken run from hanging the suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aioice import stun

from lkice.credentials import Secret, TurnCredentials
from lkice.engine import EngineSettings, run
from lkice.probe.path import ProbeSettings
from lkice.probe.releases import Releases
from lkice.probe.tcp import _fill_certificate, _fill_decoded
from lkice.report import TlsInfo
from lkice.uri import parse_ice_uri
from tests.conftest import validate_report

LKICE = [sys.executable, "-m", "lkice"]
USER, PASSWORD, REALM = "alice", "wonderland", "tiny.test"
NONCE = b"tiny-nonce-0001"

# -- a small TURN server over UDP --------------------------------------------------------------

AllocateMode = Literal["ok", "silent", "forbidden"]
RefreshMode = Literal["answer", "hold", "silent"]


@dataclass(frozen=True)
class Seen:
    method: str  # "BINDING", "ALLOCATE", "REFRESH", ...
    source: tuple[str, int]
    authenticated: bool
    lifetime: int | None
    at: float  # time.monotonic()


class TinyTurn:
    """TURN over UDP on loopback, a few lines of aioice's codec (not lkice's): Binding success;
    Allocate 401 (REALM, NONCE), then with credentials ``allocate`` (``ok``: success with
    XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME, MESSAGE-INTEGRITY; ``silent``: never
    answers any Allocate; ``forbidden``: 403); Refresh ``refresh`` (``answer``: success at once;
    ``hold``: success once :meth:`let_go` is called; ``silent``: never). Records every request."""

    def __init__(self, allocate: AllocateMode = "ok", refresh: RefreshMode = "answer") -> None:
        self.allocate, self.refresh = allocate, refresh
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self.refresh_answered_at: float | None = None
        self._held: list[tuple[bytes, tuple[str, int]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.key = hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).digest()  # noqa: S324 - RFC 8489

    def uri(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def __enter__(self) -> TinyTurn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def requests(self, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if method is None or s.method == method]

    def let_go(self) -> None:
        """Answer the Refreshes held so far (``refresh="hold"``), and the next ones at once."""
        with self._lock:
            held, self._held, self.refresh = self._held, [], "answer"
            if held:
                self.refresh_answered_at = time.monotonic()
        for data, source in held:
            self.sock.sendto(data, source)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            data, source = self.sock.recvfrom(4096)
            try:
                request = stun.parse_message(data)
            except ValueError:
                continue
            answer = self._answer(request, (str(source[0]), int(source[1])))
            if answer is not None:
                self.sock.sendto(answer, source)

    def _answer(self, request: stun.Message, source: tuple[str, int]) -> bytes | None:
        method = request.message_method
        authenticated = "USERNAME" in request.attributes
        lifetime = request.attributes.get("LIFETIME")
        with self._lock:
            self.seen.append(Seen(method.name, source, authenticated, lifetime, time.monotonic()))
        tid = request.transaction_id
        if method == stun.Method.BINDING:
            reply = stun.Message(method, stun.Class.RESPONSE, tid)
            reply.attributes["XOR-MAPPED-ADDRESS"] = source
            return bytes(reply)
        if method == stun.Method.ALLOCATE:
            if self.allocate == "silent":
                return None
            if not authenticated:
                reply = stun.Message(method, stun.Class.ERROR, tid)
                reply.attributes.update(
                    {"ERROR-CODE": (401, "Unauthorized"), "REALM": REALM, "NONCE": NONCE}
                )
                return bytes(reply)
            if self.allocate == "forbidden":
                reply = stun.Message(method, stun.Class.ERROR, tid)
                reply.attributes["ERROR-CODE"] = (403, "Forbidden")
                return bytes(reply)
            reply = stun.Message(method, stun.Class.RESPONSE, tid)
            reply.attributes.update(
                {
                    "XOR-RELAYED-ADDRESS": ("127.0.0.1", 50000),
                    "XOR-MAPPED-ADDRESS": source,
                    "LIFETIME": 600,
                }
            )
            reply.add_message_integrity(self.key)
            return bytes(reply)
        if method == stun.Method.REFRESH:
            reply = stun.Message(method, stun.Class.RESPONSE, tid)
            reply.attributes["LIFETIME"] = 0
            reply.add_message_integrity(self.key)
            with self._lock:
                if self.refresh == "silent":
                    return None
                if self.refresh == "hold":
                    self._held.append((bytes(reply), source))
                    return None
                self.refresh_answered_at = time.monotonic()
            return bytes(reply)
        return None


async def probe(server: TinyTurn, *, udp_timeout: float = 3.0) -> Any:
    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=udp_timeout,
            credentials=TurnCredentials(Secret(USER), Secret(PASSWORD)),
        ),
        nat_discovery=False,
    )
    report = await run([parse_ice_uri(server.uri())], settings)
    validate_report(report.to_dict())
    assert len(report.paths) == 1
    return report.paths[0]


# -- the Allocate without a Binding before it ----------------------------------------------------


async def test_no_binding_before_an_allocate_with_credentials() -> None:
    with TinyTurn() as server:
        path = await probe(server)
        seen = server.requests()
    assert path.ok, path.error
    assert [s.method for s in seen] == ["ALLOCATE", "ALLOCATE", "REFRESH"]
    assert [s.authenticated for s in seen] == [False, True, True]
    assert seen[-1].lifetime == 0  # the release
    # What a Binding would have said, from the Allocate's answer: the server-reflexive address.
    assert path.mapped_address == f"127.0.0.1:{seen[0].source[1]}"
    assert path.relayed_address == "127.0.0.1:50000"
    assert path.timings_ms["binding"] is None  # no Binding was sent: none is timed
    assert path.binding_sends is None
    assert path.timings_ms["allocate_challenge"] is not None
    assert path.timings_ms["allocate"] is not None
    assert path.deallocated is True  # the engine alone: the path releases before it ends


async def test_a_binding_follows_a_refused_allocate() -> None:
    """The Allocate's answer gives no mapped address when it is a refusal: one Binding, after
    it, on the same 5-tuple, measures it; the path fails as the Allocate did."""
    with TinyTurn(allocate="forbidden") as server:
        path = await probe(server)
        seen = server.requests()
    assert not path.ok
    assert path.error is not None
    assert path.error.kind == "forbidden"
    assert path.error.phase == "allocate"
    assert [s.method for s in seen] == ["ALLOCATE", "ALLOCATE", "BINDING"]
    assert len({s.source for s in seen}) == 1
    assert path.mapped_address == f"127.0.0.1:{seen[0].source[1]}"
    assert path.timings_ms["binding"] is not None


async def test_a_server_that_answers_binding_but_never_allocate_is_not_a_filtered_port() -> None:
    """A STUN-only server named as TURN: the Allocate gets nothing, and a Binding sent beside it
    (only after the server stayed silent) gets an answer: the server is silent, UDP is not
    filtered, as when the Binding went first."""
    with TinyTurn(allocate="silent") as server:
        path = await probe(server, udp_timeout=1.5)
        seen = server.requests()
    assert path.error is not None
    assert path.error.kind == "server_silent", path.error
    assert "likely filtered" not in path.error.message
    assert seen[0].method == "ALLOCATE"
    assert "BINDING" in [s.method for s in seen]
    assert path.mapped_address is not None


# -- the release after the verdict ---------------------------------------------------------------


def _start_run(server: TinyTurn, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LKICE_DEBUG"}
    argv = [*LKICE, "run", server.uri(), "-u", USER, "-p", PASSWORD, "--quality-duration", "0"]
    return subprocess.Popen(
        [*argv, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_to_verdict(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Verdict:"):
            return lines
    raise AssertionError(f"no verdict line: {lines}")


def _paths(out: Path) -> list[dict[str, Any]]:
    report = json.loads(out.read_text())
    validate_report(report)
    return list(report["paths"])


def test_the_verdict_is_printed_before_the_release_is_answered_and_released_before_exit(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    with TinyTurn(refresh="hold") as server:
        proc = _start_run(server, out)
        try:
            lines = _read_to_verdict(proc)
            # The verdict is out while the server still holds its answer to the release.
            assert server.refresh_answered_at is None
            assert server.requests("REFRESH"), "the release goes out when the path concludes"
            server.let_go()
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        refreshes = server.requests("REFRESH")
    assert proc.returncode == 0, stderr
    assert lines[-1].startswith("Verdict: OK")
    assert [s.lifetime for s in refreshes] == [0]
    (path,) = _paths(out)
    # The files are written once the release is answered: they say so.
    assert path["deallocated"] is True
    assert path["timings_ms"]["deallocate"] is not None
    assert path["timings_ms"]["binding"] is None
    allocates = server.requests("ALLOCATE")
    assert not [s for s in server.requests("BINDING") if s.source == allocates[0].source]


def test_an_unanswered_release_does_not_hold_the_exit(tmp_path: Path) -> None:
    """A server that never answers the Refresh: lkice still exits, with the verdict's status,
    and the report says the allocation was not released (it expires after its lifetime)."""
    out = tmp_path / "report.json"
    with TinyTurn(refresh="silent") as server:
        result = subprocess.run(
            [*LKICE, "run", server.uri(), "-u", USER, "-p", PASSWORD, "--quality-duration", "0",
             "-o", str(out)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        refreshes = server.requests("REFRESH")
    assert result.returncode == 0, result.stderr
    assert "Verdict: OK" in result.stdout
    assert refreshes, "the release was sent"
    (path,) = _paths(out)
    assert path["ok"] is True
    assert path["deallocated"] is None
    assert any("had not answered the release" in n and "600 s" in n for n in path["notes"])


def test_ctrl_c_while_the_release_is_awaited_exits_with_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with TinyTurn(refresh="silent") as server:
        proc = _start_run(server, out)
        try:
            _read_to_verdict(proc)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr  # the verdict's status: the report was printed
    assert "Traceback" not in stderr
    (path,) = _paths(out)
    assert any("had not answered the release" in n for n in path["notes"])


async def test_releases_finish_ends_when_stopped() -> None:
    """``stop`` (Ctrl-C) ends the wait for a release nobody answers, whatever the bound."""
    with TinyTurn(refresh="silent") as server:
        releases = Releases()
        settings = EngineSettings(
            probe=ProbeSettings(
                udp_timeout=30.0,
                credentials=TurnCredentials(Secret(USER), Secret(PASSWORD)),
                releases=releases,
            ),
            nat_discovery=False,
        )
        report = await run([parse_ice_uri(server.uri())], settings)
        (path,) = report.paths
        assert path.ok
        assert path.deallocated is None
        assert releases.pending == 1
        stop = asyncio.Event()
        stop.set()
        # The bound only keeps a broken wait from hanging the suite.
        await asyncio.wait_for(releases.finish(timeout=600, stop=stop), 30)
        assert releases.pending == 0
    assert any("had not answered the release" in n for n in path.notes)


# -- what start-up and a run import --------------------------------------------------------------

PROBE = """
import json, sys
from lkice.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
NEVER_AT_START = (
    "aioice",
    "aiortc",
    "dns",
    "cryptography",
    "cryptography.x509",
    "rich",
    "structlog",
)
# aioice's codec, not its ICE agent, mDNS and dnspython (its __init__ runs them; lkice.stun
# skips it until something asks for a name only __init__ defines).
NEVER_IN_A_RUN = (
    "aiortc", "av", "cryptography.x509", "rich", "structlog", "livekit.rtc", "aioice.ice",
    "aioice.mdns", "dns",
    # The system proxy settings need urllib.request on Windows and macOS only.
    *(() if sys.platform in ("win32", "darwin") else ("urllib.request",)),
)  # fmt: skip


def modules_after(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [["--version"], ["run"], ["run", "turn:127.0.0.1"], ["run", "stun:127.0.0.1", "--bogus"]],
    ids=["version", "nothing-to-probe", "no-credentials", "bad-option"],
)
def test_start_up_and_usage_errors_load_no_probe_stack(args: list[str]) -> None:
    loaded = modules_after(*args)
    assert "lkice.cli" in loaded
    assert not loaded & set(NEVER_AT_START), loaded & set(NEVER_AT_START)
    if args == ["--version"]:
        assert "asyncio" not in loaded


def test_a_tls_run_loads_neither_x509_nor_rich(tmp_path: Path) -> None:
    """A TURN/UDP and a verified TLS run: the certificate is read from the ssl module's own
    decoding; the log goes through the stdlib (no structlog, which would load rich)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        # A TLS port that completes the handshake and then says nothing.
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            with contextlib.suppress(OSError):
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with TinyTurn() as server:
        loaded = modules_after(
            "run", server.uri(), f"turns:127.0.0.1:{port}?transport=tcp", "-u", USER,
            "-p", PASSWORD, "--ca-file", str(ca_file), "--quality-duration", "0",
            "--timeout", "0.5", "-o", str(tmp_path / "r.json"),
        )  # fmt: skip
    listener.close()
    assert "lkice.engine" in loaded  # it really ran
    assert not loaded & set(NEVER_IN_A_RUN), loaded & set(NEVER_IN_A_RUN)
    paths = {p["transport"]: p for p in _paths(tmp_path / "r.json")}
    assert paths["udp"]["ok"] is True
    tls = paths["tls"]["tls"]
    assert tls["verified"] is True
    assert tls["issuer"]
    assert tls["subject"]
    assert tls["names"] == ["127.0.0.1"]


LAZY_AIOICE = """
import sys
import lkice.probe.turn, lkice.probe.icetcp, lkice.probe.nat
from lkice import stun as codec
assert "aioice.ice" not in sys.modules and "dns" not in sys.modules, "aioice's __init__ ran"
from aioice.ice import StunProtocol  # a submodule first (as lkice.lab.sfu_server does), then the names
import aioice
from aioice import Connection
import aiortc
from aiortc.rtcicetransport import RTCIceGatherer
assert aioice is sys.modules["aioice"] and aioice.Connection is Connection
assert aioice.ice.stun is aioice.stun is codec.aioice_stun(), "two codecs"
assert aioice.stun.ATTRIBUTES_BY_NAME["ALTERNATE-SERVER"], "extra attributes not registered"
assert isinstance(aioice.__version__, str)
print("ok")
"""


def test_the_codec_loads_without_aioices_ice_stack_and_aiortc_still_gets_one_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_AIOICE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_plain_logging_needs_no_structlog_until_a_structlog_logger_is_made() -> None:
    code = """
import logging, sys
from lkice import logs
logs.configure_plain(logging.INFO)
assert "structlog" not in sys.modules, "configure_plain loaded structlog"
logs.get_logger("lkice.daemon").warning("push_failed", target="http://u:secret@host/")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "lkice: WARNING lkice.daemon: event=push_failed target=" in proc.stderr, proc.stderr
    assert "secret" not in proc.stderr


# -- a verified certificate read without cryptography --------------------------------------------


def _certificate(names: list[tuple[Any, str]], sans: list[Any], multi: bool = False) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(oid, value) for oid, value in names]
    if multi:
        rest = [x509.RelativeDistinguishedName([a]) for a in attributes[2:]]
        subject = x509.Name([x509.RelativeDistinguishedName(attributes[:2]), *rest])
    else:
        subject = x509.Name(attributes)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Issuer, Inc.")])
    now = datetime.datetime(2024, 5, 17, 8, 30, 15, tzinfo=datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=398))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _cases() -> list[tuple[str, bytes, bool]]:
    """(name, DER, whether the ssl module's decoding is spelt here)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    dns, ip = x509.DNSName, x509.IPAddress
    return [
        (
            "plain",
            _certificate(
                [(NameOID.COMMON_NAME, "turn.example.com"), (NameOID.ORGANIZATION_NAME, "Ex")],
                [dns("turn.example.com"), ip(ipaddress.ip_address("192.0.2.7"))],
            ),
            True,
        ),
        (
            "escapes",
            _certificate(
                [
                    (NameOID.COUNTRY_NAME, "DE"),
                    (NameOID.ORGANIZATION_NAME, ' #Acme, "Ltd"+<x>;\\ '),
                    (NameOID.ORGANIZATIONAL_UNIT_NAME, "#first"),
                    (NameOID.COMMON_NAME, "Zoë Straße"),
                    (NameOID.EMAIL_ADDRESS, "ops@example.com"),
                    (NameOID.SERIAL_NUMBER, "1234"),
                    (NameOID.DOMAIN_COMPONENT, "example"),
                ],
                [dns("a.example"), dns("*.b.example"), ip(ipaddress.ip_address("2001:db8::1"))],
            ),
            True,
        ),
        (
            "multi-valued, unknown OID, no SAN",
            _certificate(
                [
                    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
                    (NameOID.COMMON_NAME, "relay"),
                    (ObjectIdentifier("1.3.6.1.4.1.99999.1"), "private"),
                    (NameOID.LOCALITY_NAME, "Berlin"),
                    (NameOID.STATE_OR_PROVINCE_NAME, "BE"),
                ],
                [],
                multi=True,
            ),
            True,
        ),
        (
            "only an email SAN",
            _certificate([(NameOID.COMMON_NAME, "x")], [x509.RFC822Name("a@b.c")]),
            True,
        ),
        (
            "a name not spelt here",
            _certificate([(NameOID.TITLE, "Dr"), (NameOID.COMMON_NAME, "x")], []),
            False,
        ),
    ]


@pytest.mark.parametrize(("name", "der", "spelt"), _cases(), ids=[c[0] for c in _cases()])
def test_a_decoded_certificate_reads_as_cryptography_reads_it(
    name: str, der: bytes, spelt: bool, tmp_path: Path
) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text(ssl.DER_cert_to_PEM_cert(der))
    # The form getpeercert() gives for a verified peer, from the same OpenSSL decoding.
    decoded = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    by_ssl, by_cryptography = TlsInfo(), TlsInfo()
    _fill_certificate(by_cryptography, der)
    assert _fill_decoded(by_ssl, decoded) is spelt, name
    if spelt:
        assert by_ssl == by_cryptography, name
        assert by_ssl.subject
        assert by_ssl.not_after
    else:
        assert by_ssl == TlsInfo()  # nothing half-filled: cryptography reads the whole of it
