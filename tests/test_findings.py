"""The findings rules engine: reports built here in the real shape, each validated against the
schema together with the findings it yields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lkice.findings import evaluate
from lkice.recommend import recommend
from lkice.report import SCHEMA_ID, TIMING_KEYS
from lkice.verdict import verdict_of
from tests.conftest import as_doc, validate_report

DATA = Path(__file__).parent / "data"


def make_quality(
    rtt: float,
    *,
    samples: int = 250,
    jitter: float = 0.5,
    loss: float = 0.0,
    mos: float | None = 4.4,
    hol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    received = round(samples * (1 - loss))
    return {
        "samples": samples,
        "received": received,
        "rtt_ms": {"p50": rtt, "p95": rtt * 1.2, "p99": rtt * 1.5, "max": rtt * 2, "min": rtt},
        "jitter_ms": jitter,
        "loss": loss,
        "reordered": 0,
        "late": 0,
        "hol": hol,
        "mos": mos,
        "interval_ms": 20.0,
        "duration_ms": 5000.0,
    }


def stalls(max_stall_ms: float, count: int = 12, fraction: float = 0.13) -> dict[str, Any]:
    return {
        "detected": True,
        "stalls": count,
        "max_stall_ms": max_stall_ms,
        "stalled_fraction": fraction,
        "discounted": 0,
    }


NO_STALL = {
    "detected": False,
    "stalls": 0,
    "max_stall_ms": None,
    "stalled_fraction": 0.0,
    "discounted": 0,
}

_DEFAULT_MESSAGES = {
    "udp_no_response": "no answer from {address} over UDP within 3 s (3 sends): UDP to this port "
    "is likely filtered",
    "connect_timeout": "TCP connect to {address} timed out after 5 s: likely filtered by a firewall",
    "connect_refused": "TCP connect to {address} refused: nothing listens on that port, or a "
    "firewall rejects it",
    "dns": "no address for the name",
    "auth_rejected": "401 'Unauthorized': the server rejected the credentials (wrong username or "
    "password, or expired TURN REST credentials: check the shared secret and this machine's clock)",
    "not_tested": "not tested: the agent's WebRTC stack cannot use this",
    "interrupted": "interrupted during binding",
}


def make_path(
    kind: str,
    transport: str,
    ok: bool,
    error_kind: str | None = None,
    *,
    rtt: float | None = None,
    relay_rtt: float | None = None,
    hol: dict[str, Any] | None = None,
    region: str | None = None,
    host: str = "turn.eu.example.com",
    ip: str = "203.0.113.10",
    port: int | None = None,
    message: str | None = None,
    relay: str | None = None,
    tls_issuer: str | None = None,
    auth: str | None = None,
    samples: int = 250,
    jitter: float = 0.5,
    loss: float = 0.0,
    mos: float | None = 4.4,
) -> dict[str, Any]:
    """One entry of ``report["paths"]`` in ``PathResult.to_dict()`` shape."""
    if port is None:
        port = {"udp": 3478, "tcp": 3478, "tls": 443}[transport]
    server = f"{host}:{port}"
    address = f"{ip}:{port}"
    if kind == "stun":
        uri = f"stun:{server}"
    elif kind == "sfu":
        uri = relay or f"wss://{host}"
    elif transport == "tls":
        uri = f"turns:{server}?transport=tcp"
    else:
        uri = f"turn:{server}?transport={transport}"
    error = None
    if not ok:
        kind_ = error_kind or "udp_no_response"
        text = message or _DEFAULT_MESSAGES.get(kind_, f"{kind_} failure").format(address=address)
        error = {"kind": kind_, "message": text, "phase": "binding"}
    stream = transport in ("tcp", "tls")
    quality = None
    relay_quality = None
    if ok and rtt is not None:
        quality = make_quality(
            rtt,
            samples=samples,
            jitter=jitter,
            loss=loss,
            mos=mos,
            hol=(hol or NO_STALL) if stream else None,
        )
    if ok and relay_rtt is not None:
        relay_quality = make_quality(
            relay_rtt,
            samples=samples,
            jitter=jitter,
            loss=loss,
            mos=mos,
            hol=(hol or NO_STALL) if stream else None,
        )
    timings: dict[str, float | None] = dict.fromkeys(TIMING_KEYS)
    if kind == "sfu":
        timings.update({"ice": 150.0 if ok else None, "dtls": 160.0 if ok else None})
    elif ok:
        timings.update(
            {"binding": rtt or 10.0, "allocate": rtt or 10.0 if kind == "turn" else None}
        )
    tls = None
    if tls_issuer is not None:
        tls = {
            "version": "TLSv1.3",
            "cipher": "TLS_AES_128_GCM_SHA256",
            "subject": f"CN={host}",
            "issuer": tls_issuer,
            "not_after": "2030-01-01T00:00:00+00:00",
            "sha256": "00" * 32,
            "verified": ok,
            "verify_error": None,
        }
    return {
        "server": server,
        "transport": transport,
        "kind": kind,
        "uri": uri,
        "address": address,
        "family": "ipv4",
        "ok": ok,
        "error": error,
        "timings_ms": timings,
        "mapped_address": "198.51.100.7:40000" if ok and kind != "sfu" else None,
        "relayed_address": f"{ip}:50123" if ok and kind == "turn" else None,
        "lifetime_s": 600 if ok and kind == "turn" else None,
        "deallocated": True if ok and kind == "turn" else None,
        "binding_sends": 1 if ok and kind != "sfu" else None,
        "server_software": None,
        "other_address": None,
        "response_origin": None,
        "tls": tls,
        "socket_options": ["TCP_NODELAY"] if stream else [],
        "auth": auth if auth is not None else ("static" if kind == "turn" and ok else None),
        "alternate_server": None,
        "redirected_from": None,
        "quality": quality,
        "relay_quality": relay_quality,
        "region": region,
        "relay": relay,
        "notes": [],
    }


def make_signal(
    ok: bool = True,
    error_kind: str | None = None,
    message: str = "failed",
    *,
    host: str = "lk.example.com",
    ice_urls: list[str] | None = None,
    tls_issuer: str | None = "CN=R11,O=Let's Encrypt,C=US",
) -> dict[str, Any]:
    urls = ice_urls if ice_urls is not None else [f"turns:turn.{host}:443?transport=tcp"]
    return {
        "url": f"wss://{host}",
        "ok": ok,
        "error": None if ok else {"kind": error_kind, "message": message, "phase": "validate"},
        "address": "203.0.113.50:443",
        "timings_ms": {
            "dns": 2.0,
            "connect": 20.0,
            "tls": 40.0,
            "validate": 60.0 if ok else None,
            "websocket": 80.0 if ok else None,
            "join": 100.0 if ok else None,
        },
        "tls": None
        if tls_issuer is None
        else {
            "version": "TLSv1.3",
            "cipher": "TLS_AES_128_GCM_SHA256",
            "subject": f"CN={host}",
            "issuer": tls_issuer,
            "not_after": "2030-01-01T00:00:00+00:00",
            "sha256": "11" * 32,
            "verified": ok,
            "verify_error": None,
        },
        "server": {"version": "1.9.1", "edition": "standard", "region": None, "node_id": "ND_x"}
        if ok
        else None,
        "room": "lkice-diag" if ok else None,
        "ice_servers": [{"urls": urls, "credentials": True}] if ok else [],
        "force_relay": False if ok else None,
        "notes": [],
    }


def make_report(
    paths: list[dict[str, Any]],
    *,
    signal: dict[str, Any] | None = None,
    nat: dict[str, Any] | None = None,
    interrupted: bool = False,
) -> dict[str, Any]:
    ok = sum(1 for p in paths if p["ok"])
    return {
        "schema": SCHEMA_ID,
        "lkice_version": "0.1.0",
        "started_at": "2026-01-01T00:00:00.000+00:00",
        "duration_ms": 5000.0,
        "interrupted": interrupted,
        "agent": {"os": "linux", "python": "3.11", "loop_stalls": None},
        "settings": {},
        "targets": sorted({p["uri"] for p in paths}),
        "signal": signal,
        "regions": None,
        "nat": nat,
        "verdict": "ok" if ok == len(paths) else ("failed" if ok == 0 else "degraded"),
        "summary": {"paths": len(paths), "ok": ok, "failed": len(paths) - ok},
        "paths": paths,
    }


def run(report: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Findings (validated with the report against the schema) and the same keyed by id."""
    findings = evaluate(as_doc(report))
    validate_report({**report, "findings": findings, "recommendation": recommend(as_doc(report))})
    return findings, {f["id"]: f for f in findings}


