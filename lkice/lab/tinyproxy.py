"""A real HTTP proxy for tests: Debian's tinyproxy on loopback (or in a lab namespace's address),
allowed to CONNECT only to given ports, optionally demanding Basic authentication, as the
proxies of corporate networks do."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from lkice.lab.server import LISTENING_CHECK, LabError, LabServer, listening_here, tcp_open

__all__ = ["TinyProxy", "listening_here", "tinyproxy_path"]

PROXY_PORT = 3128  # in a namespace (where the port is surely free): squid's and tinyproxy's


def tinyproxy_path() -> str | None:
    return shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None
    )


class TinyProxy(LabServer):
    """``with TinyProxy(connect_ports=[443]) as proxy:`` then ``proxy.url``."""

    name = "tinyproxy"
    dir_prefix = "lkice-tinyproxy"
    log_name = "tinyproxy.log"
    writes_own_log = True  # LogFile in its configuration

    def __init__(
        self,
        *,
        connect_ports: Sequence[int],
        auth: tuple[str, str] | None = None,
        listen: str = "127.0.0.1",
        ready_timeout: float = 10.0,
        netns: str | None = None,
    ) -> None:
        """``netns``: run inside this network namespace (``listen`` is one of its addresses;
        port 3128)."""
        super().__init__(listen_ip=listen, netns=netns, ready_timeout=ready_timeout)
        self.connect_ports = list(connect_ports)
        self.auth = auth
        self.listen = listen
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    def binary(self) -> str:
        binary = tinyproxy_path()
        if binary is None:
            raise LabError("tinyproxy is not installed: apt-get install tinyproxy")
        return binary

    def choose_ports(self) -> None:
        # No port option: a free one on every start (3128 in a namespace).
        self.port = self.pick_port(0, PROXY_PORT)

    def argv(self, binary: str, work: Path) -> list[str]:
        lines = [
            f"Port {self.port}",
            f"Listen {self.listen}",
            "Timeout 30",
            "MaxClients 20",
            "LogLevel Info",
            f'LogFile "{work / self.log_name}"',
            f'PidFile "{work / "tinyproxy.pid"}"',
            f"Allow {self.listen}",
            "Allow 198.18.0.0/15",  # the namespace lab's clients
            *(f"ConnectPort {p}" for p in self.connect_ports),
        ]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        config = work / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        return [binary, "-d", "-c", str(config)]

    def ready_here(self) -> bool:
        return tcp_open(self.listen, self.port, timeout=0.5)

    def ready_check(self, timeout: float) -> list[str]:
        return [LISTENING_CHECK, self.listen, str(self.port), str(timeout)]
