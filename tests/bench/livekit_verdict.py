"""Time-to-verdict of the full LiveKit diagnosis in the network lab: signaling step by step, the
join's TURN servers on every transport, and media paths through the SFU (direct and forced
through each TURN URL), with the lab LiveKit and coturn in a region namespace and lkice in the
client namespace behind the ``open`` and ``udp-blocked`` firewall profiles.

Goals (from the LiveKit issue): under 5 s when everything is reachable, under 8 s when UDP is
blocked. Measured here with ``--quality-duration 0`` (setup only: the verdict) and with the
default 5 s quality train, whose length adds to the run by design. Needs root. Figures only.

Run:  python3 tests/bench/livekit_verdict.py [--repeat 3] [--rtt 40]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time

from lkice.lab.netlab import Impairment, NetLab, prerequisites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rtt", type=float, default=40.0)
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        print("network lab unavailable: " + "; ".join(missing), file=sys.stderr)
        return 2
    api_key, api_secret = "APIbench", secrets.token_urlsafe(32)
    print(
        f"full LiveKit diagnosis, {args.rtt:g} ms RTT, {args.repeat} runs each; wall time of `lkice run`"
    )
    print(f"{'profile':<12} {'train s':>7} {'median s':>9} {'verdict':>9}  runs (s)")
    for profile in ("open", "udp-blocked"):
        with NetLab(regions=("eu",), profile=profile) as lab:
            way = Impairment(delay_ms=args.rtt / 2)
            lab.set_impairment("eu", upstream=way, downstream=way)
            url = lab.start_livekit("eu", api_key, api_secret)
            for train in ("0", "5"):
                walls: list[float] = []
                verdict = "?"
                for _ in range(args.repeat):
                    start = time.monotonic()
                    proc = lab.run_in_client(
                        ["python3", "-m", "lkice", "run", url, "--ca-file", str(lab.ca_file),
                         "--json", "--quality-duration", train],
                        env={"LIVEKIT_API_KEY": api_key, "LIVEKIT_API_SECRET": api_secret},
                        timeout=120,
                    )  # fmt: skip
                    walls.append(time.monotonic() - start)
                    try:
                        verdict = json.loads(proc.stdout)["verdict"]
                    except (ValueError, KeyError):
                        verdict = f"no report ({proc.stderr.strip()[-120:]})"
                runs = ", ".join(f"{w:.2f}" for w in walls)
                print(
                    f"{profile:<12} {train:>7} {statistics.median(walls):>9.2f} {verdict:>9}  {runs}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
