"""HTTP proxies, as corporate networks impose them: which proxy applies to a destination
(``HTTPS_PROXY``/``https_proxy``, ``NO_PROXY``/``no_proxy``, or ``--proxy URL``), and an HTTP
CONNECT tunnel through it, timed, with every refusal named (407 authentication, 403 policy,
the proxy unreachable). The tunnel is a plain connected socket: the caller runs TLS and STUN
over it as it would over a direct connection.

Environment rules (curl's): the lower-case variable wins over the upper-case one; ``NO_PROXY``
is a comma list of host names (a leading dot or none: the name and its subdomains), IP
addresses, CIDR blocks, optional ``:port``, or ``*`` for everything. Loopback is always direct
(as in browsers) unless ``NO_PROXY`` holds Chrome's ``<-loopback>``. Where the environment
names no proxy, the system's setting is used (Windows Internet Options, macOS preferences).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from lkice.credentials import Secret
from lkice.errors import ErrorKind, Phase, ProbeError, UsageError
from lkice.probe.tcp import connect_tcp
from lkice.stun import format_address

__all__ = [
    "Proxies",
    "ProxyConfig",
    "Tunnel",
    "connect_stream",
    "connect_via_proxy",
    "parse_proxy_url",
    "proxy_for",
    "system_proxy_env",
    "tunnelled",
]

MAX_HEAD = 16 * 1024  # a proxy's answer to CONNECT is a few hundred bytes


@dataclass(frozen=True)
class ProxyConfig:
    host: str
    port: int
    username: Secret | None = None
    password: Secret | None = None

    @property
    def label(self) -> str:
        return format_address((self.host, self.port))

    def __repr__(self) -> str:  # never the credentials
        auth = " with credentials" if self.username is not None else ""
        return f"ProxyConfig({self.label}{auth})"

    def url(self) -> str:
        """The proxy as a URL, credentials included: for libraries that take one (the SFU
        probe's WebSocket); never for display."""
        auth = ""
        if self.username is not None:
            user = quote(self.username.reveal(), safe="")
            password = quote(self.password.reveal() if self.password else "", safe="")
            auth = f"{user}:{password}@"
        return f"http://{auth}{self.label}"


def parse_proxy_url(text: str) -> ProxyConfig:
    """``http://[user:password@]host[:port]`` (port 3128 if omitted: squid's and many
    appliances' default)."""
    # A message never repeats the credentials (nor more than a line of what was given).
    from lkice.textsafe import redact_url, visible

    shown = visible(redact_url(text.strip()))[:120]
    try:
        parts = urlsplit(text.strip() if "://" in text else f"http://{text.strip()}")
        port = parts.port
    except ValueError:
        # Never the parser's words: for a password with '/' or '#' they quote part of it.
        raise UsageError(
            f"proxy URL {shown!r} is not valid (a password with '/', '#', '?' or '@' must be "
            "percent-encoded, or typed at the prompt: --proxy http://USER@host:port)"
        ) from None
    if port == 0:
        raise UsageError(f"proxy URL {shown!r}: port 0 is no port")
    if parts.scheme != "http":
        raise UsageError(
            f"proxy URL scheme {parts.scheme!r} is not supported: give http://host:port (the "
            "tunnel itself carries TLS)"
        )
    if not parts.hostname:
        raise UsageError(f"proxy URL {shown!r} has no host")
    username = Secret(unquote(parts.username)) if parts.username else None
    password = Secret(unquote(parts.password or "")) if parts.username else None
    return ProxyConfig(parts.hostname, port or 3128, username, password)


def _no_proxy_matches(entry: str, host: str, port: int) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    if entry.count(":") == 1 and not entry.startswith("["):
        name, _, entry_port = entry.partition(":")
        if entry_port.isdigit() and int(entry_port) != port:
            return False
        entry = name
    host = host.lower().strip("[]")
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        try:
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    entry = entry.lstrip(".")
    return host == entry or host.endswith("." + entry)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_for(
    host: str, port: int, env: Mapping[str, str], explicit: ProxyConfig | None = None
) -> ProxyConfig | None:
    """The proxy to reach ``host:port`` through, or None for a direct connection. Loopback is
    direct (as in browsers) unless ``NO_PROXY`` holds Chrome's ``<-loopback>``."""
    entries = [e.strip() for e in env.get("no_proxy", env.get("NO_PROXY", "")).split(",")]
    if _loopback(host) and "<-loopback>" not in entries:
        return None
    if any(_no_proxy_matches(e, host, port) for e in entries if e != "<-loopback>"):
        return None
    if explicit is not None:
        return explicit
    url = env.get("https_proxy") or env.get("HTTPS_PROXY")
    return parse_proxy_url(url) if url else None


def _proxy_variables(env: Mapping[str, str]) -> dict[str, str]:
    """HTTPS_PROXY/https_proxy and NO_PROXY/no_proxy of ``env``, nothing else."""
    return {k: v for k, v in env.items() if k.lower() in ("https_proxy", "no_proxy")}


@dataclass(frozen=True)
class Proxies:
    """A run's proxy choice: ``--proxy`` (``explicit``) or the environment's ``https_proxy``,
    both subject to ``NO_PROXY``. Only TCP goes through a proxy: UDP is always direct."""

    explicit: ProxyConfig | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], explicit: ProxyConfig | None = None
    ) -> Proxies:
        """Only the variables that matter are kept (the environment itself holds secrets).
        Raises UsageError for an unreadable ``https_proxy``."""
        proxies = cls(explicit, _proxy_variables(env))
        proxies.configured()  # an invalid environment URL is an error now, not mid-run
        return proxies

    def configured(self) -> ProxyConfig | None:
        """The proxy in use for destinations it applies to, if any."""
        if self.explicit is not None:
            return self.explicit
        url = self.env.get("https_proxy") or self.env.get("HTTPS_PROXY")
        return parse_proxy_url(url) if url else None

    def source(self) -> str | None:
        """Where the proxy came from, for the report."""
        if self.explicit is not None:
            return "--proxy"
        if self.env.get("https_proxy"):
            return "https_proxy"
        return "HTTPS_PROXY" if self.env.get("HTTPS_PROXY") else None

    def for_(self, host: str, port: int) -> ProxyConfig | None:
        return proxy_for(host, port, self.env, self.explicit)


