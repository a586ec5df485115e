"""The lab's delay router and its measuring tools, run as small programs inside lab namespaces.

This kernel has no netem, so delay and jitter are added in user space: ``forward`` opens a TUN
device, policy routing in the router namespace sends every packet that enters from the firewall
or from a region through it, and this program holds each packet for its configured delay before
writing it back, so the kernel forwards it on as if it had come out of a slow link. Loss and rate
caps are *not* done here but by nftables in the same namespace, where the kernel counts the drops
(the lab's ground truth).

Subcommands (``python3 -m lkice.lab.router <command> --help``):

``forward --tun NAME``
    Create TUN device NAME and forward through it. Configuration arrives as JSON lines on stdin
    (``{"seq": 1, "reorder": false, "flows": [{"net": "198.19.0.0/24", "up": {"delay_ms": 20,
    "jitter_ms": 0}, "down": {...}}]}``), each acknowledged on stdout with ``ack <seq>``;
    ``{"seq": 2, "stats": true}`` is answered with ``stats <seq> <json>``;
    ``{"seq": 3, "hold": {"ms": 150, "every_ms": 900, "count": 8, "after_ms": 0}}`` freezes all
    forwarding (every flow, both directions, unmatched traffic too) for ``ms`` milliseconds,
    ``count`` times, ``every_ms`` apart, the first ``after_ms`` from now: a Wi-Fi scan, a paused
    VM or a stalled router as every connection of a host sees it (nothing is dropped or
    reordered; what arrived during a hold leaves when it ends); ``{"hold": {"clear": true}}``
    calls off the holds not yet done. End of stdin (the lab process went away) ends the router.
    ``ready <name>`` on stdout says the device exists.
``echo --bind IP --port PORT``
    A UDP echo server (prints ``ready``), the far end of the lab's overhead measurement.
``ping --to IP --port PORT [--count N]``
    UDP ping-pong to an echo server; prints one JSON object with the round-trip times.

Direction is decided per packet from its addresses: a packet *to* a flow's network is upstream
(client to server), a packet *from* it is downstream. Delay = ``delay_ms`` + uniform jitter in
[-jitter_ms, +jitter_ms], never negative. A real path with jitter still delivers in order, so
unless ``reorder`` is set a packet is never released before the previous packet of the same flow
and direction: ``release = max(previous release, arrival + delay + jitter)``.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import ipaddress
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535
# Read at most this many packets per wake-up so the release queue and stdin are never starved.
READ_BURST = 256
# Upper bound on queued packets (about 100 MB at full size): beyond it the router drops, as a
# full router buffer would, instead of growing without bound.
MAX_QUEUE = 20000
# Bounds of a hold schedule: a lab freezes its traffic for moments, never for good.
MAX_HOLD_MS = 10_000.0
MAX_HOLDS = 1000
MAX_HOLD_AFTER_MS = 600_000.0
# A packet released this much after its time was held by the router itself (a busy host
# descheduled it): counted, so a test can tell the lab's own holds from the agent's findings.
LATE_S = 0.005


@dataclass
class Direction:
    """Delay settings and counters of one flow in one direction."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    last_release: float = 0.0
    packets: int = 0
    queue_drops: int = 0

    def configure(self, spec: dict[str, Any]) -> None:
        self.delay_s = max(0.0, float(spec.get("delay_ms", 0.0))) / 1000.0
        self.jitter_s = max(0.0, float(spec.get("jitter_ms", 0.0))) / 1000.0

    def stats(self) -> dict[str, int | float]:
        return {
            "packets": self.packets,
            "queue_drops": self.queue_drops,
            "delay_ms": self.delay_s * 1000.0,
            "jitter_ms": self.jitter_s * 1000.0,
        }


@dataclass
class Flow:
    """One region's network and its two directions."""

    net: int
    mask: int
    name: str
    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)


