"""The network lab: the agent behind real firewalls, NATs and impaired paths, against real coturn
in network namespaces. The lab knows what it injected (ground truth), so the tests check the
agent's findings against it. Root-only tests are marked ``root`` and skipped with the reason
when the machine cannot run the lab; the pure parts (delay queue, rules, values) always run."""

from __future__ import annotations

import json
import random
import re
import struct
from collections.abc import Iterator

import pytest

from lkice.lab.netlab import (
    PROFILES,
    GroundTruth,
    Impairment,
    LkiceRun,
    NetLab,
    destroy,
    leftovers,
    prerequisites,
)
from lkice.lab.router import DelayRouter
from lkice.lab.server import LabError

MISSING = prerequisites()
needs_lab = pytest.mark.skipif(
    bool(MISSING), reason="network lab unavailable: " + "; ".join(MISSING)
)

# Failure cases wait for nothing longer than this (the paths run concurrently).
FAST = ("--udp-timeout", "1", "--timeout", "1.5", "--deadline", "10")


# These tests check connection setup: no quality train (it would add its length to every run).
SETUP_ONLY = ("--quality-duration", "0")


def lkice(lab: NetLab, *args: str) -> LkiceRun:
    return lab.lkice(*args, *SETUP_ONLY)


# One UDP socket asks two servers for its mapped address: the way to tell NAT types apart,
# independently of lkice (whose paths use a fresh socket each; probe/nat.py is its own test).
MAPPING_SNIPPET = """
import json, socket, sys
from aioice import stun
out = {}
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(2.0)
    out["local_port"] = sock.getsockname()[1]
    for host in sys.argv[1:]:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        sock.sendto(bytes(request), (socket.gethostbyname(host), 3478))
        for _ in range(5):
            answer = stun.parse_message(sock.recvfrom(2048)[0])
            if answer.transaction_id == request.transaction_id:
                break
        out[host] = list(answer.attributes["XOR-MAPPED-ADDRESS"])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    if MISSING:
        pytest.skip("network lab unavailable: " + "; ".join(MISSING))
    with NetLab(regions=("eu", "us"), profile="open") as running:
        yield running
    assert leftovers(running.token) == []


@pytest.fixture
def fresh(lab: NetLab) -> NetLab:
    """The shared lab, reset to the open profile with nothing injected."""
    lab.set_profile("open")
    lab.clear_impairments()
    return lab


def binding_ms(lab: NetLab, region: str) -> float:
    run = lkice(lab, f"stun:{lab.turn_host(region)}")
    assert run.returncode == 0, run.stderr
    value = run.path(f"stun:{lab.turn_host(region)}")["timings_ms"]["binding"]
    assert isinstance(value, float)
    return value


# -- pure parts ----------------------------------------------------------------------------------


def packet(src: str, dst: str, seq: int) -> bytes:
    """A minimal IPv4 header with a sequence number after it."""
    return (
        bytes([0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0])
        + bytes(int(x) for x in src.split("."))
        + bytes(int(x) for x in dst.split("."))
        + struct.pack("!I", seq)
    )


def drain(router: DelayRouter, until: float) -> list[tuple[float, int]]:
    """Release everything up to ``until`` in 1 ms steps: (release time, sequence number)."""
    out: list[tuple[float, int]] = []
    t = 0.0
    while t <= until:
        out += [(t, struct.unpack_from("!I", p, 20)[0]) for p in router.due(t)]
        t = round(t + 0.001, 6)
    return out


def jittery(reorder: bool) -> DelayRouter:
    router = DelayRouter(rng=random.Random(7))
    router.configure(
        {
            "reorder": reorder,
            "flows": [
                {
                    "name": "eu",
                    "net": "198.19.0.0/24",
                    "up": {"delay_ms": 20, "jitter_ms": 15},
                    "down": {"delay_ms": 5},
                }
            ],
        }
    )
    for seq in range(200):  # one packet per millisecond
        router.admit(packet("198.18.0.2", "198.19.0.2", seq), seq / 1000.0)
    return router


def test_jitter_keeps_order_unless_reordering_is_asked_for() -> None:
    ordered = drain(jittery(reorder=False), 1.0)
    assert [seq for _, seq in ordered] == list(range(200))
    # Every packet waits at least delay - jitter, and never less than zero.
    assert all(t >= seq / 1000.0 + 0.005 - 1e-9 for t, seq in ordered)
    shuffled = [seq for _, seq in drain(jittery(reorder=True), 1.0)]
    assert sorted(shuffled) == list(range(200))
    assert shuffled != list(range(200))


def test_direction_is_decided_by_address() -> None:
    router = jittery(reorder=False)
    down = packet("198.19.0.2", "198.18.1.1", 1)
    other = packet("198.18.0.2", "198.19.7.2", 2)
    assert router.classify(down) is router.flows[0].down
    assert router.classify(other) is None
    router.due(10.0)
    router.admit(other, 20.0)
    assert router.due(20.0) == [other]  # unmatched traffic is not delayed
    stats = router.stats()
    assert stats["flows"]["eu"]["up"]["packets"] == 200
    assert stats["unmatched"] == 1


def test_impairment_values_are_checked() -> None:
    with pytest.raises(ValueError, match="loss"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        Impairment(delay_ms=-1)
    assert Impairment().is_zero
    assert not Impairment(jitter_ms=1).is_zero


def test_lab_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        NetLab(profile="carrier-grade")
    with pytest.raises(ValueError, match="region name"):
        NetLab(regions=("EU west",))
    with pytest.raises(ValueError, match="token"):
        NetLab(token="../etc")
    with pytest.raises(ValueError, match="not a lab token"):
        leftovers("x")
    assert {"open", "udp-blocked", "tcp443-only", "symmetric-nat"} <= set(PROFILES)


def test_names_fit_interface_limits() -> None:
    lab = NetLab(regions=tuple(f"r{i}" for i in range(200)))
    assert len(f"lk{lab.token}rr199") <= 15
    assert lab.server_ip("r199") == "198.19.199.2"
    assert lab.turn_host("r0") == "turn.r0.lab.test"
    assert all(ns.startswith(f"lk-{lab.token}-") for ns in lab.namespaces)


# -- the lab ----------------------------------------------------------------------------------


@pytest.mark.root
@needs_lab
class TestLab:
    """One lab for all (about 3 s to build); each test starts from the open profile."""

    def test_dns_resolves_each_region_and_nothing_else(self, fresh: NetLab) -> None:
        code = (
            "import socket, sys\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        print(name, socket.gethostbyname(name))\n"
            "    except OSError as exc:\n"
            "        print(name, 'error', type(exc).__name__)\n"
        )
        hosts = [fresh.turn_host("eu"), fresh.turn_host("us"), "nope.lab.test", "example.com"]
        proc = fresh.run_in_client(["python3", "-c", code, *hosts], timeout=30)
        assert proc.returncode == 0, proc.stderr
        answers = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
        assert answers[fresh.turn_host("eu")] == fresh.server_ip("eu") == "198.19.0.2"
        assert answers[fresh.turn_host("us")] == fresh.server_ip("us") == "198.19.1.2"
        assert answers["nope.lab.test"].startswith("error")
        assert answers["example.com"].startswith("error")  # no upstream: nothing leaves

    def test_a_token_in_use_is_never_adopted(self, fresh: NetLab) -> None:
        """Teardown removes everything carrying a token, so a second lab must refuse one."""
        with pytest.raises(LabError, match=f"lab token {fresh.token} is in use"):
            NetLab(token=fresh.token).start()
        assert fresh.ping("eu", count=1).lost == 0  # and the first lab is untouched

    def test_the_lab_has_no_way_out(self, fresh: NetLab) -> None:
        """Route lookups only (no packet is sent): outside 198.18.0.0/15 nothing is routable
        beyond the lab's own firewall."""
        for ns in fresh.namespaces:
            proc = fresh.run_in(ns, ["ip", "route", "get", "192.0.2.1"], timeout=10)
            if ns == fresh.client_ns:
                assert "via 198.18.0.1" in proc.stdout, proc.stdout
            else:
                assert proc.returncode != 0, (ns, proc.stdout)
                assert "unreachable" in proc.stderr.lower(), proc.stderr

    def test_open_profile_every_transport_works(self, fresh: NetLab) -> None:
        host = fresh.turn_host("eu")
        run = lkice(
            fresh,
            f"stun:{host}",
            f"turn:{host}",
            f"turns:{host}:5349?transport=tcp",
            f"turns:{host}:443?transport=tcp",
            *fresh.turn_args(),
        )
        assert run.returncode == 0, (run.stderr, run.paths())
        transports = {(p["uri"].split(":")[0], p["transport"]) for p in run.paths()}
        assert transports == {("stun", "udp"), ("turn", "udp"), ("turn", "tcp"), ("turns", "tls")}
        for path in run.paths():
            assert path["ok"], path
            # Routed, no NAT: the server sees the client's own address.
            assert path["mapped_address"].startswith(f"{fresh.client_ip}:")
            assert path["timings_ms"]["dns"] is not None
        for path in run.paths():
            if path["transport"] == "tls":
                assert path["tls"]["verified"], path["tls"]
            if path["uri"].startswith("turn"):
                assert path["relayed_address"].startswith(f"{fresh.server_ip('eu')}:")

    def test_udp_blocked_fails_udp_and_keeps_tcp_and_tls(self, fresh: NetLab) -> None:
        fresh.set_profile("udp-blocked")
        before = fresh.ground_truth().egress_drops
        host = fresh.turn_host("eu")
        run = lkice(
            fresh, f"turn:{host}", f"turns:{host}:443?transport=tcp", *fresh.turn_args(), *FAST
        )
        assert run.returncode == 1, run.stderr  # degraded: some paths work
        udp = run.path(f"turn:{host}", "udp")
        assert not udp["ok"]
        assert udp["error"]["kind"] == "udp_no_response"
        assert udp["timings_ms"]["dns"] is not None  # DNS still answered, by the firewall
        assert run.path(f"turn:{host}", "tcp")["ok"]
        assert run.path(f"turns:{host}:443", "tls")["ok"]
        assert fresh.ground_truth().egress_drops > before

    def test_tcp443_only_leaves_only_tls_on_443(self, fresh: NetLab) -> None:
        fresh.set_profile("tcp443-only")
        host = fresh.turn_host("eu")
        run = lkice(
            fresh,
            f"turn:{host}",
            f"turns:{host}:5349?transport=tcp",
            f"turns:{host}:443?transport=tcp",
            *fresh.turn_args(),
            *FAST,
        )
        assert run.returncode == 1, run.stderr
        assert run.path(f"turns:{host}:443", "tls")["ok"]
        kinds = {(p["uri"], p["transport"]): p["error"]["kind"] for p in run.paths() if not p["ok"]}
        assert kinds == {
            (f"turn:{host}:3478", "udp"): "udp_no_response",
            (f"turn:{host}:3478", "tcp"): "connect_timeout",  # dropped, not refused
            (f"turns:{host}:5349?transport=tcp", "tls"): "connect_timeout",
        }

    @pytest.mark.parametrize(
        ("profile", "per_destination"), [("symmetric-nat", True), ("nat", False)]
    )
    def test_nat_mapping_per_destination(
        self, fresh: NetLab, profile: str, per_destination: bool
    ) -> None:
        fresh.set_profile(profile)
        eu, us = fresh.turn_host("eu"), fresh.turn_host("us")
        proc = fresh.run_in_client(["python3", "-c", MAPPING_SNIPPET, eu, us], timeout=30)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert seen[eu][0] == seen[us][0] == fresh.fw_outside_ip
        if per_destination:
            assert seen[eu][1] != seen[us][1]
        else:
            assert seen[eu][1] == seen[us][1] == seen["local_port"]
        run = lkice(fresh, f"stun:{eu}", f"stun:{us}")
        assert all(p["ok"] for p in run.paths())
        assert all(p["mapped_address"].startswith(f"{fresh.fw_outside_ip}:") for p in run.paths())
        assert run.report is not None
        found = {f["id"] for f in run.report["findings"]}
        # With only STUN servers (no relay proven), a symmetric NAT is a warning: peer-to-peer
        # ICE would fail from here. A port-preserving NAT is nothing to report.
        assert ("symmetric-nat" in found) is per_destination
        assert run.returncode == (1 if per_destination else 0), run.report["findings"]

    def test_injected_rtt_is_what_the_agent_measures(self, fresh: NetLab) -> None:
        overhead = fresh.measure_overhead("eu")
        assert overhead.lost == 0
        assert overhead.median_ms < 20  # the lab itself must be far faster than what it injects
        fresh.set_impairment(
            "eu", upstream=Impairment(delay_ms=20), downstream=Impairment(delay_ms=20)
        )
        truth = fresh.ground_truth()
        assert truth.injected_rtt_ms("eu") == 40
        assert truth.injected_rtt_ms("us") == 0
        slack = overhead.p95_ms + 5  # the agent's own event loop adds a little
        ping = fresh.ping("eu", count=10)
        assert ping.min_ms >= 40  # the router never releases a packet early
        assert ping.median_ms <= 40 + slack, (ping.summary(), overhead.summary())
        # The best of three runs: the floor is what the path gives, a slow run is the host's.
        eu = [binding_ms(fresh, "eu") for _ in range(3)]
        assert min(eu) >= 40
        assert min(eu) <= 40 + slack, (eu, overhead.summary())
        assert binding_ms(fresh, "us") < 20  # the other region is untouched
        delayed = fresh.ground_truth().regions["eu"]
        assert delayed["upstream"].delayed > truth.regions["eu"]["upstream"].delayed

    def test_jitter_spreads_rtt_but_never_below_the_floor(self, fresh: NetLab) -> None:
        fresh.set_impairment("eu", upstream=Impairment(delay_ms=15, jitter_ms=10))
        ping = fresh.ping("eu", count=30)
        assert ping.lost == 0
        assert ping.min_ms >= 5
        assert ping.max_ms - ping.min_ms > 2, ping.summary()

    def test_total_upstream_loss_fails_udp_and_is_counted(self, fresh: NetLab) -> None:
        before = fresh.ground_truth()
        fresh.set_impairment("eu", upstream=Impairment(loss=1.0))
        run = lkice(fresh, f"stun:{fresh.turn_host('eu')}", f"stun:{fresh.turn_host('us')}", *FAST)
        assert run.returncode == 1, run.stderr
        assert run.path("stun:turn.eu")["error"]["kind"] == "udp_no_response"
        assert run.path("stun:turn.us")["ok"]
        after = fresh.ground_truth()
        dropped = drops(after, "eu", "upstream") - drops(before, "eu", "upstream")
        assert dropped >= 1
        sends = re.search(r"\((\d+) sends?\)", run.path("stun:turn.eu")["error"]["message"])
        if sends:  # the agent says how many requests it sent: the lab dropped every one
            expected = int(sends.group(1))
            # ... and so did the NAT behaviour discovery, which asked the same server (its
            # first test's evidence gives its own count)
            assert run.report is not None
            nat = run.report["nat"]
            assert nat["server"] == run.path("stun:turn.eu")["address"]
            nat_sends = re.search(r"no answer from \S+ \((\d+) sends?\)", nat["evidence"][0])
            assert nat_sends is not None, nat["evidence"]
            assert dropped == expected + int(nat_sends.group(1))
        assert drops(after, "eu", "downstream") == drops(before, "eu", "downstream")
        assert drops(after, "us", "upstream") == drops(before, "us", "upstream")

    def test_partial_loss_matches_the_drop_counter_exactly(self, fresh: NetLab) -> None:
        before = drops(fresh.ground_truth(), "us", "upstream")
        fresh.set_impairment("us", upstream=Impairment(loss=0.25))
        ping = fresh.ping("us", count=40, timeout=0.2)
        counted = drops(fresh.ground_truth(), "us", "upstream") - before
        assert 0 < ping.lost < 40
        assert counted == ping.lost

    def test_rate_cap_rules_load_and_drop_nothing_at_low_rate(self, fresh: NetLab) -> None:
        fresh.set_impairment("us", downstream=Impairment(rate_kbit=512, loss=0.0))
        assert fresh.ping("us", count=5).lost == 0
        truth = fresh.ground_truth().regions["us"]["downstream"]
        assert truth.impairment.rate_kbit == 512
        assert truth.rate_drops == 0