def open_network() -> list[dict[str, Any]]:
    return [
        make_path("stun", "udp", True, rtt=20.0),
        make_path("turn", "udp", True, rtt=20.0, relay_rtt=40.0),
        make_path("turn", "tcp", True, rtt=21.0, relay_rtt=42.0),
        make_path("turn", "tls", True, rtt=22.0, relay_rtt=44.0, tls_issuer="CN=R11,O=LE"),
    ]


def udp_blocked(loss: float = 0.0, hol: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        make_path("stun", "udp", False, "udp_no_response"),
        make_path("turn", "udp", False, "udp_no_response"),
        make_path("turn", "tcp", True, rtt=40.0, relay_rtt=80.0, loss=loss, hol=hol),
        make_path("turn", "tls", True, rtt=41.0, relay_rtt=82.0, loss=loss, hol=hol),
    ]


# --------------------------------------------------------------------------- tests


def test_open_network_is_ok_with_positive_findings() -> None:
    findings, by_id = run(make_report(open_network()))
    assert verdict_of(findings) == "ok"
    assert {f["severity"] for f in findings} == {"info"}
    assert "turn-ok" in by_id
    assert "UDP" in by_id["turn-ok"]["summary"]
    assert by_id["turn-ok"]["paths"] == [1, 2, 3]
    for bad in ("udp-blocked", "no-path", "high-rtt", "high-loss", "hol-blocking"):
        assert bad not in by_id


