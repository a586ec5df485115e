"""The certificate matrix: each way a TLS certificate goes wrong, served by real coturn, real
pion/turn (LiveKit's TURN) and lkice's LiveKit signaling path (the lab LiveKit behind a TLS
front), and what lkice makes of it: the error, the report's ``tls`` (problem, names, dialled) and
the finding with its advice. Only a certificate from an issuer this computer does not trust may
be called interception; a trusted CA's certificate for another name, an expired one, a
self-signed one are the server's or the URL's problem.

Certificates are made here with trustme (CAs, leaves, validity) and cryptography (a self-signed
leaf, a leaf for the wrong purpose); the client trusts only the matrix's own CA (``--ca-file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from livekit import api

from lkice.job import RunRequest, diagnose
from lkice.lab.livekit_server import LabLiveKit
from lkice.lab.pki import LabPki
from tests.conftest import TurnKind, plain, validate_report

KEY = "APIcertmatrix"
SECRET = "cert-matrix-secret-0123456789abcdef0123456789"
USER, PASSWORD = "alice", "alices-password"
TRUSTED_UNIT = "lkice matrix CA"
ROGUE_UNIT = "Contoso TLS Inspection CA"
NOW = datetime.datetime.now(datetime.timezone.utc)
FAST = {"timeout": 3.0, "udp_timeout": 1.0, "deadline": 12.0, "quality_duration": 0.0}


@dataclass(frozen=True)
class Case:
    """One certificate and what lkice must say about it when it dials ``dial``."""

    name: str
    dial: str  # the host in the URL: the name or address the certificate is checked against
    problem: str | None  # the report's tls.problem; None: the certificate is accepted
    finding: str | None  # the TLS finding's id
    names: tuple[str, ...] = ()  # the certificate's subjectAltNames, when the test checks them
    advice: tuple[str, ...] = ()  # words the finding's advice must contain


CASES = (
    Case("untrusted-issuer", "127.0.0.1", "untrusted_issuer", "tls-interception",
         advice=("exempt", ROGUE_UNIT, "--ca-file")),
    # The common case: a certificate made for the server's name, dialled by its IP address.
    Case("name-dialled-by-ip", "127.0.0.1", "name_mismatch", "tls-name-mismatch",
         names=("turn.lab.test",), advice=("name on the certificate", "turn.lab.test")),
    Case("other-name", "localhost", "name_mismatch", "tls-name-mismatch",
         names=("other.example.net",), advice=("name on the certificate", "localhost")),
    Case("expired", "127.0.0.1", "expired", "tls-expired", advice=("renew", "date and time")),
    # The server's own certificate is fine; the intermediate CA it sends has expired.
    Case("expired-intermediate", "127.0.0.1", "expired", "tls-expired",
         advice=("intermediate", "date and time")),
    Case("not-yet-valid", "127.0.0.1", "not_yet_valid", "tls-expired",
         advice=("date and time",)),
    Case("self-signed", "127.0.0.1", "self_signed", "tls-self-signed",
         advice=("--ca-file", "CA")),
    # As ``openssl req -x509`` makes them: self-signed and marked as a CA.
    Case("self-signed-ca", "127.0.0.1", "self_signed", "tls-self-signed", advice=("--ca-file",)),
    # A trusted CA's certificate for the right address, but for client authentication only.
    Case("wrong-purpose", "127.0.0.1", "other", "tls-certificate", advice=("check the certificate",)),
    Case("valid", "127.0.0.1", None, None),
    Case("valid-by-name", "localhost", None, None),
    Case("valid-with-intermediate", "127.0.0.1", None, None),
)  # fmt: skip
BY_NAME = {c.name: c for c in CASES}


# -- certificates ------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


Signer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _signer(ca: trustme.CA) -> Signer:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert.subject, key


def _crafted(
    *,
    subject: str,
    sans: list[x509.GeneralName] | None,
    issuer: Signer | None,
    ca: bool = False,
    purpose: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.SERVER_AUTH,
    not_before: datetime.datetime = NOW - datetime.timedelta(hours=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=1),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate made with cryptography, signed by ``issuer`` (name and key), or by its
    own key (self-signed) when ``issuer`` is None; without ``sans``, no subjectAltName."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lkice matrix server"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )
    issuer_name, signing_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if purpose is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def _pems(*chain: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """(certificate chain PEM, key PEM) as a server's cert and key files hold them."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain), _pem_key(key)


def _expired_intermediate(root: trustme.CA) -> tuple[bytes, bytes]:
    """A valid leaf for the loopback names, signed by an intermediate CA that expired
    yesterday; the server sends both."""
    day = datetime.timedelta(days=1)
    intermediate, intermediate_key = _crafted(
        subject="lkice matrix intermediate",
        sans=None,
        issuer=_signer(root),
        ca=True,
        purpose=None,
        not_before=NOW - 60 * day,
        not_after=NOW - day,
    )
    leaf, key = _crafted(
        subject="turn.lab.test", sans=_loopback(), issuer=(intermediate.subject, intermediate_key)
    )
    return _pems(leaf, intermediate, key=key)


