"""Region recommendation: nearest usable region, by transport class first."""

from __future__ import annotations

from typing import Any

from lkice.findings import evaluate
from lkice.recommend import recommend
from tests.conftest import as_doc, validate_report
from tests.test_findings import make_path, make_report


def checked(report: dict[str, Any]) -> dict[str, Any]:
    rec = recommend(as_doc(report))
    assert rec is not None
    validate_report({**report, "findings": evaluate(as_doc(report)), "recommendation": rec})
    return rec


def region(name: str, rtt: float, udp: bool = True) -> list[dict[str, Any]]:
    host = f"turn.{name}.example.com"
    ip = {"eu": "203.0.113.10", "us": "198.51.100.10", "ap": "192.0.2.10"}[name]
    kw: dict[str, Any] = {"region": name, "host": host, "ip": ip}
    if udp:
        first = [
            make_path("stun", "udp", True, rtt=rtt, **kw),
            make_path("turn", "udp", True, rtt=rtt, relay_rtt=2 * rtt, **kw),
        ]
    else:
        first = [
            make_path("stun", "udp", False, "udp_no_response", **kw),
            make_path("turn", "udp", False, "udp_no_response", **kw),
        ]
    return [
        *first,
        make_path("turn", "tcp", True, rtt=rtt + 1, relay_rtt=2 * rtt + 2, **kw),
        make_path("turn", "tls", True, rtt=rtt + 2, relay_rtt=2 * rtt + 4, **kw),
    ]


def test_no_paths_no_recommendation() -> None:
    assert recommend(as_doc(make_report([]))) is None


def test_nearest_region_udp_blocked_recommends_the_next_over_udp() -> None:
    report = make_report(
        [*region("eu", 12.0, udp=False), *region("ap", 150.0), *region("us", 48.0)]
    )
    rec = checked(report)
    assert rec["region"] == "us"
    assert rec["transport"] == "udp"
    assert rec["server"] == "turn.us.example.com:3478"
    assert rec["reason"] == (
        "eu is nearest (13.0 ms) but UDP is blocked there; us works over UDP at 48.0 ms."
    )
    assert [r["region"] for r in rec["ranking"]] == ["us", "ap", "eu"]
    eu = rec["ranking"][2]
    assert eu["usable"] is True
    assert eu["transport"] == "tcp"
    assert "UDP is blocked" in eu["why"]
    us = rec["ranking"][0]
    assert us["rtt_ms"] == 96.0  # the relay echo: the media path
    assert us["distance_ms"] == 48.0
    assert rec["ranking"][2]["distance_ms"] == 13.0  # eu: its TCP Binding, UDP got no answer
    assert us["samples"] == 250


def test_nearest_region_wins_when_it_works_over_udp() -> None:
    rec = checked(make_report([*region("us", 48.0), *region("eu", 12.0)]))
    assert rec["region"] == "eu"
    assert "nearest usable region" in rec["reason"]


def test_stun_alone_does_not_make_udp_usable() -> None:
    paths = [
        make_path("stun", "udp", True, rtt=10.0, region="eu"),
        make_path("turn", "udp", False, "auth_rejected", region="eu"),
        make_path("turn", "tcp", True, rtt=30.0, relay_rtt=60.0, region="us"),
    ]
    rec = checked(make_report(paths))
    assert rec["region"] == "us"
    assert rec["transport"] == "tcp"
    eu = next(r for r in rec["ranking"] if r["region"] == "eu")
    assert eu["usable"] is False
    assert "only STUN" in eu["why"]
    assert "nothing that carries media works there" in rec["reason"]


def test_single_target_group_is_named_after_the_host() -> None:
    paths = [
        make_path("turn", "udp", False, "udp_no_response"),
        make_path("turn", "tls", True, rtt=40.0, relay_rtt=80.0),
    ]
    rec = checked(make_report(paths))
    assert rec["region"] == "turn.eu.example.com"
    assert rec["transport"] == "tls"
    assert "80.0 ms" in rec["reason"]


def test_sfu_paths_count_and_quality_breaks_ties() -> None:
    paths = [
        make_path("sfu", "udp", True, rtt=30.0, region="a", host="a.lk.example.com", mos=3.2),
        make_path("sfu", "udp", True, rtt=60.0, region="b", host="b.lk.example.com", mos=4.3),
    ]
    rec = checked(make_report(paths))
    assert rec["region"] == "b"
    assert rec["ranking"][1]["mos"] == 3.2


def test_nothing_usable() -> None:
    paths = [
        make_path("turn", "udp", False, "udp_no_response", region="eu"),
        make_path("turn", "tcp", False, "connect_timeout", region="us"),
    ]
    rec = checked(make_report(paths))
    assert rec["region"] is None
    assert rec["transport"] is None
    assert rec["server"] is None
    assert "No region is usable" in rec["reason"]
    assert all(r["usable"] is False and r["rtt_ms"] is None for r in rec["ranking"])


def test_unmeasured_figures_stay_none() -> None:
    paths = [make_path("turn", "udp", True, region="eu")]  # worked, no quality train
    rec = checked(make_report(paths))
    row = rec["ranking"][0]
    assert row["usable"] is True
    assert row["rtt_ms"] is None
    assert row["mos"] is None
    assert row["samples"] is None
    assert row["distance_ms"] is None
