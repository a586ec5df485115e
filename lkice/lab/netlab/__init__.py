"""A network lab in Linux network namespaces: a client behind a firewall, an impairment router,
and one real coturn per region, so the agent can be tested against the networks customers have
(UDP blocked, only TCP 443, symmetric NAT, delay, jitter, loss) with the injected values known.

Topology (``<t>`` is the lab's token; every namespace and interface name carries it)::

    lk-<t>-client          lk-<t>-fw                 lk-<t>-router              lk-<t>-r-<region>
    198.18.0.2/24 ------- 198.18.0.1/24             (TUN delay router,         198.19.i.2/24 (+ .3)
      default via .1      dnsmasq :53               nftables loss/rate)        coturn: UDP/TCP 3478,
                          nftables profile          198.18.1.2/30 ------+      TLS 5349 and 443
                          198.18.1.1/30 ------------+                   +----- 198.19.i.1/24

Everything is numbered from 198.18.0.0/15 (RFC 2544 benchmarking space). The lab is sealed: no
interface in it connects to the root namespace, nothing in the root namespace is configured, and
no namespace has a route outside 198.18.0.0/15 except the client's default route, which points at
the lab's own firewall (the firewall routes only the lab's ranges, so anything else is
unreachable there).

- **Firewall** (``fw``): nftables forward chain with a switchable :class:`Profile` (see
  :data:`PROFILES`): ``open``, ``udp-blocked``, ``tcp443-only``, ``proxy-only`` (a real
  tinyproxy on the firewall is the only way out), ``nat`` and ``symmetric-nat``.
  Filtering profiles *drop* (a firewall that filters, not one that rejects), counted. The lab's
  DNS (dnsmasq for ``lab.test``) runs here on 198.18.0.1, so DNS never crosses the filter.
- **Router** (``router``): policy routing (``ip rule iif <veth> lookup 100``, table 100's default
  route is a TUN device) diverts every packet entering from the firewall or a region through
  ``python3 -m lkice.lab.router forward``, which holds it for the region's delay and jitter in
  that direction; loss (``numgen random``) and rate caps (``limit rate over``) are nftables rules
  in the same namespace with named counters. Table 100 also holds a blackhole default route, so a
  dead router drops traffic rather than silently forwarding it unimpaired.
- **Regions**: ``turn.<region>.lab.test`` -> 198.19.i.2, with a second address .3 so coturn
  enables RFC 5780 (OTHER-ADDRESS) and its alternate TLS listener, which the lab puts on port 443.
  ``pion_regions`` run pion/turn (LiveKit's TURN, :mod:`lkice.lab.pion`) there instead, on the
  same addresses and ports (pion has no RFC 5780: no OTHER-ADDRESS).

Teardown kills every process the lab started and deletes every namespace and ``/etc/netns`` entry
however the block ends (exception, Ctrl-C during setup or use), with an ``atexit`` fallback and
``PR_SET_PDEATHSIG`` on the lab's own helpers (tied to the thread that started them: drive a lab
from one thread). :func:`leftovers` lists anything still carrying a token; :func:`destroy`
removes it (e.g. after ``kill -9`` of a test run).

Usage::

    with NetLab(regions=("eu", "us"), profile="udp-blocked") as lab:
        lab.set_impairment("eu", upstream=Impairment(delay_ms=20),
                           downstream=Impairment(delay_ms=20, loss=0.03))
        run = lab.lkice("turn:turn.eu.lab.test", *lab.turn_args())   # as the client
        truth = lab.ground_truth()       # configured values + kernel drop counters
        overhead = lab.measure_overhead("eu")   # the lab's own RTT: compare with tolerance

A new firewall personality is a :class:`Profile` added to :data:`PROFILES`.

The package, by concern: :mod:`~lkice.lab.netlab.addressing` (names and numbers),
:mod:`~lkice.lab.netlab.profiles` (the firewall's nftables rulesets),
:mod:`~lkice.lab.netlab.impair` (impairments, the router's rules, the delay router helper),
:mod:`~lkice.lab.netlab.truth` (ground truth and measurements), :mod:`~lkice.lab.netlab.teardown`
(leftovers and destroy), :mod:`~lkice.lab.netlab.servers` (the regions' TURN servers and lab
CA), :mod:`~lkice.lab.netlab.procs` (process helpers, namespace plumbing, prerequisites) and
:mod:`~lkice.lab.netlab.lab` (:class:`NetLab`). Everything public is importable from here.
"""

from __future__ import annotations

from lkice.lab.netlab.addressing import CLIENT_IP as CLIENT_IP
from lkice.lab.netlab.addressing import CLIENT_NET as CLIENT_NET
from lkice.lab.netlab.addressing import DIRECTIONS as DIRECTIONS
from lkice.lab.netlab.addressing import DIVERT_TABLE as DIVERT_TABLE
from lkice.lab.netlab.addressing import DOMAIN as DOMAIN
from lkice.lab.netlab.addressing import DOWNSTREAM as DOWNSTREAM
from lkice.lab.netlab.addressing import ECHO_PORT as ECHO_PORT
from lkice.lab.netlab.addressing import FW_LAN_IP as FW_LAN_IP
from lkice.lab.netlab.addressing import FW_WAN_IP as FW_WAN_IP
from lkice.lab.netlab.addressing import INTERCEPT_PORT as INTERCEPT_PORT
from lkice.lab.netlab.addressing import LAB_NET as LAB_NET
from lkice.lab.netlab.addressing import MAX_REGIONS as MAX_REGIONS
from lkice.lab.netlab.addressing import ROUTER_WAN_IP as ROUTER_WAN_IP
from lkice.lab.netlab.addressing import TURN_PORT as TURN_PORT
from lkice.lab.netlab.addressing import TURN_TLS_ALT_PORT as TURN_TLS_ALT_PORT
from lkice.lab.netlab.addressing import TURN_TLS_PORT as TURN_TLS_PORT
from lkice.lab.netlab.addressing import UPSTREAM as UPSTREAM
from lkice.lab.netlab.impair import NO_IMPAIRMENT as NO_IMPAIRMENT
from lkice.lab.netlab.impair import Impairment
from lkice.lab.netlab.lab import NetLab
from lkice.lab.netlab.procs import prerequisites
from lkice.lab.netlab.profiles import PROFILES, Profile
from lkice.lab.netlab.teardown import destroy, leftovers
from lkice.lab.netlab.truth import DirectionTruth, GroundTruth, LkiceRun, PingStats
from lkice.lab.server import LabError

__all__ = [
    "PROFILES",
    "DirectionTruth",
    "GroundTruth",
    "Impairment",
    "LabError",
    "LkiceRun",
    "NetLab",
    "PingStats",
    "Profile",
    "destroy",
    "leftovers",
    "prerequisites",
]
