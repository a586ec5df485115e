"""Impairment: what the lab does to a region's traffic (:class:`Impairment`), the nftables loss
and rate-cap rules of the router namespace, and :class:`_Helper`, the line protocol to the TUN
delay router (``lkice.lab.router``: delays, jitter, holds) and the lab's other helpers."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkice.lab.netlab.addressing import DIRECTIONS, DOWNSTREAM, UPSTREAM
from lkice.lab.netlab.procs import _die_with_parent, _in_ns, _python
from lkice.lab.server import LabError, terminate


@dataclass(frozen=True)
class Impairment:
    """What the lab does to one direction of one region's traffic.

    ``delay_ms`` is added to every packet, plus uniform jitter in [-jitter_ms, +jitter_ms] (never
    below zero); ``loss`` is the fraction of packets dropped (0..1); ``rate_kbit`` caps the rate
    by dropping the excess (a policer, not a shaper), None for no cap."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay_ms <= 10_000.0:
            raise ValueError(f"delay_ms must be within 0..10000, not {self.delay_ms}")
        if not 0.0 <= self.jitter_ms <= 10_000.0:
            raise ValueError(f"jitter_ms must be within 0..10000, not {self.jitter_ms}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss is a fraction within 0..1, not {self.loss}")
        if self.rate_kbit is not None and not 1 <= self.rate_kbit <= 10_000_000:
            raise ValueError(f"rate_kbit must be within 1..10000000, not {self.rate_kbit}")

    @property
    def is_zero(self) -> bool:
        return self == Impairment()


NO_IMPAIRMENT = Impairment()

# ---------------------------------------------------------------------------------------------
# The delay router (and the lab's other line-speaking helpers)


class _Helper:
    """A lab helper (``python3 -m lkice.lab.router ...``) in a namespace, spoken to in lines:
    requests on stdin, answers on stdout. Closing stdin ends it."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self._buffer = b""
        self._lock = threading.Lock()
        self._seq = 0
        with open(log_file, "wb") as log:
            self.process = subprocess.Popen(
                _in_ns(ns, _python(argv)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C goes to the lab, which tears down in order
                preexec_fn=_die_with_parent,
            )

    def log_tail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-5:]) or "(empty log)"

    def read_line(self, timeout: float) -> str:
        """The next line on stdout, waiting at most ``timeout`` seconds."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"{self.name} did not answer within {timeout:g} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.process.wait(5)
                    raise LabError(
                        f"{self.name} exited with status {self.process.returncode}: "
                        f"{self.log_tail()}"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def request(self, message: dict[str, Any], timeout: float = 5.0) -> str:
        """Send one JSON request and return its answer (``ack``/``stats`` with our seq)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            assert self.process.stdin is not None
            try:
                self.process.stdin.write((json.dumps({**message, "seq": seq}) + "\n").encode())
                self.process.stdin.flush()
            except OSError as exc:
                raise LabError(f"{self.name} is gone ({exc}): {self.log_tail()}") from exc
            deadline = time.monotonic() + timeout
            while True:
                line = self.read_line(max(0.0, deadline - time.monotonic()))
                word, _, rest = line.partition(" ")
                if word == "error":
                    raise LabError(f"{self.name} rejected {message}: {rest}")
                number, _, payload = rest.partition(" ")
                if number == str(seq):
                    return payload

    def stop(self) -> None:
        """Close stdin (the helper's signal to end), then terminate and kill if need be."""
        proc = self.process
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            terminate(proc, grace=3)
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# The router's nftables rules and delay settings


def router_flows(
    regions: Sequence[str],
    impairments: Mapping[str, Mapping[str, Impairment]],
    region_net: Callable[[str], str],
) -> list[dict[str, Any]]:
    """The delay router's per-region flows (delay and jitter each way), as it is told them."""
    return [
        {
            "name": region,
            "net": region_net(region),
            "up": {
                "delay_ms": impairments[region][UPSTREAM].delay_ms,
                "jitter_ms": impairments[region][UPSTREAM].jitter_ms,
            },
            "down": {
                "delay_ms": impairments[region][DOWNSTREAM].delay_ms,
                "jitter_ms": impairments[region][DOWNSTREAM].jitter_ms,
            },
        }
        for region in regions
    ]


def impairment_table(region_count: int) -> str:
    """The router's nftables table: a named counter per region, direction and kind, so the
    counts survive rule changes; the rules themselves come from :func:`impairment_rules`."""
    counters = [
        f"  counter {counter_name(i, d, kind)} {{ }}"
        for i in range(region_count)
        for d in DIRECTIONS
        for kind in ("loss", "rate")
    ]
    return (
        "table inet lkimp {\n" + "\n".join(counters) + "\n  chain impair {\n"
        "    type filter hook forward priority filter; policy accept;\n  }\n}\n"
    )


def counter_name(index: int, direction: str, kind: str) -> str:
    return f"r{index}_{direction}_{kind}"


def impairment_rules(
    prefix: str,
    regions: Sequence[str],
    impairments: Mapping[str, Mapping[str, Impairment]],
    region_net: Callable[[str], str],
) -> str:
    """The router's ``impair`` chain for ``impairments`` (replacing the chain's rules)."""
    p = prefix
    lines = ["flush chain inet lkimp impair"]
    for i, region in enumerate(regions):
        for direction in DIRECTIONS:
            imp = impairments[region][direction]
            # Match where the packet enters the router, so it is counted once (it crosses
            # the forward hook again on its way out of the TUN device).
            if direction == UPSTREAM:
                match = f'iifname "{p}ro" ip daddr {region_net(region)}'
            else:
                match = f'iifname "{p}rr{i}"'
            rule = f"add rule inet lkimp impair {match}"
            if imp.loss >= 1.0:
                lines.append(f'{rule} counter name "{counter_name(i, direction, "loss")}" drop')
            elif imp.loss > 0.0:
                threshold = round(imp.loss * 1_000_000)
                lines.append(
                    f"{rule} numgen random mod 1000000 < {threshold} "
                    f'counter name "{counter_name(i, direction, "loss")}" drop'
                )
            if imp.rate_kbit is not None:
                rate = imp.rate_kbit * 125  # bytes per second
                burst = max(3000, rate // 20)  # 50 ms of traffic, at least two packets
                lines.append(
                    f"{rule} limit rate over {rate} bytes/second burst {burst} bytes "
                    f'counter name "{counter_name(i, direction, "rate")}" drop'
                )
    return "\n".join(lines) + "\n"