def system_proxy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables of ``environ``, completed from the system's settings where the
    environment has none: on Windows the Internet Options proxy (registry), on macOS the
    network preferences, as ``urllib.request.getproxies`` reads them. Auto-config (PAC/WPAD)
    scripts are not evaluated: give ``--proxy`` then."""
    env = _proxy_variables(environ)
    # Elsewhere urllib's getproxies() reads the environment only, which is done above; and
    # urllib.request (with http.client and email) costs ~13 ms of every start.
    if sys.platform in ("win32", "darwin") and not (
        env.get("https_proxy") or env.get("HTTPS_PROXY")
    ):
        import urllib.request

        found = urllib.request.getproxies().get("https")
        if found:
            # A registry entry may be "host:port" or name another scheme's proxy.
            env["https_proxy"] = found if found.startswith("http://") else f"http://{found}"
    return env


def tunnelled(transport: str, port: int) -> bool:
    """Whether a TURN path goes through the proxy, as browsers do it: TURN over TLS always,
    TURN over TCP when it is on port 443 (what proxies let CONNECT reach); UDP never."""
    return transport == "tls" or (transport == "tcp" and port == 443)


@dataclass(frozen=True)
class Tunnel:
    sock: socket.socket
    connect_ms: float  # TCP to the proxy
    tunnel_ms: float  # CONNECT sent -> 200 received


async def connect_stream(
    target: tuple[str, int],
    proxy: ProxyConfig | None,
    timeout: float,
    timings: dict[str, float | None],
) -> socket.socket:
    """A connected TCP socket to ``target``: directly, or through ``proxy`` (``target`` is then
    the name and port asked of it). Fills ``timings``: ``connect`` (to the proxy, through one)
    and ``proxy`` (the CONNECT round trip)."""
    start = time.perf_counter()
    if proxy is None:
        sock = await connect_tcp(target, timeout)
        timings["connect"] = (time.perf_counter() - start) * 1000.0
        return sock
    tunnel = await connect_via_proxy(proxy, target, timeout)
    timings["connect"] = tunnel.connect_ms
    timings["proxy"] = tunnel.tunnel_ms
    return tunnel.sock


async def connect_via_proxy(proxy: ProxyConfig, target: tuple[str, int], timeout: float) -> Tunnel:
    """TCP to the proxy, then ``CONNECT host:port``; the socket once the proxy said 200."""
    where = f"{target[0]}:{target[1]}"
    start = time.perf_counter()
    try:
        sock = await connect_tcp((proxy.host, proxy.port), timeout)
    except ProbeError as exc:
        raise ProbeError(
            exc.kind, f"proxy {proxy.label} unreachable: {exc.message}", Phase.CONNECT
        ) from None
    connect_ms = (time.perf_counter() - start) * 1000.0
    lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}", "User-Agent: lkice"]
    if proxy.username is not None and proxy.password is not None:
        pair = f"{proxy.username.reveal()}:{proxy.password.reveal()}".encode()
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}")
    loop = asyncio.get_running_loop()
    sent = time.perf_counter()
    try:
        await asyncio.wait_for(
            loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode()), timeout
        )
        head = await asyncio.wait_for(_read_head(loop, sock), timeout)
    except asyncio.TimeoutError:
        sock.close()
        # The proxy was reached (TCP connected) and went quiet: its own failing, named as such,
        # never the server's behind it.
        raise ProbeError(
            ErrorKind.PROXY,
            f"the proxy {proxy.label} accepted the connection but did not answer CONNECT "
            f"{where} within {timeout:g} s",
            Phase.CONNECT,
        ) from None
    except ProbeError as exc:  # an answer too long, data after a 200
        sock.close()
        raise ProbeError(
            ErrorKind.PROXY, f"the proxy {proxy.label} is broken: {exc.message}", Phase.CONNECT
        ) from None
    except BaseException as exc:  # a cancellation too: the socket is never left open
        sock.close()
        if not isinstance(exc, OSError):
            raise
        raise ProbeError(
            ErrorKind.CONNECTION_CLOSED,
            f"proxy {proxy.label} closed the connection during CONNECT {where}",
            Phase.CONNECT,
        ) from None
    status_line = head.split("\r\n", 1)[0]
    fields = status_line.split(" ", 2)
    # ASCII digits only: str.isdigit() also takes '³', which int() then refuses.
    if (
        len(fields) < 2
        or not fields[0].startswith("HTTP/")
        or not re.fullmatch(r"[0-9]{3}", fields[1])
    ):
        sock.close()
        raise ProbeError(
            ErrorKind.PROXY,
            f"the proxy {proxy.label} is broken: it is not an HTTP proxy (it answered "
            f"{status_line[:60]!r})",
            Phase.CONNECT,
        )
    status = int(fields[1])
    reason = fields[2] if len(fields) > 2 else ""
    if status == 200:
        return Tunnel(sock, connect_ms, (time.perf_counter() - sent) * 1000.0)
    sock.close()
    if status in (401, 407):  # 407 is the standard; some proxies (tinyproxy) say 401
        schemes = _auth_schemes(head)
        if schemes and "basic" not in schemes:
            # Negotiate/NTLM only (a Windows domain's proxy): a wrong password is not the
            # problem, and giving one cannot help.
            raise ProbeError(
                ErrorKind.PROXY,
                f"the proxy {proxy.label} accepts only {', '.join(sorted(schemes))} logins "
                f"({status} {reason}), which lkice cannot do (Basic only): the password is "
                "probably fine",
                Phase.CONNECT,
            )
        message = (
            f"the proxy {proxy.label} rejected the credentials ({status} {reason})"
            if proxy.username is not None
            else f"the proxy {proxy.label} requires authentication ({status} {reason}): give "
            "--proxy http://user:password@host:port"
        )
        raise ProbeError(ErrorKind.PROXY, message, Phase.CONNECT)
    raise ProbeError(
        ErrorKind.PROXY,
        f"the proxy {proxy.label} refused CONNECT to {where} ({status} {reason}): its policy "
        "blocks this destination or port",
        Phase.CONNECT,
    )


def _auth_schemes(head: str) -> set[str]:
    """The authentication schemes a 401/407 offers (Proxy-Authenticate / WWW-Authenticate),
    lower-case: {"basic"}, {"negotiate", "ntlm"}..."""
    schemes = set()
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("proxy-authenticate", "www-authenticate") and value.strip():
            schemes.add(value.strip().split(None, 1)[0].lower()[:32])
    return schemes


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
    """The response head, up to the blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        # The server behind a tunnel speaks only after our TLS ClientHello, so whole reads
        # cannot swallow any of its bytes.
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise OSError("closed")
        data += chunk
        if len(data) > MAX_HEAD:
            raise ProbeError(ErrorKind.PROTOCOL, "the proxy's answer is too long", Phase.CONNECT)
    head, _, rest = data.partition(b"\r\n\r\n")
    if rest and head.split(b" ", 2)[1:2] == [b"200"]:
        # After a 200 only the server may speak, and only once we have: this is no tunnel.
        raise ProbeError(
            ErrorKind.PROTOCOL, "the proxy sent data after its CONNECT answer", Phase.CONNECT
        )
    return head.decode("latin-1")  # an error's body (an HTML page) is not needed