def test_udp_blocked_is_a_warning_naming_ports_and_ips() -> None:
    findings, by_id = run(make_report(udp_blocked()))
    assert verdict_of(findings) == "degraded"
    f = by_id["udp-blocked"]
    assert f["severity"] == "warning"
    assert f["paths"] == [0, 1]
    assert "UDP port 3478" in f["advice"]
    assert "turn.eu.example.com (203.0.113.10)" in f["advice"]
    assert all("3 sends" in e for e in f["evidence"])
    assert "no-path" not in by_id
    assert [f["severity"] for f in findings] == sorted(
        (f["severity"] for f in findings), key=["critical", "warning", "info"].index
    )


def test_udp_blocked_on_livekit_names_the_sfu_udp_range() -> None:
    paths = [
        *udp_blocked(),
        make_path("sfu", "udp", False, "connect_timeout", host="lk.example.com"),
    ]
    _, by_id = run(make_report(paths, signal=make_signal()))
    advice = by_id["udp-blocked"]["advice"]
    assert "50000-60000" in advice
    assert "lk.example.com" in advice
    assert 4 in by_id["udp-blocked"]["paths"]


def test_tcp_443_only() -> None:
    paths = [
        make_path("stun", "udp", False, "udp_no_response"),
        make_path("turn", "udp", False, "udp_no_response"),
        make_path("turn", "tcp", False, "connect_timeout"),
        make_path("turn", "tls", True, rtt=30.0, relay_rtt=60.0, port=443),
    ]
    findings, by_id = run(make_report(paths))
    assert verdict_of(findings) == "degraded"
    assert by_id["only-tls"]["severity"] == "warning"
    assert "443" in by_id["only-tls"]["summary"]
    assert by_id["only-tls"]["paths"] == [2, 3]
    assert "only-tcp" not in by_id
    assert "udp-blocked" in by_id


def test_loss_on_tls_with_hol_stalls() -> None:
    paths = [
        make_path("stun", "udp", False, "udp_no_response"),
        make_path("turn", "udp", False, "udp_no_response"),
        make_path("turn", "tcp", False, "connect_timeout"),
        make_path(
            "turn", "tls", True, rtt=40.0, relay_rtt=80.0, loss=0.08, hol=stalls(212.5, 9, 0.2)
        ),
    ]
    findings, by_id = run(make_report(paths))
    hol = by_id["hol-blocking"]
    assert hol["severity"] == "warning"
    assert "212" in hol["summary"]
    assert any("9 stalls" in e and "20.0 %" in e for e in hol["evidence"])
    # Over TLS nothing is lost on this network (TCP repairs it): the relay echo's loss is the
    # server's (or answers held past the wait), never called this network's.
    assert "high-loss" not in by_id
    loss = by_id["relay-loss"]
    assert loss["severity"] == "warning"
    # The relay echo crosses this network 4 times: 8 % lost there is about 2.1 % each way.
    assert any(
        "8.0 % lost over 250 probes" in e and "about 2.1 % each way" in e for e in loss["evidence"]
    )
    assert verdict_of(findings) == "degraded"


