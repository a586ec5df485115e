"""NAT behaviour discovery (RFC 5780 section 4.3 and 4.4) against a STUN server that has two
addresses and says so with OTHER-ADDRESS (coturn does, given two listening IPs).

All tests go from one local UDP socket:

- mapping: Binding to the primary address (test I), to the alternate IP on the primary port
  (test II), and to the alternate IP and port (test III); the mapped addresses compared say
  whether the NAT keeps one mapping for every destination (endpoint-independent) or makes one
  per destination address or per address and port (the "symmetric NAT" of RFC 3489);
- filtering: Binding with CHANGE-REQUEST asking for the answer from the other IP and port
  (test II), then from the other port only (test III): which answers get back in says what the
  NAT or firewall lets in. When neither comes back, filtering stays unknown: a server that does
  not send them looks the same.

A lost answer reads as "filtered": each test retransmits (RTO 0.5 s, doubling) until its
timeout, and the evidence says how many requests went out.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lkice import stun as codec
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.probe.channel import UdpChannel

if TYPE_CHECKING:
    from aioice import stun
else:
    stun = codec.aioice_stun()  # the codec without aioice's ICE stack (see lkice.stun)

__all__ = ["NatBehaviour", "discover_nat"]

CHANGE_IP = 0x04
CHANGE_PORT = 0x02

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
UNKNOWN = "unknown"
# A filtering test waits for an answer that a filter may rightly drop: shorter than a plain
# transaction's bound, so the discovery ends within the quality train that runs beside it.
FILTER_TIMEOUT = 1.5


@dataclass
class NatBehaviour:
    server: str
    mapping: str = UNKNOWN
    filtering: str = UNKNOWN
    nat: bool | None = None  # None: not known; False: the mapped address is our own
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unconnected(UdpChannel):
    """A UdpChannel on an unconnected socket: each request goes to ``destination``, and answers
    are taken from any source (CHANGE-REQUEST answers come from the server's other address)."""

    destination: tuple[str, int] = ("", 0)
    sends = 0  # requests sent by the last transaction that timed out

    def _timeout_error(self, phase: Phase, timeout: float, sends: int) -> ProbeError:
        self.sends = sends
        return super()._timeout_error(phase, timeout, sends)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.destination)

    async def binding(
        self, destination: tuple[str, int], change: int = 0
    ) -> tuple[stun.Message | None, int]:
        """(the answer or None when none came in time, requests sent)."""
        self.destination = destination
        request = codec.binding_request()
        if change:
            request.attributes["CHANGE-REQUEST"] = change
        try:
            exchange = await self.request(request, Phase.BINDING)
        except ProbeError as exc:
            # Silence is what the filtering tests measure, also after earlier answers.
            if exc.kind in (ErrorKind.UDP_NO_RESPONSE, ErrorKind.SERVER_SILENT):
                return None, self.sends
            raise
        return exchange.response, exchange.sends


def _mapped(message: stun.Message) -> tuple[str, int] | None:
    value = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
    return None if value is None else (str(value[0]), int(value[1]))


def _local_ip(destination: tuple[str, int]) -> str | None:
    """The source address the kernel picks for ``destination`` (a connect on UDP sends
    nothing)."""
    family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(destination)
        except OSError:
            return None
        return str(probe.getsockname()[0])


async def discover_nat(
    address: tuple[str, int],
    timeout: float = 3.0,
    filter_timeout: float = FILTER_TIMEOUT,
    result: NatBehaviour | None = None,
    mapping_done: asyncio.Event | None = None,
) -> NatBehaviour:
    """Mapping and filtering behaviour seen through ``address`` (a STUN server over UDP).

    Never raises for what the network does: an unanswered primary, a server without
    OTHER-ADDRESS or an ICMP error leave the behaviour ``unknown`` with the reason in
    ``evidence``. Takes at most 3 x ``timeout`` + 2 x ``filter_timeout``. ``result`` is filled
    as the tests conclude, so a caller that cancels the discovery keeps what was found."""
    label = codec.format_address(address)
    if result is None:
        result = NatBehaviour(server=label)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    local_ip = _local_ip(address)
    try:
        _, channel = await loop.create_datagram_endpoint(
            lambda: _Unconnected(label, timeout),
            # The source address the kernel would use anyway; bound, so the socket's own
            # address is known for the "no NAT" comparison.
            local_addr=(local_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0),  # noqa: S104
        )
    except OSError as exc:
        result.evidence.append(f"no UDP socket: {exc.strerror or exc}")
        return result
    try:
        await _discover(channel, address, local_ip, result, filter_timeout, mapping_done)
    except ProbeError as exc:
        result.evidence.append(exc.message)
    except asyncio.CancelledError:
        result.evidence.append("discovery cut short: the run ended before it concluded")
        raise
    finally:
        channel.close()
        if mapping_done is not None:
            mapping_done.set()
    return result


