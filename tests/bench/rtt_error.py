"""RTT error at 60 ms under load: lkice's per-probe RTT against the echo's own record of it.

An echo server in a separate process (so nothing lkice's loop does can delay it) answers every
STUN Binding request 60 ms after it arrived, over UDP and TCP on loopback. It stamps each request
on arrival by the kernel (``SO_TIMESTAMPNS``; TCP: on read, the echo is otherwise idle), sends the
answer when due, and records how long it really held each one: that hold is the ground truth of
the probe's RTT (plus loopback transit both ways, a few microseconds, left in the error).

lkice runs a normal STUN quality train (``lkice.engine.run``, ``stun:`` URI, 20 ms cadence) to it,
idle and then with ``--busy`` coroutines in the same event loop, each computing for a random
0.05..``--chunk-ms`` ms and then yielding: the load a busy agent puts on its own clock. Probe i
is the echo's i-th request (one socket, loopback: no loss, no reordering), so each sample's
error is ``lkice RTT - truth``. Printed: p50 / p95 / max of the error, per transport and load,
and the train's send-time slip where the train reports it. Goal (issue 14): p50 and p95 within
0.5 ms under load. Figures are printed, never asserted; nothing leaves loopback.

Run:  python3 tests/bench/rtt_error.py [--duration 5] [--busy 20] [--chunk-ms 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the lkice of this tree

HOLD_S = 0.060
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
COOKIE = 0x2112A442


# ------------------------------------------------------------------------------ echo process


def _binding_response(tid: bytes, addr: tuple[str, int]) -> bytes:
    port = addr[1] ^ (COOKIE >> 16)
    ip = struct.unpack("!I", socket.inet_aton(addr[0]))[0] ^ COOKIE
    attr = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, port, ip)
    return struct.pack("!HHI12s", 0x0101, len(attr), COOKIE, tid) + attr


def echo_main() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(json.dumps({"udp": udp.getsockname()[1], "tcp": listener.getsockname()[1]}), flush=True)
    due: list[tuple[int, int, Any, bytes, Any, int]] = []  # (due ns, n, sock, data, addr, rx ns)
    holds: dict[str, list[float]] = {"udp": [], "tcp": []}
    conns: dict[socket.socket, bytearray] = {}
    counter = 0
    while True:
        timeout = None
        if due:
            timeout = max(0.0, (due[0][0] - time.time_ns()) / 1e9)
        readable, _, _ = select.select([udp, listener, sys.stdin, *conns], [], [], timeout)
        if sys.stdin in readable:
            sys.stdin.readline()
            print(json.dumps(holds), flush=True)
            return
        for sock in readable:
            if not isinstance(sock, socket.socket):
                continue
            if sock is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[conn] = bytearray()
                continue
            if sock is udp:
                data, anc, _, addr = udp.recvmsg(2048, socket.CMSG_SPACE(16))
                rx = time.time_ns()
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", value[:16])
                        rx = sec * 1_000_000_000 + nsec
                if len(data) >= 20 and data[:2] == b"\x00\x01":
                    counter += 1
                    reply = _binding_response(data[8:20], addr)
                    heapq.heappush(due, (rx + int(HOLD_S * 1e9), counter, udp, reply, addr, rx))
                continue
            chunk = sock.recv(65536)
            rx = time.time_ns()
            if not chunk:
                conns.pop(sock).clear()
                sock.close()
                continue
            buf = conns[sock]
            buf += chunk
            while len(buf) >= 20 and len(buf) >= 20 + struct.unpack("!H", buf[2:4])[0]:
                total = 20 + struct.unpack("!H", buf[2:4])[0]
                frame, buf[:] = bytes(buf[:total]), buf[total:]
                if frame[:2] == b"\x00\x01":
                    counter += 1
                    reply = _binding_response(frame[8:20], sock.getpeername())
                    heapq.heappush(due, (rx + int(HOLD_S * 1e9), counter, sock, reply, None, rx))
        now = time.time_ns()
        while due and due[0][0] <= now:
            _, _, sock, reply, addr, rx = heapq.heappop(due)
            sent = time.time_ns()
            if addr is not None:
                sock.sendto(reply, addr)
                holds["udp"].append((sent - rx) / 1e6)
            else:
                with_conn = sock in conns
                if with_conn:
                    sock.sendall(reply)
                    holds["tcp"].append((sent - rx) / 1e6)
            now = time.time_ns()


# ---------------------------------------------------------------------------- lkice side


async def _busy(stop: asyncio.Event, chunk_ms: float) -> None:
    rng = random.Random()
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.05, chunk_ms) / 1000
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def measure(
    transport: str, port: int, duration: float, busy: int, chunk_ms: float
) -> dict[str, Any]:
    """One train through lkice's own plumbing (``lkice.probe.path._binding_train``) on a UDP or
    TCP channel to the echo, with ``busy`` hogs in the loop."""
    from lkice.probe.channel import attach_stream, open_udp
    from lkice.probe.path import _binding_train
    from lkice.probe.train import Train, TrainSettings

    address = ("127.0.0.1", port)
    if transport == "udp":
        channel: Any = await open_udp(address, 5.0)
    else:
        sock = socket.create_connection(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        channel, _ = await attach_stream(sock, address, 5.0)
    stop = asyncio.Event()
    hogs = [asyncio.ensure_future(_busy(stop, chunk_ms)) for _ in range(busy)]
    try:
        train = Train(TrainSettings(interval=0.02, duration=duration, relay=False))
        outcome = await _binding_train(channel, train)
    finally:
        stop.set()
        await asyncio.gather(*hogs)
        channel.close()
    pacing = getattr(outcome, "pacing", None)
    return {
        "rtts": [s.rtt_ms for s in sorted(outcome.samples, key=lambda s: s.seq)],
        "pacing": pacing.figures() if pacing is not None else None,
    }


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--busy", type=int, default=20, help="busy coroutines under load")
    parser.add_argument("--chunk-ms", type=float, default=0.5, help="longest busy stretch, ms")
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        echo_main()
        return 0
    print(
        f"lkice RTT error at {HOLD_S * 1000:g} ms: trains of {args.duration:g} s at 20 ms, "
        f"load {args.busy} busy coroutines (0.05..{args.chunk_ms:g} ms each), "
        f"kernel {os.uname().release}"
    )
    header = (
        f"{'transport':>9} {'load':>6} {'probes':>6} {'truth p50':>9} {'err p50':>8} "
        f"{'err p95':>8} {'err max':>8} {'|err| p95':>9} {'slip p95':>8}"
    )
    print(header)
    print("-" * len(header))
    for transport in ("udp", "tcp"):
        for busy in (0, args.busy):
            echo = subprocess.Popen(
                [sys.executable, __file__, "--echo"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert echo.stdout is not None
                assert echo.stdin is not None
                ports = json.loads(echo.stdout.readline())
                got = asyncio.run(
                    measure(transport, ports[transport], args.duration, busy, args.chunk_ms)
                )
                echo.stdin.write("dump\n")
                echo.stdin.flush()
                holds = json.loads(echo.stdout.readline())[transport]
            finally:
                echo.kill()
                echo.wait()
            truth = holds
            pairs = [(r, t) for r, t in zip(got["rtts"], truth, strict=False) if r is not None]
            errors = [r - t for r, t in pairs]
            slip = ((got["pacing"] or {}).get("slip_ms") or {}).get("p95")
            print(
                f"{transport:>9} {'busy' if busy else 'idle':>6} {len(pairs):>6} "
                f"{pct([t for _, t in pairs], 50):>9.3f} {pct(errors, 50):>8.3f} "
                f"{pct(errors, 95):>8.3f} {max(errors):>8.3f} "
                f"{pct([abs(e) for e in errors], 95):>9.3f} "
                f"{'-' if slip is None else f'{slip:.3f}':>8}",
                flush=True,
            )
    print("\nerr: lkice's RTT minus the echo's hold, ms; slip p95: how late probes left, ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
