"""Real coturn (Debian package ``coturn``, binary ``turnserver``) on free ports, as a context
manager: started, checked ready over TCP and UDP, stopped and cleaned up however the block ends.
:class:`TurnServer` is what it shares with pion/turn (:mod:`lkice.lab.pion`): the TURN ports and
that readiness check."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aioice import stun

from lkice.lab.pki import LabPki

# LabError and the process helpers live in lkice.lab.server; re-exported for the code that
# imports them from here.
from lkice.lab.server import (
    LabError,
    LabServer,
    free_port,
    netns_argv,
    poll,
    tcp_open,
    terminate,
    wait_in_netns,
)

__all__ = [
    "INSTALL_HINT",
    "Coturn",
    "CoturnConfig",
    "LabError",
    "TurnServer",
    "coturn_ready_here",
    "free_port",
    "netns_argv",
    "terminate",
    "turn_answers",
    "turnserver_path",
    "wait_in_netns",
]

INSTALL_HINT = (
    "coturn is not installed: install it with 'sudo apt-get install coturn' (Debian/Ubuntu)"
)


def turnserver_path() -> str | None:
    """coturn's binary: ``LKICE_TURNSERVER`` if set (a custom build), else from PATH or /usr/bin."""
    override = os.environ.get("LKICE_TURNSERVER")
    if override is not None:
        return override if os.access(override, os.X_OK) and Path(override).is_file() else None
    return shutil.which("turnserver") or next(
        (p for p in ("/usr/bin/turnserver", "/usr/sbin/turnserver") if Path(p).exists()), None
    )


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


def turn_answers(ip: str, tcp_ports: list[int], udp_port: int) -> bool:
    """Every TCP port accepts and a UDP Binding on ``udp_port`` is answered, now."""
    return all(tcp_open(ip, p) for p in tcp_ports) and _udp_binding_ok(ip, udp_port)


def coturn_ready_here(ip: str, tcp_ports: list[int], udp_port: int, timeout: float) -> bool:
    """Poll :func:`turn_answers` until it holds or ``timeout`` passes. Run inside a lab
    namespace by :func:`wait_in_netns`, where the lab's addresses exist."""
    return poll(lambda: turn_answers(ip, tcp_ports, udp_port), timeout)


_COTURN_READY = (
    "import sys; from lkice.lab.coturn import coturn_ready_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], [int(p) for p in sys.argv[2].split(',') if p], "
    "int(sys.argv[3]), float(sys.argv[4])) else 1)"
)


class TurnServer(LabServer):
    """A TURN server on ``port`` (UDP and TCP) and, with TLS, ``tls_port``; ports left at 0 are
    free ones, or 3478 / 5349 in a namespace. Ready once every port of :meth:`tcp_ports`
    accepts and a UDP Binding is answered."""

    def __init__(
        self,
        *,
        listen_ip: str,
        port: int,
        tls_port: int,
        tls: bool,
        netns: str | None,
        ready_timeout: float,
    ) -> None:
        super().__init__(listen_ip=listen_ip, netns=netns, ready_timeout=ready_timeout)
        self.port = port
        self.tls_port = tls_port
        self._tls = tls

    def tcp_ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self._tls else [])

    def choose_ports(self) -> None:
        self.port = self.pick_port(self.port, 3478)
        if self._tls:
            self.tls_port = self.pick_port(self.tls_port, 5349)

    def ready_here(self) -> bool:
        return turn_answers(self.listen_ip, self.tcp_ports(), self.port)

    def ready_check(self, timeout: float) -> list[str]:
        ports = ",".join(str(p) for p in self.tcp_ports())
        return [_COTURN_READY, self.listen_ip, ports, str(self.port), str(timeout)]


class Coturn(TurnServer):
    """``with Coturn(config) as server:`` then ``server.port``, ``server.tls_port``."""

    name = "coturn"
    dir_prefix = "lkice-coturn"
    log_name = "turnserver.log"
    writes_own_log = True  # log-file= in its configuration

    def __init__(self, config: CoturnConfig, ready_timeout: float = 10.0) -> None:
        super().__init__(
            listen_ip=config.listen_ip,
            port=config.port,
            tls_port=config.tls_port,
            tls=config.pki is not None,
            netns=config.netns,
            ready_timeout=ready_timeout,
        )
        self.config = config

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

    def binary(self) -> str:
        binary = turnserver_path()
        if binary is None:
            raise LabError(INSTALL_HINT)
        return binary

    def tcp_ports(self) -> list[int]:
        return super().tcp_ports() + list(self.config.ready_tcp_ports)

    def argv(self, binary: str, work: Path) -> list[str]:
        conf = work / "turnserver.conf"
        conf.write_text(
            self.config_text() + f"pidfile={work / 'turnserver.pid'}\nuserdb={work / 'turndb'}\n"
            f"log-file={work / self.log_name}\n"
        )
        conf.chmod(0o600)
        return [binary, "-c", str(conf)]
