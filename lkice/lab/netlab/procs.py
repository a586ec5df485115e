"""Process helpers of the namespace lab: setup commands, commands in a namespace, helpers that
die with the lab, Ctrl-C held during teardown; and what the lab needs from the host."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from lkice.lab.coturn import turnserver_path
from lkice.lab.dns import dnsmasq_path
from lkice.lab.server import LabError

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


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
# Namespace plumbing (setup commands: a failure is a LabError)


def ip_in(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def add_address(ns: str, dev: str, cidr: str) -> None:
    ip_in(ns, "addr", "add", cidr, "dev", dev)


def veth_pair(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
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
    ip_in(ns_a, "link", "set", name_a, "up")
    ip_in(ns_b, "link", "set", name_b, "up")


def nft_script(ns: str, script: str) -> None:
    _run(_in_ns(ns, ["nft", "-f", "-"]), input_text=script)
