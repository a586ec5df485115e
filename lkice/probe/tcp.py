"""TCP connect and TLS, timed by the caller and failing with precise kinds; shared by the STUN
channels and the LiveKit signaling probe.

After a certificate verification failure, the certificate is fetched once more without
verifying, only to name who issued it: that is how a TLS-inspecting proxy is recognised.

A verified certificate is described from what the ssl module decoded (``getpeercert()``);
``cryptography`` (60 ms to import, on the path's own time) only reads the ones it did not
decode: unverified certificates, and names with attributes this module does not spell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import ipaddress
import os
import socket
import ssl
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.stun import format_address

if TYPE_CHECKING:
    from lkice.probe.proxy import ProxyConfig
    from lkice.report import TlsInfo

__all__ = [
    "LOCAL_ERRNOS",
    "certificate_problem",
    "client_tls_context",
    "connect_tcp",
    "load_system_cas",
    "local_reason",
    "tls_failure",
    "tls_info",
    "tls_ready",
]


# Errors of this computer, not of the network: no free local port, the port in use, out of
# file descriptors or buffers. Reported as ``local``, never as a network finding.
LOCAL_ERRNOS = frozenset(
    {errno.EADDRINUSE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)


# The second look at a rejected certificate (its issuer, names, dates) is a detail: bounded
# apart from --timeout, so it never costs a slow server's full timeout twice.
REREAD_S = 2.0


def client_tls_context(*, system_cas: bool = True) -> ssl.SSLContext:
    """The TLS context lkice verifies servers with, as WebRTC clients do: the system's CAs, and
    a name only from the certificate's subjectAltName (browsers, Go and Apple platforms ignore
    the subject's CN; Python still accepts it by default). ``system_cas`` False: the context
    ``ssl.create_default_context()`` makes, without the system's CAs yet
    (:func:`load_system_cas` adds them)."""
    if system_cas:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            ctx.keylog_filename = keylog  # as create_default_context does
    ctx.hostname_checks_common_name = False
    return ctx


# Contexts whose system CAs are still loading in a thread (load_system_cas(background=True)).
_loading: weakref.WeakKeyDictionary[ssl.SSLContext, concurrent.futures.Future[None]] = (
    weakref.WeakKeyDictionary()
)


def load_system_cas(ctx: ssl.SSLContext, *, background: bool = False) -> None:
    """The system's CAs into ``ctx``. Reading them takes tens of milliseconds (OpenSSL parses the
    whole bundle), without the GIL: ``background`` reads them in a thread, beside the first
    round trips, and every handshake with ``ctx`` first awaits :func:`tls_ready`."""
    if not background:
        ctx.load_default_certs()
        return
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # a waiter's cancellation does not cancel the load

    def load() -> None:
        try:
            ctx.load_default_certs()
        except BaseException as exc:  # handed to whoever awaits tls_ready
            future.set_exception(exc)
        else:
            future.set_result(None)

    _loading[ctx] = future
    # Not a daemon: an interpreter that exits while OpenSSL reads would crash, so exit waits.
    threading.Thread(target=load, name="lkice-system-cas").start()


async def tls_ready(ctx: ssl.SSLContext) -> None:
    """Return once ``ctx`` has the system's CAs (at once unless they are loading)."""
    future = _loading.get(ctx)
    if future is not None:
        await asyncio.wrap_future(future)


def local_reason(exc: OSError) -> str:
    """An OSError's reason, saying so when it is this computer's own."""
    reason = exc.strerror or str(exc)
    if exc.errno in LOCAL_ERRNOS:
        return f"{reason}: this computer could not open the socket (not a network problem)"
    return reason


