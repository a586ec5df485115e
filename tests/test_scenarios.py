"""The answer, scenario by scenario, in the namespace lab: what a user behind each kind of network
is told (findings, verdict, exit status) and which region lkice recommends. Needs root.

Each scenario is a real network: nftables firewall profiles and per-region blocks, the TUN
router's delay and nftables loss, a TLS-inspecting proxy with its own CA, the lab LiveKit
server and coturn in region namespaces."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lkice.lab.netlab import Impairment, NetLab, prerequisites
from lkice.paste import decode_paste
from tests.conftest import validate_report

MISSING = prerequisites()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)),
]
API_KEY = "APIlkicescenario"


_STARTED: dict[str, tuple[str, str]] = {}  # lab token -> the LiveKit URL and secret in eu


def livekit_run(lab: NetLab, *extra: str, quality: str = "2") -> tuple[int, dict[str, Any]]:
    if lab.token not in _STARTED:
        secret = secrets.token_urlsafe(32)
        _STARTED[lab.token] = (lab.start_livekit("eu", API_KEY, secret), secret)
    url, secret = _STARTED[lab.token]
    proc = lab.run_in_client(
        ["python3", "-m", "lkice", "run", url, "--ca-file", str(lab.ca_file), "--json",
         "--quality-duration", quality, "--udp-timeout", "1", *extra],
        env={"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": secret},
        timeout=120,
    )  # fmt: skip
    assert secret not in proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    validate_report(report)
    return proc.returncode, report


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["findings"]}


def serious(report: dict[str, Any]) -> set[str]:
    return {f["id"] for f in report["findings"] if f["severity"] != "info"}


@pytest.fixture
def lab_eu() -> Iterator[NetLab]:
    with NetLab(regions=("eu",), profile="open") as lab:
        yield lab


def test_open_network(lab_eu: NetLab, tmp_path: Path) -> None:
    paste, html = tmp_path / "paste.txt", tmp_path / "report.html"
    status, report = livekit_run(lab_eu, "--redact", "--paste", str(paste), "--html", str(html))
    assert status == 0
    # --redact: the shared outputs name no host or address of this network; the JSON does.
    for shared in (paste.read_text(), html.read_text()):
        for private in ("lab.test", lab_eu.server_ip("eu"), lab_eu.signal_ip("eu")):
            assert private not in shared
    assert "lab.test" in json.dumps(report)
    redacted = decode_paste(paste.read_text())
    assert redacted["verdict"] == report["verdict"]
    assert all(p["server"].startswith(("host-", "ip-")) for p in redacted["paths"])
    assert report["verdict"] == "ok"
    assert serious(report) == set(), report["findings"]
    assert report["findings"], "an open network still gets an answer (info findings)"
    rec = report["recommendation"]
    assert rec["transport"] == "udp"
    assert rec["region"] == "eu"


def test_udp_blocked(lab_eu: NetLab) -> None:
    lab_eu.set_profile("udp-blocked")
    status, report = livekit_run(lab_eu)
    assert status == 1
    assert report["verdict"] == "degraded"
    found = findings(report)
    assert "udp-blocked" in found
    udp = found["udp-blocked"]
    assert udp["severity"] == "warning"
    assert "3478" in udp["advice"]  # what to ask IT to open, with the port seen
    assert lab_eu.server_ip("eu") in udp["advice"] + " ".join(udp["evidence"])
    assert report["recommendation"]["transport"] == "tcp"


def test_tcp_443_only(lab_eu: NetLab) -> None:
    lab_eu.set_profile("tcp443-only")
    status, report = livekit_run(lab_eu)
    assert status == 1
    found = findings(report)
    assert "only-tls" in found, list(found)
    assert "443" in found["only-tls"]["summary"] + found["only-tls"]["advice"]
    assert report["recommendation"]["transport"] == "tls"


def test_loss_stalls_the_tls_path(lab_eu: NetLab) -> None:
    """3 % loss each way at 40 ms RTT: UDP shows it as loss, TCP/TLS as head-of-line stalls."""
    lossy = Impairment(delay_ms=20, loss=0.03)
    lab_eu.set_impairment("eu", upstream=lossy, downstream=lossy)
    status, report = livekit_run(lab_eu, quality="4")
    assert status == 1
    found = findings(report)
    assert "hol-blocking" in found, list(found)
    hol = found["hol-blocking"]
    assert "stall" in hol["summary"] + hol["impact"]
    stalled = [report["paths"][i] for i in hol["paths"]]
    assert stalled
    assert all(p["transport"] in ("tcp", "tls") for p in stalled)
    assert "high-loss" in found, list(found)
    # UDP still works and is still the best way: the loss is the network's, not the path's.
    assert report["recommendation"]["transport"] == "udp"


def test_tls_inspecting_proxy(lab_eu: NetLab) -> None:
    issuer = lab_eu.intercept_tls("eu")
    status, report = livekit_run(lab_eu, quality="0")
    assert status in (1, 2)
    found = findings(report)
    assert "tls-interception" in found, list(found)
    text = json.dumps(found["tls-interception"])
    assert "Contoso TLS Inspection CA" in text
    assert issuer.split("OU=")[1] in text


def test_nearest_region_udp_blocked_recommends_the_next_over_udp() -> None:
    """eu is nearest (10 ms) but its UDP is blocked; us (40 ms) and ap (80 ms) are open: the
    answer is us over UDP, and the reason says why not eu."""
    delays = {"eu": 5.0, "us": 20.0, "ap": 40.0}
    with NetLab(regions=tuple(delays), profile="open") as lab:
        for region, one_way in delays.items():
            each = Impairment(delay_ms=one_way)
            lab.set_impairment(region, upstream=each, downstream=each)
        lab.block_region("eu", "udp")
        regions = []
        for region in delays:
            for uri in lab.turn_uris(region):
                regions += ["--region", f"{region}={uri}"]
        run = lab.lkice(*regions, *lab.turn_args(), "--quality-duration", "2", "--udp-timeout", "1")
    assert run.report is not None, run.stderr
    validate_report(run.report)
    rec = run.report["recommendation"]
    assert (rec["region"], rec["transport"]) == ("us", "udp"), rec
    assert "eu" in rec["reason"]
    assert "UDP" in rec["reason"] or "udp" in rec["reason"]
    ranking = [r["region"] for r in rec["ranking"]]
    assert ranking[0] == "us"
    eu = next(r for r in rec["ranking"] if r["region"] == "eu")
    us = next(r for r in rec["ranking"] if r["region"] == "us")
    assert eu["rtt_ms"] < us["rtt_ms"]  # eu really is nearer: measured, not assumed
    assert "udp-blocked" in findings(run.report)


def test_proxy_only_network() -> None:
    """No direct egress at all: a real tinyproxy on the firewall (CONNECT to 443 only) is the way
    out. Signaling and TURN/TLS go through it; UDP and direct TCP are blocked, and said so."""
    with NetLab(regions=("eu",), profile="proxy-only") as lab:
        proxy = lab.web_proxy_url
        assert proxy is not None
        status, report = livekit_run(lab, "--proxy", proxy)
    label = proxy.removeprefix("http://")
    assert status == 1, report["findings"]
    signal = report["signal"]
    assert signal["ok"], signal["error"]
    assert signal["proxy"] == label
    assert signal["address"] is None  # the proxy resolved the name, not the client
    assert signal["timings_ms"]["proxy"] > 0
    turn = [p for p in report["paths"] if p["kind"] == "turn"]
    through = [p for p in turn if p["proxy"]]
    direct = [p for p in turn if not p["proxy"]]
    assert [p["transport"] for p in through] == ["tls"]  # only TLS is tunnelled; 443 only here
    assert through[0]["ok"], through[0]["error"]
    assert through[0]["server"].endswith(":443")
    assert direct
    assert not any(p["ok"] for p in direct)
    kinds = {p["transport"]: p["error"]["kind"] for p in direct}
    assert kinds["udp"] == "udp_no_response"
    assert kinds["tcp"] == "connect_timeout"
    found = findings(report)
    assert "proxy-only" in found, list(found)
    assert "udp-blocked" in found, list(found)
    only = found["proxy-only"]
    assert label in only["summary"]
    assert "head-of-line" in only["impact"]
    assert "extra hop" in only["impact"]
    assert "bypass" in only["advice"]
    assert report["recommendation"]["proxy"] == label
    assert report["recommendation"]["transport"] == "tls"


def test_proxy_demanding_a_login() -> None:
    """The proxy wants Basic authentication: without it 407 is named; wrong credentials are
    named and never echoed; the right ones work."""
    password = secrets.token_urlsafe(12)
    with NetLab(regions=("eu",), profile="proxy-only") as lab:
        proxy = lab.start_web_proxy(auth=("alice", password))
        status, report = livekit_run(lab, "--proxy", proxy, quality="0")
        wrong = secrets.token_urlsafe(12)
        bad_url = proxy.replace("http://", f"http://alice:{wrong}@")
        bad_status, bad_report = livekit_run(lab, "--proxy", bad_url, quality="0")
        good_url = proxy.replace("http://", f"http://alice:{password}@")
        good_status, good_report = livekit_run(lab, "--proxy", good_url, quality="0")
    assert status == 2
    required = findings(report)["proxy-required"]
    assert "407" in required["summary"]
    assert "--proxy" in required["advice"]
    assert bad_status == 2
    rejected = findings(bad_report)["proxy-required"]
    assert "rejected the login" in rejected["summary"]
    assert wrong not in json.dumps(bad_report)
    assert good_status == 1, good_report["findings"]
    assert good_report["signal"]["ok"]
    assert good_report["settings"]["proxy"]["credentials"] is True
    assert password not in json.dumps(good_report)
