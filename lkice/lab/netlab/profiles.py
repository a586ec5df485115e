"""The lab firewall's personalities (:class:`Profile`, :data:`PROFILES`) and the nftables
ruleset the firewall namespace gets for one (:func:`firewall_table`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lkice.lab.netlab.addressing import CLIENT_NET, FW_LAN_IP


@dataclass(frozen=True)
class Profile:
    """A firewall personality, as nftables statements in the firewall namespace.

    ``egress``: statements, in order, for packets the client sends out (each ends in a verdict;
    ``{drop}`` stands for a counted drop). ``nat``: the statement applied on the outside
    interface (None: routed, the client keeps its own address). ``stateful``: inbound packets are
    let in only as replies (established/related), else everything is let in. ``udp_egress``: the
    profile lets UDP out (the overhead measurement needs it)."""

    name: str
    description: str
    egress: tuple[str, ...] = ("accept",)
    nat: str | None = None
    stateful: bool = True
    udp_egress: bool = True


_DROP_EGRESS = 'counter name "egress_drop" drop'
_DROP_INGRESS = 'counter name "ingress_drop" drop'

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("open", "no filtering, no NAT: the client's address is seen as is", stateful=False),
        Profile(
            "udp-blocked",
            "stateful firewall dropping all UDP from the client (the lab's DNS is on the firewall)",
            egress=("meta l4proto udp {drop}", "accept"),
            udp_egress=False,
        ),
        Profile(
            "tcp443-only",
            "stateful firewall letting only TCP to port 443 out, dropping everything else",
            egress=("tcp dport 443 accept", "{drop}"),
            udp_egress=False,
        ),
        Profile(
            "proxy-only",
            "no direct egress at all: the only way out is the web proxy (tinyproxy) on the "
            f"firewall, http://{FW_LAN_IP}:3128, which lets CONNECT reach port 443 only",
            egress=("{drop}",),
            udp_egress=False,
        ),
        Profile(
            "nat",
            "port-restricted cone NAT: masquerade keeping source ports (endpoint-independent "
            "mapping), replies only",
            nat="masquerade",
        ),
        Profile(
            "symmetric-nat",
            "symmetric NAT: masquerade with a random port per connection (per destination), "
            "replies only",
            nat="masquerade random,fully-random",
        ),
    )
}


def firewall_table(prefix: str, profile: Profile, region_blocks: Iterable[tuple[str, str]]) -> str:
    """The firewall's ``inet lkfw`` table for ``profile``; ``prefix`` is the lab's interface
    prefix, ``region_blocks`` (region network, protocol) pairs dropped before the profile's rules."""
    p = prefix
    lan, wan = f"{p}fc", f"{p}fo"
    # Per-region blocks (block_region) come first: they narrow whatever the profile allows.
    blocks = [f"ip daddr {net} meta l4proto {proto} {_DROP_EGRESS}" for net, proto in region_blocks]
    egress = blocks + [s.replace("{drop}", _DROP_EGRESS) for s in profile.egress]
    ingress = (
        ["ct state established,related accept", _DROP_INGRESS] if profile.stateful else ["accept"]
    )
    lines = [
        "table inet lkfw",
        "delete table inet lkfw",  # with the line above: replace atomically, new or not
        "table inet lkfw {",
        "  counter egress_drop { }",
        "  counter ingress_drop { }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        f'    iifname "{lan}" oifname "{wan}" jump egress',
        f'    iifname "{wan}" oifname "{lan}" jump ingress',
        "  }",
        "  chain egress {",
        *(f"    {s}" for s in egress),
        "  }",
        "  chain ingress {",
        *(f"    {s}" for s in ingress),
        "  }",
    ]
    if profile.nat is not None:
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "{wan}" ip saddr {CLIENT_NET} {profile.nat}',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"
