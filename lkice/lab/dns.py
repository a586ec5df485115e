"""Real DNS for the lab: dnsmasq (Debian package ``dnsmasq-base``), authoritative for a lab
domain and nothing else, so lookups never leave the machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import dns.exception
import dns.resolver

from lkice.lab.server import LabError, LabServer, poll

INSTALL_HINT = "dnsmasq is not installed: install it with 'sudo apt-get install dnsmasq-base'"


def dnsmasq_path() -> str | None:
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


class Dnsmasq(LabServer):
    """``with Dnsmasq({"turn.lab.test": ["127.0.0.1"]}) as dns:`` then ``dns.address``.

    Names in ``domain`` that are not in ``records`` get NXDOMAIN; ``txt_only`` names exist with a
    TXT record but no address (NODATA); names outside ``domain`` are REFUSED (no upstream)."""

    name = "dnsmasq"
    dir_prefix = "lkice-dnsmasq"
    log_name = "dnsmasq.log"  # its stderr: why it refused to start

    def __init__(
        self,
        records: dict[str, list[str]],
        domain: str = "lab.test",
        txt_only: tuple[str, ...] = (),
        listen_ip: str = "127.0.0.1",
        port: int = 0,
        netns: str | None = None,
        ready_timeout: float = 5.0,
    ) -> None:
        """``netns``: run inside this network namespace (``ip netns exec``), readiness checked
        from inside it; a port left at 0 is then 53, the namespace being the lab's own."""
        super().__init__(listen_ip=listen_ip, netns=netns, ready_timeout=ready_timeout)
        self.records = records
        self.domain = domain
        self.txt_only = txt_only
        self.port = port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_ip, self.port)

    def binary(self) -> str:
        binary = dnsmasq_path()
        if binary is None:
            raise LabError(INSTALL_HINT)
        return binary

    def choose_ports(self) -> None:
        self.port = self.pick_port(self.port, 53)

    def argv(self, binary: str, work: Path) -> list[str]:
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

    def ready_here(self) -> bool:
        return dns_answers(self.listen_ip, self.port, self.domain)

    def ready_check(self, timeout: float) -> list[str]:
        return [_DNS_READY, self.listen_ip, str(self.port), self.domain, str(timeout)]


def dns_answers(ip: str, port: int, domain: str) -> bool:
    """The server at ``ip:port`` answers for ``domain`` now (NXDOMAIN counts: it is an
    authoritative answer)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.port = port
    resolver.lifetime = 0.3
    try:
        resolver.resolve(f"probe.{domain}", "A")
    except dns.resolver.NXDOMAIN:
        return True
    except dns.exception.DNSException:
        return False
    return True


def dns_answering_here(ip: str, port: int, domain: str, timeout: float) -> bool:
    """Poll :func:`dns_answers` until it holds or ``timeout`` passes. Run inside a lab
    namespace."""
    return poll(lambda: dns_answers(ip, port, domain), timeout)


_DNS_READY = (
    "import sys; from lkice.lab.dns import dns_answering_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])) else 1)"
)
