"""Scale benchmark: probe trains on 1 / 10 / 50 / 100 / 300 paths at once against loopback coturn.

Loopback is a perfect network: no loss, no stall, RTT well under a millisecond. Whatever the
report says beyond that at N paths is the agent's own doing (CPU, scheduling), so the table
shows what the agent can measure truthfully and what it costs:

- wall: time of ``engine.run`` (set-up of every path, the trains, the releases);
- RSS: peak resident memory of the process that ran it (each size runs in its own process);
- CPU: that process's CPU time over the run, and coturn's over the same run (same 2 cores);
- per probe: the agent's CPU while every train was running (the window from the last train's
  first probe to the first train's last probe), divided by the probes sent in that window
  (a Binding probe and a relay probe count one each; a relay probe is two messages out and two
  in, so this is the mean of the two);
- RTT error: each train's p50 (and p95) minus the truth for its kind, the p50 of the same train
  kind and transport measured with one path of each transport before the table;
  "p50 err" is the median over trains, "p95 err" the 95th percentile over trains;
- HOL / loss: trains with a head-of-line finding, or any lost probe (the truth is none);
- paced: trains whose cadence the agent lowered because it could not keep up (the report
  says so on the path, and the figure is in the train's ``pacing``); slip p95: the largest of the
  trains' 95th-percentile send-time slips (how late probes left against their schedule);
- verdict, and the network findings (``lkice.findings``) beyond "it works".

Paths are taken round-robin over TURN/UDP, TURN/TCP and TURN/TLS on the addresses 127.0.0.1,
127.0.0.2, ... (one coturn listens on all of them), each with the Binding train and the relay
echo train. Figures are printed, never asserted; nothing leaves loopback.

Run:  python3 tests/bench/scale.py [--sizes 1,10,50,100,300] [--duration 5] [--interval 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the lkice of this tree

TRANSPORTS = ("udp", "tcp", "tls")
QUIET_FINDINGS = {"works", "media-unproven", "turn-works", "turn-ok"}


def address(i: int) -> str:
    """The i-th loopback address (0-based): 127.0.0.1 .. 127.0.0.250, 127.0.1.1, ..."""
    return f"127.0.{i // 250}.{i % 250 + 1}"


def uris_for(
    paths: int, port: int, tls_port: int, transports: tuple[str, ...] = TRANSPORTS
) -> list[str]:
    out = []
    for i in range(paths):
        ip = address(i // len(transports))
        kind = transports[i % len(transports)]
        if kind == "tls":
            out.append(f"turns:{ip}:{tls_port}?transport=tcp")
        else:
            out.append(f"turn:{ip}:{port}?transport={kind}")
    return out


# --------------------------------------------------------------------------------- child side


Mark = tuple[float, float, float]  # perf_counter, user CPU, system CPU


def _mark() -> Mark:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime, usage.ru_stime


async def _sampled(coro: Any, every: float = 0.05) -> tuple[Any, list[Mark]]:
    """Run ``coro`` while recording the process's CPU every ``every`` seconds."""
    marks: list[Mark] = []

    async def sample() -> None:
        while True:
            marks.append(_mark())
            await asyncio.sleep(every)

    task = asyncio.ensure_future(sample())
    try:
        result = await coro
    finally:
        task.cancel()
        marks.append(_mark())
    return result, marks