def test_hol_is_info_when_udp_works() -> None:
    paths = open_network()
    paths[2] = make_path("turn", "tcp", True, rtt=21.0, relay_rtt=42.0, hol=stalls(90.0))
    _, by_id = run(make_report(paths))
    assert by_id["hol-blocking"]["severity"] == "info"


def test_loss_on_unused_transport_is_only_info_and_heavy_loss_is_critical() -> None:
    paths = open_network()
    paths[3] = make_path("turn", "tls", True, rtt=22.0, relay_rtt=44.0, loss=0.2)
    _, by_id = run(make_report(paths))
    assert by_id["relay-loss"]["severity"] == "info"  # over TLS: the relay's, not the network's
    paths[3] = make_path("turn", "tls", True, rtt=22.0, relay_rtt=44.0)
    paths[1] = make_path("turn", "udp", True, rtt=20.0, relay_rtt=40.0, loss=0.03)
    _, by_id = run(make_report(paths))
    assert "high-loss" not in by_id  # 3 % over four crossings: under 1 % each way
    # 12 % of relay echoes lost is about 3.1 % each way: bad, not yet "critical" (Daily: 10 %).
    paths[1] = make_path("turn", "udp", True, rtt=20.0, relay_rtt=40.0, loss=0.12, mos=2.2)
    findings, by_id = run(make_report(paths))
    assert by_id["high-loss"]["severity"] == "warning"
    paths[1] = make_path("turn", "udp", True, rtt=20.0, relay_rtt=40.0, loss=0.4, mos=2.2)
    findings, by_id = run(make_report(paths))
    assert by_id["high-loss"]["severity"] == "critical"  # about 12 % each way
    assert by_id["low-mos"]["severity"] == "critical"
    assert verdict_of(findings) == "failed"


def test_rtt_thresholds_and_the_echo_crossing_twice() -> None:
    paths = open_network()
    paths[1] = make_path("turn", "udp", True, rtt=150.0, relay_rtt=300.0)
    _, by_id = run(make_report(paths))
    # the best UDP path by single round trip is the STUN one at 20 ms
    assert "high-rtt" not in by_id
    paths = [make_path("turn", "udp", True, relay_rtt=250.0)]
    _, by_id = run(make_report(paths))
    f = by_id["high-rtt"]
    assert f["severity"] == "warning"
    assert "2 x 100 ms" in f["evidence"][0]
    paths = [make_path("turn", "udp", True, rtt=700.0, samples=20)]
    _, by_id = run(make_report(paths))
    assert by_id["high-rtt"]["severity"] == "warning"  # few probes: never critical
    paths = [make_path("turn", "udp", True, rtt=700.0)]
    _, by_id = run(make_report(paths))
    assert by_id["high-rtt"]["severity"] == "critical"


def test_high_jitter_is_a_warning() -> None:
    paths = [make_path("turn", "udp", True, rtt=30.0, relay_rtt=60.0, jitter=45.0)]
    _, by_id = run(make_report(paths))
    assert by_id["high-jitter"]["severity"] == "warning"
    assert "45.0 ms" in by_id["high-jitter"]["evidence"][0]


def test_tls_interception_names_the_issuer() -> None:
    issuer = "CN=Contoso TLS Inspection CA,O=Contoso Corp"
    message = (
        "certificate presented by 203.0.113.10:443 was rejected: unable to get local issuer "
        f"certificate; it was issued by '{issuer}' (subject 'CN=turn.eu.example.com'). If that "
        "issuer is not your TURN provider's CA, a TLS-inspecting proxy is intercepting the "
        "connection"
    )
    paths = [
        make_path("turn", "udp", True, rtt=20.0),
        make_path("turn", "tls", False, "tls_verify", message=message),
        make_path(
            "turn", "tls", True, rtt=20.0, port=5349, tls_issuer="CN=R11,O=Let's Encrypt,C=US"
        ),
    ]
    findings, by_id = run(make_report(paths))
    f = by_id["tls-interception"]
    assert f["severity"] == "warning"
    assert issuer in f["summary"]
    assert issuer in f["advice"]
    assert "Let's Encrypt" in f["summary"]
    assert f["paths"] == [1]
    assert "turn.eu.example.com" in f["advice"]
    assert verdict_of(findings) == "degraded"


