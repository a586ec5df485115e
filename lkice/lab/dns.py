"""Real DNS for the lab: dnsmasq (Debian package ``dnsmasq-base``), authoritative for a lab
domain and nothing else, so lookups never leave the machine."""

from __future__ import annotations

import shutil
import subprocess
import time
from types import TracebackType

import dns.exception
import dns.resolver

from lkice.lab.coturn import LabError, free_port, netns_argv, terminate, wait_in_netns

INSTALL_HINT = "dnsmasq is not installed: install it with 'sudo apt-get install dnsmasq-base'"


def dnsmasq_path() -> str | None:
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


class Dnsmasq:
    """``with Dnsmasq({"turn.lab.test": ["127.0.0.1"]}) as dns:`` then ``dns.address``.

    Names in ``domain`` that are not in ``records`` get NXDOMAIN; ``txt_only`` names exist with a
    TXT record but no address (NODATA); names outside ``domain`` are REFUSED (no upstream)."""

    def __init__(
        self,
        records: dict[str, list[str]],
        domain: str = "lab.test",
        txt_only: tuple[str, ...] = (),
        listen_ip: str = "127.0.0.1",
        port: int = 0,
        netns: str | None = None,
    ) -> None:
        """``netns``: run inside this network namespace (``ip netns exec``), readiness checked
        from inside it; a port left at 0 is then 53, the namespace being the lab's own."""
        self.records = records
        self.domain = domain
        self.txt_only = txt_only
        self.listen_ip = listen_ip
        self.port = port
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_ip, self.port)

    def argv(self, binary: str) -> list[str]:
        args = [
            binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={self.listen_ip}",
            f"--port={self.port}",
            f"--local=/{self.domain}/",
            "--pid-file=",
            "--user=root",
            "--cache-size=0",
        ]
        for name, addresses in self.records.items():
            args += [f"--host-record={name},{','.join(addresses)}"]
        args += [f"--txt-record={name},lkice" for name in self.txt_only]
        return args

    def start(self) -> Dnsmasq:
        binary = dnsmasq_path()
        if binary is None:
            raise LabError(INSTALL_HINT)
        if not self.port:
            self.port = free_port(self.listen_ip) if self.netns is None else 53
        self.process = subprocess.Popen(
            netns_argv(self.netns) + self.argv(binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if self.netns is not None:
            try:
                wait_in_netns(
                    self.netns,
                    [_DNS_READY, self.listen_ip, str(self.port), self.domain, "5"],
                    self.process,
                    5.0,
                    "dnsmasq",
                    self._stderr_text,
                )
            except BaseException:
                self.stop()
                raise
            return self
        deadline = time.monotonic() + 5
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.listen_ip]
        resolver.port = self.port
        resolver.lifetime = 0.3
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise LabError(
                    f"dnsmasq exited with status {self.process.returncode}: {err.strip()}"
                )
            try:
                resolver.resolve(f"probe.{self.domain}", "A")
            except dns.resolver.NXDOMAIN:
                return self  # it answers authoritatively
            except dns.exception.DNSException:
                time.sleep(0.05)
            else:
                return self
        self.stop()
        raise LabError("dnsmasq did not answer within 5 s")

    def _stderr_text(self) -> str:
        """dnsmasq's complaint once it has exited (empty while it runs: reading would block)."""
        if self.process is None or self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            if self.process.stderr is not None:
                self.process.stderr.close()
        self.process = None

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def dns_answering_here(ip: str, port: int, domain: str, timeout: float) -> bool:
    """Poll until the server at ``ip:port`` answers for ``domain`` (NXDOMAIN counts: it is an
    authoritative answer), or ``timeout`` passes. Run inside a lab namespace."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.port = port
    resolver.lifetime = 0.3
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resolver.resolve(f"probe.{domain}", "A")
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException:
            time.sleep(0.05)
        else:
            return True
    return False


_DNS_READY = (
    "import sys; from lkice.lab.dns import dns_answering_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])) else 1)"
)
