"""Start-up time and peak memory of the commands end users and support staff run first.

    python3 tests/bench/startup.py [--repeat 5] [--binary dist/lkice]

Prints the median wall time and the peak RSS (children) of `lkice --help`, `lkice explain` on a
paste, and `lkice demo --quality-duration 0`, from the installed package (`python3 -m lkice` and
the `lkice` console script) and from the one-file binary when it exists (its first start, which
unpacks the program into a fresh cache, apart), plus the binary's size and the unpacked size.
Goals printed beside: --help under 0.3 s (package), under 1.5 s (binary).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lkice.paste import encode_paste, paste_summary

ROOT = Path(__file__).parent.parent.parent


def measure(argv: list[str], repeat: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(median seconds, largest peak RSS in MiB of these runs, each child measured alone)."""
    times, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        child = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        _, _, usage = os.wait4(child.pid, 0)
        times.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)
        child.returncode = 0  # reaped by wait4 above
    return statistics.median(times), max(peaks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--binary", default=str(ROOT / "dist" / "lkice"))
    args = parser.parse_args()
    report = json.loads((ROOT / "tests" / "data" / "report-udp-blocked.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        paste = Path(tmp) / "paste.txt"
        paste.write_text(encode_paste(report, paste_summary(report)))
        launchers = {"python3 -m lkice": [sys.executable, "-m", "lkice"]}
        script = shutil.which("lkice")
        if script:
            launchers["lkice (script)"] = [script]
        binary = os.path.exists(args.binary)
        if binary:
            launchers["binary"] = [args.binary]
            print(f"binary: {args.binary}, {os.path.getsize(args.binary) / 2**20:.0f} MiB")
        # The binary's launcher unpacks the program into ~/.cache/lkice once per build: its
        # first start (an empty cache) is measured apart, then every start uses the cache.
        home = Path(tmp) / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
        print(f"{'launcher':<18} {'command':<10} {'median s':>9} {'peak MiB':>9}  goal")
        if binary:
            seconds, peak = measure([args.binary, "--help"], 1, env)
            print(f"{'binary':<18} {'1st start':<10} {seconds:>9.2f} {peak:>9.0f}  (unpacks)")
        for name, launcher in launchers.items():
            commands = {
                "--help": ["--help"],
                "explain": ["explain", str(paste)],
                "demo": ["demo", "--quality-duration", "0"],
            }
            for label, extra in commands.items():
                repeat = 1 if label == "demo" else args.repeat
                seconds, peak = measure([*launcher, *extra], repeat, env)
                goal = ""
                if label == "--help":
                    goal = "< 1.5 s" if name == "binary" else "< 0.3 s"
                print(f"{name:<18} {label:<10} {seconds:>9.2f} {peak:>9.0f}  {goal}")
        if binary:
            cache = home / ".cache" / "lkice"
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            print(f"unpacked once into {cache}: {size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
