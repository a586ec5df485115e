"""Accuracy benchmark: lkice's path-quality figures against the network lab's ground truth.

For each injected round-trip delay {0, 20, 80 ms} (split evenly between the two directions) and
each loss rate {0, 1, 2, 5 %} (applied to each direction), lkice runs ``--runs`` times from the
lab's client namespace against the lab's coturn over TURN/UDP, TURN/TCP and TURN/TLS (443) at
once, with its default probe train (one probe every 20 ms for ``--duration`` seconds). Printed:

- RTT error: median over runs of (measured p50 RTT of the Binding train - injected RTT - the lab's
  own overhead, itself measured with nothing injected), per transport, in ms;
- HOL detection rate on TCP and TLS (Binding train and relay echo) per loss level, and the false
  positive rate at 0 % loss;
- UDP loss measured against the loss the lab's nftables counters actually dropped.

Needs root (network namespaces). Takes about (cells x runs x (duration + 2 s)): the default
12 x 10 x 7 s is about 15 minutes. Figures are printed, never asserted.

Run:  python3 tests/bench/accuracy.py [--runs 10] [--duration 5] [--markdown docs/accuracy.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkice.lab.netlab import NO_IMPAIRMENT, Impairment, NetLab, prerequisites

DELAYS_MS = (0, 20, 80)
LOSSES = (0.0, 0.01, 0.02, 0.05)
REGION = "eu"


@dataclass
class Cell:
    delay_ms: int
    loss: float
    rtt_errors: dict[str, list[float]] = field(default_factory=dict)
    hol: dict[str, list[bool]] = field(default_factory=dict)
    udp_loss: list[float] = field(default_factory=list)
    lab_loss: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def one_run(lab: NetLab, duration: float) -> tuple[dict[str, Any] | None, str]:
    run = lab.lkice(
        *lab.turn_uris(REGION),
        *lab.turn_args(),
        "--quality-duration",
        str(duration),
        timeout=duration + 60,
    )
    return run.report, run.stderr


def measure_cell(lab: NetLab, cell: Cell, runs: int, duration: float, overhead_ms: float) -> None:
    imp = Impairment(delay_ms=cell.delay_ms / 2, loss=cell.loss)
    lab.set_impairment(REGION, upstream=imp, downstream=imp)
    for _ in range(runs):
        before = lab.ground_truth().regions[REGION]
        report, stderr = one_run(lab, duration)
        after = lab.ground_truth().regions[REGION]
        if report is None:
            cell.failures.append(f"no report: {' '.join(stderr.split())[-300:]}")
            continue
        for path in report["paths"]:
            transport = path["transport"]
            if not path["ok"]:
                cell.failures.append(f"{transport}: {path['error']['kind']}")
                continue
            q = path["quality"]
            err = q["rtt_ms"]["p50"] - cell.delay_ms - overhead_ms
            cell.rtt_errors.setdefault(transport, []).append(err)
            if transport == "udp":
                cell.udp_loss.append(q["loss"])
                continue
            for name in ("quality", "relay_quality"):
                if path[name] is not None:
                    key = f"{transport}/{'echo' if name == 'relay_quality' else 'bind'}"
                    cell.hol.setdefault(key, []).append(bool(path[name]["hol"]["detected"]))
        # What the lab really dropped during this run, both directions (all paths together).
        dropped = sum(after[d].loss_drops - before[d].loss_drops for d in after)
        delayed = sum(after[d].delayed - before[d].delayed for d in after)
        if delayed:
            cell.lab_loss.append(dropped / (dropped + delayed))
    lab.set_impairment(REGION, upstream=NO_IMPAIRMENT, downstream=NO_IMPAIRMENT)


def rate(values: list[bool]) -> str:
    return (
        f"{100 * sum(values) / len(values):5.1f}% ({sum(values)}/{len(values)})" if values else "-"
    )


def render(cells: list[Cell], runs: int, duration: float, overhead: Any, elapsed: float) -> str:
    lines = [
        f"lkice accuracy benchmark: {runs} runs per cell, {duration:g} s train at 20 ms, "
        f"lab overhead median {overhead.median_ms:.2f} ms (p95 {overhead.p95_ms:.2f} ms), "
        f"{elapsed / 60:.1f} min",
        "",
        "| delay ms | loss % | RTT err udp | RTT err tcp | RTT err tls | HOL tcp bind | HOL tcp echo "
        "| HOL tls bind | HOL tls echo | UDP loss measured | lab dropped |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        errs = [
            f"{statistics.median(c.rtt_errors[t]):+.2f}" if c.rtt_errors.get(t) else "-"
            for t in ("udp", "tcp", "tls")
        ]
        hol = [rate(c.hol.get(k, [])) for k in ("tcp/bind", "tcp/echo", "tls/bind", "tls/echo")]
        udp = f"{100 * statistics.mean(c.udp_loss):.2f}%" if c.udp_loss else "-"
        lab = f"{100 * statistics.mean(c.lab_loss):.2f}%" if c.lab_loss else "-"
        lines.append(
            f"| {c.delay_ms} | {100 * c.loss:g} | {' | '.join(errs)} | {' | '.join(hol)} | {udp} | {lab} |"
        )
        if c.failures:
            lines.append(f"|  | failures: {'; '.join(sorted(set(c.failures)))} |||||||||")
    lines += [
        "",
        "RTT err: median over runs of (p50 RTT - injected RTT - lab overhead median), ms.",
        "HOL: runs in which a head-of-line stall was detected (at 0 % loss: false positives).",
        "UDP loss measured: mean round-trip loss of the UDP Binding train; lab dropped: the share of "
        "packets the lab's nftables rules dropped in both directions (all paths).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--delays", default=",".join(map(str, DELAYS_MS)))
    parser.add_argument("--losses", default=",".join(f"{x:g}" for x in LOSSES))
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        print("network lab unavailable: " + "; ".join(missing), file=sys.stderr)
        return 2
    start = time.monotonic()
    cells = [Cell(int(d), float(x)) for d in args.delays.split(",") for x in args.losses.split(",")]
    with NetLab(regions=(REGION,)) as lab:
        overhead = lab.measure_overhead(REGION, count=200)
        for cell in cells:
            print(
                f"  delay {cell.delay_ms} ms, loss {100 * cell.loss:g} %...",
                file=sys.stderr,
                flush=True,
            )
            measure_cell(lab, cell, args.runs, args.duration, overhead.median_ms)
    table = render(cells, args.runs, args.duration, overhead, time.monotonic() - start)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(
            "# Accuracy against the lab's ground truth\n\n"
            "Reproduce (root): `python3 tests/bench/accuracy.py "
            f"--runs {args.runs} --duration {args.duration:g}`\n\n" + table
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