@dataclass(frozen=True)
class Matrix:
    trusted_ca: Path  # what the client is given with --ca-file
    servers: dict[str, LabPki]  # case name -> the certificate (chain) and key a server presents

    def pki(self, case: Case) -> LabPki:
        return self.servers[case.name]


def _loopback() -> list[x509.GeneralName]:
    import ipaddress

    return [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    directory = tmp_path_factory.mktemp("certificates")
    trusted = trustme.CA(organization_name="lkice matrix", organization_unit_name=TRUSTED_UNIT)
    rogue = trustme.CA(organization_name="Contoso Corp", organization_unit_name=ROGUE_UNIT)
    trusted_ca = directory / "trusted-ca.pem"
    trusted.cert_pem.write_to_path(str(trusted_ca))
    day = datetime.timedelta(days=1)
    loop_ids = ("127.0.0.1", "localhost")
    leaves: dict[str, trustme.LeafCert] = {
        "untrusted-issuer": rogue.issue_cert(*loop_ids),
        "name-dialled-by-ip": trusted.issue_cert("turn.lab.test"),
        "other-name": trusted.issue_cert("other.example.net"),
        "expired": trusted.issue_cert(*loop_ids, not_before=NOW - 30 * day, not_after=NOW - day),
        "not-yet-valid": trusted.issue_cert(
            *loop_ids, not_before=NOW + day, not_after=NOW + 30 * day
        ),
        "valid": trusted.issue_cert(*loop_ids),
        "valid-by-name": trusted.issue_cert("localhost"),
        "valid-with-intermediate": trusted.create_child_ca().issue_cert(*loop_ids),
    }
    pems: dict[str, tuple[bytes, bytes]] = {
        name: (b"".join(b.bytes() for b in leaf.cert_chain_pems), leaf.private_key_pem.bytes())
        for name, leaf in leaves.items()
    }
    for name, ca in (("self-signed", False), ("self-signed-ca", True)):
        cert, key = _crafted(subject="turn.lab.test", sans=_loopback(), issuer=None, ca=ca)
        pems[name] = _pems(cert, key=key)
    cert, key = _crafted(
        subject="turn.lab.test",
        sans=_loopback(),
        issuer=_signer(trusted),
        purpose=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    pems["wrong-purpose"] = _pems(cert, key=key)
    pems["expired-intermediate"] = _expired_intermediate(trusted)
    servers = {}
    for name, (cert_pem, key_pem) in pems.items():
        cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        servers[name] = LabPki(
            trusted_ca, cert_file, key_file, f"O=lkice matrix, OU={TRUSTED_UNIT}"
        )
    assert set(servers) == {c.name for c in CASES}
    return Matrix(trusted_ca, servers)


# -- what lkice says ---------------------------------------------------------------------------


async def run_lkice(*targets: str, ca_file: Path, **options: Any) -> dict[str, Any]:
    """One diagnosis as ``lkice run`` makes it (findings, verdict), schema-checked."""
    settings = {**FAST, **options}
    report = await diagnose(
        RunRequest(targets=targets, ca_files=(str(ca_file),), **settings),
        stop=asyncio.Event(),  # the test's loop keeps its signal handlers
    )
    data = plain(report.to_dict())
    validate_report(data)
    return data


def tls_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["id"].startswith("tls-")]


def claims_interception(text: str) -> bool:
    lowered = text.lower()
    return "intercept" in lowered or "inspect" in lowered


def check_verdict(case: Case, report: dict[str, Any], error: dict[str, Any] | None,
                  tls: dict[str, Any] | None, where: str) -> dict[str, Any] | None:  # fmt: skip
    """The assertions every server shares; returns the TLS finding (None for a good one)."""
    if case.problem is None:
        assert error is None, error
        assert tls is not None
        assert tls["verified"], tls
        assert tls_findings(report) == [], report["findings"]
        assert not claims_interception(json.dumps(report["findings"]))
        return None
    assert error is not None, f"{case.name}: accepted"
    assert error["kind"] == "tls_verify", error
    assert error["phase"] == "tls"
    assert tls is not None, f"{case.name}: the report keeps no certificate"
    assert tls["problem"] == case.problem, (tls, error["message"])
    assert tls["verified"] is False
    assert tls["dialled"] == case.dial
    for key in ("issuer", "subject", "not_after", "not_before"):
        assert tls[key], (key, tls)
    if case.names:
        assert tls["names"] == list(case.names)
    found = tls_findings(report)
    assert [f["id"] for f in found] == [case.finding], report["findings"]
    finding = found[0]
    everything = json.dumps(report["findings"]) + error["message"]
    if case.problem == "untrusted_issuer":
        assert ROGUE_UNIT in finding["summary"] + finding["advice"]
        assert "TLS-inspecting proxy" in error["message"]
        assert claims_interception(finding["summary"])
    else:
        # A trusted issuer, or the server's own certificate: no interception, no TLS
        # inspection, in any finding or in the error itself.
        assert not claims_interception(everything), everything
    if case.problem == "name_mismatch":
        assert "not a firewall problem" in finding["advice"]
    if case.name == "expired-intermediate":
        assert "server's own certificate is within its dates" in finding["summary"]
        assert "intermediate" in error["message"]
    elif case.problem == "expired":
        assert "The server's certificate has expired" in finding["summary"]
    for word in case.advice:
        assert word in finding["advice"], (word, finding["advice"])
    if case.names:
        assert all(n in finding["summary"] for n in case.names), finding["summary"]
        assert case.dial in finding["summary"]
    assert where in " ".join(finding["evidence"])
    return finding


# -- TURN over TLS: coturn and pion/turn ----------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_turn_tls_certificate(turn_kind: TurnKind, matrix: Matrix, case: Case) -> None:
    with turn_kind.server(users={USER: PASSWORD}, pki=matrix.pki(case)) as server:
        target = f"turns:{case.dial}:{server.tls_port}?transport=tcp"
        report = await run_lkice(
            target, ca_file=matrix.trusted_ca, username=USER, credential=PASSWORD
        )
    await asyncio.sleep(0.1)  # pion 2.1.0 never closes: let the client's transports see it end
    (path,) = report["paths"]
    assert path["transport"] == "tls"
    finding = check_verdict(case, report, path["error"], path["tls"], f"TURN {case.dial}:")
    if finding is None:
        assert path["ok"], path["error"]
        assert report["verdict"] == "ok", report["findings"]
        return
    assert path["timings_ms"]["connect"] is not None  # the network let it through
    assert finding["paths"] == [0]
    assert report["verdict"] == "failed"  # the only path: nothing carries media
    no_path = next(f for f in report["findings"] if f["id"] == "no-path")
    # The server was reached: no firewall advice.
    assert "Ask IT to allow" not in no_path["advice"], no_path
    assert "not a firewall problem" in no_path["advice"]


async def test_a_self_signed_certificate_passes_once_given_with_ca_file(
    turn_kind: TurnKind, matrix: Matrix
) -> None:
    """The self-signed finding's advice works: the server's own certificate as --ca-file."""
    pki = matrix.pki(BY_NAME["self-signed"])
    with turn_kind.server(users={USER: PASSWORD}, pki=pki) as server:
        report = await run_lkice(
            f"turns:127.0.0.1:{server.tls_port}?transport=tcp",
            ca_file=pki.cert_file,
            username=USER,
            credential=PASSWORD,
        )
    await asyncio.sleep(0.1)
    (path,) = report["paths"]
    assert path["ok"], path["error"]
    assert tls_findings(report) == []


async def test_an_expired_certificate_for_another_name_is_a_name_mismatch(
    turn_kind: TurnKind, matrix: Matrix, tmp_path: Path
) -> None:
    """OpenSSL checks the name before the dates: a certificate both expired and for another
    name is reported as the name mismatch (fixing the URL shows the expiry next)."""
    ca = trustme.CA(organization_name="lkice matrix", organization_unit_name="second CA")
    day = datetime.timedelta(days=1)
    leaf = ca.issue_cert("turn.lab.test", not_before=NOW - 30 * day, not_after=NOW - day)
    pki = LabPki(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", "second")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    leaf.private_key_pem.write_to_path(str(pki.key_file))
    with turn_kind.server(users={USER: PASSWORD}, pki=pki) as server:
        report = await run_lkice(
            f"turns:127.0.0.1:{server.tls_port}?transport=tcp",
            ca_file=pki.ca_file,
            username=USER,
            credential=PASSWORD,
        )
    await asyncio.sleep(0.1)
    (path,) = report["paths"]
    assert path["tls"]["problem"] == "name_mismatch", path["error"]
    assert [f["id"] for f in tls_findings(report)] == ["tls-name-mismatch"]


async def test_a_server_without_its_intermediate_cannot_be_told_from_interception(
    turn_kind: TurnKind, tmp_path: Path
) -> None:
    """A leaf sent without the intermediate CA that signed it (a server configured with the
    certificate alone instead of the full chain) looks to the client exactly like an inspecting
    proxy's certificate: an issuer it cannot chain to a trusted CA. lkice can name the issuer,
    not tell the two apart (that would need the intermediate, fetched from the Internet); the
    advice covers both."""
    root = trustme.CA(organization_name="lkice public", organization_unit_name="Root CA")
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("127.0.0.1")
    pki = LabPki(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", "public")
    root.cert_pem.write_to_path(str(pki.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(pki.cert_file))  # the leaf only
    leaf.private_key_pem.write_to_path(str(pki.key_file))
    with turn_kind.server(users={USER: PASSWORD}, pki=pki) as server:
        report = await run_lkice(
            f"turns:127.0.0.1:{server.tls_port}?transport=tcp",
            ca_file=pki.ca_file,
            username=USER,
            credential=PASSWORD,
        )
    await asyncio.sleep(0.1)
    (path,) = report["paths"]
    assert path["tls"]["problem"] == "untrusted_issuer"
    (finding,) = tls_findings(report)
    assert finding["id"] == "tls-interception"
    assert path["tls"]["issuer"] in finding["advice"]
    assert "full certificate chain" in finding["advice"]


async def test_a_certificate_without_subject_alt_name_is_rejected_as_clients_do(
    turn_kind: TurnKind, tmp_path: Path
) -> None:
    ca = trustme.CA(organization_name="lkice matrix", organization_unit_name="CN-only CA")
    cert, key = _crafted(subject="localhost", sans=None, issuer=_signer(ca))
    pki = LabPki(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", "cn")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert_pem, key_pem = _pems(cert, key=key)
    pki.cert_file.write_bytes(cert_pem)
    pki.key_file.write_bytes(key_pem)
    with turn_kind.server(users={USER: PASSWORD}, pki=pki) as server:
        report = await run_lkice(
            f"turns:localhost:{server.tls_port}?transport=tcp",
            ca_file=pki.ca_file,
            username=USER,
            credential=PASSWORD,
        )
    await asyncio.sleep(0.1)
    (path,) = report["paths"]
    assert not path["ok"], "a CN-only certificate was accepted"
    assert path["tls"]["problem"] == "name_mismatch"


async def test_working_paths_vouch_for_their_issuer(turn_kind: TurnKind, matrix: Matrix) -> None:
    """A certificate for another name from the same CA as a working path's is never called
    interception, and neither is the working path's own certificate."""
    good, bad = matrix.pki(BY_NAME["valid"]), matrix.pki(BY_NAME["name-dialled-by-ip"])
    with (
        turn_kind.server(users={USER: PASSWORD}, pki=good) as one,
        turn_kind.server(users={USER: PASSWORD}, pki=bad) as other,
    ):
        data = await run_lkice(
            f"turns:127.0.0.1:{one.tls_port}?transport=tcp",
            f"turns:127.0.0.1:{other.tls_port}?transport=tcp",
            ca_file=matrix.trusted_ca,
            username=USER,
            credential=PASSWORD,
        )
    await asyncio.sleep(0.1)
    assert [p["ok"] for p in data["paths"]] == [True, False]
    assert [f["id"] for f in tls_findings(data)] == ["tls-name-mismatch"]
    assert not claims_interception(json.dumps(data["findings"]))
    assert data["verdict"] == "degraded"
    assert "no-path" not in {f["id"] for f in data["findings"]}


# -- LiveKit signaling behind TLS --------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def tls_front(pki: LabPki, upstream: int) -> AsyncIterator[int]:
    """A TLS terminator on loopback presenting ``pki``'s certificate, relaying to the lab
    LiveKit's plain port, as the load balancer in front of a LiveKit deployment does."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    tasks: set[asyncio.Task[None]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(relay(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def join_token() -> str:
    grants = api.VideoGrants(room_join=True, room="cert-matrix")
    return api.AccessToken(KEY, SECRET).with_identity("matrix").with_grants(grants).to_jwt()


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """The front's failed server-side handshakes are the point of these tests, not news."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), (ssl.SSLError, ConnectionError)):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.name != "valid-with-intermediate"],
    ids=[c.name for c in CASES if c.name != "valid-with-intermediate"],
)
async def test_signaling_certificate(matrix: Matrix, case: Case) -> None:
    restore = _quiet_handshake_errors(asyncio.get_running_loop())
    try:
        async with (
            LabLiveKit(api_key=KEY, api_secret=SECRET) as livekit,
            tls_front(matrix.pki(case), livekit.port) as port,
        ):
            report = await run_lkice(
                f"wss://{case.dial}:{port}", ca_file=matrix.trusted_ca, token=join_token()
            )
    finally:
        restore()
    signal = report["signal"]
    finding = check_verdict(case, report, signal["error"], signal["tls"], "signaling to wss://")
    if finding is None:
        assert signal["ok"], signal["error"]
        return
    # Every LiveKit call starts here: a rejected certificate is critical, whatever the cause.
    assert finding["severity"] == "critical"
    assert report["verdict"] == "failed"
    assert "signal-failed" not in {f["id"] for f in report["findings"]}  # the TLS finding says it