async def connect_tcp(address: tuple[str, int], timeout: float) -> socket.socket:
    """A connected, non-blocking TCP socket with TCP_NODELAY set."""
    loop = asyncio.get_running_loop()
    label = format_address(address)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ProbeError(
            ErrorKind.LOCAL, f"no TCP socket for {label}: {local_reason(exc)}", Phase.CONNECT
        ) from exc
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
            ErrorKind.LOCAL if exc.errno in LOCAL_ERRNOS else ErrorKind.NETWORK_UNREACHABLE,
            f"TCP connect to {label} failed: {local_reason(exc)}",
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
    early: Callable[[ProbeError], None] | None = None,
) -> ProbeError:
    """Translate a failed TLS handshake into ``tls_verify`` (naming the presented issuer) or
    ``tls_handshake``. ``proxy``: the handshake ran in a tunnel through it (``address`` is then
    the host name and port asked of the proxy). ``early`` gets the verification failure at
    once, before the certificate is read again for its details, so a deadline during that
    second look keeps what is already known."""
    label = format_address(address)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if early is not None:
            early(
                ProbeError(
                    ErrorKind.TLS_VERIFY, _verify_message(label, exc, None, "other"), Phase.TLS
                )
            )
        presented = await _presented_certificate(
            address, server_hostname, min(timeout, REREAD_S), proxy
        )
        dialled = server_hostname or address[0]
        problem = certificate_problem(exc.verify_code, presented)
        if presented is not None:
            presented.problem = problem
            presented.dialled = dialled
            presented.verify_error = exc.verify_message or None
        error = ProbeError(
            ErrorKind.TLS_VERIFY, _verify_message(label, exc, presented, problem), Phase.TLS
        )
        error.tls = presented
        return error
    return ProbeError(ErrorKind.TLS_HANDSHAKE, _handshake_message(label, exc, timeout), Phase.TLS)


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h). OpenSSL checks in this order: the chain to a trust
# anchor, then the name (check_id), then validity times: so a name mismatch or an expiry is
# reported only for a certificate whose issuer this computer trusts.
_UNTRUSTED = {2, 19, 20, 21, 27}  # no issuer / self-signed in chain / unknown local issuer
_SELF_SIGNED = {18}  # DEPTH_ZERO_SELF_SIGNED_CERT: the server's own, unsigned by any CA
_NAME = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9


def certificate_problem(verify_code: int, presented: TlsInfo | None) -> str:
    """What was wrong with a rejected certificate, from OpenSSL's code and the certificate."""
    if verify_code in _NAME:
        return "name_mismatch"
    if verify_code == _EXPIRED:
        return "expired"
    if verify_code == _NOT_YET_VALID:
        return "not_yet_valid"
    if verify_code in _SELF_SIGNED:
        return "self_signed"
    if verify_code in _UNTRUSTED:
        if presented is not None and presented.subject and presented.subject == presented.issuer:
            return "self_signed"
        return "untrusted_issuer"
    return "other"


def _handshake_message(label: str, exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError) or (
        # asyncio's own ssl_handshake_timeout surfaces as ConnectionAbortedError.
        isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    ):
        return f"TLS handshake with {label} got no answer within {timeout:g} s (not a TLS port?)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"TLS handshake with {label} failed: the server does not speak TLS on this port ({reason})"
        return f"TLS handshake with {label} failed: {reason}"
    return f"TLS handshake with {label} failed: the connection was closed or reset ({exc.__class__.__name__})"


def _verify_message(
    label: str, exc: ssl.SSLCertVerificationError, presented: TlsInfo | None, problem: str
) -> str:
    reason = exc.verify_message or exc.reason or "verification failed"
    text = f"certificate presented by {label} was rejected: {reason}"
    if presented is None or not presented.issuer:
        return text
    names = ", ".join(presented.names or []) or "no subjectAltName"
    if problem == "untrusted_issuer":
        text += (
            f"; it was issued by '{presented.issuer}' (subject '{presented.subject}'), a CA this "
            "computer does not trust. If that issuer is not your TURN provider's CA, a "
            "TLS-inspecting proxy is intercepting the connection"
        )
    elif problem == "self_signed":
        text += f"; it is self-signed by the server (subject '{presented.subject}')"
    elif problem == "name_mismatch":
        text += (
            f"; it was issued by a trusted CA ('{presented.issuer}') for {names}, not for "
            f"{presented.dialled}"
        )
    elif problem in ("expired", "not_yet_valid"):
        text += (
            f"; issued by '{presented.issuer}' (trusted), valid from {presented.not_before} "
            f"until {presented.not_after}"
        )
        if _dates_cover_now(presented):
            text += (
                ": the certificate itself is within its dates, so a CA certificate of its "
                "chain (an intermediate) is the one out of date"
            )
    else:
        text += f"; it was issued by '{presented.issuer}' (subject '{presented.subject}')"
    return text


def _dates_cover_now(info: TlsInfo) -> bool:
    """The presented certificate's own validity covers this moment (OpenSSL's expiry code is
    then about another certificate of the chain)."""
    from datetime import datetime, timezone

    try:
        start = datetime.fromisoformat(str(info.not_before))
        end = datetime.fromisoformat(str(info.not_after))
    except ValueError:
        return False
    return start <= datetime.now(timezone.utc) <= end


