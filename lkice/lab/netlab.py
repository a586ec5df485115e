"""A network lab in Linux network namespaces: a client behind a firewall, an impairment router,
and one real coturn per region, so the agent can be tested against the networks customers have
(UDP blocked, only TCP 443, symmetric NAT, delay, jitter, loss) with the injected values known.

Topology (``<t>`` is the lab's token; every namespace and interface name carries it)::

    lk-<t>-client          lk-<t>-fw                 lk-<t>-router              lk-<t>-r-<region>
    198.18.0.2/24 ------- 198.18.0.1/24             (TUN delay router,         198.19.i.2/24 (+ .3)
      default via .1      dnsmasq :53               nftables loss/rate)        coturn: UDP/TCP 3478,
                          nftables profile          198.18.1.2/30 ------+      TLS 5349 and 443
                          198.18.1.1/30 ------------+                   +----- 198.19.i.1/24

Everything is numbered from 198.18.0.0/15 (RFC 2544 benchmarking space). The lab is sealed: no
interface in it connects to the root namespace, nothing in the root namespace is configured, and
no namespace has a route outside 198.18.0.0/15 except the client's default route, which points at
the lab's own firewall (the firewall routes only the lab's ranges, so anything else is
unreachable there).

- **Firewall** (``fw``): nftables forward chain with a switchable :class:`Profile` (see
  :data:`PROFILES`): ``open``, ``udp-blocked``, ``tcp443-only``, ``proxy-only`` (a real
  tinyproxy on the firewall is the only way out), ``nat`` and ``symmetric-nat``.
  Filtering profiles *drop* (a firewall that filters, not one that rejects), counted. The lab's
  DNS (dnsmasq for ``lab.test``) runs here on 198.18.0.1, so DNS never crosses the filter.
- **Router** (``router``): policy routing (``ip rule iif <veth> lookup 100``, table 100's default
  route is a TUN device) diverts every packet entering from the firewall or a region through
  ``python3 -m lkice.lab.router forward``, which holds it for the region's delay and jitter in
  that direction; loss (``numgen random``) and rate caps (``limit rate over``) are nftables rules
  in the same namespace with named counters. Table 100 also holds a blackhole default route, so a
  dead router drops traffic rather than silently forwarding it unimpaired.
- **Regions**: ``turn.<region>.lab.test`` -> 198.19.i.2, with a second address .3 so coturn
  enables RFC 5780 (OTHER-ADDRESS) and its alternate TLS listener, which the lab puts on port 443.
  ``pion_regions`` run pion/turn (LiveKit's TURN, :mod:`lkice.lab.pion`) there instead, on the
  same addresses and ports (pion has no RFC 5780: no OTHER-ADDRESS).

Teardown kills every process the lab started and deletes every namespace and ``/etc/netns`` entry
however the block ends (exception, Ctrl-C during setup or use), with an ``atexit`` fallback and
``PR_SET_PDEATHSIG`` on the lab's own helpers (tied to the thread that started them: drive a lab
from one thread). :func:`leftovers` lists anything still carrying a token; :func:`destroy`
removes it (e.g. after ``kill -9`` of a test run).

Usage::

    with NetLab(regions=("eu", "us"), profile="udp-blocked") as lab:
        lab.set_impairment("eu", upstream=Impairment(delay_ms=20),
                           downstream=Impairment(delay_ms=20, loss=0.03))
        run = lab.lkice("turn:turn.eu.lab.test", *lab.turn_args())   # as the client
        truth = lab.ground_truth()       # configured values + kernel drop counters
        overhead = lab.measure_overhead("eu")   # the lab's own RTT: compare with tolerance

A new firewall personality is a :class:`Profile` added to :data:`PROFILES`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.dns import Dnsmasq, dnsmasq_path
from lkice.lab.pion import PionConfig, PionTurn
from lkice.lab.pki import LabPki
from lkice.lab.server import LabError, terminate
from lkice.lab.tinyproxy import TinyProxy

__all__ = [
    "PROFILES",
    "DirectionTruth",
    "GroundTruth",
    "Impairment",
    "LabError",
    "LkiceRun",
    "NetLab",
    "PingStats",
    "Profile",
    "destroy",
    "leftovers",
    "prerequisites",
]

DOMAIN = "lab.test"
CLIENT_IP = "198.18.0.2"
CLIENT_NET = "198.18.0.0/24"
FW_LAN_IP = "198.18.0.1"
FW_WAN_IP = "198.18.1.1"  # the firewall's outside address: what NAT profiles map the client to
ROUTER_WAN_IP = "198.18.1.2"
LAB_NET = "198.18.0.0/15"
MAX_REGIONS = 200
DIVERT_TABLE = 100
ECHO_PORT = 7
TURN_PORT = 3478
TURN_TLS_PORT = 5349
TURN_TLS_ALT_PORT = 443
INTERCEPT_PORT = 8443  # the TLS-inspecting proxy's own port in the firewall namespace
UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)

_REGION_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_TOKEN_RE = re.compile(r"^[0-9a-f]{6}$")
_NETNS_DIR = Path("/run/netns")
_ETC_NETNS = Path("/etc/netns")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
# Namespace inodes per token, so leftovers() still finds a process whose namespace has lost its
# name (a namespace lives on, unnamed, while any process is inside it).
_NS_INODES: dict[str, set[int]] = {}


# ---------------------------------------------------------------------------------------------
# Configuration values


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


@dataclass(frozen=True)
class Profile:
    """A firewall personality, as nftables statements in the firewall namespace.

    ``egress``: statements, in order, for packets the client sends out (each ends in a verdict;
    ``{drop}`` stands for a counted drop). ``nat``: the statement applied on the outside
    interface (None: routed, the client keeps its own address). ``stateful``: inbound packets are
    let in only as replies (established/related), else everything is let in. ``udp_egress``: the
    profile lets UDP out (the overhead measurement needs it)."""

    name: str
    description: str
    egress: tuple[str, ...] = ("accept",)
    nat: str | None = None
    stateful: bool = True
    udp_egress: bool = True


_DROP_EGRESS = 'counter name "egress_drop" drop'
_DROP_INGRESS = 'counter name "ingress_drop" drop'

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("open", "no filtering, no NAT: the client's address is seen as is", stateful=False),
        Profile(
            "udp-blocked",
            "stateful firewall dropping all UDP from the client (the lab's DNS is on the firewall)",
            egress=("meta l4proto udp {drop}", "accept"),
            udp_egress=False,
        ),
        Profile(
            "tcp443-only",
            "stateful firewall letting only TCP to port 443 out, dropping everything else",
            egress=("tcp dport 443 accept", "{drop}"),
            udp_egress=False,
        ),
        Profile(
            "proxy-only",
            "no direct egress at all: the only way out is the web proxy (tinyproxy) on the "
            f"firewall, http://{FW_LAN_IP}:3128, which lets CONNECT reach port 443 only",
            egress=("{drop}",),
            udp_egress=False,
        ),
        Profile(
            "nat",
            "port-restricted cone NAT: masquerade keeping source ports (endpoint-independent "
            "mapping), replies only",
            nat="masquerade",
        ),
        Profile(
            "symmetric-nat",
            "symmetric NAT: masquerade with a random port per connection (per destination), "
            "replies only",
            nat="masquerade random,fully-random",
        ),
    )
}


@dataclass(frozen=True)
class DirectionTruth:
    """One region and direction: what was configured and what the kernel counted."""

    impairment: Impairment
    loss_drops: int  # packets dropped by the loss rule (nftables counter)
    rate_drops: int  # packets dropped by the rate cap
    delayed: int  # packets the delay router queued and released (or dropped when full)
    queue_drops: int  # packets the delay router dropped because its queue was full


@dataclass(frozen=True)
class GroundTruth:
    """What the lab injected, to compare with what the agent measured. Counters are cumulative
    since the lab started (firewall counters since the profile was last set)."""

    profile: str
    reorder: bool
    egress_drops: int  # client->outside packets the firewall profile dropped
    ingress_drops: int  # unsolicited inbound packets the firewall dropped
    regions: dict[str, dict[str, DirectionTruth]]  # region -> "upstream"/"downstream"

    def injected_rtt_ms(self, region: str) -> float:
        """The round-trip delay the lab adds to ``region`` (without its own overhead)."""
        r = self.regions[region]
        return r[UPSTREAM].impairment.delay_ms + r[DOWNSTREAM].impairment.delay_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PingStats:
    """UDP ping-pong from the client to a region's echo server."""

    region: str
    sent: int
    lost: int
    rtts_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rtts_ms) if self.rtts_ms else math.nan

    @property
    def p95_ms(self) -> float:
        return _percentile(self.rtts_ms, 95)

    @property
    def min_ms(self) -> float:
        return min(self.rtts_ms) if self.rtts_ms else math.nan

    @property
    def max_ms(self) -> float:
        return max(self.rtts_ms) if self.rtts_ms else math.nan

    def summary(self) -> dict[str, float | int | str]:
        return {
            "region": self.region,
            "sent": self.sent,
            "lost": self.lost,
            "median_ms": round(self.median_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "min_ms": round(self.min_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class LkiceRun:
    """``lkice run --json`` in the client namespace: exit status and parsed report."""

    returncode: int
    report: dict[str, Any] | None
    stderr: str

    def paths(self) -> list[dict[str, Any]]:
        return list(self.report["paths"]) if self.report else []

    def path(self, uri_contains: str, transport: str | None = None) -> dict[str, Any]:
        """The single path whose URI contains ``uri_contains`` (and on ``transport``)."""
        found = [
            p
            for p in self.paths()
            if uri_contains in p["uri"] and (transport is None or p["transport"] == transport)
        ]
        if len(found) != 1:
            raise LookupError(
                f"{len(found)} paths match {uri_contains!r}/{transport}: "
                f"{[(p['uri'], p['transport']) for p in self.paths()]}"
            )
        return found[0]


# ---------------------------------------------------------------------------------------------
# Small helpers


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was actually observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the lab process dies (even by SIGKILL), so the
    lab's helpers never outlive it. Tied to the thread that started the lab."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _run(
    argv: Sequence[str], *, input_text: str | None = None, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run a setup command; any failure becomes a LabError naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"'{' '.join(argv)}' did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        what = " ".join(argv)
        if input_text is not None:
            what += f" <<< {input_text.strip()[:400]!r}"
        raise LabError(f"'{what}' failed with status {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _python(argv: Sequence[str]) -> list[str]:
    """Run Python programs with this interpreter, so the lab's helpers import this lkice."""
    argv = list(argv)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while tearing down (a second Ctrl-C must not leave half a lab behind); it is
    delivered, as KeyboardInterrupt, as soon as teardown is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def prerequisites() -> list[str]:
    """Why the lab cannot run here (empty when it can): root, iproute2, nftables, TUN, coturn,
    dnsmasq."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("must run as root (network namespaces, nftables)")
    if shutil.which("ip") is None:
        missing.append("iproute2 'ip' is not installed")
    if shutil.which("nft") is None:
        missing.append("nftables 'nft' is not installed")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun is missing (no TUN support)")
    if turnserver_path() is None:
        missing.append("coturn (turnserver) is not installed: apt-get install coturn")
    if dnsmasq_path() is None:
        missing.append("dnsmasq is not installed: apt-get install dnsmasq-base")
    if not missing:
        try:
            subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            missing.append(f"'ip netns' does not work here: {exc}")
    return missing


# ---------------------------------------------------------------------------------------------
# Finding and removing what a lab left behind


def _lab_prefix(token: str) -> str:
    return f"lk-{token}-"


def _token_namespaces(token: str) -> list[str]:
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(_lab_prefix(token)))


def _token_etc_dirs(token: str) -> list[Path]:
    try:
        return sorted(p for p in _ETC_NETNS.iterdir() if p.name.startswith(_lab_prefix(token)))
    except FileNotFoundError:
        return []


def _token_temp_dirs(token: str) -> list[Path]:
    """The lab's working directory and its servers' (named after their namespace, so carrying
    the token: ``lkice-<server>-lk-<token>-...``)."""
    temp = Path(tempfile.gettempdir())
    return sorted(
        set(temp.glob(f"lkice-netlab-{token}-*")) | set(temp.glob(f"lkice-*-lk-{token}-*"))
    )


def _token_pids(token: str) -> dict[int, str]:
    """Processes whose command line names the lab (namespace or interface names) or that run in
    one of its namespaces, named or not: pid -> command line."""
    marks = (f"lk-{token}", f"lk{token}")
    inodes = set(_NS_INODES.get(token, set()))
    for ns in _token_namespaces(token):
        with contextlib.suppress(OSError):
            inodes.add((_NETNS_DIR / ns).stat().st_ino)
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            ns_inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue  # gone, or a kernel thread
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if ns_inode in inodes or any(m in cmdline for m in marks):
            found[int(entry)] = cmdline
    return found


def _token_root_links(token: str) -> list[str]:
    """Interfaces carrying the token in the *root* namespace: there should never be any."""
    try:
        out = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if f"lk{token}" in n]


def leftovers(token: str) -> list[str]:
    """Everything still carrying ``token``: namespaces, /etc/netns entries, temporary
    directories, processes (by command line or by namespace), interfaces in the root namespace.
    Empty after a clean teardown."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"not a lab token: {token!r}")
    items = [f"namespace {n}" for n in _token_namespaces(token)]
    items += [f"directory {p}" for p in _token_etc_dirs(token) + _token_temp_dirs(token)]
    items += [f"process {pid}: {cmd}" for pid, cmd in sorted(_token_pids(token).items())]
    items += [f"interface {n} in the root namespace" for n in _token_root_links(token)]
    return items


def _kill_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def destroy(token: str) -> list[str]:
    """Remove everything carrying ``token``: kill the processes in its namespaces (and any naming
    it), delete the namespaces, their /etc/netns entries and the lab's temporary directories.
    Returns what could not be removed. Safe to call on a lab that is half built, gone, or owned
    by a process that was killed (``kill -9``)."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"not a lab token: {token!r}")
    problems: list[str] = []
    pids: set[int] = set(_token_pids(token))
    for ns in _token_namespaces(token):
        with contextlib.suppress(LabError):
            out = _run(["ip", "netns", "pids", ns], timeout=5).stdout
            pids.update(int(p) for p in out.split() if p.isdigit())
    pids.discard(os.getpid())
    _kill_pids(sorted(pids))
    for ns in _token_namespaces(token):
        try:
            _run(["ip", "netns", "delete", ns], timeout=10)
        except LabError as exc:
            problems.append(str(exc))
    for directory in _token_etc_dirs(token) + _token_temp_dirs(token):
        try:
            shutil.rmtree(directory)
        except OSError as exc:
            problems.append(f"cannot remove {directory}: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------
# The delay router process


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
# The lab


class NetLab:
    """``with NetLab(regions=("eu", "us"), profile="open") as lab:`` builds the lab (a few
    seconds) and tears it down on exit, whatever happened inside. Needs root; see
    :func:`prerequisites`.

    ``reorder``: let jitter reorder packets of a flow (off: a path with jitter still delivers in
    order). ``turn_user``/``turn_password``: coturn's long-term credentials (random password by
    default). ``token``: 6 hex digits naming everything the lab creates (random by default).
    ``pion_regions``: regions whose TURN server is pion/turn instead of coturn (same users,
    addresses and ports; needs :func:`lkice.lab.pion.pion_unavailable_reason` to be None)."""

    def __init__(
        self,
        regions: Sequence[str] = ("eu",),
        profile: str = "open",
        *,
        reorder: bool = False,
        turn_user: str = "lkice",
        turn_password: str | None = None,
        token: str | None = None,
        ready_timeout: float = 10.0,
        pion_regions: Sequence[str] = (),
    ) -> None:
        regions = tuple(regions)
        if not regions:
            raise ValueError("a lab needs at least one region")
        if len(regions) > MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} regions")
        for region in regions:
            if not _REGION_RE.match(region):
                raise ValueError(
                    f"region name {region!r}: use 1-16 lowercase letters and digits, "
                    "starting with a letter (it becomes a DNS label and part of names)"
                )
        if len(set(regions)) != len(regions):
            raise ValueError(f"duplicate region names: {regions}")
        unknown = [r for r in pion_regions if r not in regions]
        if unknown:
            raise ValueError(f"pion_regions {unknown} are not among the regions {regions}")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        if token is not None and not _TOKEN_RE.match(token):
            raise ValueError(f"token must be 6 lowercase hex digits, not {token!r}")
        self.regions = regions
        self.pion_regions = frozenset(pion_regions)
        self.reorder = reorder
        self.turn_user = turn_user
        self.turn_password = turn_password or secrets.token_urlsafe(12)
        self.token = token or self._fresh_token()
        self.ready_timeout = ready_timeout
        self._profile = profile
        self._blocks: set[tuple[str, str]] = set()  # (region, protocol): see block_region
        self._impairments: dict[str, dict[str, Impairment]] = {
            r: dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT) for r in regions
        }
        self._work: tempfile.TemporaryDirectory[str] | None = None
        self._router: _Helper | None = None
        self._echo: dict[str, _Helper] = {}
        self._livekit: dict[str, _Helper] = {}
        self._interceptor: _Helper | None = None
        self._web_proxy: TinyProxy | None = None
        self._coturn: dict[str, Coturn | PionTurn] = {}  # a region's TURN server
        self._dns: Dnsmasq | None = None
        self._ca_file: Path | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    # -- names and numbers ------------------------------------------------------------------

    @staticmethod
    def _fresh_token() -> str:
        for _ in range(20):
            token = secrets.token_hex(3)
            if not _token_namespaces(token) and not _token_etc_dirs(token):
                return token
        raise LabError("could not find an unused lab token")  # pragma: no cover

    @property
    def _p(self) -> str:
        """Interface name prefix: ``lk`` + token (8 characters, leaving 7 of IFNAMSIZ's 15)."""
        return f"lk{self.token}"

    @property
    def client_ns(self) -> str:
        return f"lk-{self.token}-client"

    @property
    def fw_ns(self) -> str:
        return f"lk-{self.token}-fw"

    @property
    def router_ns(self) -> str:
        return f"lk-{self.token}-router"

    def region_ns(self, region: str) -> str:
        self._index(region)
        return f"lk-{self.token}-r-{region}"

    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.fw_ns, self.router_ns] + [
            self.region_ns(r) for r in self.regions
        ]

    @property
    def client_ip(self) -> str:
        return CLIENT_IP

    @property
    def fw_outside_ip(self) -> str:
        """The address NAT profiles map the client to."""
        return FW_WAN_IP

    @property
    def resolver_ip(self) -> str:
        return FW_LAN_IP

    def _index(self, region: str) -> int:
        try:
            return self.regions.index(region)
        except ValueError:
            raise ValueError(
                f"unknown region {region!r}: one of {', '.join(self.regions)}"
            ) from None

    def server_ip(self, region: str) -> str:
        """The region's TURN server address (198.19.<i>.2)."""
        return f"198.19.{self._index(region)}.2"

    def alternate_ip(self, region: str) -> str:
        """The region server's second address (RFC 5780 OTHER-ADDRESS)."""
        return f"198.19.{self._index(region)}.3"

    def region_net(self, region: str) -> str:
        return f"198.19.{self._index(region)}.0/24"

    def turn_uris(self, region: str) -> list[str]:
        """The region's TURN as a deployment advertises it: UDP and TCP on 3478, TLS on 443."""
        host = self.turn_host(region)
        return [
            f"turn:{host}:{TURN_PORT}?transport=udp",
            f"turn:{host}:{TURN_PORT}?transport=tcp",
            f"turns:{host}:{TURN_TLS_ALT_PORT}?transport=tcp",
        ]

    def signal_ip(self, region: str) -> str:
        """The region's LiveKit signaling address (its own, so it can take port 443 too)."""
        return f"198.19.{self._index(region)}.4"

    def livekit_host(self, region: str) -> str:
        self._index(region)
        return f"lk.{region}.{DOMAIN}"

    def start_livekit(
        self,
        region: str,
        api_key: str,
        api_secret: str,
        port: int = 443,
        ice_tcp_port: int | None = 7881,
    ) -> str:
        """Run the lab LiveKit server (``lkice.lab.livekit_server``) in ``region``'s namespace on its
        signaling address, handing out the region's coturn as a deployment hands out its TURN:
        TURN/UDP and TURN/TCP on 3478, TURN/TLS on 443; its SFU offers ICE/TCP on
        ``ice_tcp_port`` (LiveKit's default 7881; None: off). Returns the URL to give lkice
        (``ws://lk.<region>.lab.test:<port>``); stopped with the lab."""
        if region in self._livekit:
            raise LabError(f"a LiveKit server already runs in {region}")
        assert self._work is not None
        helper = _Helper(
            f"LiveKit in {region}",
            self.region_ns(region),
            ["python3", "-m", "lkice.lab.livekit_server"],
            Path(self._work.name) / f"livekit-{region}.log",
        )
        self._livekit[region] = helper
        config = {
            "api_key": api_key,
            "api_secret": api_secret,
            "host": self.signal_ip(region),
            "port": port,
            "region": region,
            # ICE checks come from the client's network, through the firewall (and from the
            # region's own coturn for relayed paths): the whole lab range.
            "peer_networks": ["198.18.0.0/15"],
            "ice_tcp_port": ice_tcp_port,
            "ice_servers": [
                {
                    "urls": self.turn_uris(region),
                    "username": self.turn_user,
                    "credential": self.turn_password,
                }
            ],
        }
        assert helper.process.stdin is not None
        helper.process.stdin.write((json.dumps(config) + "\n").encode())
        helper.process.stdin.flush()
        line = helper.read_line(20.0)
        if not line.startswith("ready "):
            raise LabError(f"LiveKit in {region} said {line!r}: {helper.log_tail()}")
        return f"ws://{self.livekit_host(region)}:{port}"

    def intercept_tls(
        self,
        region: str,
        port: int = TURN_TLS_ALT_PORT,
        organization: str = "Contoso",
        unit: str = "Contoso TLS Inspection CA",
    ) -> str:
        """Put a TLS-inspecting proxy (``lkice.lab.intercept``) in the firewall: the client's
        TCP to ``region``'s TURN addresses on ``port`` is redirected to it, and it answers with
        certificates from its own CA (``O=<organization>, OU=<unit>``), relaying to the real
        server behind. Returns the proxy CA's name as a certificate issuer shows it."""
        if self._interceptor is not None:
            raise LabError("the lab already intercepts TLS")
        self._require_running()
        assert self._work is not None
        helper = _Helper(
            "TLS-inspecting proxy",
            self.fw_ns,
            ["python3", "-m", "lkice.lab.intercept"],
            Path(self._work.name) / "intercept.log",
        )
        self._interceptor = helper
        listen = (FW_LAN_IP, INTERCEPT_PORT)
        config = {"host": listen[0], "port": listen[1], "organization": organization, "unit": unit}
        assert helper.process.stdin is not None
        helper.process.stdin.write((json.dumps(config) + "\n").encode())
        helper.process.stdin.flush()
        line = helper.read_line(20.0)
        if line != "ready":
            raise LabError(f"the TLS-inspecting proxy said {line!r}: {helper.log_tail()}")
        targets = f"{{ {self.server_ip(region)}, {self.alternate_ip(region)} }}"
        self._nft(
            self.fw_ns,
            "table ip lkintercept {\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname "{self._p}fc" ip daddr {targets} tcp dport {port} '
            f"dnat to {listen[0]}:{listen[1]}\n"
            "  }\n"
            "}\n",
        )
        return f"O={organization}, OU={unit}"

    def start_web_proxy(self, auth: tuple[str, str] | None = None) -> str:
        """(Re)start the firewall's web proxy (Debian's tinyproxy on 198.18.0.1:3128, CONNECT
        to port 443 only, Basic authentication when ``auth`` is given) and return its URL. The
        proxy's own traffic leaves from the firewall itself, so no profile filters it; the
        ``proxy-only`` profile starts one without authentication."""
        self._require_running()
        if self._web_proxy is not None:
            self._web_proxy.stop()
            self._web_proxy = None
        proxy = TinyProxy(
            connect_ports=[TURN_TLS_ALT_PORT],
            auth=auth,
            listen=FW_LAN_IP,
            ready_timeout=self.ready_timeout,
            netns=self.fw_ns,
        )
        proxy.start()
        self._web_proxy = proxy
        return proxy.url

    @property
    def web_proxy_url(self) -> str | None:
        return None if self._web_proxy is None else self._web_proxy.url

    def turn_host(self, region: str) -> str:
        self._index(region)
        return f"turn.{region}.{DOMAIN}"

    @property
    def ca_file(self) -> Path:
        """The lab CA (PEM) that signed every region's TURN/TLS certificate."""
        if self._ca_file is None:
            raise LabError("the lab is not started")
        return self._ca_file

    @property
    def profile(self) -> str:
        return self._profile

    def impairment(self, region: str, direction: str) -> Impairment:
        return self._impairments[region][direction]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = self._teardown()
        if problems and exc is None:
            raise LabError(f"lab {self.token} teardown left: {'; '.join(problems)}")

    def start(self) -> NetLab:
        """Build the lab. On any failure (or Ctrl-C) everything built so far is removed before
        the exception propagates."""
        if self._started:
            raise LabError("a NetLab can be started once")
        missing = prerequisites()
        if missing:
            raise LabError("the network lab cannot run here: " + "; ".join(missing))
        # Teardown removes everything carrying the token: never adopt one that is in use.
        in_use = leftovers(self.token)
        if in_use:
            raise LabError(
                f"lab token {self.token} is in use ({'; '.join(in_use[:3])}); "
                f"if that lab is dead, remove it with lkice.lab.netlab.destroy({self.token!r})"
            )
        self._started = True
        atexit.register(self._teardown)
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def close(self) -> None:
        """Tear down now; raises LabError naming anything that could not be removed."""
        problems = self._teardown()
        if problems:
            raise LabError(f"lab {self.token} teardown left: {'; '.join(problems)}")

    def _teardown(self) -> list[str]:
        with self._lock:
            if self._closed or not self._started:
                return []
            self._closed = True
            problems: list[str] = []
            with _sigint_deferred():
                # A coturn still starting would otherwise be launched after its namespace was
                # swept; start-up is bounded, so this wait is too.
                for thread in self._threads:
                    thread.join(self.ready_timeout + 10.0)
                helpers = [*self._echo.values(), *self._livekit.values()]
                helpers += [self._router] if self._router else []
                helpers += [self._interceptor] if self._interceptor else []
                for helper in helpers:
                    try:
                        helper.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping {helper.name}: {exc}")
                self._echo.clear()
                self._livekit.clear()
                self._router = None
                self._interceptor = None
                if self._web_proxy is not None:
                    try:
                        self._web_proxy.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping the web proxy: {exc}")
                    self._web_proxy = None
                for server in [*self._coturn.values()]:
                    try:
                        server.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping coturn: {exc}")
                self._coturn.clear()
                if self._dns is not None:
                    try:
                        self._dns.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping dnsmasq: {exc}")
                    self._dns = None
                if self._work is not None:
                    with contextlib.suppress(OSError):
                        self._work.cleanup()
                    self._work = None
                problems += destroy(self.token)
                problems += leftovers(self.token)
                _NS_INODES.pop(self.token, None)
                atexit.unregister(self._teardown)
            return problems

    def _build(self) -> None:
        self._work = tempfile.TemporaryDirectory(prefix=f"lkice-netlab-{self.token}-")
        work = Path(self._work.name)
        p = self._p
        for ns in self.namespaces:
            self._add_namespace(ns)
        # client <-> fw
        self._veth(self.client_ns, f"{p}c", self.fw_ns, f"{p}fc")
        self._addr(self.client_ns, f"{p}c", f"{CLIENT_IP}/24")
        self._addr(self.fw_ns, f"{p}fc", f"{FW_LAN_IP}/24")
        self._ip(self.client_ns, "route", "add", "default", "via", FW_LAN_IP)
        # fw <-> router
        self._veth(self.fw_ns, f"{p}fo", self.router_ns, f"{p}ro")
        self._addr(self.fw_ns, f"{p}fo", f"{FW_WAN_IP}/30")
        self._addr(self.router_ns, f"{p}ro", f"{ROUTER_WAN_IP}/30")
        self._ip(self.fw_ns, "route", "add", "198.19.0.0/16", "via", ROUTER_WAN_IP)
        self._ip(self.router_ns, "route", "add", CLIENT_NET, "via", FW_WAN_IP)
        # router <-> regions
        for i, region in enumerate(self.regions):
            ns = self.region_ns(region)
            self._veth(self.router_ns, f"{p}rr{i}", ns, f"{p}sv{i}")
            self._addr(self.router_ns, f"{p}rr{i}", f"198.19.{i}.1/24")
            self._addr(ns, f"{p}sv{i}", f"{self.server_ip(region)}/24")
            self._addr(ns, f"{p}sv{i}", f"{self.alternate_ip(region)}/24")
            self._addr(ns, f"{p}sv{i}", f"{self.signal_ip(region)}/24")
            self._ip(ns, "route", "add", LAB_NET, "via", f"198.19.{i}.1")
        self._write_resolv_conf()
        self._apply_profile(self._profile)
        self._start_router(work)
        self._nft(self.router_ns, self._impairment_table())
        self._dns = Dnsmasq(
            {
                **{self.turn_host(r): [self.server_ip(r)] for r in self.regions},
                **{self.livekit_host(r): [self.signal_ip(r)] for r in self.regions},
            },
            domain=DOMAIN,
            listen_ip=FW_LAN_IP,
            port=53,
            netns=self.fw_ns,
        )
        self._dns.start()
        self._start_coturns(work)
        if PROFILES[self._profile].name == "proxy-only":
            self.start_web_proxy()

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        _NS_INODES.setdefault(self.token, set()).add((_NETNS_DIR / ns).stat().st_ino)
        self._ip(ns, "link", "set", "lo", "up")
        settings = [
            "net.ipv6.conf.all.disable_ipv6=1",  # the lab is IPv4; no RS/MLD noise, no DAD waits
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",  # packets come back out of the TUN device
            "net.ipv4.conf.default.rp_filter=0",
        ]
        if ns in (self.fw_ns, self.router_ns):
            settings.append("net.ipv4.ip_forward=1")
        _run(_in_ns(ns, ["sysctl", "-q", "-e", "-w", *settings]))  # -e: a kernel without IPv6

    def _ip(self, ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        self._ip(ns, "addr", "add", cidr, "dev", dev)

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair created directly in its two namespaces (never in the root namespace)."""
        _run(
            [
                "ip",
                "link",
                "add",
                name_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                name_b,
                "netns",
                ns_b,
            ]
        )
        self._ip(ns_a, "link", "set", name_a, "up")
        self._ip(ns_b, "link", "set", name_b, "up")

    def _nft(self, ns: str, script: str) -> None:
        _run(_in_ns(ns, ["nft", "-f", "-"]), input_text=script)

    def _write_resolv_conf(self) -> None:
        """``ip netns exec`` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the
        resolver of the client (and of the web proxy on the firewall) is the lab's dnsmasq."""
        for ns in (self.client_ns, self.fw_ns):
            directory = _ETC_NETNS / ns
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "resolv.conf").write_text(
                f"# lkice network lab {self.token}\nnameserver {FW_LAN_IP}\n"
                "options timeout:1 attempts:2\n"
            )

    def _make_pki(self, work: Path) -> dict[str, LabPki]:
        """One lab CA, one certificate per region naming its host and addresses."""
        import trustme

        ca = trustme.CA(
            organization_name="lkice lab", organization_unit_name=f"lkice netlab {self.token} CA"
        )
        ca_file = work / "lab-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self._ca_file = ca_file
        out: dict[str, LabPki] = {}
        for region in self.regions:
            leaf = ca.issue_cert(
                self.turn_host(region), self.server_ip(region), self.alternate_ip(region)
            )
            cert_file = work / f"turn-{region}-cert.pem"
            key_file = work / f"turn-{region}-key.pem"
            leaf.cert_chain_pems[0].write_to_path(str(cert_file))
            leaf.private_key_pem.write_to_path(str(key_file))
            key_file.chmod(0o600)
            out[region] = LabPki(
                ca_file, cert_file, key_file, f"O=lkice lab, OU=lkice netlab {self.token} CA"
            )
        return out

    def turn_server_kind(self, region: str) -> str:
        """Which TURN server ``region`` runs: "coturn" or "pion"."""
        self._index(region)
        return "pion" if region in self.pion_regions else "coturn"

    def _pion(self, region: str, pki: LabPki) -> PionTurn:
        """pion/turn on the region's addresses and ports, as its coturn would be."""
        return PionTurn(
            PionConfig(
                listen_ip=self.server_ip(region),
                port=TURN_PORT,
                tls_port=TURN_TLS_PORT,
                realm=DOMAIN,
                users={self.turn_user: self.turn_password},
                pki=pki,
                extra_ips=(self.alternate_ip(region),),
                alt_tls_port=TURN_TLS_ALT_PORT,
                netns=self.region_ns(region),
            ),
            ready_timeout=self.ready_timeout,
        )

    def _start_coturns(self, work: Path) -> None:
        """A real TURN server per region (coturn, or pion/turn for ``pion_regions``); started in
        parallel (each takes a moment to be ready)."""
        pkis = self._make_pki(work)
        errors: list[BaseException] = []

        def start(region: str) -> None:
            server: Coturn | PionTurn = (
                self._pion(region, pkis[region])
                if region in self.pion_regions
                else self._coturn_for(region, pkis[region])
            )
            with self._lock:
                self._coturn[region] = server  # registered first: teardown stops it
            try:
                server.start()
            except BaseException as exc:  # collected, re-raised by the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(r,), daemon=True) for r in self.regions]
        self._threads = threads
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.ready_timeout + 15.0)
        if any(t.is_alive() for t in threads):
            raise LabError("TURN server start-up did not finish in time")
        if errors:
            raise errors[0]

    def _coturn_for(self, region: str, pki: LabPki) -> Coturn:
        return Coturn(
            CoturnConfig(
                listen_ip=self.server_ip(region),
                port=TURN_PORT,
                tls_port=TURN_TLS_PORT,
                realm=DOMAIN,
                users={self.turn_user: self.turn_password},
                pki=pki,
                # Two listening addresses enable RFC 5780 and the alternate listeners;
                # the alternate TLS port is 443, where TURN/TLS is found through firewalls.
                extra=[
                    f"listening-ip={self.alternate_ip(region)}",
                    f"alt-tls-listening-port={TURN_TLS_ALT_PORT}",
                ],
                netns=self.region_ns(region),
                ready_tcp_ports=(TURN_TLS_ALT_PORT,),
            ),
            ready_timeout=self.ready_timeout,
        )

    # -- the firewall ------------------------------------------------------------------------

    def _firewall_table(self, profile: Profile) -> str:
        p = self._p
        lan, wan = f"{p}fc", f"{p}fo"
        # Per-region blocks (block_region) come first: they narrow whatever the profile allows.
        blocks = [
            f"ip daddr {self.region_net(region)} meta l4proto {proto} {_DROP_EGRESS}"
            for region, proto in sorted(self._blocks)
        ]
        egress = blocks + [s.replace("{drop}", _DROP_EGRESS) for s in profile.egress]
        ingress = (
            ["ct state established,related accept", _DROP_INGRESS]
            if profile.stateful
            else ["accept"]
        )
        lines = [
            "table inet lkfw",
            "delete table inet lkfw",  # with the line above: replace atomically, new or not
            "table inet lkfw {",
            "  counter egress_drop { }",
            "  counter ingress_drop { }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy drop;",
            f'    iifname "{lan}" oifname "{wan}" jump egress',
            f'    iifname "{wan}" oifname "{lan}" jump ingress',
            "  }",
            "  chain egress {",
            *(f"    {s}" for s in egress),
            "  }",
            "  chain ingress {",
            *(f"    {s}" for s in ingress),
            "  }",
        ]
        if profile.nat is not None:
            lines += [
                "  chain postrouting {",
                "    type nat hook postrouting priority srcnat; policy accept;",
                f'    oifname "{wan}" ip saddr {CLIENT_NET} {profile.nat}',
                "  }",
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _apply_profile(self, name: str) -> None:
        self._nft(self.fw_ns, self._firewall_table(PROFILES[name]))
        self._profile = name

    # -- outages (for resilience tests: a probe must report them as data and recover) ---------

    def stop_turn(self, region: str) -> None:
        """Stop ``region``'s coturn (its ports then refuse or stay silent, as a dead server)."""
        self._require_running()
        self._coturn[self.regions[self._index(region)]].stop()

    def start_turn(self, region: str) -> None:
        """Start ``region``'s coturn again, same addresses, ports and users; waits until ready."""
        self._require_running()
        self._coturn[self.regions[self._index(region)]].start()

    def stop_dns(self) -> None:
        """Stop the lab's DNS server: names stop resolving (the resolver times out)."""
        self._require_running()
        assert self._dns is not None
        self._dns.stop()

    def start_dns(self) -> None:
        self._require_running()
        assert self._dns is not None
        self._dns.start()

    def cut_client_link(self, cut: bool = True) -> None:
        """Take the cable out between the client and its firewall (``cut=False`` puts it back):
        the firewall's side of the link goes down, so nothing passes either way."""
        self._require_running()
        state = "down" if cut else "up"
        _run(_in_ns(self.fw_ns, ["ip", "link", "set", f"{self._p}fc", state]))

    def block_region(self, region: str, protocol: str = "udp") -> None:
        """Drop ``protocol`` ("udp" or "tcp") from the client to one region only, on top of the
        profile (e.g. the nearest region's UDP blocked while the others' is open)."""
        if protocol not in ("udp", "tcp"):
            raise ValueError(f"protocol must be udp or tcp, not {protocol!r}")
        self._index(region)
        self._require_running()
        self._blocks.add((region, protocol))
        self._apply_profile(self._profile)

    def set_profile(self, name: str) -> None:
        """Switch the firewall profile (atomically; its drop counters start from zero).
        Connections already tracked keep their NAT mapping; new ones (every agent run uses
        fresh sockets) see the new profile. Add profiles to :data:`PROFILES`."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}: one of {', '.join(PROFILES)}")
        self._require_running()
        self._apply_profile(name)
        if name == "proxy-only" and self._web_proxy is None:
            self.start_web_proxy()

    # -- impairments -------------------------------------------------------------------------

    def _start_router(self, work: Path) -> None:
        tun = f"{self._p}tun"
        self._router = _Helper(
            "delay router",
            self.router_ns,
            ["python3", "-m", "lkice.lab.router", "forward", "--tun", tun],
            work / "router.log",
        )
        line = self._router.read_line(self.ready_timeout)
        if line != f"ready {tun}":
            raise LabError(f"delay router said {line!r}: {self._router.log_tail()}")
        self._push_delays()
        r, p = self.router_ns, self._p
        self._ip(r, "link", "set", tun, "up")
        table = str(DIVERT_TABLE)
        self._ip(r, "route", "add", "default", "dev", tun, "table", table)
        self._ip(r, "route", "add", "blackhole", "default", "metric", "4000", "table", table)
        for dev in [f"{p}ro"] + [f"{p}rr{i}" for i in range(len(self.regions))]:
            self._ip(r, "rule", "add", "iif", dev, "lookup", table, "pref", "100")

    def _push_delays(self) -> None:
        assert self._router is not None
        flows = [
            {
                "name": region,
                "net": self.region_net(region),
                "up": {
                    "delay_ms": self._impairments[region][UPSTREAM].delay_ms,
                    "jitter_ms": self._impairments[region][UPSTREAM].jitter_ms,
                },
                "down": {
                    "delay_ms": self._impairments[region][DOWNSTREAM].delay_ms,
                    "jitter_ms": self._impairments[region][DOWNSTREAM].jitter_ms,
                },
            }
            for region in self.regions
        ]
        self._router.request({"reorder": self.reorder, "flows": flows})

    def _impairment_table(self) -> str:
        """The router's nftables table: a named counter per region, direction and kind, so the
        counts survive rule changes; the rules themselves come from :meth:`_impairment_rules`."""
        counters = [
            f"  counter {self._counter(i, d, kind)} {{ }}"
            for i in range(len(self.regions))
            for d in DIRECTIONS
            for kind in ("loss", "rate")
        ]
        return (
            "table inet lkimp {\n" + "\n".join(counters) + "\n  chain impair {\n"
            "    type filter hook forward priority filter; policy accept;\n  }\n}\n"
        )

    @staticmethod
    def _counter(index: int, direction: str, kind: str) -> str:
        return f"r{index}_{direction}_{kind}"

    def _impairment_rules(self) -> str:
        p = self._p
        lines = ["flush chain inet lkimp impair"]
        for i, region in enumerate(self.regions):
            for direction in DIRECTIONS:
                imp = self._impairments[region][direction]
                # Match where the packet enters the router, so it is counted once (it crosses
                # the forward hook again on its way out of the TUN device).
                if direction == UPSTREAM:
                    match = f'iifname "{p}ro" ip daddr {self.region_net(region)}'
                else:
                    match = f'iifname "{p}rr{i}"'
                rule = f"add rule inet lkimp impair {match}"
                if imp.loss >= 1.0:
                    lines.append(
                        f'{rule} counter name "{self._counter(i, direction, "loss")}" drop'
                    )
                elif imp.loss > 0.0:
                    threshold = round(imp.loss * 1_000_000)
                    lines.append(
                        f"{rule} numgen random mod 1000000 < {threshold} "
                        f'counter name "{self._counter(i, direction, "loss")}" drop'
                    )
                if imp.rate_kbit is not None:
                    rate = imp.rate_kbit * 125  # bytes per second
                    burst = max(3000, rate // 20)  # 50 ms of traffic, at least two packets
                    lines.append(
                        f"{rule} limit rate over {rate} bytes/second burst {burst} bytes "
                        f'counter name "{self._counter(i, direction, "rate")}" drop'
                    )
        return "\n".join(lines) + "\n"

    def set_impairment(
        self,
        region: str,
        upstream: Impairment | None = None,
        downstream: Impairment | None = None,
    ) -> None:
        """Set what the lab does to ``region``'s traffic; a direction left None is unchanged.
        Upstream is client -> server, downstream server -> client. Takes effect for the next
        packet (the router acknowledges the change before this returns)."""
        self._index(region)
        self._require_running()
        with self._lock:
            if upstream is not None:
                self._impairments[region][UPSTREAM] = upstream
            if downstream is not None:
                self._impairments[region][DOWNSTREAM] = downstream
            self._apply_impairments()

    def clear_impairments(self) -> None:
        """No delay, jitter, loss or rate cap anywhere."""
        self._require_running()
        with self._lock:
            for region in self.regions:
                self._impairments[region] = dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT)
            self._apply_impairments()

    def _apply_impairments(self) -> None:
        self._push_delays()
        self._nft(self.router_ns, self._impairment_rules())

    def _require_running(self) -> None:
        if not self._started or self._closed:
            raise LabError("the lab is not running")

    # -- ground truth and measurement ---------------------------------------------------------

    def _counters(self, ns: str, table: str) -> dict[str, int]:
        out = _run(_in_ns(ns, ["nft", "-j", "list", "counters", "table", "inet", table])).stdout
        counters: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            counter = item.get("counter")
            if counter is not None:
                counters[str(counter["name"])] = int(counter["packets"])
        return counters

    def ground_truth(self) -> GroundTruth:
        """The configured impairments and profile, with the kernel's drop counters and the delay
        router's packet counts: what the agent's measurements should be compared with."""
        self._require_running()
        assert self._router is not None
        router_stats = json.loads(self._router.request({"stats": True}))
        imp = self._counters(self.router_ns, "lkimp")
        fw = self._counters(self.fw_ns, "lkfw")
        regions: dict[str, dict[str, DirectionTruth]] = {}
        for i, region in enumerate(self.regions):
            flow = router_stats["flows"].get(region, {})
            regions[region] = {}
            for direction, key in ((UPSTREAM, "up"), (DOWNSTREAM, "down")):
                stats = flow.get(key, {})
                regions[region][direction] = DirectionTruth(
                    impairment=self._impairments[region][direction],
                    loss_drops=imp.get(self._counter(i, direction, "loss"), 0),
                    rate_drops=imp.get(self._counter(i, direction, "rate"), 0),
                    delayed=int(stats.get("packets", 0)),
                    queue_drops=int(stats.get("queue_drops", 0)),
                )
        return GroundTruth(
            profile=self._profile,
            reorder=bool(router_stats.get("reorder", self.reorder)),
            egress_drops=fw.get("egress_drop", 0),
            ingress_drops=fw.get("ingress_drop", 0),
            regions=regions,
        )

    def _ensure_echo(self, region: str) -> None:
        if region in self._echo:
            return
        assert self._work is not None
        helper = _Helper(
            f"echo server in {region}",
            self.region_ns(region),
            [
                "python3",
                "-m",
                "lkice.lab.router",
                "echo",
                "--bind",
                self.server_ip(region),
                "--port",
                str(ECHO_PORT),
            ],
            Path(self._work.name) / f"echo-{region}.log",
        )
        self._echo[region] = helper
        line = helper.read_line(10.0)
        if line != "ready":
            raise LabError(f"echo server in {region} said {line!r}: {helper.log_tail()}")

    def ping(
        self, region: str, count: int = 20, interval: float = 0.01, timeout: float = 1.0
    ) -> PingStats:
        """UDP ping-pong from the client to ``region`` under the current profile and impairments
        (a UDP-blocking profile loses every probe): one probe at a time, each given up after
        ``timeout`` seconds, so the whole run is bounded by ``count`` x ``timeout``."""
        self._index(region)
        self._require_running()
        if not 1 <= count <= 1000:
            raise ValueError("count must be within 1..1000")
        if not 0.01 <= timeout <= 10.0 or not 0.0 <= interval <= 1.0:
            raise ValueError("timeout must be within 0.01..10 s and interval within 0..1 s")
        self._ensure_echo(region)
        argv = ["python3", "-m", "lkice.lab.router", "ping", "--to", self.server_ip(region)]
        argv += ["--port", str(ECHO_PORT), "--count", str(count), "--interval", str(interval)]
        argv += ["--timeout", str(timeout)]
        proc = self.run_in_client(argv, timeout=count * (interval + timeout) + 15.0)
        if proc.returncode != 0:
            raise LabError(f"ping from the client failed ({proc.returncode}): {proc.stderr}")
        data = json.loads(proc.stdout)
        return PingStats(region, count, int(data["lost"]), tuple(float(x) for x in data["rtts_ms"]))

    def measure_overhead(self, region: str | None = None, count: int = 50) -> PingStats:
        """The lab's own round-trip time (veths, NAT, the userspace delay router and the probe's
        Python) with nothing injected: UDP ping-pong to an echo server in ``region``. The
        region's impairments are zeroed, and a UDP-blocking profile swapped for ``open`` (which
        restarts the firewall's drop counters), for the measurement and restored after. A
        measured RTT should be injected RTT + this."""
        region = region or self.regions[0]
        self._index(region)
        with self._lock:
            saved = dict(self._impairments[region])
            saved_profile = self._profile
            try:
                if any(not imp.is_zero for imp in saved.values()):
                    self._impairments[region] = dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT)
                    self._apply_impairments()
                if not PROFILES[saved_profile].udp_egress:
                    self._apply_profile("open")
                return self.ping(region, count=count)
            finally:
                if self._profile != saved_profile:
                    self._apply_profile(saved_profile)
                if self._impairments[region] != saved:
                    self._impairments[region] = saved
                    self._apply_impairments()

    # -- running things ----------------------------------------------------------------------

    def run_in(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in one of the lab's namespaces and return its result (any exit status).
        ``python3``/``python`` as the program means this interpreter. A command still running at
        ``timeout`` is killed and reported as a LabError."""
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not one of this lab's namespaces")
        self._require_running()
        full = _in_ns(ns, _python(argv))
        try:
            return subprocess.run(
                full,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, **env} if env is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"'{' '.join(full)}' did not finish within {timeout:g} s") from exc

    def popen_in_client(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a long-running command as the client (a scheduled probe, say), stdout and
        stderr piped. The caller stops it (and must, before the lab is closed)."""
        self._require_running()
        return subprocess.Popen(
            _in_ns(self.client_ns, _python(argv)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env is not None else None,
        )

    def run_in_client(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the client (behind the firewall, resolving with the lab's DNS)."""
        return self.run_in(self.client_ns, argv, timeout=timeout, env=env, input_text=input_text)

    def lkice(self, *args: str, timeout: float = 60.0) -> LkiceRun:
        """``lkice run <args> --json`` as the client; the report is None if stdout is not JSON
        (a usage or internal error: see ``stderr``)."""
        proc = self.run_in_client(
            ["python3", "-m", "lkice", "run", *args, "--json"], timeout=timeout
        )
        try:
            report = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            report = None
        return LkiceRun(proc.returncode, report, proc.stderr)

    def turn_args(self) -> list[str]:
        """``lkice run`` options for this lab's TURN servers: credentials and the lab CA."""
        return ["-u", self.turn_user, "-p", self.turn_password, "--ca-file", str(self.ca_file)]

    def describe(self) -> dict[str, Any]:
        """Names and numbers of the running lab, for logs and reports."""
        return {
            "token": self.token,
            "profile": self._profile,
            "client": {"namespace": self.client_ns, "ip": CLIENT_IP, "resolver": FW_LAN_IP},
            "firewall": {"namespace": self.fw_ns, "outside_ip": FW_WAN_IP},
            "router": {"namespace": self.router_ns},
            "regions": {
                r: {
                    "namespace": self.region_ns(r),
                    "host": self.turn_host(r),
                    "turn_server": self.turn_server_kind(r),
                    "ip": self.server_ip(r),
                    "alternate_ip": self.alternate_ip(r),
                    "ports": {"udp/tcp": TURN_PORT, "tls": [TURN_TLS_PORT, TURN_TLS_ALT_PORT]},
                }
                for r in self.regions
            },
        }
