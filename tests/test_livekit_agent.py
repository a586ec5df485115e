"""``lkice run`` against the lab LiveKit server (protocol-faithful stand-in) and real coturn:
signaling step by step, the join's ICE servers probed with their own credentials, bad input."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.livekit_server import LabIceServer, LabLiveKit, LabRegion
from tests.conftest import TurnLab, needs_coturn, validate_report

pytestmark = needs_coturn

API_KEY = "APIlkicetest"


def lkice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lkice", "run", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=full,
        check=False,
    )


@pytest.fixture(scope="module")
def api_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def livekit(coturn: TurnLab, api_secret: str) -> Iterator[LabLiveKit]:
    ice = [
        LabIceServer(
            [
                f"turn:127.0.0.1:{coturn.port}?transport=udp",
                f"turn:127.0.0.1:{coturn.port}?transport=tcp",
            ],
            coturn.user,
            coturn.password,
        ),
        LabIceServer([f"stun:127.0.0.1:{coturn.port}"], "", ""),
    ]
    with LabLiveKit(api_key=API_KEY, api_secret=api_secret, ice_servers=ice, region="lab-eu") as lk:
        yield lk


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    validate_report(data)
    return data


def test_sessions_say_goodbye_after_the_verdict(livekit: LabLiveKit, api_secret: str) -> None:
    """The SFU sessions' leave and closes go after the verdict is printed (as TURN releases
    do), and still before lkice exits: every participant it joined left with a LeaveRequest
    and the room is empty."""
    joins, leaves = livekit.stats.joins, livekit.stats.leaves
    result = lkice(
        livekit.url, "--json", "--quality-duration", "0",
        env={"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": api_secret},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result)
    sessions = [p for p in report["paths"] if p["kind"] == "sfu" and p.get("sfu") and p["ok"]]
    assert sessions
    joined = livekit.stats.joins - joins  # two per SFU session, one for the signaling probe
    assert joined == 2 * len(sessions) + 1
    deadline = time.monotonic() + 5
    while livekit.rooms() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert livekit.rooms() == {}
    assert livekit.stats.leaves - leaves == joined


def test_full_livekit_diagnosis(livekit: LabLiveKit, coturn: TurnLab, api_secret: str) -> None:
    result = lkice(
        livekit.url, "--json", "--quality-duration", "1",
        env={"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": api_secret},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result)
    signal = report["signal"]
    assert signal["ok"] is True
    assert signal["error"] is None
    for step in ("connect", "validate", "websocket", "join"):
        assert signal["timings_ms"][step] is not None, step
    assert signal["timings_ms"]["tls"] is None  # ws://, no TLS
    assert signal["server"]["region"] == "lab-eu"
    assert signal["server"]["version"]
    assert signal["room"].startswith("lkice-diag-")
    assert {"credentials": True, "urls": [f"turn:127.0.0.1:{coturn.port}?transport=udp",
            f"turn:127.0.0.1:{coturn.port}?transport=tcp"]} in signal["ice_servers"]  # fmt: skip
    # The join's ICE servers were probed, TURN with the credentials the server handed out, and
    # media paths through the SFU: direct, and forced through each TURN URL.
    kinds = sorted((p["kind"], p["transport"], p.get("relay") or "") for p in report["paths"])
    turn_udp, turn_tcp = (f"turn:127.0.0.1:{coturn.port}?transport={t}" for t in ("udp", "tcp"))
    assert kinds == [
        ("sfu", "tcp", turn_tcp),
        ("sfu", "udp", ""),
        ("sfu", "udp", turn_udp),
        ("stun", "udp", ""),
        ("turn", "tcp", ""),
        ("turn", "udp", ""),
    ]
    assert all(p["ok"] for p in report["paths"]), [p["error"] for p in report["paths"]]
    for sfu in (p for p in report["paths"] if p["kind"] == "sfu"):
        assert sfu["timings_ms"]["ice"] is not None
        assert sfu["timings_ms"]["dtls"] >= sfu["timings_ms"]["ice"]
        assert sfu["quality"]["samples"] > 0  # data round trip through the SFU
    assert report["verdict"] == "ok"
    assert report["targets"][0] == livekit.url
    output = result.stdout + result.stderr
    assert api_secret not in output
    assert coturn.password not in output


def test_token_signed_with_the_wrong_secret_gives_the_servers_reason(livekit: LabLiveKit) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(32)
    result = lkice(livekit.url, "--api-key", API_KEY, "--api-secret", wrong, "--json")
    assert result.returncode == 3  # a configuration problem, not a network one
    signal = report_of(result)["signal"]
    assert signal["error"]["kind"] == "token_rejected"
    assert signal["error"]["message"].startswith("token rejected by server: ")
    assert "signature" in signal["error"]["message"]  # the server's own reason
    assert wrong not in result.stdout + result.stderr
    human = lkice(livekit.url, "--api-key", API_KEY, "--api-secret", wrong)
    assert "x token rejected by server" in human.stdout
    assert "Traceback" not in human.stderr


def test_unknown_api_key_is_rejected(livekit: LabLiveKit, api_secret: str) -> None:
    result = lkice(livekit.url, "--api-key", "APInobody", "--api-secret", api_secret, "--json")
    assert result.returncode == 3
    assert report_of(result)["signal"]["error"]["kind"] == "token_rejected"


def test_a_join_without_turn_is_a_finding_not_a_crash(api_secret: str) -> None:
    with LabLiveKit(api_key=API_KEY, api_secret=api_secret, ice_servers=[]) as lk:
        result = lkice(lk.url, "--api-key", API_KEY, "--api-secret", api_secret, "--json")
    report = report_of(result)
    assert report["signal"]["ok"] is True
    assert any("no TURN server" in n for n in report["signal"]["notes"])
    # From this network the direct path to the SFU works, so the user can connect (exit 0);
    # the missing TURN stays a finding for networks where UDP is blocked.
    assert result.returncode == 0
    assert [(p["kind"], p["relay"], p["ok"]) for p in report["paths"]] == [("sfu", None, True)]


def test_cloud_regions_are_discovered_and_each_probed(coturn: TurnLab, api_secret: str) -> None:
    """LiveKit Cloud: /settings/regions lists the regions; each one's signaling and the TURN
    servers its join offers are probed in the same run, tagged with the region."""
    with Coturn(CoturnConfig(users={"us-user": "us-pass"})) as us_turn:
        eu_ice = [
            LabIceServer(
                [f"turn:127.0.0.1:{coturn.port}?transport=udp"], coturn.user, coturn.password
            )
        ]
        us_ice = [
            LabIceServer([f"turn:127.0.0.1:{us_turn.port}?transport=udp"], "us-user", "us-pass")
        ]
        with (
            LabLiveKit(
                api_key=API_KEY, api_secret=api_secret, ice_servers=eu_ice, region="eu"
            ) as eu,
            LabLiveKit(
                api_key=API_KEY, api_secret=api_secret, ice_servers=us_ice, region="us"
            ) as us,
        ):
            regions = [LabRegion("eu", eu.url, 120), LabRegion("us", us.url, 7400)]
            with LabLiveKit(
                api_key=API_KEY,
                api_secret=api_secret,
                ice_servers=eu_ice,
                region="eu",
                regions=regions,
            ) as cloud:
                result = lkice(
                    cloud.url, "--api-key", API_KEY, "--api-secret", api_secret, "--json",
                    "--quality-duration", "0",
                )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result)
    found = {r["region"]: r for r in report["regions"]}
    assert set(found) == {"eu", "us"}
    assert found["us"]["distance"] == 7400
    assert all(r["signal"]["ok"] for r in found.values())
    assert found["us"]["signal"]["server"]["region"] == "us"
    by_region = {p["region"]: p for p in report["paths"] if p["kind"] != "sfu"}
    assert set(by_region) == {"eu", "us"}
    assert by_region["us"]["server"] == f"127.0.0.1:{us_turn.port}"
    assert {p["region"] for p in report["paths"] if p["kind"] == "sfu"} == {"eu"}
    assert all(p["ok"] for p in report["paths"])  # each region's TURN with its own credentials
    assert "us-pass" not in result.stdout + result.stderr


def test_self_hosted_server_has_no_region_list(livekit: LabLiveKit, api_secret: str) -> None:
    result = lkice(
        livekit.url,
        "--api-key",
        API_KEY,
        "--api-secret",
        api_secret,
        "--json",
        "--quality-duration",
        "0",
    )
    report = report_of(result)
    assert report["regions"] is None
    assert any("self-hosted" in n for n in report["signal"]["notes"])


def _token(api_secret: str, identity: str, room: str, name: str = "lkice test") -> str:
    from livekit import api

    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_publish_data=True, can_subscribe=True
    )
    return (
        api.AccessToken(API_KEY, api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .to_jwt()
    )


def test_one_token_tests_every_sfu_path_with_one_participant(
    livekit: LabLiveKit, coturn: TurnLab, api_secret: str
) -> None:
    """--token alone (the double-click binary's mode): every SFU path is tested with one
    participant (ICE, DTLS, data channels, RTT from ICE checks) and the report says plainly
    that the data round trip through the SFU needs a second participant."""
    room = "room-" + secrets.token_hex(4)
    token = _token(api_secret, "end-user", room)
    result = lkice(livekit.url, "--token", token, "--json", "--quality-duration", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result)
    sfu = [p for p in report["paths"] if p["kind"] == "sfu"]
    turn_udp, turn_tcp = (f"turn:127.0.0.1:{coturn.port}?transport={t}" for t in ("udp", "tcp"))
    assert sorted((p["transport"], p["relay"] or "") for p in sfu) == [
        ("tcp", turn_tcp),
        ("udp", ""),
        ("udp", turn_udp),
    ]
    for path in sfu:
        assert path["ok"], path["error"]
        assert path["sfu"]["participants"] == 1
        assert path["sfu"]["data_round_trip"] == "not_tested"
        assert path["sfu"]["ice_rtt"]["received"] > 0
    untested = [f for f in report["findings"] if f["id"] == "sfu-data-untested"]
    assert len(untested) == 1
    assert untested[0]["severity"] == "info"
    assert "second participant" in untested[0]["impact"]
    assert not any("need --api-key" in n for n in report["signal"]["notes"])
    assert report["verdict"] == "ok"
    assert token not in result.stdout + result.stderr
    human = lkice(livekit.url, "--token", token, "--quality-duration", "0")
    assert "data round trip through the SFU was not tested" in " ".join(human.stdout.split())


def test_a_second_token_adds_the_data_round_trip(livekit: LabLiveKit, api_secret: str) -> None:
    room = "room-" + secrets.token_hex(4)
    first, second = (_token(api_secret, who, room) for who in ("end-user", "second-seat"))
    result = lkice(
        livekit.url, "--json", "--quality-duration", "0", env={"LIVEKIT_TOKEN": first,
        "LIVEKIT_TOKEN2": second},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result)
    sessions = [p for p in report["paths"] if p["kind"] == "sfu" and p["sfu"] is not None]
    assert sessions
    for path in sessions:
        assert path["ok"], path["error"]
        assert path["sfu"]["participants"] == 2
        assert path["sfu"]["data_round_trip"] == "measured"
        assert path["sfu"]["data_rtt_ms"] > 0
    assert not any(f["id"] == "sfu-data-untested" for f in report["findings"])
    output = result.stdout + result.stderr
    assert first not in output
    assert second not in output


def test_a_second_token_must_be_another_identity_in_the_same_room(
    livekit: LabLiveKit, api_secret: str
) -> None:
    first = _token(api_secret, "end-user", "room-a")
    for second, says in (
        (_token(api_secret, "end-user", "room-a", "again"), "same participant identity"),
        (_token(api_secret, "other", "room-b"), "different rooms"),
    ):
        result = lkice(livekit.url, "--token", first, "--token2", second)
        assert result.returncode == 3, result.stdout + result.stderr
        assert says in result.stderr
        assert first not in result.stderr
        assert second not in result.stderr
