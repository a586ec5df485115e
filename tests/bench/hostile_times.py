"""Hostile ground, timed: how long lkice takes to give up on slow, silent and hostile servers
against the goals of issue 12 (every command ends within --deadline + 0.5 s, and within 1 s of
Ctrl-C or SIGTERM), and the peak memory a memory bomb gets out of it. The test suite asserts
these as loose bounds (tests/hostile/); this prints the figures.

    python3 tests/bench/hostile_times.py [--repeat 5]

Only loopback; needs nothing but the package (the hostile servers are lkice's own test kit).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.hostile.harness import Outcome, run_lkice, startup_seconds
from tests.hostile.kit import HostileLiveKit, ValidateMode

TOKEN = "tok-bench"


def _signal_run(mode: ValidateMode, signum: int) -> Outcome:
    with HostileLiveKit(validate=mode) as lk:
        return run_lkice(
            ["run", lk.url, "--token", TOKEN, "--json", "--quality-duration", "0"],
            timeout=60,
            send_signal_after=0.3,
            signal=signum,
            when=lk.seen,
        )


def _deadline_run(mode: ValidateMode, deadline: float) -> Outcome:
    with HostileLiveKit(validate=mode, stall_s=4.0, drip_interval=1.0) as lk:
        return run_lkice(
            ["run", lk.url, "--token", TOKEN, "--json", "--quality-duration", "0",
             "--deadline", str(deadline)],
            timeout=90,
        )  # fmt: skip


def _median(runs: list[Outcome], pick: Callable[[Outcome], float | None]) -> str:
    values = [v for v in (pick(o) for o in runs) if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} (max {max(values):.2f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = max(1, args.repeat)
    start = startup_seconds(samples=n)
    print(
        f"start-up: --help {start['help']:.2f} s, run to a usage error {start['run_usage_error']:.2f} s"
    )
    print(f"{'case':44} {'goal':>10}  measured (median, max, runs)")
    cases: tuple[tuple[ValidateMode, float], ...] = (
        ("silent", 1.0),
        ("slowloris", 2.0),
        ("stall", 2.0),
    )
    for mode, deadline in cases:
        runs = [_deadline_run(mode, deadline) for _ in range(n)]
        print(
            f"{f'{mode} server, --deadline {deadline:g}: wall s':44} {deadline + 0.5:>10.1f}  "
            f"{_median(runs, lambda o: o.wall_s)}"
        )
    for signum in (signal.SIGINT, signal.SIGTERM):
        runs = [_signal_run("silent", signum) for _ in range(n)]
        name = signal.Signals(signum).name
        print(
            f"{f'{name} during signaling: s to exit':44} {1.0:>10.1f}  "
            f"{_median(runs, lambda o: o.after_signal_s)}"
        )
    bombs: tuple[ValidateMode, ...] = ("chunked_bomb", "huge_length")
    for mode in bombs:
        runs = [_deadline_run(mode, 3.0) for _ in range(n)]
        print(
            f"{f'{mode}: peak RSS MiB':44} {'bounded':>10}  {_median(runs, lambda o: o.peak_rss_mib)}"
        )
        print(
            f"{f'{mode}: wall s (--deadline 3)':44} {3.5:>10.1f}  {_median(runs, lambda o: o.wall_s)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