@pytest.mark.root
@needs_lab
def test_a_dead_delay_router_blackholes_instead_of_bypassing() -> None:
    """If the delay router dies, its TUN device goes and the blackhole route behind it takes
    over: traffic stops rather than flowing on without the configured impairment."""
    with NetLab(regions=("eu",)) as lab:
        lab.set_impairment("eu", upstream=Impairment(delay_ms=30))
        assert lab.ping("eu", count=2).lost == 0
        assert lab._router is not None
        lab._router.process.kill()
        lab._router.process.wait(5)
        assert lab.ping("eu", count=3, timeout=0.3).lost == 3


def drops(truth: GroundTruth, region: str, direction: str) -> int:
    return truth.regions[region][direction].loss_drops


@pytest.mark.root
@needs_lab
@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_teardown_leaves_nothing_even_after_an_exception(exc_type: type[BaseException]) -> None:
    lab = NetLab(regions=("eu",))
    caught: BaseException | None = None
    try:
        with lab:
            assert lab.run_in_client(["true"]).returncode == 0
            assert leftovers(lab.token) != []  # the check sees a running lab
            raise exc_type("inside the lab")
    except exc_type as exc:
        caught = exc
    assert isinstance(caught, exc_type)
    assert leftovers(lab.token) == []
    assert destroy(lab.token) == []


@pytest.mark.root
@needs_lab
def test_setup_failing_half_way_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKICE_TURNSERVER", "/bin/false")  # coturn "starts" and exits at once
    lab = NetLab(regions=("eu",))
    with pytest.raises(LabError, match=r"coturn in namespace \S+ exited with status 1"):
        lab.start()
    assert leftovers(lab.token) == []
