"""Engine scaling benchmark: time-to-verdict for 1, 10 and 50 TURN endpoints on loopback.

Each endpoint is one server address probed over TURN/UDP, TURN/TCP and TURN/TLS (3 paths). One
coturn process listens on 127.0.0.1 .. 127.0.0.N (Linux routes all of 127.0.0.0/8 to lo), so the
endpoints are distinct addresses without starting 50 servers; its certificate names every one of
them. Nothing leaves loopback.

For each size: one warm-up run, then ``--repeat`` measured runs. Time-to-verdict is the wall time of
``asyncio.run(lkice.engine.run(...))``; the engine's own ``Report.duration_ms`` is shown too. The
product owner's goal is that the engine scales by concurrency: 50 endpoints in under 1.5x the time
of 1. Figures are printed, never asserted (shared machines are noisy); the script exits 0 unless
the lab itself cannot start.

Run:  python3 tests/bench/engine_scale.py [--repeat N] [--sizes 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lkice.credentials import Secret, TurnCredentials
from lkice.engine import EngineSettings, run
from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.pki import make_pki
from lkice.probe.path import ProbeSettings
from lkice.uri import IceUri, parse_ice_uri

GOAL_RATIO = 1.5
MAX_ENDPOINTS = 250  # 127.0.0.1 .. 127.0.0.250


@dataclass
class SizeResult:
    endpoints: int
    paths: int = 0
    ok_paths: int = 0  # in the worst measured run
    wall_s: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # this process's CPU time per run
    verdicts: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per size (default 5)")
    parser.add_argument(
        "--sizes",
        default="1,10,50",
        help="comma-separated endpoint counts (default 1,10,50; the first is the ratio base)",
    )
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="engine deadline per run, seconds"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated integers")
    if not args.sizes or any(not 1 <= n <= MAX_ENDPOINTS for n in args.sizes):
        parser.error(f"--sizes: each count must be between 1 and {MAX_ENDPOINTS}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def loopback_addresses(count: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


def endpoint_uris(addresses: list[str], port: int, tls_port: int) -> list[IceUri]:
    uris: list[IceUri] = []
    for ip in addresses:
        uris += [
            parse_ice_uri(f"turn:{ip}:{port}?transport=udp"),
            parse_ice_uri(f"turn:{ip}:{port}?transport=tcp"),
            parse_ice_uri(f"turns:{ip}:{tls_port}?transport=tcp"),
        ]
    return uris


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def nproc() -> int | None:
    # Like nproc(1): the CPUs this process may run on, not all the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def coturn_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def measure(size: int, uris: list[IceUri], settings: EngineSettings, repeat: int) -> SizeResult:
    result = SizeResult(endpoints=size)
    asyncio.run(run(uris, settings))  # warm-up, not counted
    for _ in range(repeat):
        cpu_start, start = time.process_time(), time.perf_counter()
        report = asyncio.run(run(uris, settings))
        result.wall_s.append(time.perf_counter() - start)
        result.cpu_s.append(time.process_time() - cpu_start)
        result.engine_ms.append(report.duration_ms)
        result.verdicts.add(report.verdict)
        ok = sum(p.ok for p in report.paths)
        if not result.wall_s[:-1] or ok < result.ok_paths:
            result.paths, result.ok_paths = len(report.paths), ok
        for path in report.paths:
            if not path.ok and len(result.errors) < 5:
                err = path.error
                detail = f"{err.kind} in {err.phase}: {err.message}" if err else "no error recorded"
                result.errors.append(f"{path.address} {path.transport}: {detail}")
    return result


def print_table(results: list[SizeResult]) -> None:
    base = statistics.median(results[0].wall_s)
    header = (
        f"{'endpoints':>9} {'paths':>5} {'ok paths':>8} {'median s':>9} {'min s':>8} "
        f"{'max s':>8} {'engine ms':>9} {'cpu s':>7} {'ratio':>6} {'verdict':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        median = statistics.median(r.wall_s)
        print(
            f"{r.endpoints:>9} {r.paths:>5} {f'{r.ok_paths}/{r.paths}':>8} {median:>9.3f} "
            f"{min(r.wall_s):>8.3f} {max(r.wall_s):>8.3f} "
            f"{statistics.median(r.engine_ms):>9.1f} {statistics.median(r.cpu_s):>7.3f} "
            f"{median / base:>5.2f}x "
            f"{','.join(sorted(r.verdicts)):>8}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = turnserver_path()
    if binary is None:
        print("coturn (turnserver) is not installed: apt-get install coturn", file=sys.stderr)
        return 2
    addresses = loopback_addresses(max(args.sizes))
    print(
        f"lkice engine scale benchmark: {len(addresses)} loopback address(es), "
        "3 transports each (TURN/UDP, TURN/TCP, TURN/TLS)"
    )
    print(
        f"nproc {nproc()}, {platform.python_implementation()} {platform.python_version()}, "
        f"coturn {coturn_version(binary)}, repeat {args.repeat} (+1 warm-up per size)"
    )
    user, password = "bench", secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="lkice-bench-") as tmp:
        pki = make_pki(Path(tmp), identities=(*addresses, "localhost"))
        config = CoturnConfig(
            listen_ip=addresses[0],
            users={user: password},
            pki=pki,
            extra=[f"listening-ip={ip}" for ip in addresses[1:]],
        )
        tls = ssl.create_default_context()
        tls.load_verify_locations(cafile=str(pki.ca_file))
        settings = EngineSettings(
            probe=ProbeSettings(
                credentials=TurnCredentials(Secret(user), Secret(password)), tls_context=tls
            ),
            deadline=args.deadline,
        )
        results: list[SizeResult] = []
        with Coturn(config) as server:
            print(f"coturn ports: {server.port} (UDP+TCP), {server.tls_port} (TLS)\n")
            for size in args.sizes:
                uris = endpoint_uris(addresses[:size], server.port, server.tls_port)
                results.append(measure(size, uris, settings, args.repeat))
    print_table(results)
    print(
        "\nmedian/min/max s: wall time of asyncio.run(engine.run(...)); engine ms: median "
        "Report.duration_ms;\ncpu s: median CPU time of this process per run (cpu close to wall "
        "means CPU-bound: on loopback\nthere is no network latency for concurrency to hide); "
        "ratio: median vs the first size."
    )
    base, last = results[0], results[-1]
    if len(results) > 1:
        ratio = statistics.median(last.wall_s) / statistics.median(base.wall_s)
        print(
            f"\n{last.endpoints} vs {base.endpoints} endpoint(s): {ratio:.2f}x median "
            f"time-to-verdict (product goal: under {GOAL_RATIO}x; a figure, not a test)"
        )
    failed = [r for r in results if r.ok_paths != r.paths]
    for r in failed:
        print(f"\n{r.endpoints} endpoint(s): {r.paths - r.ok_paths} path(s) failed, first ones:")
        for line in r.errors:
            print(f"  {line}")
    print(f"\npeak RSS (this process, ru_maxrss): {peak_rss_mib():.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
