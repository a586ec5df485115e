"""The namespace lab's addressing: every number and name comes from 198.18.0.0/15 (RFC 2544
benchmarking space) and the ``lab.test`` domain. Region ``i`` is 198.19.<i>.0/24: the router's
side is .1, the TURN server .2 (and .3, its RFC 5780 alternate), LiveKit signaling .4."""

from __future__ import annotations

import re

DOMAIN = "lab.test"
CLIENT_IP = "198.18.0.2"
CLIENT_NET = "198.18.0.0/24"
FW_LAN_IP = "198.18.0.1"
FW_WAN_IP = "198.18.1.1"  # the firewall's outside address: what NAT profiles map the client to
ROUTER_WAN_IP = "198.18.1.2"
LAB_NET = "198.18.0.0/15"
MAX_REGIONS = 200
DIVERT_TABLE = 100
ECHO_PORT = 7
TURN_PORT = 3478
TURN_TLS_PORT = 5349
TURN_TLS_ALT_PORT = 443
INTERCEPT_PORT = 8443  # the TLS-inspecting proxy's own port in the firewall namespace
UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)

_REGION_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_TOKEN_RE = re.compile(r"^[0-9a-f]{6}$")


def region_server_ip(index: int) -> str:
    """Region ``index``'s TURN server address (198.19.<i>.2)."""
    return f"198.19.{index}.2"


def region_alternate_ip(index: int) -> str:
    """Region ``index``'s second server address (RFC 5780 OTHER-ADDRESS)."""
    return f"198.19.{index}.3"


def region_signal_ip(index: int) -> str:
    """Region ``index``'s LiveKit signaling address."""
    return f"198.19.{index}.4"


def region_subnet(index: int) -> str:
    return f"198.19.{index}.0/24"
