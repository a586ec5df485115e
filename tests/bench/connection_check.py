"""LiveKit's own browser connection test (livekit-client's ConnectionCheck in headless Chromium)
next to lkice, against the same lab LiveKit server in the same network lab run: ConnectionCheck's
total time and, per check, its result, duration and selected candidate pair(s); then lkice's
time, verdict and per-path results. Needs root, Chromium, playwright and the npm install of
livekit-client (tests/support/connection_check.py). Figures only, never asserted.

Run:  python3 tests/bench/connection_check.py [open|udp-blocked|tcp443-only] [--checks a,b]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.support, run as a script

from lkice.lab.netlab import PROFILES, NetLab, prerequisites
from tests.support import connection_check as cc

API_KEY = "APIbenchcc"


def token_for(api_secret: str) -> str:
    from livekit import api

    grants = api.VideoGrants(room_join=True, room="connection-check")
    return (
        api.AccessToken(API_KEY, api_secret)
        .with_identity("connection-check")
        .with_grants(grants)
        .to_jwt()
    )


def pairs_text(check: dict[str, Any]) -> str:
    """The distinct selected pairs of a check, in order of first use."""
    shown: list[str] = []
    for pair in cc.selected_pairs(check):
        text = cc.describe_pair(pair)
        if text not in shown:
            shown.append(text)
    return "; ".join(shown) or "-"


def lkice_paths(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, ok or error kind, setup ms) per path of lkice's report."""
    rows = []
    for p in report.get("paths", []):
        # As tests/test_lab_livekit_net.py names them: SFU paths by their relay (or direct).
        via = (p.get("relay") or "direct") if p["kind"] == "sfu" else p["uri"]
        via = via.split(":")[0]
        result = "ok" if p["ok"] else (p.get("error") or {}).get("kind", "?")
        t = p.get("timings_ms") or {}
        ms = t.get("ice") if p["kind"] == "sfu" else t.get("allocate")
        rows.append(
            (f"{p['kind']}:{via}/{p['transport']}", result, "-" if ms is None else f"{ms:.0f}")
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", default="open", choices=sorted(PROFILES))
    parser.add_argument("--checks", default=",".join(cc.CHECKS), help="comma-separated")
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        print("network lab unavailable: " + "; ".join(missing), file=sys.stderr)
        return 2
    reason = cc.unavailable_reason()
    if reason is not None:
        print(f"ConnectionCheck unavailable: {reason}", file=sys.stderr)
        return 2
    api_secret = secrets.token_urlsafe(32)
    token = token_for(api_secret)
    with NetLab(regions=("eu",), profile=args.profile) as lab:
        url = lab.start_livekit("eu", API_KEY, api_secret)
        results = cc.run_connection_check(
            lab, url, token, checks=args.checks.split(","), secrets=[api_secret]
        )
        start = time.monotonic()
        proc = lab.run_in_client(
            ["python3", "-m", "lkice", "run", url, "--ca-file", str(lab.ca_file), "--json",
             "--quality-duration", "0"],
            env={"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": api_secret},
            timeout=120,
        )  # fmt: skip
        lkice_wall = time.monotonic() - start
    print(f"profile {args.profile}; livekit-client {results.get('livekit_client')}")
    print(f"\nConnectionCheck: checks {results.get('total_ms', 0) / 1000:.1f} s, "
          f"with Chromium's start {results['wall_s']:.1f} s"
          + (" (TIMED OUT)" if results.get("timed_out") else ""))  # fmt: skip
    print(f"{'check':<19} {'result':<8} {'ms':>6}  selected pair(s) (local -> remote)")
    for check in results.get("checks", []):
        print(f"{check['name']:<19} {check['status']:<8} {check['duration_ms']:>6}  "
              f"{pairs_text(check)}")  # fmt: skip
        for log in check.get("logs", []):
            if log["level"] != "info":
                print(f"{'':<19} {log['level']}: {log['message']}")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        print(f"\nlkice: no report (status {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return 0
    diagnosis = report.get("duration_ms")
    print(f"\nlkice: {lkice_wall:.1f} s wall"
          + (f", diagnosis {diagnosis / 1000:.1f} s" if diagnosis is not None else "")
          + f"; verdict {report.get('verdict')} (exit {proc.returncode})")  # fmt: skip
    print(f"{'path':<19} {'result':<16} {'setup ms':>8}")
    for path, result, ms in lkice_paths(report):
        print(f"{path:<19} {result:<16} {ms:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
