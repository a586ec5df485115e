"""Probe trains on real coturn over loopback: every path measured at the same time."""

from __future__ import annotations

import ssl

from lkice.credentials import Secret, TurnCredentials
from lkice.engine import EngineSettings, run
from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.pki import LabPki
from lkice.probe.path import ProbeSettings
from lkice.probe.train import TrainSettings
from lkice.uri import parse_ice_uri
from tests.conftest import TurnLab, needs_coturn, plain, validate_report

pytestmark = needs_coturn


async def test_every_path_gets_a_quality_train(coturn: TurnLab, pki: LabPki) -> None:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(pki.ca_file))
    train = TrainSettings(interval=0.02, duration=1.0)
    settings = EngineSettings(
        probe=ProbeSettings(
            credentials=TurnCredentials(Secret(coturn.user), Secret(coturn.password)),
            tls_context=ctx,
            train=train,
        ),
        # Setup takes milliseconds here; four 1 s trains only fit this deadline if they run together.
        deadline=2.0 + train.duration + train.grace,
    )
    uris = [
        f"stun:127.0.0.1:{coturn.port}",
        f"turn:127.0.0.1:{coturn.port}?transport=udp",
        f"turn:127.0.0.1:{coturn.port}?transport=tcp",
        f"turns:127.0.0.1:{coturn.tls_port}",
    ]
    report = await run([parse_ice_uri(u) for u in uris], settings)
    data = plain(report.to_dict())
    validate_report(data)
    assert report.verdict == "ok"
    assert data["settings"]["quality"]["probes"] == 50
    for path in data["paths"]:
        q = path["quality"]
        assert q is not None, path
        assert q["samples"] == 50
        assert q["received"] == 50  # loopback loses nothing
        assert q["loss"] == 0
        assert q["rtt_ms"]["p50"] > 0
        assert q["rtt_ms"]["p50"] <= q["rtt_ms"]["p95"] <= q["rtt_ms"]["p99"] <= q["rtt_ms"]["max"]
        assert q["jitter_ms"] is not None
        assert q["mos"] > 4.0
        if path["transport"] == "udp":
            assert q["hol"] is None  # not applicable to datagrams
        else:
            assert q["hol"]["detected"] is False
            assert q["hol"]["stalls"] == 0
        if path["kind"] == "turn":
            # The train ran on the live allocation, which was still released afterwards.
            assert path["deallocated"] is True
            assert path["timings_ms"]["deallocate"] is not None
            # Data through the relay to a second allocation of ours and back.
            relay = path["relay_quality"]
            assert relay is not None, path["notes"]
            assert relay["samples"] == 50
            assert relay["received"] == 50
            assert relay["rtt_ms"]["p50"] > 0
            assert (relay["hol"] is None) == (path["transport"] == "udp")
        else:
            assert path["relay_quality"] is None  # a STUN server relays nothing


async def test_failed_paths_have_no_quality(closed_port: int) -> None:
    settings = EngineSettings(
        probe=ProbeSettings(udp_timeout=0.5, train=TrainSettings(duration=0.5))
    )
    report = await run([parse_ice_uri(f"stun:127.0.0.1:{closed_port}")], settings)
    (path,) = report.paths
    assert not path.ok
    assert path.quality is None


async def test_relay_echo_needs_a_second_allocation_and_says_so(pki: LabPki) -> None:
    """With a per-user quota of 1 the echo peer cannot allocate: the path still works, the
    Binding train is measured, and the report says why the relay was not."""
    with Coturn(CoturnConfig(users={"q": "pw"}, user_quota=1)) as server:
        settings = EngineSettings(
            probe=ProbeSettings(
                credentials=TurnCredentials(Secret("q"), Secret("pw")),
                train=TrainSettings(duration=0.5),
            )
        )
        report = await run([parse_ice_uri(f"turn:127.0.0.1:{server.port}?transport=udp")], settings)
    (path,) = report.paths
    assert path.ok
    assert path.quality is not None
    assert path.relay_quality is None
    assert any("relay_quality not measured" in n and "486" in n for n in path.notes), path.notes
    assert path.deallocated is True
