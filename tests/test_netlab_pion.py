"""The namespace lab with one region on pion/turn (LiveKit's built-in TURN) and one on coturn:
lkice run from the client behind the lab's firewall, both regions at once (``--region``), on an
open network and with UDP blocked. Per region: UDP works or is blocked as the firewall says,
TCP and TLS work, the credentials are accepted, and the recommendation picks a usable region.
Needs root (network namespaces, nftables) and pion/turn (Go and Debian's pion sources).

pion/turn has no RFC 5780 (no OTHER-ADDRESS) and sends no SOFTWARE: that is how the report tells
which server answered, and why NAT discovery may only say "unknown" against it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lkice.lab.netlab import Impairment, LkiceRun, NetLab, leftovers, prerequisites
from lkice.lab.pion import pion_unavailable_reason
from tests.conftest import validate_report

MISSING = prerequisites()
PION = pion_unavailable_reason()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)),
    pytest.mark.skipif(PION is not None, reason=PION or ""),
]

COTURN_REGION, PION_REGION = "eu", "us"
# One way, each direction: pion's region is the nearer one, so it is the one recommended
# whenever it is usable (the recommendation must pick it for what it measured, not by default).
DELAY_MS = {COTURN_REGION: 15.0, PION_REGION: 5.0}
TRANSPORTS = ("udp", "tcp", "tls")


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab(
        regions=(COTURN_REGION, PION_REGION), profile="open", pion_regions=(PION_REGION,)
    ) as running:
        for region, one_way in DELAY_MS.items():
            each = Impairment(delay_ms=one_way)
            running.set_impairment(region, upstream=each, downstream=each)
        yield running
    assert leftovers(running.token) == []


def run_both_regions(lab: NetLab) -> tuple[LkiceRun, dict[str, Any]]:
    regions: list[str] = []
    for region in lab.regions:
        for uri in lab.turn_uris(region):
            regions += ["--region", f"{region}={uri}"]
    run = lab.lkice(
        *regions,
        *lab.turn_args(),
        "--quality-duration", "2",
        "--udp-timeout", "1",
        "--timeout", "3",
    )  # fmt: skip
    assert run.report is not None, run.stderr
    validate_report(run.report)
    return run, run.report


def per_region(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """region -> transport -> its one TURN path."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in report["paths"]:
        assert p["kind"] == "turn", p
        assert p["transport"] not in out.setdefault(p["region"], {}), p
        out[p["region"]][p["transport"]] = p
    assert set(out) == {COTURN_REGION, PION_REGION}, list(out)
    for paths in out.values():
        assert set(paths) == set(TRANSPORTS), list(paths)
    return out


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["findings"]}


def check_relay_works(lab: NetLab, region: str, p: dict[str, Any]) -> None:
    """An authenticated allocation on the region's own server, released afterwards."""
    assert p["ok"], (region, p["transport"], p["error"])
    assert p["auth"] == "static"
    assert p["relayed_address"].startswith(f"{lab.server_ip(region)}:"), p["relayed_address"]
    assert p["timings_ms"]["allocate"] is not None
    assert p["deallocated"] is True
    assert p["mapped_address"].startswith(f"{lab.client_ip}:")  # open and routed: no NAT
    if p["transport"] == "tls":
        assert p["tls"]["verified"], p["tls"]


