"""ICE/TCP to the SFU (RFC 6544): one STUN connectivity check on the SFU's passive TCP candidate.

aiortc has no ICE-TCP, so a full session over TCP cannot be made. What can be proven is what a
browser's first step would prove: the candidate LiveKit advertises (TCP 7881 by default) is
reachable, and the SFU answers a Binding request that carries this session's ICE credentials
(USERNAME ``sfu_ufrag:our_ufrag``, MESSAGE-INTEGRITY keyed with the SFU's ice-pwd) with a
response whose own integrity checks out. DTLS and media over that connection are not tried.

Frames are RFC 4571: a 16-bit length before each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.tcp import connect_tcp
from lkice.stun import aioice_stun, format_address

if TYPE_CHECKING:
    from aioice import stun
    from aioice.candidate import candidate_priority
else:
    stun = aioice_stun()  # the codec without aioice's ICE stack (see lkice.stun)
    from aioice.candidate import candidate_priority

__all__ = ["IceCredentials", "IceTcpAnswer", "check_ice_tcp", "ice_credentials"]

_FRAME = struct.Struct("!H")


@dataclass(frozen=True)
class IceCredentials:
    """The ICE ufrag and password of both ends of one session (never reported)."""

    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str

    def __repr__(self) -> str:  # the passwords must not reach a log
        return f"IceCredentials({self.local_ufrag}:{self.remote_ufrag})"


@dataclass(frozen=True)
class IceTcpAnswer:
    connect_ms: float
    binding_ms: float
    mapped_address: str | None


def ice_credentials(local_sdp: str, remote_sdp: str) -> IceCredentials | None:
    """The ufrag/pwd pairs from two SDPs (the first ``a=ice-ufrag``/``a=ice-pwd`` of each)."""

    def pick(sdp: str) -> tuple[str, str] | None:
        ufrag = pwd = None
        for line in sdp.splitlines():
            if line.startswith("a=ice-ufrag:") and ufrag is None:
                ufrag = line.split(":", 1)[1].strip()
            elif line.startswith("a=ice-pwd:") and pwd is None:
                pwd = line.split(":", 1)[1].strip()
        return (ufrag, pwd) if ufrag and pwd else None

    local, remote = pick(local_sdp), pick(remote_sdp)
    if local is None or remote is None:
        return None
    return IceCredentials(local[0], local[1], remote[0], remote[1])


async def check_ice_tcp(
    address: tuple[str, int],
    credentials: IceCredentials,
    *,
    controlling: bool,
    timeout: float,
) -> IceTcpAnswer:
    """Connect, send one Binding request as an ICE connectivity check, wait for its answer.

    Raises ProbeError: connect_refused / connect_timeout / network_unreachable (TCP),
    tcp_no_response (no answer in ``timeout``), auth_rejected (a 401/400 error response: the
    SFU did not accept the session's credentials), protocol (an answer that is not STUN, or
    fails its integrity check)."""
    label = format_address(address)
    start = time.perf_counter()
    sock = await connect_tcp(address, timeout)
    connect_ms = (time.perf_counter() - start) * 1000.0
    key = credentials.remote_pwd.encode()
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{credentials.remote_ufrag}:{credentials.local_ufrag}"
    # The peer-reflexive priority a TCP-active candidate of ours would have (RFC 8445 7.1.1).
    request.attributes["PRIORITY"] = candidate_priority(1, "prflx")
    role = "ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"
    request.attributes[role] = secrets.randbits(64)
    request.add_message_integrity(key)
    request.add_fingerprint()
    payload = bytes(request)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as exc:
        sock.close()
        raise ProbeError(ErrorKind.CONNECTION_CLOSED, f"{label}: {exc}", Phase.CONNECT) from exc
    try:
        sent = time.perf_counter()
        writer.write(_FRAME.pack(len(payload)) + payload)
        try:
            response = await asyncio.wait_for(
                _answer(reader, request.transaction_id, key, label), timeout
            )
        except asyncio.TimeoutError:
            raise ProbeError(
                ErrorKind.TCP_NO_RESPONSE,
                f"ICE/TCP {label}: the connection opened but no answer to the STUN check came "
                f"within {timeout:g} s",
                Phase.BINDING,
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ProbeError(
                ErrorKind.CONNECTION_CLOSED,
                f"ICE/TCP {label}: the SFU closed the connection without answering the STUN "
                "check (it did not recognise the session's ICE username?)",
                Phase.BINDING,
            ) from exc
        binding_ms = (time.perf_counter() - sent) * 1000.0
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if response.message_class == stun.Class.ERROR:
        code, reason = response.attributes.get("ERROR-CODE", (0, ""))
        kind = ErrorKind.AUTH_REJECTED if code in (400, 401) else ErrorKind.PROTOCOL
        raise ProbeError(
            kind,
            f"ICE/TCP {label}: the SFU rejected the STUN check with {code} {reason}",
            Phase.BINDING,
        )
    mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
    return IceTcpAnswer(
        connect_ms, binding_ms, format_address(mapped) if mapped is not None else None
    )


async def _answer(
    reader: asyncio.StreamReader, transaction_id: bytes, key: bytes, label: str
) -> stun.Message:
    """The response to our transaction; the SFU's own triggered checks on the same connection
    (it learns us as a peer-reflexive candidate) are skipped. Bounded by the caller's timeout."""
    while True:
        (length,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
        data = await reader.readexactly(length)
        try:
            message = stun.parse_message(data)
        except ValueError as exc:
            raise ProbeError(
                ErrorKind.PROTOCOL,
                f"ICE/TCP {label}: the answer is not STUN in RFC 4571 framing",
                Phase.BINDING,
            ) from exc
        if message.transaction_id != transaction_id:
            continue
        if message.message_class == stun.Class.RESPONSE and not message.check_message_integrity(
            key
        ):
            raise ProbeError(
                ErrorKind.PROTOCOL,
                f"ICE/TCP {label}: the answer's MESSAGE-INTEGRITY does not match the "
                "session's ICE password: something else answers on this port",
                Phase.BINDING,
            )
        return message
