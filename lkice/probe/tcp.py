"""TCP connect and TLS, timed by the caller and failing with precise kinds; shared by the STUN
channels and the LiveKit signaling probe.

After a certificate verification failure, the certificate is fetched once more without
verifying, only to name who issued it: that is how a TLS-inspecting proxy is recognised.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from typing import TYPE_CHECKING

from cryptography import x509

from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.report import TlsInfo
from lkice.stun import format_address

if TYPE_CHECKING:
    from lkice.probe.proxy import ProxyConfig

__all__ = ["connect_tcp", "tls_failure", "tls_info"]


async def connect_tcp(address: tuple[str, int], timeout: float) -> socket.socket:
    """A connected, non-blocking TCP socket with TCP_NODELAY set."""
    loop = asyncio.get_running_loop()
    label = format_address(address)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
    except asyncio.TimeoutError:
        sock.close()
        raise ProbeError(
            ErrorKind.CONNECT_TIMEOUT,
            f"TCP connect to {label} timed out after {timeout:g} s: likely filtered by a firewall",
            Phase.CONNECT,
        ) from None
    except ConnectionRefusedError as exc:
        sock.close()
        raise ProbeError(
            ErrorKind.CONNECT_REFUSED,
            f"TCP connect to {label} refused: nothing listens on that port, or a firewall rejects it",
            Phase.CONNECT,
        ) from exc
    except OSError as exc:
        sock.close()
        raise ProbeError(
            ErrorKind.NETWORK_UNREACHABLE,
            f"TCP connect to {label} failed: {exc.strerror or exc}",
            Phase.CONNECT,
        ) from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def tls_failure(
    exc: BaseException,
    address: tuple[str, int],
    server_hostname: str | None,
    timeout: float,
    proxy: ProxyConfig | None = None,
) -> ProbeError:
    """Translate a failed TLS handshake into ``tls_verify`` (naming the presented issuer) or
    ``tls_handshake``. ``proxy``: the handshake ran in a tunnel through it (``address`` is then
    the host name and port asked of the proxy)."""
    label = format_address(address)
    if isinstance(exc, ssl.SSLCertVerificationError):
        presented = await _presented_certificate(address, server_hostname, timeout, proxy)
        return ProbeError(ErrorKind.TLS_VERIFY, _verify_message(label, exc, presented), Phase.TLS)
    return ProbeError(ErrorKind.TLS_HANDSHAKE, _handshake_message(label, exc, timeout), Phase.TLS)


def _handshake_message(label: str, exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"TLS handshake with {label} got no answer within {timeout:g} s (not a TLS port?)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"TLS handshake with {label} failed: the server does not speak TLS on this port ({reason})"
        return f"TLS handshake with {label} failed: {reason}"
    return f"TLS handshake with {label} failed: the connection was closed or reset ({exc.__class__.__name__})"


def _verify_message(
    label: str, exc: ssl.SSLCertVerificationError, presented: TlsInfo | None
) -> str:
    reason = exc.verify_message or exc.reason or "verification failed"
    text = f"certificate presented by {label} was rejected: {reason}"
    if presented is not None and presented.issuer:
        text += (
            f"; it was issued by '{presented.issuer}' (subject '{presented.subject}'). If that issuer is not your "
            "TURN provider's CA, a TLS-inspecting proxy is intercepting the connection"
        )
    return text


def tls_info(ssl_object: ssl.SSLObject | None, verified: bool) -> TlsInfo:
    if ssl_object is None:
        return TlsInfo(verified=verified)
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    info = TlsInfo(
        version=ssl_object.version(), cipher=cipher[0] if cipher else None, verified=verified
    )
    if der:
        _fill_certificate(info, der)
    return info


def _fill_certificate(info: TlsInfo, der: bytes) -> None:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return
    info.subject = cert.subject.rfc4514_string()
    info.issuer = cert.issuer.rfc4514_string()
    info.not_after = cert.not_valid_after_utc.isoformat()
    info.sha256 = hashlib.sha256(der).hexdigest()


async def _presented_certificate(
    address: tuple[str, int],
    server_hostname: str | None,
    timeout: float,
    proxy: ProxyConfig | None = None,
) -> TlsInfo | None:
    """After a verification failure, connect once more without verifying, only to learn who
    issued the certificate: that is how a TLS-inspecting proxy is recognised (on the same
    route: through the web proxy if the failed handshake went through it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        if proxy is not None:
            from lkice.probe.proxy import connect_via_proxy  # it builds on this module

            sock = (await connect_via_proxy(proxy, address, timeout)).sock
            opened = asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=server_hostname)
        else:
            opened = asyncio.open_connection(
                address[0], address[1], ssl=ctx, server_hostname=server_hostname
            )
        _, writer = await asyncio.wait_for(opened, 2 * timeout)
    except (OSError, asyncio.TimeoutError, ssl.SSLError, ProbeError):
        return None
    try:
        info = tls_info(writer.get_extra_info("ssl_object"), verified=False)
    finally:
        writer.close()
    return info