class DelayRouter:
    """The release queue: pure logic with time passed in, so it can be tested without a TUN."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.flows: list[Flow] = []
        self.reorder = False
        self.queue: list[tuple[float, int, bytes]] = []
        self.seq = 0
        self.unmatched = 0
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.holds: list[tuple[float, float]] = []  # (start, end) of freezes to come, by start
        self.holds_done = 0
        self._last_hold_end = 0.0  # what a scheduled hold delayed is not late
        self.late = 0  # packets released more than LATE_S after their time (not in a hold)
        self.max_late_s = 0.0

    def schedule_holds(self, spec: dict[str, Any], now: float) -> None:
        """Freeze all forwarding ``count`` times for ``ms``, ``every_ms`` apart, the first
        ``after_ms`` from ``now`` (see the module docstring). Raises ValueError out of bounds."""
        if spec.get("clear"):
            self.holds.clear()  # what is not yet done is called off
            return
        ms = float(spec["ms"])
        count = int(spec.get("count", 1))
        every = float(spec.get("every_ms", ms))
        after = float(spec.get("after_ms", 0.0))
        if not 0.0 < ms <= MAX_HOLD_MS:
            raise ValueError(f"hold ms must be within (0, {MAX_HOLD_MS:g}], not {ms}")
        if not 1 <= count <= MAX_HOLDS:
            raise ValueError(f"hold count must be within 1..{MAX_HOLDS}, not {count}")
        if count > 1 and not ms <= every <= MAX_HOLD_MS * 10:
            raise ValueError(f"every_ms must be at least the hold ({ms} ms), not {every}")
        if not 0.0 <= after <= MAX_HOLD_AFTER_MS:
            raise ValueError(f"after_ms must be within 0..{MAX_HOLD_AFTER_MS:g}, not {after}")
        first = now + after / 1000.0
        for i in range(count):
            start = first + i * every / 1000.0
            self.holds.append((start, start + ms / 1000.0))
        self.holds.sort()

    def _hold_end(self, t: float) -> float | None:
        """The end of the freeze covering time ``t``, None when not frozen (holds that touch
        freeze as one)."""
        end: float | None = None
        for start, stop in self.holds:  # sorted by start
            if end is None:
                if start > t:
                    break
                if t < stop:
                    end = stop
            elif start <= end:
                end = max(end, stop)
            else:
                break
        return end

    def configure(self, message: dict[str, Any]) -> None:
        """Apply a configuration message; flows keep their counters and order state by name."""
        self.reorder = bool(message.get("reorder", False))
        old = {f.name: f for f in self.flows}
        flows: list[Flow] = []
        for spec in message.get("flows", []):
            network = ipaddress.IPv4Network(str(spec["net"]))
            name = str(spec.get("name", network))
            flow = old.get(name) or Flow(int(network.network_address), int(network.netmask), name)
            flow.net, flow.mask = int(network.network_address), int(network.netmask)
            flow.up.configure(spec.get("up", {}))
            flow.down.configure(spec.get("down", {}))
            flows.append(flow)
        self.flows = flows

    def classify(self, packet: bytes) -> Direction | None:
        """The flow direction of an IPv4 packet, or None (released at once)."""
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        src, dst = struct.unpack_from("!II", packet, 12)
        for flow in self.flows:
            if dst & flow.mask == flow.net:
                return flow.up
            if src & flow.mask == flow.net:
                return flow.down
        return None

    def admit(self, packet: bytes, now: float) -> None:
        """Queue a packet for its release time."""
        direction = self.classify(packet)
        if direction is None:
            self.unmatched += 1
            release = now
        else:
            if len(self.queue) >= MAX_QUEUE:
                direction.queue_drops += 1
                return
            direction.packets += 1
            delay = direction.delay_s
            if direction.jitter_s > 0:
                delay += self.rng.uniform(-direction.jitter_s, direction.jitter_s)
            release = now + max(0.0, delay)
            if not self.reorder:
                release = max(release, direction.last_release)
            direction.last_release = release
        self.seq += 1
        heapq.heappush(self.queue, (release, self.seq, packet))

    def due(self, now: float) -> list[bytes]:
        """Pop every packet whose release time has come, in release order (none while a hold
        freezes forwarding)."""
        out: list[bytes] = []
        while self.holds and self.holds[0][1] <= now:  # past holds: forgotten, counted
            self._last_hold_end = self.holds.pop(0)[1]
            self.holds_done += 1
        if self._hold_end(now) is not None:
            return out
        while self.queue and self.queue[0][0] <= now:
            release, _, packet = heapq.heappop(self.queue)
            lateness = now - max(release, self._last_hold_end)
            if lateness > LATE_S:
                self.late += 1
                self.max_late_s = max(self.max_late_s, lateness)
            out.append(packet)
        return out

    def next_release(self) -> float | None:
        """When the next packet leaves: its release time, or the end of a hold covering it."""
        if not self.queue:
            return None
        release = self.queue[0][0]
        end = self._hold_end(release)
        return release if end is None else end

    def stats(self) -> dict[str, Any]:
        return {
            "reorder": self.reorder,
            "queued": len(self.queue),
            "unmatched": self.unmatched,
            "holds": {"done": self.holds_done, "pending": len(self.holds)},
            "late": {"packets": self.late, "max_ms": self.max_late_s * 1000.0},
            "flows": {f.name: {"up": f.up.stats(), "down": f.down.stats()} for f in self.flows},
        }


def open_tun(name: str) -> int:
    """Create (non-persistent) TUN device ``name``; it disappears when this process exits, so a
    dead router leaves no device behind."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def forward(tun: str) -> int:
    """Run the delay router until stdin closes."""
    try:
        fd = open_tun(tun)
    except OSError as exc:
        print(f"router: cannot create TUN device {tun}: {exc}", file=sys.stderr)
        return 1
    router = DelayRouter()
    write_errors = 0
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    _say(f"ready {tun}")
    while True:
        now = time.monotonic()
        for packet in router.due(now):
            try:
                os.write(fd, packet)
            except OSError:
                write_errors += 1
        release = router.next_release()
        timeout = None if release is None else max(0.0, release - time.monotonic())
        readable, _, _ = select.select([fd, stdin], [], [], timeout)
        if fd in readable:
            for _ in range(READ_BURST):
                try:
                    packet = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                router.admit(packet, time.monotonic())
        if stdin in readable:
            try:
                chunk = os.read(stdin, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                return 0  # the lab closed our stdin: it is done with us
            if chunk:
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        _control(router, line, write_errors)


def _control(router: DelayRouter, line: bytes, write_errors: int) -> None:
    try:
        message = json.loads(line)
        seq = int(message.get("seq", 0))
        if message.get("stats"):
            stats = router.stats()
            stats["write_errors"] = write_errors
            _say(f"stats {seq} {json.dumps(stats, separators=(',', ':'))}")
            return
        if "hold" in message:
            router.schedule_holds(dict(message["hold"]), time.monotonic())
        else:
            router.configure(message)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        _say(f"error {json.dumps(str(exc))}")
        return
    _say(f"ack {seq}")


def echo(bind: str, port: int) -> int:
    """Echo every UDP datagram back to its sender until stdin closes or a signal ends us."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, port))
        _say("ready")
        while True:
            readable, _, _ = select.select([sock, sys.stdin], [], [])
            if sys.stdin in readable and not os.read(sys.stdin.fileno(), 4096):
                return 0
            if sock in readable:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


def ping(to: str, port: int, count: int, interval: float, timeout: float) -> int:
    """Sequential UDP ping-pong; prints ``{"rtts_ms": [...], "lost": n}``."""
    rtts: list[float] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((to, port))
        for seq in range(count):
            sent = time.perf_counter()
            sock.send(struct.pack("!Id", seq, sent))
            deadline = sent + timeout
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    lost += 1
                    break
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    continue
                try:
                    data = sock.recv(2048)
                except ConnectionRefusedError:
                    continue
                if len(data) >= 4 and struct.unpack_from("!I", data)[0] == seq:
                    rtts.append((time.perf_counter() - sent) * 1000.0)
                    break
            time.sleep(max(0.0, interval - (time.perf_counter() - sent)))
    print(json.dumps({"rtts_ms": rtts, "lost": lost}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lkice.lab.router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_forward = sub.add_parser("forward", help="the TUN delay router")
    p_forward.add_argument("--tun", required=True)
    p_echo = sub.add_parser("echo", help="UDP echo server")
    p_echo.add_argument("--bind", required=True)
    p_echo.add_argument("--port", type=int, default=7)
    p_ping = sub.add_parser("ping", help="UDP ping-pong client")
    p_ping.add_argument("--to", required=True)
    p_ping.add_argument("--port", type=int, default=7)
    p_ping.add_argument("--count", type=int, default=50)
    p_ping.add_argument("--interval", type=float, default=0.01)
    p_ping.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "forward":
            return forward(args.tun)
        if args.command == "echo":
            return echo(args.bind, args.port)
        return ping(args.to, args.port, args.count, args.interval, args.timeout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
