"""Soak: many short scheduled-probe runs in one process, as a branch-office daemon does for
weeks. Prints RSS and CPU along the way; RSS should stay flat, and the CPU a run costs, spread
over one run per minute, should be negligible.

    python3 tests/bench/soak.py [--runs 1000] [--every-s 60]

Each run is the daemon's own path: ProbeDaemon.run_once (the whole diagnosis of a STUN and a
TURN URI on UDP, TCP and TLS against a local coturn, findings and recommendation), then the
history append and the metrics update (daemon.record). Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

from lkice import logs
from lkice.daemon import ProbeDaemon, Sinks, record
from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.pki import make_pki
from lkice.metrics import ReportMetrics


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def soak(daemon: ProbeDaemon, runs: int, every_s: float) -> None:
    print(f"{'runs':>6} {'rss MiB':>8} {'cpu ms/run':>11} {'wall ms/run':>12} {'verdicts':>10}")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    window_cpu, window_wall = cpu0, wall0
    verdicts: dict[str, int] = {}
    baseline = None
    step = max(1, runs // 10)
    for n in range(1, runs + 1):
        data, seconds, result = await daemon.run_once()
        record(data, daemon.sinks, job=daemon.definition.name, run_seconds=seconds, result=result)
        verdicts[result] = verdicts.get(result, 0) + 1
        if result != "ok" and data is not None:  # say what went wrong, once per such run
            failed = [
                f"{p['kind']}/{p['transport']}: {p['error']['message']}"
                for p in data["paths"]
                if p["error"]
            ]
            print(f"  run {n}: {result}: {'; '.join(failed) or data.get('findings')}")
        if n % step == 0 or n == runs:
            now_cpu, now_wall = time.process_time(), time.perf_counter()
            count = step if n % step == 0 else n % step
            rss = rss_mib()
            baseline = baseline if baseline is not None else rss
            print(
                f"{n:>6} {rss:>8.1f} {(now_cpu - window_cpu) * 1000 / count:>11.1f} "
                f"{(now_wall - window_wall) * 1000 / count:>12.1f} "
                f"{','.join(f'{k}={v}' for k, v in sorted(verdicts.items())):>10}"
            )
            window_cpu, window_wall = now_cpu, now_wall
    cpu = time.process_time() - cpu0
    per_run = cpu / runs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"runs: {runs}; CPU {per_run * 1000:.1f} ms per run")
    print(f"RSS: first sample {baseline:.1f} MiB, last {rss_mib():.1f} MiB, peak {peak:.1f} MiB")
    print(
        f"at one run every {every_s:g} s: {per_run / every_s * 100:.3f} % of one core "
        "(the run itself; idle waiting costs nothing)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--every-s", type=float, default=60.0)
    args = parser.parse_args()
    logs.configure(json_output=True, level=logging.WARNING)  # the runs' own log: errors only
    password = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="lkice-soak-") as tmp:
        work = Path(tmp)
        pki = make_pki(work)
        with Coturn(CoturnConfig(users={"soak": password}, pki=pki)) as server:
            config = work / "soak.toml"
            config.write_text(
                f"""
[probe]
name = "soak"
labels = {{ site = "bench" }}
[settings]
quality = {{ duration_s = 0 }}
ca_files = ["{pki.ca_file}"]
[credentials]
turn_username = {{ env = "SOAK_USER" }}
turn_password = {{ env = "SOAK_PASS" }}
[[targets]]
uri = "stun:127.0.0.1:{server.port}"
[[targets]]
uri = "turn:127.0.0.1:{server.port}"
[[targets]]
uri = "turns:127.0.0.1:{server.tls_port}?transport=tcp"
"""
            )
            os.environ.update({"SOAK_USER": "soak", "SOAK_PASS": password})
            sinks = Sinks(
                history=work / "history.jsonl",
                history_max_bytes=4 * 2**20,  # rotates during the soak, as in production
                metrics=ReportMetrics(),
            )
            daemon = ProbeDaemon(config, sinks, every=args.every_s)
            asyncio.run(soak(daemon, args.runs, args.every_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
