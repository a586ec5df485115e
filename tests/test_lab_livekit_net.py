"""LiveKit behind firewalls: the lab LiveKit server and coturn in a region namespace, lkice in
the client namespace behind each firewall profile. Needs root."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from lkice.lab.netlab import NetLab, prerequisites
from tests.conftest import validate_report

MISSING = prerequisites()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)),
]
API_KEY = "APIlkicenet"


def diagnose(profile: str) -> tuple[int, dict[str, Any], str]:
    api_secret = secrets.token_urlsafe(32)
    with NetLab(regions=("eu",), profile=profile) as lab:
        url = lab.start_livekit("eu", API_KEY, api_secret)
        proc = lab.run_in_client(
            ["python3", "-m", "lkice", "run", url, "--ca-file", str(lab.ca_file), "--json",
             "--quality-duration", "0", "--udp-timeout", "1"],
            env={"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": api_secret},
            timeout=90,
        )  # fmt: skip
    assert api_secret not in proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    validate_report(report)
    return proc.returncode, report, url


def outcome(report: dict[str, Any]) -> dict[str, str]:
    """``kind:scheme/transport`` -> ok or the error kind; SFU paths by their relay (or direct)."""
    out: dict[str, str] = {}
    for p in report["paths"]:
        if p["kind"] == "sfu":
            via = (p["relay"] or "direct").split(":")[0]
        else:
            via = p["uri"].split(":")[0]
        out[f"{p['kind']}:{via}/{p['transport']}"] = "ok" if p["ok"] else p["error"]["kind"]
    return out


def test_udp_blocked_livekit() -> None:
    status, report, _ = diagnose("udp-blocked")
    assert status == 1  # degraded
    signal = report["signal"]
    assert signal["ok"] is True
    assert signal["timings_ms"]["dns"] is not None  # lk.eu.lab.test through the lab's DNS
    assert signal["server"]["region"] == "eu"
    assert outcome(report) == {
        "turn:turn/udp": "udp_no_response",
        "turn:turn/tcp": "ok",
        "turn:turns/tls": "ok",
        # Media through the SFU: not direct (UDP), not via TURN/UDP, but via TURN/TCP.
        "sfu:direct/udp": "connect_timeout",
        "sfu:direct/tcp": "ok",  # ICE/TCP: the SFU's 7881 answers the session's STUN check
        "sfu:turn/udp": "udp_no_response",
        "sfu:turn/tcp": "ok",
        # turns: with the lab's CA handed to aiortc's TURN client (--ca-file)
        "sfu:turns/tls": "ok",
    }


def test_tcp443_only_livekit() -> None:
    status, report, url = diagnose("tcp443-only")
    assert status == 1
    assert url.endswith(":443")
    assert report["signal"]["ok"] is True  # signaling on 443 gets through
    assert outcome(report) == {
        "turn:turn/udp": "udp_no_response",
        "turn:turn/tcp": "connect_timeout",
        "turn:turns/tls": "ok",  # TURN/TLS on 443 is the only way through
        "sfu:direct/udp": "connect_timeout",
        "sfu:direct/tcp": "connect_timeout",  # ICE/TCP 7881 filtered too
        "sfu:turn/udp": "udp_no_response",
        "sfu:turn/tcp": "connect_timeout",  # the engine's finding for the same TURN URI
        "sfu:turns/tls": "ok",  # media through TURN/TLS on 443: the path that stutters
    }
