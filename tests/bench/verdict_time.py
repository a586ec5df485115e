"""Time to verdict at 60 ms RTT as a ratio to the physical limit, and start-up (issue 14).

    python3 tests/bench/verdict_time.py [--rtt 60] [--repeat 5] [--tree DIR] [--no-lab]

Start-up (no root; this machine, loopback): the median wall time of ``lkice --version``, of
``lkice run`` with nothing to probe (a usage error, exit 3), and of ``lkice run`` until its first
probe reaches a local socket (TURN/UDP: the first datagram; TURN/TLS: the TCP connection
accepted). Every child runs with ``PYTHONDONTWRITEBYTECODE`` removed from its environment, after
one warm run (with it set, as this sandbox sets it, every start compiles every module).

Time to verdict (root: the namespace lab, coturn behind ``--rtt``/2 of delay each way): ``lkice
run --quality-duration 0`` from the client namespace against the lab's TURN server by address,
over UDP, TCP, TLS (port 443) alone and all three at once, timed from the process's start to the
moment the ``Verdict:`` line reaches stdout, and to its exit. The limit is the round trips the
protocols need: UDP 2 (the 401 round, the Allocate), TCP 3 (+ the TCP handshake), TLS 4 with
TLS 1.3 and 5 with TLS 1.2 (the server's choice, read from the report); all three at once, the
slowest of them. One RTT is the lab's measured UDP ping (the injected delay plus the lab's own
overhead). Printed per row (medians): the time to the verdict line and to exit; the diagnosis
(the report's ``duration_ms``: from the probes' start to the report, before findings) as a ratio
to the limit; and lkice's own time, the verdict line less the diagnosis (start-up, option
parsing, findings, rendering). Goal: the diagnosis within 1.25 x the limit, and under 100 ms of
lkice's own time. The start-up rows above split that own time: bare ``python3 -c pass`` is the
interpreter's share.

``--tree DIR`` runs the lkice package found in DIR (a copy of an older tree, to compare).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent.parent
REGION = "eu"
TURN_PORT, TLS_PORT = 3478, 443
# Round trips to the verdict: the 401 round and the Allocate, + the TCP handshake, + TLS's.
LIMIT_RTTS = {"udp": 2, "tcp": 3}
TLS_LIMIT_RTTS = {"TLSv1.3": 4, "TLSv1.2": 5}
GOAL_RATIO, GOAL_STARTUP_MS = 1.25, 100.0


def child_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    return env


def lkice_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lkice", *args]


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


# -- start-up ---------------------------------------------------------------------------------


def time_exit(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def time_first_probe(transport: str, env: dict[str, str]) -> float:
    """Seconds from the process's start to its first probe on a socket of ours (then killed)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if transport == "udp":
            uri = f"turn:127.0.0.1:{port}?transport=udp"
        else:
            sock.listen(8)
            uri = f"turns:127.0.0.1:{port}?transport=tcp"
        argv = lkice_argv("run", uri, "-u", "bench", "-p", "bench", "--quality-duration", "0")
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sock.settimeout(30)
            if transport == "udp":
                sock.recvfrom(2048)
            else:
                conn, _ = sock.accept()
                conn.close()
            return time.perf_counter() - start
        finally:
            proc.kill()
            proc.wait()


def startup(tree: Path, repeat: int) -> dict[str, float]:
    env = child_env(tree)
    cases: dict[str, Any] = {
        "python3 -c pass": lambda: time_exit([sys.executable, "-c", "pass"], env),
        "--version": lambda: time_exit(lkice_argv("--version"), env),
        "usage error": lambda: time_exit(lkice_argv("run"), env),
        "run, first probe (UDP)": lambda: time_first_probe("udp", env),
        "run, first probe (TLS)": lambda: time_first_probe("tls", env),
    }
    out: dict[str, float] = {}
    print(f"start-up, {sys.executable}, tree {tree} (bytecode written, after one warm run)")
    print(f"  {'command':<26} {'median ms':>10} {'min ms':>8}")
    for name, measure in cases.items():
        measure()  # warm: bytecode written, files in the page cache
        times = [measure() for _ in range(repeat)]
        out[name] = median_ms(times)
        print(f"  {name:<26} {out[name]:>10.0f} {min(times) * 1000:>8.0f}")
    return out


# -- time to verdict in the lab ---------------------------------------------------------------


def limit_rtts(report: dict[str, Any]) -> tuple[int, str]:
    """The round trips the slowest path of the run needs, and what it is."""
    worst, what = 0, ""
    for path in report["paths"]:
        transport = path["transport"]
        if transport == "tls":
            version = (path.get("tls") or {}).get("version") or "TLSv1.2"
            rtts, label = TLS_LIMIT_RTTS.get(version, 5), f"tls ({version})"
        else:
            rtts, label = LIMIT_RTTS[transport], transport
        if rtts > worst:
            worst, what = rtts, label
    return worst, what