def test_tls_interception_on_signaling_is_critical() -> None:
    issuer = "CN=Zscaler Intermediate Root CA,O=Zscaler Inc."
    signal = make_signal(
        False,
        "tls_verify",
        f"certificate presented by 203.0.113.50:443 was rejected: self-signed certificate in "
        f"certificate chain; it was issued by '{issuer}' (subject 'CN=lk.example.com')",
        tls_issuer=None,
    )
    findings, by_id = run(make_report([], signal=signal))
    assert by_id["tls-interception"]["severity"] == "critical"
    assert "lk.example.com" in by_id["tls-interception"]["advice"]
    assert "signal-failed" not in by_id
    assert verdict_of(findings) == "failed"


def test_proxy_407() -> None:
    signal = make_signal(
        False,
        "proxy",
        "an HTTP proxy demands authentication (407) before anything reaches LiveKit",
    )
    findings, by_id = run(make_report([], signal=signal))
    f = by_id["proxy-required"]
    assert f["severity"] == "critical"
    assert "407" in f["summary"]
    assert "lk.example.com" in f["advice"]
    assert verdict_of(findings) == "failed"


def test_wrong_turn_credentials() -> None:
    paths = [
        make_path("turn", "udp", False, "auth_rejected", auth="rest"),
        make_path("turn", "tcp", False, "auth_rejected", auth="rest"),
    ]
    findings, by_id = run(make_report(paths))
    f = by_id["credentials"]
    assert f["severity"] == "critical"
    assert f["paths"] == [0, 1]
    assert "shared secret" in f["advice"]
    assert "clock" in f["advice"]
    assert "udp-blocked" not in by_id
    assert verdict_of(findings) == "failed"


def test_token_rejected_never_echoes_the_token() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    signal = make_signal(False, "token_rejected", f"token rejected by server: invalid token {jwt}")
    signal["url"] = f"wss://lk.example.com/rtc?access_token={jwt}"
    findings, by_id = run(make_report([], signal=signal))
    f = by_id["token-rejected"]
    assert f["severity"] == "critical"
    assert "API key" in f["advice"]
    assert jwt not in json.dumps(findings)
    assert "<token>" in f["evidence"][0]


def test_livekit_join_without_turns() -> None:
    signal = make_signal(ice_urls=["turn:turn.lk.example.com:3478?transport=udp"])
    paths = [
        make_path("turn", "udp", True, rtt=20.0, host="turn.lk.example.com"),
        make_path("sfu", "udp", True, rtt=40.0, host="lk.example.com"),
    ]
    findings, by_id = run(make_report(paths, signal=signal))
    f = by_id["turn-tls-missing"]
    assert f["severity"] == "info"  # UDP works here
    assert "turns:" in f["summary"]
    assert "sfu-direct-ok" in by_id
    assert verdict_of(findings) == "ok"
    blocked = [
        make_path("turn", "udp", False, "udp_no_response", host="turn.lk.example.com"),
        make_path("sfu", "udp", False, "connect_timeout", host="lk.example.com"),
        make_path("sfu", "tcp", True, host="lk.example.com", port=7881),
    ]
    _, by_id = run(make_report(blocked, signal=signal))
    assert by_id["turn-tls-missing"]["severity"] == "warning"


def test_advertised_turns_not_answering() -> None:
    url = "turns:turn.lk.example.com:443?transport=tcp"
    signal = make_signal(ice_urls=["turn:turn.lk.example.com:3478?transport=udp", url])
    paths = [
        make_path("turn", "udp", True, rtt=20.0, host="turn.lk.example.com"),
        make_path("turn", "tls", False, "connect_refused", host="turn.lk.example.com"),
    ]
    _, by_id = run(make_report(paths, signal=signal))
    f = by_id["turn-tls-missing"]
    assert url in f["summary"]
    assert "answers on other ports" in f["advice"]
    assert f["paths"] == [1]


