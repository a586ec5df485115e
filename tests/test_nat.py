"""RFC 5780 NAT behaviour discovery (lkice.probe.nat): against coturn with two addresses on
loopback (no NAT), and from the namespace lab's client behind a port-preserving NAT and a
symmetric NAT, where ``lkice run`` reports it."""

from __future__ import annotations

import socket

import pytest

from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.netlab import NetLab, prerequisites
from lkice.probe.nat import discover_nat
from tests.conftest import validate_report

needs_coturn = pytest.mark.skipif(
    turnserver_path() is None, reason="coturn (turnserver) is not installed"
)


@needs_coturn
async def test_two_address_server_on_loopback_no_nat() -> None:
    # A second listening IP makes coturn give OTHER-ADDRESS (RFC 5780).
    with Coturn(CoturnConfig(extra=["listening-ip=127.0.0.2"])) as server:
        found = await discover_nat(("127.0.0.1", server.port), 1.0, filter_timeout=0.5)
    assert found.nat is False  # the mapped address is the socket's own
    assert found.mapping == "endpoint-independent"
    assert any(f"127.0.0.2:{server.port} saw the same" in line for line in found.evidence)
    # coturn 4.6 sends no CHANGE-REQUEST answers: nothing may be concluded from their absence.
    assert found.filtering == "unknown"
    assert "filtering not concluded" in found.evidence[-1]


@needs_coturn
async def test_single_address_server_cannot_tell() -> None:
    with Coturn(CoturnConfig()) as server:
        found = await discover_nat(("127.0.0.1", server.port), 1.0)
    assert (found.mapping, found.filtering) == ("unknown", "unknown")
    assert "does not support RFC 5780" in found.evidence[-1]


async def test_silent_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        found = await discover_nat(("127.0.0.1", port), 0.6)
    assert found.mapping == "unknown"
    assert found.nat is None
    assert found.evidence == [f"test I: no answer from 127.0.0.1:{port} (2 sends)"]


MISSING = prerequisites()


@pytest.mark.root
@pytest.mark.skipif(bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING))
@pytest.mark.parametrize(
    ("profile", "mapping"),
    [("nat", "endpoint-independent"), ("symmetric-nat", "address-and-port-dependent")],
)
def test_lab_nat_profiles(profile: str, mapping: str) -> None:
    with NetLab(regions=("eu",), profile=profile) as lab:
        uris = lab.turn_uris("eu")
        run = lab.lkice(*uris, *lab.turn_args(), "--quality-duration", "0", "--udp-timeout", "1")
    assert run.report is not None, run.stderr
    validate_report(run.report)
    nat = run.report["nat"]
    assert nat["nat"] is True  # mapped to the firewall's outside address
    assert nat["mapping"] == mapping, nat["evidence"]
    assert nat["server"].endswith(":3478")
    found = {f["id"]: f for f in run.report["findings"]}
    if mapping == "address-and-port-dependent":
        assert "symmetric-nat" in found
        assert any("test III" in e for e in found["symmetric-nat"]["evidence"])
    else:
        assert "symmetric-nat" not in found


async def test_a_refused_udp_port_does_not_wait_for_nat_discovery() -> None:
    """ICMP port unreachable ends the UDP path at once; the discovery (an unconnected socket,
    which never hears ICMP) is then cut instead of waiting out its timeout."""
    from lkice.engine import EngineSettings, run
    from lkice.probe.path import ProbeSettings
    from lkice.uri import parse_ice_uri

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = EngineSettings(probe=ProbeSettings(udp_timeout=5.0))
    report = await run([parse_ice_uri(f"stun:127.0.0.1:{port}")], settings)
    assert report.paths[0].error is not None
    assert "ICMP port unreachable" in report.paths[0].error.message
    assert report.nat is not None
    assert report.nat["evidence"] == ["discovery cut short: the run ended before it concluded"]
