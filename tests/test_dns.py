"""DNS against a real dnsmasq on loopback: each failure is named precisely."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from lkice.engine import EngineSettings, run
from lkice.errors import ProbeError
from lkice.lab.dns import Dnsmasq, dnsmasq_path
from lkice.probe.path import ProbeSettings
from lkice.probe.resolve import hosts_lookup, parse_nameserver, resolve
from lkice.uri import parse_ice_uri
from tests.conftest import TurnLab, validate_report

needs_dnsmasq = pytest.mark.skipif(dnsmasq_path() is None, reason="dnsmasq is not installed")


@pytest.fixture(scope="module")
def lab_dns() -> Iterator[Dnsmasq]:
    if dnsmasq_path() is None:
        pytest.skip("dnsmasq is not installed: apt-get install dnsmasq-base")
    records = {"turn.lab.test": ["127.0.0.1"], "dual.lab.test": ["127.0.0.1", "::1"]}
    with Dnsmasq(records, txt_only=("txtonly.lab.test",)) as server:
        yield server


@needs_dnsmasq
async def test_a_and_aaaa_are_separate_addresses(lab_dns: Dnsmasq) -> None:
    result = await resolve("dual.lab.test", timeout=2, nameserver=lab_dns.address)
    assert set(result.addresses) == {"127.0.0.1", "::1"}
    assert result.source == "dns"
    assert result.elapsed_ms is not None
    assert result.elapsed_ms > 0


@needs_dnsmasq
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nope.lab.test", "no such domain (NXDOMAIN"),
        ("txtonly.lab.test", "has no A or AAAA records"),
        ("outside.example", "answered with an error (SERVFAIL/REFUSED)"),
    ],
)
async def test_dns_failures_are_named(lab_dns: Dnsmasq, name: str, expected: str) -> None:
    with pytest.raises(ProbeError) as info:
        await resolve(name, timeout=2, nameserver=lab_dns.address)
    assert info.value.kind.value == "dns"
    assert expected in info.value.message
    assert name in info.value.message


async def test_resolver_timeout_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(ProbeError) as info:
            await resolve("turn.lab.test", timeout=0.5, nameserver=silent.getsockname())
    assert "resolver timeout after 0.5 s" in info.value.message


@needs_dnsmasq
async def test_each_resolved_address_is_its_own_path(lab_dns: Dnsmasq, coturn: TurnLab) -> None:
    settings = EngineSettings(probe=ProbeSettings(udp_timeout=1.0), nameserver=lab_dns.address)
    report = await run([parse_ice_uri(f"stun:dual.lab.test:{coturn.port}")], settings)
    validate_report(report.to_dict())
    by_family = {p.family: p for p in report.paths}
    assert set(by_family) == {"ipv4", "ipv6"}
    assert by_family["ipv4"].ok
    assert by_family["ipv4"].address == f"127.0.0.1:{coturn.port}"
    assert by_family["ipv4"].timings_ms["dns"] is not None
    # coturn listens on 127.0.0.1 only, so the AAAA path fails on its own.
    assert not by_family["ipv6"].ok
    assert by_family["ipv6"].address == f"[::1]:{coturn.port}"
    assert report.verdict == "degraded"


@needs_dnsmasq
async def test_dns_failure_reports_one_path_per_transport(lab_dns: Dnsmasq) -> None:
    settings = EngineSettings(nameserver=lab_dns.address)
    report = await run([parse_ice_uri("turn:nope.lab.test")], settings)
    validate_report(report.to_dict())
    assert sorted(p.transport for p in report.paths) == ["tcp", "udp"]
    for path in report.paths:
        assert path.address is None
        assert path.error is not None
        assert path.error.kind == "dns"
        assert path.error.phase == "dns"
    assert report.verdict == "failed"


def test_hosts_lookup() -> None:
    text = "127.0.0.1 localhost\n# 10.0.0.1 commented\n::1 localhost ip6-localhost\nbad line\n"
    assert hosts_lookup("localhost", text) == ("127.0.0.1", "::1")
    assert hosts_lookup("LOCALHOST", text) == ("127.0.0.1", "::1")
    assert hosts_lookup("commented", text) == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:53", ("::1", 53)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:x"])
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_nameserver(text)