async def _discover(
    channel: _Unconnected,
    primary: tuple[str, int],
    local_ip: str | None,
    result: NatBehaviour,
    filter_timeout: float,
    mapping_done: asyncio.Event | None = None,
) -> None:
    fmt = codec.format_address
    answer, sends = await channel.binding(primary)
    if answer is None:
        result.evidence.append(f"test I: no answer from {fmt(primary)} ({sends} sends)")
        return
    mapped1 = _mapped(answer)
    other = answer.attributes.get("OTHER-ADDRESS")
    if mapped1 is None:
        result.evidence.append(f"test I: {fmt(primary)} answered without a mapped address")
        return
    assert channel.transport is not None
    local_port = int(channel.transport.get_extra_info("sockname")[1])
    result.nat = not (mapped1[0] == local_ip and mapped1[1] == local_port)
    result.evidence.append(
        f"test I: {fmt(primary)} saw us as {fmt(mapped1)}"
        + ("" if result.nat else " (our own address: no NAT on this path)")
    )
    if other is None:
        result.evidence.append(
            f"{fmt(primary)} gave no OTHER-ADDRESS: it does not support RFC 5780 "
            "behaviour discovery (a STUN server with two IP addresses is needed)"
        )
        return
    alternate = (str(other[0]), int(other[1]))
    if alternate[0] == primary[0] or alternate[1] == primary[1]:
        result.evidence.append(
            f"OTHER-ADDRESS {fmt(alternate)} shares the primary's IP or port: tests skipped"
        )
        return

    # Mapping (RFC 5780 4.3)
    answer, sends = await channel.binding((alternate[0], primary[1]))
    mapped2 = None if answer is None else _mapped(answer)
    if mapped2 is None:
        result.evidence.append(
            f"test II: no answer from {fmt((alternate[0], primary[1]))} ({sends} sends)"
        )
    elif mapped2 == mapped1:
        result.mapping = ENDPOINT_INDEPENDENT
        result.evidence.append(
            f"test II: {fmt((alternate[0], primary[1]))} saw the same {fmt(mapped2)}"
        )
    else:
        result.evidence.append(f"test II: {fmt((alternate[0], primary[1]))} saw {fmt(mapped2)}")
        answer, sends = await channel.binding(alternate)
        mapped3 = None if answer is None else _mapped(answer)
        if mapped3 is None:
            result.evidence.append(f"test III: no answer from {fmt(alternate)} ({sends} sends)")
        else:
            result.mapping = ADDRESS_DEPENDENT if mapped3 == mapped2 else ADDRESS_AND_PORT_DEPENDENT
            result.evidence.append(f"test III: {fmt(alternate)} saw {fmt(mapped3)}")

    # Filtering (RFC 5780 4.4): the slow part (a filtered answer costs a timeout); whoever
    # waits for the mapping need not wait for this.
    if mapping_done is not None:
        mapping_done.set()
    channel.timeout = filter_timeout
    answer, sends = await channel.binding(primary, CHANGE_IP | CHANGE_PORT)
    if answer is not None:
        result.filtering = ENDPOINT_INDEPENDENT
        result.evidence.append("filtering test II: the answer from the other IP and port got in")
        return
    result.evidence.append(
        f"filtering test II: no answer from the other IP and port got in ({sends} sends)"
    )
    answer, sends = await channel.binding(primary, CHANGE_PORT)
    if answer is not None:
        result.filtering = ADDRESS_DEPENDENT
        result.evidence.append("filtering test III: the answer from the other port got in")
        return
    # Neither came: the NAT or firewall dropped them, or the server never sent them (coturn
    # 4.6 gives OTHER-ADDRESS but was seen here not to send CHANGE-REQUEST answers, even with
    # nothing in between). The two cannot be told apart from here, so nothing is concluded.
    result.evidence.append(
        f"filtering test III: no answer from the other port got in ({sends} sends); "
        "filtering not concluded: a NAT or firewall that filters, or a server that does not "
        "send answers from its other address, look the same"
    )
