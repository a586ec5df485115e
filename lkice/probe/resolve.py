"""Name resolution with dnspython, timed, with every failure named.

Like the system resolver, /etc/hosts is consulted first (under ``ip netns exec`` that is the
namespace's own hosts file), then DNS: A and AAAA concurrently. Every address is its own path.
dnspython is imported only when a name has to be looked up in DNS (not for an IP address or a
name in the hosts file).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.stun import format_address

HOSTS_FILE = Path("/etc/hosts")


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...]
    elapsed_ms: float | None  # None when no lookup was needed (an IP literal)
    source: str  # "literal" | "hosts" | "dns"


def hosts_lookup(name: str, text: str) -> tuple[str, ...]:
    """Addresses for ``name`` in hosts-file ``text`` (pure)."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
            try:
                found.append(str(ipaddress.ip_address(fields[0].split("%", 1)[0])))
            except ValueError:
                continue
    return tuple(dict.fromkeys(found))


def _read_hosts() -> str:
    # A small local file, read on each lookup so a long-running agent sees edits.
    try:
        return HOSTS_FILE.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP`` or ``IP:PORT`` or ``[IPv6]:PORT``; raises ValueError."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        if port and not port.startswith(":"):
            raise ValueError("text after ']'")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if "%" in host:
        raise ValueError("a scoped (zone) address")  # dnspython would ignore the zone
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError("not an address a DNS server has")
    if port and not re.fullmatch(r"[0-9]{1,5}", port):  # '+53', ' 53', '٥٣' are no ports
        raise ValueError("not a port")
    number = int(port) if port else 53
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return host, number


async def resolve(
    host: str, *, timeout: float, nameserver: tuple[str, int] | None = None
) -> Resolution:
    try:
        return Resolution((str(ipaddress.ip_address(host)),), None, "literal")
    except ValueError:
        pass
    start = time.perf_counter()
    if nameserver is None:
        found = hosts_lookup(host, _read_hosts())
        if found:
            return Resolution(found, (time.perf_counter() - start) * 1000, "hosts")
    import dns.asyncresolver
    import dns.rdatatype
    import dns.resolver

    try:
        resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ProbeError(
            ErrorKind.DNS,
            f"cannot resolve {host}: no DNS resolver is configured on this machine",
            Phase.DNS,
        ) from exc
    if nameserver is not None:
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.lifetime = timeout
    server_text = ", ".join(str(ns) for ns in resolver.nameservers) or "none"
    if nameserver is not None and nameserver[1] != 53:
        server_text = format_address(nameserver)  # the port the user gave, not only the IP
    results = await asyncio.gather(
        resolver.resolve(host, dns.rdatatype.A, search=False),
        resolver.resolve(host, dns.rdatatype.AAAA, search=False),
        return_exceptions=True,
    )
    elapsed = (time.perf_counter() - start) * 1000
    addresses: list[str] = []
    errors: list[BaseException] = []
    for result in results:
        if isinstance(result, dns.resolver.Answer):
            addresses.extend(str(rr) for rr in result)
        elif isinstance(result, BaseException):
            errors.append(result)
    if addresses:
        return Resolution(tuple(addresses), elapsed, "dns")
    raise ProbeError(ErrorKind.DNS, _describe(host, errors, timeout, server_text), Phase.DNS)


def _describe(host: str, errors: list[BaseException], timeout: float, servers: str) -> str:
    import dns.exception
    import dns.resolver

    if any(isinstance(e, dns.resolver.NXDOMAIN) for e in errors):
        return f"{host}: no such domain (NXDOMAIN from {servers})"
    if any(isinstance(e, dns.resolver.LifetimeTimeout | dns.exception.Timeout) for e in errors):
        return f"{host}: DNS resolver timeout after {timeout:g} s (nameserver {servers} did not answer)"
    if any(isinstance(e, dns.resolver.NoNameservers) for e in errors):
        return f"{host}: DNS resolution failed: nameserver {servers} answered with an error (SERVFAIL/REFUSED)"
    if all(isinstance(e, dns.resolver.NoAnswer) for e in errors):
        return f"{host}: the name exists but has no A or AAAA records"
    detail = "; ".join(f"{type(e).__name__}: {e}" for e in errors[:2])
    return f"{host}: DNS resolution failed ({detail})"
