"""A real HTTP proxy for tests: Debian's tinyproxy on loopback (or in a lab namespace's address),
allowed to CONNECT only to given ports, optionally demanding Basic authentication, as the
proxies of corporate networks do."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from lkice.lab.coturn import LabError, free_port, netns_argv, terminate, wait_in_netns

__all__ = ["TinyProxy", "listening_here", "tinyproxy_path"]

PROXY_PORT = 3128  # in a namespace (where the port is surely free): squid's and tinyproxy's


def listening_here(ip: str, port: int, timeout: float) -> bool:
    """Poll until ``ip:port`` accepts TCP (run inside a lab namespace by wait_in_netns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


_READY = (
    "import sys; from lkice.lab.proxy import listening_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])) else 1)"
)


def tinyproxy_path() -> str | None:
    return shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None
    )


class TinyProxy:
    """``with TinyProxy(connect_ports=[443]) as proxy:`` then ``proxy.url``."""

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
        self.connect_ports = list(connect_ports)
        self.auth = auth
        self.listen = listen
        self.netns = netns
        self.port = 0
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    def start(self) -> TinyProxy:
        binary = tinyproxy_path()
        if binary is None:
            raise LabError("tinyproxy is not installed: apt-get install tinyproxy")
        self._dir = tempfile.TemporaryDirectory(prefix="lkice-tinyproxy-")
        work = Path(self._dir.name)
        self.port = free_port(self.listen) if self.netns is None else PROXY_PORT
        lines = [
            f"Port {self.port}",
            f"Listen {self.listen}",
            "Timeout 30",
            "MaxClients 20",
            "LogLevel Info",
            f'LogFile "{work / "tinyproxy.log"}"',
            f'PidFile "{work / "tinyproxy.pid"}"',
            f"Allow {self.listen}",
            "Allow 198.18.0.0/15",  # the namespace lab's clients
            *(f"ConnectPort {p}" for p in self.connect_ports),
        ]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        config = work / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [*netns_argv(self.netns), binary, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.netns is not None:
            log = work / "tinyproxy.log"
            try:
                wait_in_netns(
                    self.netns,
                    [_READY, self.listen, str(self.port), str(self.ready_timeout)],
                    self.process,
                    self.ready_timeout,
                    "tinyproxy",
                    lambda: log.read_text(errors="replace")[-400:] if log.exists() else "",
                )
            except BaseException:
                self.stop()
                raise
            return self
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise LabError("tinyproxy exited at start-up (see its configuration)")
            try:
                with socket.create_connection((self.listen, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise LabError(f"tinyproxy did not listen within {self.ready_timeout:g} s")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