def test_advertised_url_dead() -> None:
    dead = "turn:turn.lk.example.com:3479?transport=udp"
    signal = make_signal(
        ice_urls=[
            "turn:turn.lk.example.com:3478?transport=udp",
            dead,
            "turns:turn.lk.example.com:443?transport=tcp",
        ]
    )
    paths = [
        make_path("turn", "udp", True, rtt=20.0, host="turn.lk.example.com"),
        make_path("turn", "udp", False, "udp_no_response", host="turn.lk.example.com", port=3479),
        make_path("turn", "tls", True, rtt=21.0, host="turn.lk.example.com"),
    ]
    findings, by_id = run(make_report(paths, signal=signal))
    f = by_id["advertised-url-dead"]
    assert f["severity"] == "warning"
    assert dead in f["summary"]
    assert f["paths"] == [1]
    assert "operator" in f["advice"]
    assert "udp-blocked" not in by_id
    assert verdict_of(findings) == "degraded"


def test_dead_udp_url_when_no_udp_works_is_the_firewall_not_the_server() -> None:
    signal = make_signal(
        ice_urls=[
            "turn:turn.lk.example.com:3478?transport=udp",
            "turns:turn.lk.example.com:443?transport=tcp",
        ]
    )
    paths = [
        make_path("turn", "udp", False, "udp_no_response", host="turn.lk.example.com"),
        make_path("turn", "tls", True, rtt=21.0, host="turn.lk.example.com"),
    ]
    _, by_id = run(make_report(paths, signal=signal))
    assert "advertised-url-dead" not in by_id
    assert "udp-blocked" in by_id


@pytest.mark.parametrize(
    ("livekit", "severity"),
    [(True, "info"), (False, "info")],
)
def test_symmetric_nat(livekit: bool, severity: str) -> None:
    nat = {
        "server": "203.0.113.10:3478",
        "mapping": "address-and-port-dependent",
        "filtering": "unknown",
        "nat": True,
        "evidence": ["test II: 203.0.113.11:3478 saw 198.51.100.7:40001"],
    }
    paths = [make_path("turn", "udp", True, rtt=20.0)]
    if livekit:
        paths.append(make_path("sfu", "udp", True, rtt=40.0, host="lk.example.com"))
    _, by_id = run(make_report(paths, signal=make_signal() if livekit else None, nat=nat))
    f = by_id["symmetric-nat"]
    assert f["severity"] == severity
    assert ("SFU" in f["impact"]) is livekit
    assert any("address-and-port-dependent" in e for e in f["evidence"])


def test_symmetric_nat_without_a_working_relay_is_a_warning() -> None:
    nat = {"server": "203.0.113.10:3478", "mapping": "address-dependent", "filtering": "unknown"}
    paths = [make_path("stun", "udp", True, rtt=20.0)]
    _, by_id = run(make_report(paths, nat=nat))
    assert by_id["symmetric-nat"]["severity"] == "warning"
    nat["mapping"] = "endpoint-independent"
    _, by_id = run(make_report(paths, nat=nat))
    assert "symmetric-nat" not in by_id


def test_interrupted() -> None:
    paths = [*open_network()[:2], make_path("turn", "tcp", False, "interrupted")]
    findings, by_id = run(make_report(paths, interrupted=True))
    f = by_id["interrupted"]
    assert f["severity"] == "warning"
    assert f["paths"] == [2]
    assert "1 of 3 paths did not finish" in f["evidence"]
    assert "no-path" not in by_id
    assert "only-tcp" not in by_id
    assert verdict_of(findings) == "degraded"


def test_not_tested_is_never_evidence_of_failure() -> None:
    paths = [
        *open_network(),
        make_path("sfu", "udp", True, rtt=4.0, host="lk.example.com"),
        make_path(
            "sfu",
            "tls",
            False,
            "not_tested",
            host="lk.example.com",
            relay="turns:turn.eu.example.com:443?transport=tcp",
        ),
    ]
    findings, _by_id = run(make_report(paths, signal=make_signal()))
    assert verdict_of(findings) == "ok"
    assert all(5 not in f["paths"] for f in findings)
    only_untested = [make_path("turn", "tls", False, "not_tested")]
    findings, _ = run(make_report(only_untested))
    # Not a failure, and not "ok" either: nothing was tested.
    assert [f["id"] for f in findings] == ["nothing-tested"]
    assert "could not test any of the 1 path" in findings[0]["summary"]


