"""Redaction: hosts and public addresses become stable placeholders, nothing else changes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lkice.redact import Redactor, redact_report
from tests.conftest import plain

DATA = Path(__file__).parent / "data" / "report-html.json"


def _report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(DATA.read_text("utf-8"))
    return report


def _originals(report: dict[str, Any]) -> set[str]:
    """Every host name and non-loopback IPv4 address in the fixture, found independently."""
    text = json.dumps(report)
    hosts = set(re.findall(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.lab\.test", text))
    addresses = set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text)) - {"127.0.0.1"}
    return hosts | addresses


def test_no_original_host_or_address_survives() -> None:
    report = _report()
    originals = _originals(report)
    assert "turn.eu.lab.test" in originals
    assert "198.19.0.2" in originals
    text = json.dumps(redact_report(report))
    leaked = sorted(o for o in originals if o in text)
    assert leaked == []
    assert "host-1" in text
    assert "ip-1" in text


def test_input_is_not_modified_and_structure_is_kept() -> None:
    report = _report()
    before = copy.deepcopy(report)
    redacted = plain(redact_report(report))
    assert report == before
    assert redacted is not report
    assert redacted["paths"] is not report["paths"]
    assert redacted.keys() == report.keys()
    assert redacted["schema"] == report["schema"]
    assert redacted["started_at"] == report["started_at"]
    first, original = redacted["paths"][2], report["paths"][2]
    assert first["timings_ms"] == original["timings_ms"]
    assert first["quality"]["series"] == original["quality"]["series"]
    assert first["transport"] == original["transport"]


def test_same_value_same_placeholder() -> None:
    redacted = plain(redact_report(_report()))
    servers = {p["server"] for p in redacted["paths"] if p["kind"] != "sfu"}
    # turn.eu.lab.test on three ports: one placeholder, ports kept
    hosts = {s.rsplit(":", 1)[0] for s in servers}
    assert len(hosts) == 1
    (host,) = hosts
    assert re.fullmatch(r"host-\d+", host)
    assert {s.rsplit(":", 1)[1] for s in servers} == {"3478", "5349", "443"}
    addresses = {p["address"].rsplit(":", 1)[0] for p in redacted["paths"][:5]}
    assert len(addresses) == 1
    (placeholder,) = addresses
    assert placeholder.startswith("ip-")
    # the same address inside a free-text error message gets the same placeholder
    assert f"no answer from {placeholder}:3478" in redacted["paths"][0]["error"]["message"]
    assert redacted["targets"][2] == f"turn:{host}:3478?transport=udp"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("turns:turn.example.com:443?transport=tcp", "turns:host-1:443?transport=tcp"),
        ("wss://lk.example.com/rtc?x=1", "wss://host-1/rtc?x=1"),
        ("no answer from 203.0.113.7:3478 over UDP", "no answer from ip-1:3478 over UDP"),
        ("[2001:db8::1]:3478", "[ip-1]:3478"),
        ("turn:[2001:db8::1]:3478", "turn:[ip-1]:3478"),
        ("via fe80::1%eth0.", "via ip-1."),
        ("Connect to Example.COM.", "Connect to host-1."),
        ("1.2.3.4.nip.io", "host-1"),
        ("10.0.0.1 and 10.0.0.1", "ip-1 and ip-1"),
        ("turnserver:3478", "host-1:3478"),
    ],
)
def test_text(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:3478",
        "[::1]:3478",
        "localhost:7880",
        "ws://localhost:7880",
        "Coturn-4.6.1 'Gorst'",
        "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384",
        "e.g. a relay; i.e. TURN",
        "certificate verify failed (_ssl.c:1006)",
        "see report.json",
        "at 12:30:45",
        "2026-11-23T22:27:03.937+00:00",
        "3 sends within 3.5 s",
    ],
)
def test_text_kept(text: str) -> None:
    assert Redactor().text(text) == text


def test_single_label_host_also_replaced_where_bare() -> None:
    report = {
        "targets": ["turn:coturn:3478?transport=udp"],
        "paths": [{"server": "coturn:3478", "notes": ["coturn refused the allocation"]}],
    }
    redacted = plain(redact_report(report))
    assert redacted["paths"][0]["server"] == "host-1:3478"
    assert redacted["paths"][0]["notes"] == ["host-1 refused the allocation"]
    assert "coturn" not in json.dumps(redacted)


def test_findings_and_recommendation_redacted() -> None:
    redacted = plain(redact_report(_report()))
    text = json.dumps({"f": redacted["findings"], "r": redacted["recommendation"]})
    assert "lab.test" not in text
    assert "198.19." not in text
    assert redacted["recommendation"]["region"] == "eu"


def test_redacted_strings_have_their_control_characters_visible() -> None:
    """A redacted report is made to be shared: nothing in it can act on a terminal."""
    report = _report()
    report["paths"][0]["error"]["message"] = "no answer from 198.19.0.2:3478\x1b[2J\nlkice: error"
    report["paths"][0]["notes"] = ["\u202eturn.eu.lab.test"]
    report["odd\x07key"] = "x"
    redacted = plain(redact_report(report))
    message = redacted["paths"][0]["error"]["message"]
    assert message.startswith("no answer from ip-")
    assert message.endswith(":3478\\x1b[2J\\nlkice: error")
    assert redacted["paths"][0]["notes"][0].startswith("\\u202ehost-")
    assert redacted["odd\\x07key"] == "x"
    assert report["paths"][0]["notes"] == ["\u202eturn.eu.lab.test"]  # input untouched


def test_a_host_under_a_file_like_tld_is_still_a_host() -> None:
    """Paraguay's .py, and other country codes that look like file suffixes: a name of several
    labels is a host; only "name.ext" in a message is taken for a file."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "report-udp-blocked.json").read_text())
    data["paths"][0]["server"] = "turn.empresa.com.py:3478"
    data["paths"][0]["error"] = {
        "kind": "dns",
        "message": "turn.empresa.com.py: no such domain (see _ssl.c and report.json)",
        "phase": "dns",
    }
    shown = json.dumps(redact_report(data))
    assert "empresa" not in shown
    assert "_ssl.c" in shown
    assert "report.json" in shown
