"""Head-of-line detection and false-positive rates in the network lab (issue 14, part A).

For each loss rate {0, 0.5, 1, 2 %} (applied to each direction, at 40 ms RTT: 20 ms each way)
and each condition, lkice runs ``--runs`` times from the lab's client namespace against the lab's
coturn over TURN/UDP, TURN/TCP and TURN/TLS (443) at once, with a ``--duration`` s train:

- ``plain``: the network as configured, nothing else;
- ``holds``: the delay router freezes all forwarding (every connection, UDP too) for 150 ms every
  900 ms through the run (a Wi-Fi scan, a paused VM or a stalled router, as a host sees it);
- ``hogs``: two busy Python processes beside lkice on this machine for the whole run.

Printed per cell: the share of TCP/TLS trains (Binding and relay echo) with ``hol.detected``; the
share of (run, transport) pairs where TCP, resp. TLS, had a stall on either train; the share of
runs with a ``hol-blocking`` finding and of those whose text says "loss"; shared holds and
agent-stall exclusions seen; kernel retransmission evidence; ``agent-busy`` findings. At 0 % loss
every detection is a false positive; elsewhere it is the detection rate (goals: >= 95 % at 1 %,
>= 80 % at 0.5 %, <= 1 % false positives).

Needs root. About cells x runs x (duration + 3 s): the default 12 x 10 x 8 s is about 16 min.
Figures are printed, never asserted. ``--save DIR`` keeps every report (JSON) for a replay.

Run:  python3 tests/bench/hol_rates.py [--runs 10] [--duration 5] [--conditions plain,holds,hogs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkice.lab.netlab import NO_IMPAIRMENT, Impairment, NetLab, prerequisites

LOSSES = (0.0, 0.005, 0.01, 0.02)
CONDITIONS = ("plain", "holds", "hogs")
REGION = "eu"
HOLD_MS = 150.0
HOLD_EVERY_MS = 900.0
HOGS = 2
STREAMS = ("tcp", "tls")
NETWORK_FINDINGS = ("hol-blocking", "high-jitter", "high-loss", "relay-loss", "low-mos")


@dataclass
class Cell:
    loss: float
    condition: str
    runs: int = 0
    trains: list[bool] = field(default_factory=list)  # per TCP/TLS train: hol.detected
    per_transport: dict[str, list[bool]] = field(default_factory=dict)
    finding: list[bool] = field(default_factory=list)  # per run: hol-blocking present
    says_loss: list[bool] = field(default_factory=list)  # per hol-blocking finding
    network: list[bool] = field(default_factory=list)  # per run: any network finding
    shared: int = 0  # stalls set aside as shared holds, all trains
    discounted: int = 0  # stalls set aside as the agent's own
    excluded: int = 0  # answers left out of the statistics (agent stalled)
    retrans_trains: list[bool] = field(default_factory=list)  # per train: kernel saw a repair
    agent_busy: list[bool] = field(default_factory=list)
    loop_max_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def hogs(seconds: float) -> list[subprocess.Popen[bytes]]:
    """Busy processes beside lkice, each ending by itself after ``seconds`` (bounded)."""
    code = f"import time\nend = time.monotonic() + {seconds:.1f}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(HOGS)]


def router_hold(lab: NetLab, spec: dict[str, Any]) -> None:
    # The lab has no public call for this yet: the router's own control line (lkice.lab.router).
    router = lab._router
    assert router is not None
    router.request({"hold": spec})


def one_run(lab: NetLab, cell: Cell, duration: float, save: Path | None) -> None:
    helpers: list[subprocess.Popen[bytes]] = []
    if cell.condition == "holds":
        count = int((duration + 6.0) * 1000 / HOLD_EVERY_MS) + 1
        router_hold(lab, {"ms": HOLD_MS, "every_ms": HOLD_EVERY_MS, "count": count})
    elif cell.condition == "hogs":
        helpers = hogs(duration + 8.0)
    try:
        run = lab.lkice(
            *lab.turn_uris(REGION),
            *lab.turn_args(),
            "--quality-duration",
            str(duration),
            timeout=duration + 60,
        )
    finally:
        if cell.condition == "holds":
            router_hold(lab, {"clear": True})
        for proc in helpers:
            proc.kill()
            proc.wait(5)
    report = run.report
    if report is None:
        cell.failures.append(f"no report: {' '.join(run.stderr.split())[-200:]}")
        return
    cell.runs += 1
    if save is not None:
        name = f"{cell.condition}-{cell.loss * 100:g}-{cell.runs:03d}.json"
        (save / name).write_text(json.dumps(report))
    for path in report["paths"]:
        transport = path["transport"]
        if not path["ok"]:
            cell.failures.append(f"{transport}: {path['error']['kind']}")
            continue
        if transport not in STREAMS:
            continue
        seen = False
        for name in ("quality", "relay_quality"):
            q = path.get(name)
            if not q or not q.get("hol"):
                continue
            hol = q["hol"]
            cell.trains.append(bool(hol["detected"]))
            seen = seen or bool(hol["detected"])
            cell.shared += int(hol.get("shared") or 0)
            cell.discounted += int(hol.get("discounted") or 0)
            cell.excluded += int(q.get("excluded") or 0)
            tcp = q.get("tcp")
            if tcp is not None:
                repairs = (tcp.get("retransmits") or 0) - (tcp.get("spurious") or 0)
                cell.retrans_trains.append(repairs > 0 or bool(tcp.get("out_of_order")))
        cell.per_transport.setdefault(transport, []).append(seen)
    findings = {f["id"]: f for f in report.get("findings") or []}
    hol = findings.get("hol-blocking")
    cell.finding.append(hol is not None)
    if hol is not None:
        text = " ".join([hol["summary"], hol["impact"], *hol["evidence"]]).lower()
        cell.says_loss.append("loss" in text or "lost" in text)
    cell.network.append(any(f in findings for f in NETWORK_FINDINGS))
    cell.agent_busy.append("agent-busy" in findings)
    stalls = (report.get("agent") or {}).get("loop_stalls") or {}
    if stalls.get("max_ms") is not None:
        cell.loop_max_ms.append(float(stalls["max_ms"]))


def rate(values: list[bool]) -> str:
    if not values:
        return "-"
    return f"{100 * sum(values) / len(values):.0f}% ({sum(values)}/{len(values)})"


def render(cells: list[Cell], runs: int, duration: float, elapsed: float) -> str:
    lines = [
        f"lkice HOL rates: {runs} runs per cell, {duration:g} s train at 20 ms, 40 ms RTT, "
        f"{elapsed / 60:.1f} min",
        "",
        "| loss % | condition | trains with HOL | TCP | TLS | hol-blocking runs | says loss "
        "| network finding | shared | agent-set-aside | excluded answers | kernel repair seen "
        "| agent-busy | loop max ms (max) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        loop = f"{max(c.loop_max_ms):.0f}" if c.loop_max_ms else "-"
        lines.append(
            f"| {100 * c.loss:g} | {c.condition} | {rate(c.trains)} "
            f"| {rate(c.per_transport.get('tcp', []))} | {rate(c.per_transport.get('tls', []))} "
            f"| {rate(c.finding)} | {rate(c.says_loss)} | {rate(c.network)} | {c.shared} "
            f"| {c.discounted} | {c.excluded} | {rate(c.retrans_trains)} | {rate(c.agent_busy)} "
            f"| {loop} |"
        )
        if c.failures:
            lines.append(f"|  | failures: {'; '.join(sorted(set(c.failures)))[:300]} |")
    lines += [
        "",
        "trains with HOL: TCP/TLS Binding and relay-echo trains with hol.detected (at 0 % loss:",
        "false positives). TCP, TLS: runs in which that transport stalled on either train.",
        "says loss: hol-blocking findings whose text names loss. shared / agent-set-aside: stalls",
        "vetoed as holds seen on UDP at the same moment / released while lkice's own loop stalled.",
        "kernel repair seen: trains whose TCP_INFO shows a retransmission (not proven spurious) or",
        "data received out of order during the train.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--losses", default=",".join(f"{x:g}" for x in LOSSES))
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--save", type=Path, help="keep every report (JSON) in this directory")
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        print("network lab unavailable: " + "; ".join(missing), file=sys.stderr)
        return 2
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown condition(s) {sorted(unknown)}: one of {', '.join(CONDITIONS)}")
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cells = [Cell(float(x), c) for x in args.losses.split(",") for c in conditions]
    with NetLab(regions=(REGION,)) as lab:
        for cell in cells:
            print(f"  loss {100 * cell.loss:g} %, {cell.condition}...", file=sys.stderr, flush=True)
            imp = Impairment(delay_ms=20, loss=cell.loss)
            lab.set_impairment(REGION, upstream=imp, downstream=imp)
            for _ in range(args.runs):
                one_run(lab, cell, args.duration, args.save)
            lab.set_impairment(REGION, upstream=NO_IMPAIRMENT, downstream=NO_IMPAIRMENT)
    print(render(cells, args.runs, args.duration, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
