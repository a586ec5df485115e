"""Ground truth and measurements: what the lab injected and counted (:class:`GroundTruth`),
UDP ping statistics (:class:`PingStats`), the result of ``lkice run`` as the client
(:class:`LkiceRun`), and reading the kernel's nftables counters."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lkice.lab.netlab.addressing import DOWNSTREAM, UPSTREAM
from lkice.lab.netlab.impair import Impairment, counter_name
from lkice.lab.netlab.procs import _in_ns, _run


@dataclass(frozen=True)
class DirectionTruth:
    """One region and direction: what was configured and what the kernel counted."""

    impairment: Impairment
    loss_drops: int  # packets dropped by the loss rule (nftables counter)
    rate_drops: int  # packets dropped by the rate cap
    delayed: int  # packets the delay router queued and released (or dropped when full)
    queue_drops: int  # packets the delay router dropped because its queue was full


@dataclass(frozen=True)
class GroundTruth:
    """What the lab injected, to compare with what the agent measured. Counters are cumulative
    since the lab started (firewall counters since the profile was last set)."""

    profile: str
    reorder: bool
    egress_drops: int  # client->outside packets the firewall profile dropped
    ingress_drops: int  # unsolicited inbound packets the firewall dropped
    regions: dict[str, dict[str, DirectionTruth]]  # region -> "upstream"/"downstream"
    # Packets the delay router itself released more than 5 ms late (a busy host descheduled
    # it), and the latest by how much: holds that were the lab's, not the path's.
    router_late: int = 0
    router_max_late_ms: float = 0.0

    def injected_rtt_ms(self, region: str) -> float:
        """The round-trip delay the lab adds to ``region`` (without its own overhead)."""
        r = self.regions[region]
        return r[UPSTREAM].impairment.delay_ms + r[DOWNSTREAM].impairment.delay_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PingStats:
    """UDP ping-pong from the client to a region's echo server."""

    region: str
    sent: int
    lost: int
    rtts_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rtts_ms) if self.rtts_ms else math.nan

    @property
    def p95_ms(self) -> float:
        return _percentile(self.rtts_ms, 95)

    @property
    def min_ms(self) -> float:
        return min(self.rtts_ms) if self.rtts_ms else math.nan

    @property
    def max_ms(self) -> float:
        return max(self.rtts_ms) if self.rtts_ms else math.nan

    def summary(self) -> dict[str, float | int | str]:
        return {
            "region": self.region,
            "sent": self.sent,
            "lost": self.lost,
            "median_ms": round(self.median_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "min_ms": round(self.min_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class LkiceRun:
    """``lkice run --json`` in the client namespace: exit status and parsed report."""

    returncode: int
    report: dict[str, Any] | None
    stderr: str

    def paths(self) -> list[dict[str, Any]]:
        return list(self.report["paths"]) if self.report else []

    def path(self, uri_contains: str, transport: str | None = None) -> dict[str, Any]:
        """The single path whose URI contains ``uri_contains`` (and on ``transport``)."""
        found = [
            p
            for p in self.paths()
            if uri_contains in p["uri"] and (transport is None or p["transport"] == transport)
        ]
        if len(found) != 1:
            raise LookupError(
                f"{len(found)} paths match {uri_contains!r}/{transport}: "
                f"{[(p['uri'], p['transport']) for p in self.paths()]}"
            )
        return found[0]


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was actually observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def nft_counters(ns: str, table: str) -> dict[str, int]:
    """Packet counts of the named counters of ``inet <table>`` in namespace ``ns``."""
    out = _run(_in_ns(ns, ["nft", "-j", "list", "counters", "table", "inet", table])).stdout
    counters: dict[str, int] = {}
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if counter is not None:
            counters[str(counter["name"])] = int(counter["packets"])
    return counters


def ground_truth_from(
    profile: str,
    reorder: bool,
    region_names: Sequence[str],
    impairments: Mapping[str, Mapping[str, Impairment]],
    router_stats: Mapping[str, Any],
    imp: Mapping[str, int],
    fw: Mapping[str, int],
) -> GroundTruth:
    """The :class:`GroundTruth` of a lab: its profile and impairments with the delay router's
    ``stats`` answer (``router_stats``) and the router's (``imp``) and firewall's (``fw``)
    nftables counters."""
    regions: dict[str, dict[str, DirectionTruth]] = {}
    for i, region in enumerate(region_names):
        flow = router_stats["flows"].get(region, {})
        regions[region] = {}
        for direction, key in ((UPSTREAM, "up"), (DOWNSTREAM, "down")):
            stats = flow.get(key, {})
            regions[region][direction] = DirectionTruth(
                impairment=impairments[region][direction],
                loss_drops=imp.get(counter_name(i, direction, "loss"), 0),
                rate_drops=imp.get(counter_name(i, direction, "rate"), 0),
                delayed=int(stats.get("packets", 0)),
                queue_drops=int(stats.get("queue_drops", 0)),
            )
    late = router_stats.get("late", {})
    return GroundTruth(
        profile=profile,
        reorder=bool(router_stats.get("reorder", reorder)),
        egress_drops=fw.get("egress_drop", 0),
        ingress_drops=fw.get("ingress_drop", 0),
        regions=regions,
        router_late=int(late.get("packets", 0)),
        router_max_late_ms=float(late.get("max_ms", 0.0)),
    )