def tls_info(ssl_object: ssl.SSLObject | None, verified: bool) -> TlsInfo:
    from lkice.report import TlsInfo  # the report's module (and its quality figures) on use

    if ssl_object is None:
        return TlsInfo(verified=verified)
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    info = TlsInfo(
        version=ssl_object.version(), cipher=cipher[0] if cipher else None, verified=verified
    )
    if der:
        info.sha256 = hashlib.sha256(der).hexdigest()
        decoded = ssl_object.getpeercert() if verified else None
        if not (decoded and _fill_decoded(info, decoded)):
            _fill_certificate(info, der)
    return info


# RFC 4514 names as cryptography's Name.rfc4514_string() writes them (the rest by OID), for the
# OpenSSL long names the ssl module gives.
_RFC4514_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "1.2.840.113549.1.9.1",
    "serialNumber": "2.5.4.5",
    "businessCategory": "2.5.4.15",
    "postalCode": "2.5.4.17",
    "jurisdictionC": "1.3.6.1.4.1.311.60.2.1.3",
    "jurisdictionST": "1.3.6.1.4.1.311.60.2.1.2",
    "jurisdictionL": "1.3.6.1.4.1.311.60.2.1.1",
    "organizationIdentifier": "2.5.4.97",
}


def _rfc4514(name: Any) -> str | None:
    """A ``getpeercert()`` subject or issuer (RDNs of (name, value) pairs, in certificate
    order) as RFC 4514 text, the same as cryptography's; None for anything else."""
    rdns: list[str] = []
    try:
        for rdn in reversed(name):
            parts = []
            for key, value in rdn:
                label = _RFC4514_NAMES.get(key)
                if label is None and key.replace(".", "").isdigit():
                    label = key  # an OID OpenSSL has no name for: dotted, as cryptography
                if label is None or not isinstance(value, str):
                    return None
                parts.append(f"{label}={_escape_dn_value(value)}")
            rdns.append("+".join(parts))
    except (TypeError, ValueError, AttributeError):
        return None
    return ",".join(rdns)


# RFC 4514 section 2.4, in cryptography's order (the backslash first).
_DN_ESCAPES = (*((char, "\\" + char) for char in '\\"+,;<>'), ("\0", "\\00"))


def _escape_dn_value(value: str) -> str:
    """A name's value as cryptography escapes it."""
    if not value:
        return ""
    for char, escaped in _DN_ESCAPES:
        value = value.replace(char, escaped)
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def _fill_decoded(info: TlsInfo, cert: dict[str, Any]) -> bool:
    """Subject, issuer, dates and names from ``getpeercert()`` (a verified certificate);
    False when something in it is not spelt here (cryptography then reads the DER)."""
    from datetime import datetime, timezone

    subject, issuer = _rfc4514(cert.get("subject", ())), _rfc4514(cert.get("issuer", ()))
    if subject is None or issuer is None:
        return False
    try:
        after = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), timezone.utc)
        before = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notBefore"]), timezone.utc)
    except (KeyError, ValueError, TypeError, OverflowError, OSError):
        return False
    names: list[str] | None = None
    if "subjectAltName" in cert:
        alt = cert["subjectAltName"]
        names = [str(value) for kind, value in alt if kind == "DNS"]
        try:
            # OpenSSL writes IPv6 uncompressed and in capitals; cryptography as ipaddress does.
            names += [
                str(ipaddress.ip_address(value.strip()))
                for kind, value in alt
                if kind == "IP Address"
            ]
        except ValueError:
            return False
    info.subject, info.issuer = _bounded(subject), _bounded(issuer)
    info.not_after, info.not_before = after.isoformat(), before.isoformat()
    if names is not None:
        info.names = [_bounded(n, 128) for n in names[:MAX_NAMES]]
    return True


def _fill_certificate(info: TlsInfo, der: bytes) -> None:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return
    info.subject = _bounded(cert.subject.rfc4514_string())
    info.issuer = _bounded(cert.issuer.rfc4514_string())
    info.not_after = cert.not_valid_after_utc.isoformat()
    info.not_before = cert.not_valid_before_utc.isoformat()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return
    names = [*san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    info.names = [_bounded(n, 128) for n in names[:MAX_NAMES]]


MAX_NAMES = 20  # of a certificate's subjectAltNames in the report


def _bounded(text: str, limit: int = 512) -> str:
    """A certificate's text as the report keeps it (shown visibly by the renderers)."""
    return text if len(text) <= limit else text[:limit] + "..."


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
