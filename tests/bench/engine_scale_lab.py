"""Engine scaling with a real round-trip time: time-to-verdict for 1, 10 and 50 TURN endpoints
x 3 transports (TURN/UDP, TURN/TCP, TURN/TLS on 443) from the network lab's client, across a
router adding ``--rtt`` ms (default 40), to the lab's coturn.

On loopback (``engine_scale.py``) a run is bound by the agent's CPU, so concurrency has nothing
to hide; here each path waits on the network for four or five round trips, and the goal (50
endpoints in under 1.5x the time of 1) is about overlapping those waits. Every endpoint is a URI
of the same lab server (the lab has one coturn per region), so the server's own load is part of
the figure. Needs root. Figures are printed, never asserted.

Run:  python3 tests/bench/engine_scale_lab.py [--rtt 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from lkice.lab.netlab import Impairment, NetLab, prerequisites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1,10,50")
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        print("network lab unavailable: " + "; ".join(missing), file=sys.stderr)
        return 2
    with NetLab(regions=("eu",)) as lab:
        way = Impairment(delay_ms=args.rtt / 2)
        lab.set_impairment("eu", upstream=way, downstream=way)
        one = lab.turn_uris("eu")
        print(f"engine scale, {args.rtt:g} ms RTT injected, {args.repeat} runs per size")
        print(f"{'endpoints':>9} {'paths':>6} {'ok':>5} {'median ms':>10} {'ratio':>6}  runs (ms)")
        base: float | None = None
        for size in (int(s) for s in args.sizes.split(",")):
            times: list[float] = []
            ok = paths = 0
            for _ in range(args.repeat):
                run = lab.lkice(
                    *(one * size), *lab.turn_args(), "--quality-duration", "0", timeout=300
                )
                if run.report is None:
                    print(f"  no report: {run.stderr.strip()[-300:]}", file=sys.stderr)
                    continue
                paths = len(run.report["paths"])
                ok = sum(1 for p in run.report["paths"] if p["ok"])
                times.append(run.report["duration_ms"])
            if not times:
                continue
            median = statistics.median(times)
            base = base or median
            runs = ", ".join(f"{t:.0f}" for t in times)
            print(f"{size:>9} {paths:>6} {ok:>5} {median:>10.0f} {median / base:>5.2f}x  {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