def test_no_path_distinguishes_refused_timeout_and_dns() -> None:
    paths = [
        make_path("turn", "udp", False, "udp_no_response"),
        make_path("turn", "tcp", False, "connect_refused"),
        make_path("turn", "tls", False, "connect_timeout"),
        make_path("turn", "udp", False, "dns", host="turn.us.example.com"),
    ]
    paths[3]["address"] = None
    findings, by_id = run(make_report(paths))
    f = by_id["no-path"]
    assert f["severity"] == "critical"
    assert "2 got no answer" in f["summary"]
    assert "1 were refused" in f["summary"]
    assert "DNS" in f["summary"]
    assert "outbound UDP port 3478" in f["advice"]
    assert "udp-blocked" not in by_id
    assert verdict_of(findings) == "failed"


def test_only_dns_failures() -> None:
    paths = [make_path("turn", "udp", False, "dns")]
    paths[0]["address"] = None
    _, by_id = run(make_report(paths))
    assert "looked up" in by_id["no-path"]["summary"]


def test_signal_failure_is_critical() -> None:
    signal = make_signal(False, "connect_timeout", "TCP connect timed out after 5 s")
    findings, by_id = run(make_report([], signal=signal))
    assert by_id["signal-failed"]["severity"] == "critical"
    assert "TCP port 443" in by_id["signal-failed"]["advice"]
    assert verdict_of(findings) == "failed"


def test_verdict_of() -> None:
    assert verdict_of([]) == "ok"
    assert verdict_of([{"severity": "info"}]) == "ok"
    assert verdict_of([{"severity": "info"}, {"severity": "warning"}]) == "degraded"
    assert verdict_of([{"severity": "warning"}, {"severity": "critical"}]) == "failed"


def test_recorded_lab_report() -> None:
    """A report recorded in the namespace lab (UDP blocked, 40 ms, 2 % loss; series trimmed)."""
    report = json.loads((DATA / "report-udp-blocked.json").read_text())
    findings, by_id = run(report)
    assert verdict_of(findings) == "degraded"
    assert by_id["udp-blocked"]["severity"] == "warning"
    assert by_id["hol-blocking"]["severity"] == "warning"
    assert "116" in by_id["hol-blocking"]["summary"]
    assert "path-failed" not in by_id  # every failure there is explained by udp-blocked


def test_an_unexplained_failure_still_degrades() -> None:
    """One STUN server of two does not answer (no rule names that case): path-failed."""
    paths = [
        make_path("stun", "udp", True, rtt=20.0, host="stun.us.example.com", ip="203.0.113.20"),
        make_path("stun", "udp", False, "udp_no_response", host="stun.eu.example.com"),
    ]
    findings, by_id = run(make_report(paths))
    assert verdict_of(findings) == "degraded"
    assert by_id["path-failed"]["paths"] == [1]
    assert "203.0.113.10" in by_id["path-failed"]["advice"]


def test_udp_blocked_to_one_region_only() -> None:
    """eu's UDP is dropped, us answers over UDP: udp-blocked names eu, not the whole network."""
    paths = [
        make_path("turn", "udp", False, "udp_no_response", region="eu"),
        make_path("turn", "tcp", True, rtt=10.0, relay_rtt=20.0, region="eu"),
        make_path(
            "turn", "udp", True, rtt=40.0, relay_rtt=80.0, region="us",
            host="turn.us.example.com", ip="203.0.113.20",
        ),
    ]  # fmt: skip
    findings, by_id = run(make_report(paths))
    udp = by_id["udp-blocked"]
    assert udp["paths"] == [0]
    assert "UDP to eu is blocked" in udp["summary"]
    assert "203.0.113.10" in udp["advice"]
    assert "region eu" in udp["advice"]
    assert "path-failed" not in by_id
    assert verdict_of(findings) == "degraded"


def test_a_probe_can_set_its_own_thresholds() -> None:
    """120 ms to the server: above the field's 100 ms (Teams); within a site's own 150 ms."""
    paths = [make_path("turn", "udp", True, rtt=120.0, relay_rtt=130.0)]
    _, by_id = run(make_report(paths))
    assert "Teams target 100 ms" in by_id["high-rtt"]["evidence"][0]
    report = make_report(paths)
    report["settings"] = {"thresholds": {"rtt_warn_ms": 150.0}}
    _, by_id = run(report)
    assert "high-rtt" not in by_id
    report["settings"] = {"thresholds": {"rtt_warn_ms": 110.0}}
    _, by_id = run(report)
    assert "this probe's threshold 110 ms" in by_id["high-rtt"]["evidence"][0]