def check_servers(lab: NetLab, by_region: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Each region is answered by the server the lab put there."""
    assert lab.turn_server_kind(PION_REGION) == "pion"
    assert lab.turn_server_kind(COTURN_REGION) == "coturn"
    for transport in ("tcp", "tls"):
        coturn_path = by_region[COTURN_REGION][transport]
        pion_path = by_region[PION_REGION][transport]
        assert (coturn_path["server_software"] or "").startswith("Coturn"), coturn_path
        assert pion_path["server_software"] is None, pion_path  # pion sends no SOFTWARE
        assert pion_path["other_address"] is None  # no RFC 5780


def test_open_network_both_servers_work_on_every_transport(lab: NetLab) -> None:
    lab.set_profile("open")
    run, report = run_both_regions(lab)
    by_region = per_region(report)
    for region, paths in by_region.items():
        for p in paths.values():
            check_relay_works(lab, region, p)
            assert p["relay_quality"]["samples"] > 0, p  # the relay echo ran through it
            assert p["relay_quality"]["received"] > 0, p
    check_servers(lab, by_region)
    assert run.returncode == 0, report["findings"]
    assert report["verdict"] == "ok"
    serious = {f["id"] for f in report["findings"] if f["severity"] != "info"}
    assert serious == set(), report["findings"]
    assert "turn-ok" in findings(report)
    rec = report["recommendation"]
    assert (rec["region"], rec["transport"]) == (PION_REGION, "udp"), rec
    ranking = {r["region"]: r for r in rec["ranking"]}
    assert ranking[PION_REGION]["distance_ms"] < ranking[COTURN_REGION]["distance_ms"]
    # NAT discovery needs RFC 5780: against pion it may say "unknown", which is no finding.
    if report["nat"] is not None and report["nat"]["mapping"] == "unknown":
        assert "symmetric-nat" not in findings(report)


def test_udp_blocked_both_regions_fall_back_to_tcp(lab: NetLab) -> None:
    lab.set_profile("udp-blocked")
    before = lab.ground_truth().egress_drops
    try:
        run, report = run_both_regions(lab)
        dropped = lab.ground_truth().egress_drops - before  # the profile's own counter
    finally:
        lab.set_profile("open")
    by_region = per_region(report)
    for region, paths in by_region.items():
        udp = paths["udp"]
        assert not udp["ok"], udp
        assert udp["error"]["kind"] == "udp_no_response", udp["error"]
        assert udp["timings_ms"]["dns"] is not None  # DNS answered: the firewall's own
        for transport in ("tcp", "tls"):
            check_relay_works(lab, region, paths[transport])
    check_servers(lab, by_region)
    assert dropped > 0  # the firewall really dropped them
    assert run.returncode == 1, report["findings"]
    assert report["verdict"] == "degraded"
    found = findings(report)
    assert "udp-blocked" in found, list(found)
    blocked = found["udp-blocked"]
    assert sorted(blocked["paths"]) == sorted(
        i for i, p in enumerate(report["paths"]) if p["transport"] == "udp"
    )
    for region in lab.regions:
        assert lab.server_ip(region) in blocked["advice"] + " ".join(blocked["evidence"])
    # The credentials were accepted by both servers, over TCP and TLS: no claim otherwise.
    for wrong in ("credentials", "no-path", "only-tcp", "only-tls", "path-failed"):
        assert wrong not in found, found[wrong]
    rec = report["recommendation"]
    assert (rec["region"], rec["transport"]) == (PION_REGION, "tcp"), rec
    assert PION_REGION in rec["reason"], rec["reason"]
    assert "TCP" in rec["reason"], rec["reason"]
    second = next(r for r in rec["ranking"] if r["region"] == COTURN_REGION)
    assert second["transport"] == "tcp", second  # usable too, only farther


def test_udp_blocked_to_the_pion_region_only_recommends_the_other_over_udp() -> None:
    """pion's region is nearer, but UDP to it is dropped: the answer is coturn's region over
    UDP, and the UDP finding names pion's region and ports only."""
    with NetLab(
        regions=(COTURN_REGION, PION_REGION), profile="open", pion_regions=(PION_REGION,)
    ) as lab:
        for region, one_way in DELAY_MS.items():
            each = Impairment(delay_ms=one_way)
            lab.set_impairment(region, upstream=each, downstream=each)
        lab.block_region(PION_REGION, "udp")
        run, report = run_both_regions(lab)
    by_region = per_region(report)
    assert by_region[PION_REGION]["udp"]["error"]["kind"] == "udp_no_response"
    for transport in ("tcp", "tls"):
        check_relay_works(lab, PION_REGION, by_region[PION_REGION][transport])
    for p in by_region[COTURN_REGION].values():
        check_relay_works(lab, COTURN_REGION, p)
    found = findings(report)
    blocked = found["udp-blocked"]
    assert PION_REGION in blocked["summary"], blocked
    assert lab.server_ip(PION_REGION) in blocked["advice"]
    assert lab.server_ip(COTURN_REGION) not in blocked["advice"]
    for wrong in ("credentials", "no-path", "only-tcp", "only-tls"):
        assert wrong not in found, found[wrong]
    rec = report["recommendation"]
    assert (rec["region"], rec["transport"]) == (COTURN_REGION, "udp"), rec
    assert PION_REGION in rec["reason"], rec["reason"]  # why not the nearest
    assert run.returncode == 1
