"""The pion/turn lab server itself (lkice/lab/pion.py): the build, how failures are reported,
and the options the engine tests do not use (relay port range, extra addresses, a second TLS
port, a network namespace)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkice.credentials import Secret, TurnCredentials
from lkice.engine import EngineSettings, run
from lkice.lab.pion import (
    PionConfig,
    PionTurn,
    build_pion_turn,
    pion_turn_path,
    pion_unavailable_reason,
    visible,
)
from lkice.lab.pki import LabPki
from lkice.lab.server import LabError
from lkice.probe.path import ProbeSettings
from lkice.report import Report
from lkice.uri import parse_ice_uri
from tests.conftest import needs_pion, validate_report

CREDS = TurnCredentials(Secret("u"), Secret("p"))


async def probe(*uris: str, pki: LabPki | None = None) -> Report:
    ctx = ssl.create_default_context()
    if pki is not None:
        ctx.load_verify_locations(cafile=str(pki.ca_file))
    settings = EngineSettings(
        probe=ProbeSettings(udp_timeout=2.0, timeout=3.0, credentials=CREDS, tls_context=ctx),
        deadline=10.0,
    )
    report = await run([parse_ice_uri(u) for u in uris], settings)
    validate_report(report.to_dict())
    return report


def test_visible_escapes_control_characters_and_bounds_length() -> None:
    assert visible("a\x1b[2Jb\r\n\tc\x00") == "a\\x1b[2Jb\\r\n\tc\\x00"
    shown = visible("x" * 5000, limit=100)
    assert shown.startswith("x" * 100)
    assert shown.endswith("... (4900 more characters)")


def test_a_bad_override_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pionturn"
    monkeypatch.setenv("LKICE_PION_TURN", str(missing))
    reason = pion_unavailable_reason()
    assert reason is not None
    assert str(missing) in reason
    assert pion_turn_path() is None
    with pytest.raises(LabError, match="LKICE_PION_TURN"):
        PionTurn(PionConfig()).start()


@needs_pion
def test_the_build_is_cached_per_source() -> None:
    first = pion_turn_path()
    assert first is not None
    assert pion_turn_path() == first  # found, not rebuilt
    if "LKICE_PION_TURN" not in os.environ:
        assert Path(first).parent.name.startswith("pionturn-")
        assert build_pion_turn() == Path(first)


@pytest.fixture
def broken_source(tmp_path: Path) -> Path:
    """A server source that does not compile, in a file whose name holds a terminal escape
    (the compiler prints file names as they are)."""
    if shutil.which("go") is None:
        pytest.skip(pion_unavailable_reason() or "go is not installed")
    source = tmp_path / "src"
    source.mkdir()
    (source / "main\x1b[2J.go").write_text("package main\n\nfunc main() { undefinedThing() }\n")
    return source


def test_a_build_failure_shows_the_compilers_output(broken_source: Path, tmp_path: Path) -> None:
    with pytest.raises(LabError) as caught:
        build_pion_turn(cache_root=tmp_path / "cache", source_dir=broken_source)
    message = str(caught.value)
    assert "failed with status" in message
    assert "undefined: undefinedThing" in message
    assert "\x1b" not in message  # shown, not obeyed by the terminal
    assert "main\\x1b[2J.go" in message
    assert not list((tmp_path / "cache").glob("pionturn-*/pionturn"))


def test_a_build_is_bounded_in_time(broken_source: Path, tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"did not finish within 0\.01 s"):
        build_pion_turn(timeout=0.01, cache_root=tmp_path / "cache", source_dir=broken_source)


@needs_pion
def test_a_server_that_cannot_listen_says_why() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(LabError, match="exited with status 1") as caught:
            PionTurn(PionConfig(port=port)).start()
    assert "address already in use" in str(caught.value)


@needs_pion
def test_a_missing_certificate_is_named(tmp_path: Path) -> None:
    pki = LabPki(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", "none")
    with pytest.raises(LabError, match="TLS certificate"):
        PionTurn(PionConfig(pki=pki)).start()


@needs_pion
async def test_relay_port_range() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        low = s.getsockname()[1]
    with PionTurn(PionConfig(users={"u": "p"}, relay_ports=(low, low))) as server:
        report = await probe(f"turn:127.0.0.1:{server.port}?transport=udp")
    (path,) = report.paths
    assert path.ok, path.error
    assert path.relayed_address == f"127.0.0.1:{low}"


@needs_pion
async def test_extra_address_and_second_tls_port(pki: LabPki) -> None:
    """What the namespace lab gives a region's server: a second address (relaying on itself)
    and an alternate TLS port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        alt = s.getsockname()[1]
    config = PionConfig(users={"u": "p"}, pki=pki, extra_ips=("127.0.0.2",), alt_tls_port=alt)
    with PionTurn(config) as server:
        report = await probe(
            f"turn:127.0.0.2:{server.port}?transport=udp", f"turns:127.0.0.1:{alt}", pki=pki
        )
    extra, tls = report.paths
    assert extra.ok, extra.error
    assert extra.relayed_address is not None
    assert extra.relayed_address.startswith("127.0.0.2:")
    assert tls.ok, tls.error
    assert tls.transport == "tls"


@pytest.fixture
def netns() -> Iterator[str]:
    """An empty network namespace with loopback up, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2: the server runs in a network namespace")
    name = f"lkice-pion-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
@needs_pion
def test_in_a_network_namespace(netns: str) -> None:
    """Readiness is checked inside the namespace, where the server's addresses are; ports left
    at 0 are the standard ones there."""
    config = PionConfig(users={"u": secrets.token_urlsafe(8)}, netns=netns)
    with PionTurn(config) as server:
        assert server.port == 3478
        assert server.process is not None
        assert server.process.poll() is None
    assert server.process is None