def timed_run(
    lab: Any, argv: list[str], env: dict[str, str]
) -> tuple[float, float, dict[str, Any] | None]:
    """(seconds to the Verdict line on stdout, seconds to exit, the report written by -o)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        start = time.perf_counter()
        proc = lab.popen_in_client([*argv, "-o", str(out)], env=env)
        verdict = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if verdict is None and line.startswith("Verdict:"):
                verdict = time.perf_counter() - start
        proc.wait(timeout=60)
        ended = time.perf_counter() - start
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        if verdict is None:
            print(f"    no verdict (exit {proc.returncode}): {stderr[-300:]}")
        report = json.loads(out.read_text()) if out.exists() else None
    return verdict if verdict is not None else float("nan"), ended, report


def lab_rows(rtt: float, repeat: int, tree: Path) -> None:
    from lkice.lab.netlab import Impairment, NetLab, prerequisites

    missing = prerequisites()
    if missing:
        print("time to verdict: the namespace lab is unavailable: " + "; ".join(missing))
        return
    with NetLab(regions=(REGION,), profile="open") as lab:
        way = Impairment(delay_ms=rtt / 2)
        lab.set_impairment(REGION, upstream=way, downstream=way)
        ping = lab.ping(REGION, count=30)
        one = ping.median_ms
        ip = lab.server_ip(REGION)
        uris = {
            "udp": [f"turn:{ip}:{TURN_PORT}?transport=udp"],
            "tcp": [f"turn:{ip}:{TURN_PORT}?transport=tcp"],
            "tls": [f"turns:{ip}:{TLS_PORT}?transport=tcp"],
        }
        uris["all three"] = [u for group in list(uris.values()) for u in group]
        print(
            f"\ntime to verdict, namespace lab, {rtt:g} ms injected RTT ({rtt / 2:g} ms each way); "
            f"measured RTT (UDP ping, median) {one:.1f} ms; {repeat} runs each"
        )
        print(
            f"  {'paths':<10} {'limit':<22} {'verdict ms':>10} {'exit ms':>8} {'diagnosis':>10} "
            f"{'ratio':>6} {'own ms':>7}  goal (ratio <= {GOAL_RATIO}, own < {GOAL_STARTUP_MS:g} ms)"
        )
        env = {"PYTHONPATH": str(tree)}
        for name, targets in uris.items():
            argv = lkice_argv("run", *targets, *lab.turn_args(), "--quality-duration", "0")
            timed_run(lab, argv, env)  # warm
            runs = [timed_run(lab, argv, env) for _ in range(repeat)]
            reports = [r for _, _, r in runs if r is not None]
            if not reports:
                print(f"  {name:<10} no report")
                continue
            rtts, what = limit_rtts(reports[-1])
            limit_ms = rtts * one
            verdict = median_ms([v for v, _, _ in runs])
            ended = median_ms([e for _, e, _ in runs])
            diagnosis = statistics.median(r["duration_ms"] for r in reports)
            own = statistics.median(v * 1000 - r["duration_ms"] for v, _, r in runs if r)
            ratio = diagnosis / limit_ms
            met = ratio <= GOAL_RATIO and own < GOAL_STARTUP_MS
            verdicts = {r["verdict"] for r in reports}
            limit = f"{rtts} RTT {what} {limit_ms:.0f}"
            print(
                f"  {name:<10} {limit:<22} {verdict:>10.0f} {ended:>8.0f} {diagnosis:>10.0f} "
                f"{ratio:>6.2f} {own:>7.0f}  {'met' if met else 'not met'} "
                f"(verdict {'/'.join(sorted(verdicts))}; whole run {verdict / limit_ms:.2f} x limit)"
            )
            for path in reports[-1]["paths"]:
                t = path["timings_ms"]
                shown = " ".join(f"{k}={v:.0f}" for k, v in t.items() if v is not None)
                print(
                    f"    {path['transport']}: {shown}; released {path['deallocated']}; "
                    f"duration_ms {reports[-1]['duration_ms']:.0f}"
                )


@contextlib.contextmanager
def bytecode_written() -> Iterator[None]:
    """This process's own children (the lab's helpers) may write bytecode too."""
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, default=60.0, help="injected RTT, ms")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=ROOT, help="where the lkice package is")
    parser.add_argument("--no-lab", action="store_true", help="start-up only")
    args = parser.parse_args()
    tree = args.tree.resolve()
    # ``python3 -m`` puts the working directory first on the path: the tree's package it is.
    os.chdir(tree)
    with bytecode_written():
        startup(tree, args.repeat)
        if not args.no_lab:
            lab_rows(args.rtt, args.repeat, tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