def _cpu_between(marks: list[Mark], a: float, b: float) -> tuple[float, float]:
    """(user, system) CPU between perf_counter times a and b, interpolated between samples."""

    def at(t: float) -> tuple[float, float]:
        for (t0, u0, s0), (t1, u1, s1) in itertools.pairwise(marks):
            if t0 <= t <= t1:
                f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return u0 + (u1 - u0) * f, s0 + (s1 - s0) * f
        m = marks[0] if t < marks[0][0] else marks[-1]
        return m[1], m[2]

    (ua, sa), (ub, sb) = at(a), at(b)
    return ub - ua, sb - sa


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from lkice.credentials import Secret, TurnCredentials
    from lkice.engine import EngineSettings, run
    from lkice.findings import evaluate
    from lkice.probe.path import ProbeSettings
    from lkice.probe.train import TrainSettings
    from lkice.uri import parse_ice_uri

    tls = ssl.create_default_context()
    tls.load_verify_locations(cafile=spec["ca"])
    train = TrainSettings(interval=spec["interval"], duration=spec["duration"])
    settings = EngineSettings(
        probe=ProbeSettings(
            credentials=TurnCredentials(Secret(spec["user"]), Secret(spec["password"])),
            tls_context=tls,
            train=train,
            timeout=10.0,
            udp_timeout=5.0,
        ),
        deadline=30.0 + spec["duration"] * 2,
    )
    uris = [
        parse_ice_uri(u)
        for u in uris_for(spec["paths"], spec["port"], spec["tls_port"], tuple(spec["transports"]))
    ]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report, marks = asyncio.run(_sampled(run(uris, settings)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    trains: list[dict[str, Any]] = []
    starts, ends = [], []
    for p in report.paths:
        for name, record in p.trains.by_name.items():
            sent = [s.sent for s in record.samples]
            if sent:
                starts.append(min(sent))
                ends.append(max(sent))
            q = getattr(p, name) or {}
            hol = q.get("hol") or {}
            rtt = q.get("rtt_ms") or {}
            pacing = q.get("pacing") or {}
            trains.append(
                {
                    "transport": p.transport,
                    "train": name,
                    "sent_times": sent,
                    "p50": rtt.get("p50"),
                    "p95": rtt.get("p95"),
                    "loss": q.get("loss"),
                    "hol": bool(hol.get("detected")),
                    "samples": q.get("samples"),
                    "lowered": bool(pacing.get("lowered")),
                    "slip_p95": (pacing.get("slip_ms") or {}).get("p95"),
                }
            )
    window = (max(starts), min(ends)) if starts else (0.0, 0.0)
    if window[1] - window[0] < 0.5 and starts:  # set-up spread over the trains: all of them
        window = (min(starts), max(ends))
    probes = sum(1 for t in trains for s in t["sent_times"] if window[0] <= s <= window[1])
    window_user, window_sys = _cpu_between(marks, *window)
    for t in trains:
        del t["sent_times"]
    data = report.to_dict()
    findings = evaluate(data)
    return {
        "paths": len(report.paths),
        "ok": sum(p.ok for p in report.paths),
        "errors": [
            f"{p.address} {p.transport}: {p.error.kind} {p.error.message[:120]}"
            for p in report.paths
            if not p.ok and p.error is not None
        ][:4],
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "window_s": window[1] - window[0],
        "window_cpu_s": window_user + window_sys,
        "window_user_s": window_user,
        "window_probes": probes,
        "verdict": report.verdict,
        "trains": trains,
        "notes": sorted({n for p in report.paths for n in p.notes if "cadence" in n})[:3],
        "findings": sorted({f["id"] for f in findings} - QUIET_FINDINGS),
        "loop_stalls": (data.get("agent") or {}).get("loop_stalls"),
    }


# -------------------------------------------------------------------------------- parent side


def codec_figures(rounds: int = 3000) -> str:
    """CPU per probe of the codec alone (encode the probe, parse its answer), aioice's
    ``Message`` against lkice's templates and fast path, for a Binding probe and a relay probe
    (which is encoded twice, out and echoed, and parsed twice)."""
    from aioice import stun

    from lkice import stun as codec

    peer, payload = ("127.0.0.1", 50000), bytes(172)
    answer = stun.Message(
        stun.Method.BINDING,
        stun.Class.RESPONSE,
        attributes={
            "XOR-MAPPED-ADDRESS": ("127.0.0.1", 40000),
            "MAPPED-ADDRESS": ("127.0.0.1", 40000),
            "RESPONSE-ORIGIN": ("127.0.0.1", 3478),
            "SOFTWARE": "Coturn-4.6.1 'Gorst'",
        },
    )
    answer.add_fingerprint()
    data_ind = stun.Message(
        stun.Method.DATA,
        stun.Class.INDICATION,
        attributes={"XOR-PEER-ADDRESS": peer, "DATA": payload},
    )
    data_ind.add_fingerprint()
    answer_bytes, data_bytes = bytes(answer), bytes(data_ind)
    template, send_template = codec.BindingTemplate(), codec.SendTemplate(peer, len(payload))
    ids, parser = codec.TransactionIds(), codec.FastParser()

    def cpu(fn: Any) -> float:
        start = time.process_time()
        for _ in range(rounds):
            fn()
        return (time.process_time() - start) / rounds * 1e6

    old_binding = cpu(lambda: (bytes(codec.binding_request()), stun.parse_message(answer_bytes)))
    new_binding = cpu(lambda: (template.encode(ids.next()), parser.parse(answer_bytes)))
    old_relay = cpu(
        lambda: [
            (bytes(codec.send_indication(peer, payload)), stun.parse_message(data_bytes))
            for _ in range(2)
        ]
    )
    new_relay = cpu(
        lambda: [
            (send_template.encode(ids.next(), payload), parser.parse(data_bytes)) for _ in range(2)
        ]
    )
    return (
        f"codec CPU per probe (encode + parse its answer): Binding {old_binding:.1f} us with "
        f"aioice's Message, {new_binding:.1f} us with templates and the fast path; relay "
        f"{old_relay:.1f} us -> {new_relay:.1f} us"
    )


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(spec: dict[str, Any], coturn_pid: int) -> dict[str, Any]:
    before = proc_cpu(coturn_pid)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["coturn_cpu_s"] = proc_cpu(coturn_pid) - before
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def truth_of(result: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {
        (t["transport"], t["train"]): t["p50"] for t in result["trains"] if t["p50"] is not None
    }


def row(size: int, r: dict[str, Any], truth: dict[tuple[str, str], float]) -> str:
    errs50, errs95 = [], []
    for t in r["trains"]:
        base = truth.get((t["transport"], t["train"]))
        if base is None or t["p50"] is None:
            continue
        errs50.append(t["p50"] - base)
        errs95.append(t["p95"] - base)
    hol = sum(t["hol"] for t in r["trains"])
    lossy = sum(1 for t in r["trains"] if t["loss"])
    lowered = sum(t["lowered"] for t in r["trains"])
    slips = [t["slip_p95"] for t in r["trains"] if t["slip_p95"] is not None]
    probes = r["window_probes"] or math.nan
    per_probe = r["window_cpu_s"] / probes * 1e6
    per_probe_user = r["window_user_s"] / probes * 1e6
    return (
        f"{size:>5} {r['ok']:>3}/{r['paths']:<3} {r['wall_s']:>6.2f} {r['rss_mib']:>6.1f} "
        f"{r['cpu_s']:>6.2f} {r['coturn_cpu_s']:>6.2f} {per_probe:>7.1f} {per_probe_user:>6.1f} "
        f"{statistics.median(errs50) if errs50 else math.nan:>8.2f} "
        f"{percentile(errs95, 95):>8.2f} {hol:>4} {lossy:>4} {lowered:>6} "
        f"{max(slips) if slips else math.nan:>7.2f} {r['verdict']:>8} "
        f"{','.join(r['findings']) or '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,10,50,100,300")
    parser.add_argument("--duration", type=float, default=5.0, help="train duration, s")
    parser.add_argument("--interval", type=float, default=20.0, help="probe interval, ms")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--transports", default="udp,tcp,tls", help="paths round-robin over these")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
    from lkice.lab.pki import make_pki

    if turnserver_path() is None:
        print("coturn (turnserver) is not installed: apt-get install coturn", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    addresses = [address(i) for i in range(max(sizes))]
    print(
        f"lkice scale benchmark: trains of {args.duration:g} s at {args.interval:g} ms, "
        f"nproc {len(os.sched_getaffinity(0))}, {platform.python_implementation()} "
        f"{platform.python_version()}"
    )
    print(codec_figures())
    user, password = "bench", secrets.token_urlsafe(12)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lkice-scale-") as tmp:
        pki = make_pki(Path(tmp), identities=(*addresses, "localhost"))
        config = CoturnConfig(
            listen_ip=addresses[0],
            users={user: password},
            pki=pki,
            extra=[f"listening-ip={ip}" for ip in addresses[1:]],
        )
        with Coturn(config) as server:
            assert server.process is not None
            spec = {
                "ca": str(pki.ca_file),
                "user": user,
                "password": password,
                "port": server.port,
                "tls_port": server.tls_port,
                "interval": args.interval / 1000,
                "duration": args.duration,
                "transports": [t for t in args.transports.split(",") if t in TRANSPORTS],
            }
            pid = server.process.pid
            truth_run = run_child({**spec, "paths": len(spec["transports"])}, pid)
            truth = truth_of(truth_run)
            results["truth"] = truth_run
            print(
                "truth (3 paths, one per transport; p50 ms): "
                + ", ".join(f"{k[1]}/{k[0]} {v:.3f}" for k, v in sorted(truth.items()))
            )
            header = (
                f"{'paths':>5} {'ok':>7} {'wall s':>6} {'RSS MiB':>6} {'cpu s':>6} "
                f"{'coturn':>6} {'us/probe':>7} {'user':>6} {'p50 err':>8} {'p95 err':>8} {'HOL':>4} "
                f"{'loss':>4} {'paced':>6} {'slip95':>7} {'verdict':>8} findings"
            )
            print(header)
            print("-" * len(header))
            for size in sizes:
                r = run_child({**spec, "paths": size}, pid)
                results[str(size)] = r
                print(row(size, r, truth), flush=True)
                for line in r["errors"] + r["notes"]:
                    print(f"      {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(
        "\nus/probe: agent CPU (user+system; user alone) per probe while every train ran; "
        "p50/p95 err: ms over the truth; "
        "HOL/loss/paced: trains; slip95: ms, the worst train's p95 send-time slip"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
