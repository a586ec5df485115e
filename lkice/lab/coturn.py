"""Real coturn (Debian package ``coturn``, binary ``turnserver``) on free ports, as a context
manager: started, checked ready over TCP and UDP, stopped and cleaned up however the block ends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aioice import stun

from lkice.lab.pki import LabPki

INSTALL_HINT = (
    "coturn is not installed: install it with 'sudo apt-get install coturn' (Debian/Ubuntu)"
)


class LabError(Exception):
    """A lab server could not be started; the message says why."""


def turnserver_path() -> str | None:
    """coturn's binary: ``LKICE_TURNSERVER`` if set (a custom build), else from PATH or /usr/bin."""
    override = os.environ.get("LKICE_TURNSERVER")
    if override is not None:
        return override if os.access(override, os.X_OK) and Path(override).is_file() else None
    return shutil.which("turnserver") or next(
        (p for p in ("/usr/bin/turnserver", "/usr/sbin/turnserver") if Path(p).exists()), None
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise LabError("no free port found for coturn")


@dataclass
class CoturnConfig:
    listen_ip: str = "127.0.0.1"
    port: int = 0  # 0: pick a free one
    tls_port: int = 0
    realm: str = "lab.test"
    users: dict[str, str] = field(default_factory=dict)
    static_auth_secret: str | None = None
    user_quota: int | None = None
    alternate_servers: list[str] = field(default_factory=list)
    tls_alternate_servers: list[str] = field(default_factory=list)
    pki: LabPki | None = None
    relay_ports: tuple[int, int] | None = None
    extra: list[str] = field(default_factory=list)
    # Run inside this network namespace (``ip netns exec``); the readiness check then runs there
    # too. Ports left at 0 become the standard 3478 / 5349: a lab namespace is empty.
    netns: str | None = None
    # More TCP ports the readiness check waits for (e.g. an ``alt-tls-listening-port``).
    ready_tcp_ports: tuple[int, ...] = ()


class Coturn:
    """``with Coturn(config) as server:`` then ``server.port``, ``server.tls_port``."""

    def __init__(self, config: CoturnConfig, ready_timeout: float = 10.0) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.port = config.port
        self.tls_port = config.tls_port
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_file: Path | None = None

    def config_text(self) -> str:
        c = self.config
        lines = [
            f"listening-ip={c.listen_ip}",
            f"relay-ip={c.listen_ip}",
            f"listening-port={self.port}",
            "fingerprint",
            "no-cli",
            "no-dtls",
            "no-multicast-peers",
            "allow-loopback-peers",
            "simple-log",
            f"realm={c.realm}",
        ]
        if c.static_auth_secret is not None:
            lines += ["use-auth-secret", f"static-auth-secret={c.static_auth_secret}"]
        elif c.users:
            lines.append("lt-cred-mech")
            lines += [f"user={name}:{password}" for name, password in c.users.items()]
        else:
            lines.append("no-auth")
        if c.pki is not None:
            lines += [
                f"tls-listening-port={self.tls_port}",
                f"cert={c.pki.cert_file}",
                f"pkey={c.pki.key_file}",
            ]
        else:
            lines.append("no-tls")
        if c.user_quota is not None:
            lines.append(f"user-quota={c.user_quota}")
        if c.relay_ports is not None:
            lines += [f"min-port={c.relay_ports[0]}", f"max-port={c.relay_ports[1]}"]
        lines += [f"alternate-server={a}" for a in c.alternate_servers]
        lines += [f"tls-alternate-server={a}" for a in c.tls_alternate_servers]
        lines += c.extra
        return "\n".join(lines) + "\n"

    def start(self) -> Coturn:
        binary = turnserver_path()
        if binary is None:
            raise LabError(INSTALL_HINT)
        netns = self.config.netns
        # In a namespace the directory name carries the namespace's name, so a process left
        # behind can still be traced to its lab from its command line.
        prefix = "lkice-coturn-" if netns is None else f"lkice-coturn-{netns}-"
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        work = Path(self._dir.name)
        if not self.port:
            self.port = free_port(self.config.listen_ip) if netns is None else 3478
        if self.config.pki is not None and not self.tls_port:
            self.tls_port = free_port(self.config.listen_ip) if netns is None else 5349
        conf = work / "turnserver.conf"
        conf.write_text(
            self.config_text() + f"pidfile={work / 'turnserver.pid'}\nuserdb={work / 'turndb'}\n"
            f"log-file={work / 'turnserver.log'}\n"
        )
        conf.chmod(0o600)
        self.log_file = work / "turnserver.log"
        self.process = subprocess.Popen(
            [*netns_argv(netns), binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        ip = self.config.listen_ip
        tcp_ports = [self.port] + ([self.tls_port] if self.config.pki is not None else [])
        tcp_ports += list(self.config.ready_tcp_ports)
        if self.config.netns is not None:
            assert self.process is not None
            ports = ",".join(str(p) for p in tcp_ports)
            wait_in_netns(
                self.config.netns,
                [_COTURN_READY, ip, ports, str(self.port), str(self.ready_timeout)],
                self.process,
                self.ready_timeout,
                "coturn",
                self.log_tail,
            )
            return
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LabError(
                    f"coturn exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if all(_tcp_open(ip, p) for p in tcp_ports) and _udp_binding_ok(ip, self.port):
                return
            time.sleep(0.05)
        raise LabError(
            f"coturn did not become ready within {self.ready_timeout:g} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 5) -> str:
        if self.log_file is None or not self.log_file.exists():
            return "(no log)"
        return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds; reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)  # SIGKILL cannot be refused: this only reaps


def _tcp_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


def _udp_binding_ok(ip: str, port: int) -> bool:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(bytes(request), (ip, port))
            data = sock.recv(2048)
        except OSError:
            return False
    try:
        return stun.parse_message(data).transaction_id == request.transaction_id
    except ValueError:
        return False


def netns_argv(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside ``netns`` (nothing for the current one)."""
    return [] if netns is None else ["ip", "netns", "exec", netns]


def coturn_ready_here(ip: str, tcp_ports: list[int], udp_port: int, timeout: float) -> bool:
    """Poll until every TCP port accepts and a UDP Binding is answered, or ``timeout`` passes.
    Run inside a lab namespace by :func:`wait_in_netns`, where the lab's addresses exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_tcp_open(ip, p) for p in tcp_ports) and _udp_binding_ok(ip, udp_port):
            return True
        time.sleep(0.05)
    return False


_COTURN_READY = (
    "import sys; from lkice.lab.coturn import coturn_ready_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], [int(p) for p in sys.argv[2].split(',') if p], "
    "int(sys.argv[3]), float(sys.argv[4])) else 1)"
)


def wait_in_netns(
    netns: str,
    check: list[str],
    server: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    log_tail: Callable[[], str],
) -> None:
    """Run a readiness check (``python -c check[0] check[1:]``) inside ``netns``, where the
    server's addresses exist, while watching the server itself: if it exits first, say so.
    Bounded by ``timeout`` plus a margin for the checker's own start-up."""
    checker = subprocess.Popen(
        [*netns_argv(netns), sys.executable, "-c", *check],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout + 5.0
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise LabError(
                    f"{what} in namespace {netns} exited with status {server.returncode}: "
                    f"{log_tail()}"
                )
            status = checker.poll()
            if status == 0:
                return
            if status is not None:
                err = (
                    checker.stderr.read().decode(errors="replace").strip() if checker.stderr else ""
                )
                raise LabError(
                    f"{what} in namespace {netns} did not become ready within {timeout:g} s: "
                    f"{log_tail()}" + (f" (readiness check: {err[-300:]})" if err else "")
                )
            time.sleep(0.05)
        raise LabError(f"{what} readiness check in namespace {netns} did not finish in time")
    finally:
        if checker.poll() is None:
            checker.kill()
        checker.wait(5)
        if checker.stderr is not None:
            checker.stderr.close()
