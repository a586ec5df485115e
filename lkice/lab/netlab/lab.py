"""The namespace lab itself: :class:`NetLab` builds the namespaces, links and servers, and drives
the firewall (:mod:`~lkice.lab.netlab.profiles`), impairments
(:mod:`~lkice.lab.netlab.impair`) and teardown (:mod:`~lkice.lab.netlab.teardown`); see
:mod:`lkice.lab.netlab` for the topology."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lkice.lab.coturn import Coturn
from lkice.lab.dns import Dnsmasq
from lkice.lab.netlab.addressing import (
    _REGION_RE,
    _TOKEN_RE,
    CLIENT_IP,
    CLIENT_NET,
    DIRECTIONS,
    DIVERT_TABLE,
    DOMAIN,
    DOWNSTREAM,
    ECHO_PORT,
    FW_LAN_IP,
    FW_WAN_IP,
    INTERCEPT_PORT,
    LAB_NET,
    MAX_REGIONS,
    ROUTER_WAN_IP,
    TURN_PORT,
    TURN_TLS_ALT_PORT,
    TURN_TLS_PORT,
    UPSTREAM,
    region_alternate_ip,
    region_server_ip,
    region_signal_ip,
    region_subnet,
)
from lkice.lab.netlab.impair import (
    NO_IMPAIRMENT,
    Impairment,
    _Helper,
    impairment_rules,
    impairment_table,
    router_flows,
)
from lkice.lab.netlab.procs import (
    _in_ns,
    _python,
    _run,
    _sigint_deferred,
    add_address,
    ip_in,
    nft_script,
    prerequisites,
    veth_pair,
)
from lkice.lab.netlab.profiles import PROFILES, Profile, firewall_table
from lkice.lab.netlab.servers import coturn_server, make_pki, pion_server
from lkice.lab.netlab.teardown import (
    _ETC_NETNS,
    _NETNS_DIR,
    _NS_INODES,
    _token_etc_dirs,
    _token_namespaces,
    destroy,
    leftovers,
)
from lkice.lab.netlab.truth import GroundTruth, LkiceRun, PingStats, ground_truth_from, nft_counters
from lkice.lab.pion import PionTurn
from lkice.lab.pki import LabPki
from lkice.lab.server import LabError
from lkice.lab.tinyproxy import TinyProxy

__all__ = ["NetLab"]


class NetLab:
    """``with NetLab(regions=("eu", "us"), profile="open") as lab:`` builds the lab (a few
    seconds) and tears it down on exit, whatever happened inside. Needs root; see
    :func:`prerequisites`.

    ``reorder``: let jitter reorder packets of a flow (off: a path with jitter still delivers in
    order). ``turn_user``/``turn_password``: coturn's long-term credentials (random password by
    default). ``token``: 6 hex digits naming everything the lab creates (random by default).
    ``pion_regions``: regions whose TURN server is pion/turn instead of coturn (same users,
    addresses and ports; needs :func:`lkice.lab.pion.pion_unavailable_reason` to be None)."""

    def __init__(
        self,
        regions: Sequence[str] = ("eu",),
        profile: str = "open",
        *,
        reorder: bool = False,
        turn_user: str = "lkice",
        turn_password: str | None = None,
        token: str | None = None,
        ready_timeout: float = 10.0,
        pion_regions: Sequence[str] = (),
    ) -> None:
        regions = tuple(regions)
        if not regions:
            raise ValueError("a lab needs at least one region")
        if len(regions) > MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} regions")
        for region in regions:
            if not _REGION_RE.match(region):
                raise ValueError(
                    f"region name {region!r}: use 1-16 lowercase letters and digits, "
                    "starting with a letter (it becomes a DNS label and part of names)"
                )
        if len(set(regions)) != len(regions):
            raise ValueError(f"duplicate region names: {regions}")
        unknown = [r for r in pion_regions if r not in regions]
        if unknown:
            raise ValueError(f"pion_regions {unknown} are not among the regions {regions}")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        if token is not None and not _TOKEN_RE.match(token):
            raise ValueError(f"token must be 6 lowercase hex digits, not {token!r}")
        self.regions = regions
        self.pion_regions = frozenset(pion_regions)
        self.reorder = reorder
        self.turn_user = turn_user
        self.turn_password = turn_password or secrets.token_urlsafe(12)
        self.token = token or self._fresh_token()
        self.ready_timeout = ready_timeout
        self._profile = profile
        self._blocks: set[tuple[str, str]] = set()  # (region, protocol): see block_region
        self._impairments: dict[str, dict[str, Impairment]] = {
            r: dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT) for r in regions
        }
        self._work: tempfile.TemporaryDirectory[str] | None = None
        self._router: _Helper | None = None
        self._echo: dict[str, _Helper] = {}
        self._livekit: dict[str, _Helper] = {}
        self._interceptor: _Helper | None = None
        self._web_proxy: TinyProxy | None = None
        self._coturn: dict[str, Coturn | PionTurn] = {}  # a region's TURN server
        self._dns: Dnsmasq | None = None
        self._ca_file: Path | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    # -- names and numbers ------------------------------------------------------------------

    @staticmethod
    def _fresh_token() -> str:
        for _ in range(20):
            token = secrets.token_hex(3)
            if not _token_namespaces(token) and not _token_etc_dirs(token):
                return token
        raise LabError("could not find an unused lab token")  # pragma: no cover

    @property
    def _p(self) -> str:
        """Interface name prefix: ``lk`` + token (8 characters, leaving 7 of IFNAMSIZ's 15)."""
        return f"lk{self.token}"

    @property
    def client_ns(self) -> str:
        return f"lk-{self.token}-client"

    @property
    def fw_ns(self) -> str:
        return f"lk-{self.token}-fw"

    @property
    def router_ns(self) -> str:
        return f"lk-{self.token}-router"

    def region_ns(self, region: str) -> str:
        self._index(region)
        return f"lk-{self.token}-r-{region}"

    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.fw_ns, self.router_ns] + [
            self.region_ns(r) for r in self.regions
        ]

    @property
    def client_ip(self) -> str:
        return CLIENT_IP

    @property
    def fw_outside_ip(self) -> str:
        """The address NAT profiles map the client to."""
        return FW_WAN_IP

    @property
    def resolver_ip(self) -> str:
        return FW_LAN_IP

    def _index(self, region: str) -> int:
        try:
            return self.regions.index(region)
        except ValueError:
            raise ValueError(
                f"unknown region {region!r}: one of {', '.join(self.regions)}"
            ) from None

    def server_ip(self, region: str) -> str:
        """The region's TURN server address (198.19.<i>.2)."""
        return region_server_ip(self._index(region))

    def alternate_ip(self, region: str) -> str:
        """The region server's second address (RFC 5780 OTHER-ADDRESS)."""
        return region_alternate_ip(self._index(region))

    def region_net(self, region: str) -> str:
        return region_subnet(self._index(region))

    def turn_uris(self, region: str) -> list[str]:
        """The region's TURN as a deployment advertises it: UDP and TCP on 3478, TLS on 443."""
        host = self.turn_host(region)
        return [
            f"turn:{host}:{TURN_PORT}?transport=udp",
            f"turn:{host}:{TURN_PORT}?transport=tcp",
            f"turns:{host}:{TURN_TLS_ALT_PORT}?transport=tcp",
        ]

    def signal_ip(self, region: str) -> str:
        """The region's LiveKit signaling address (its own, so it can take port 443 too)."""
        return region_signal_ip(self._index(region))

    def livekit_host(self, region: str) -> str:
        self._index(region)
        return f"lk.{region}.{DOMAIN}"

    def start_livekit(
        self,
        region: str,
        api_key: str,
        api_secret: str,
        port: int = 443,
        ice_tcp_port: int | None = 7881,
        ice_udp_port: int = 7882,
        media: str = "auto",
    ) -> str:
        """Run the lab LiveKit server (``lkice.lab.livekit_server``) in ``region``'s namespace on its
        signaling address, handing out the region's coturn as a deployment hands out its TURN:
        TURN/UDP and TURN/TCP on 3478, TURN/TLS on 443; its SFU offers ICE/TCP on
        ``ice_tcp_port`` (LiveKit's default 7881; None: off) and, on the pion media plane
        (``media``: "pion", "aiortc" or "auto", see :class:`LabLiveKit`), one UDP port for
        every session, ``ice_udp_port`` (LiveKit's 7882). Returns the URL to give lkice
        (``ws://lk.<region>.lab.test:<port>``); stopped with the lab."""
        if region in self._livekit:
            raise LabError(f"a LiveKit server already runs in {region}")
        assert self._work is not None
        helper = _Helper(
            f"LiveKit in {region}",
            self.region_ns(region),
            ["python3", "-m", "lkice.lab.livekit_server"],
            Path(self._work.name) / f"livekit-{region}.log",
        )
        self._livekit[region] = helper
        config = {
            "api_key": api_key,
            "api_secret": api_secret,
            "host": self.signal_ip(region),
            "port": port,
            "region": region,
            # ICE checks come from the client's network, through the firewall (and from the
            # region's own coturn for relayed paths): the whole lab range.
            "peer_networks": ["198.18.0.0/15"],
            "ice_tcp_port": ice_tcp_port,
            "ice_udp_port": ice_udp_port,
            "media": media,
            "ice_servers": [
                {
                    "urls": self.turn_uris(region),
                    "username": self.turn_user,
                    "credential": self.turn_password,
                }
            ],
        }
        assert helper.process.stdin is not None
        helper.process.stdin.write((json.dumps(config) + "\n").encode())
        helper.process.stdin.flush()
        line = helper.read_line(20.0)
        if not line.startswith("ready "):
            raise LabError(f"LiveKit in {region} said {line!r}: {helper.log_tail()}")
        return f"ws://{self.livekit_host(region)}:{port}"

    def intercept_tls(
        self,
        region: str,
        port: int = TURN_TLS_ALT_PORT,
        organization: str = "Contoso",
        unit: str = "Contoso TLS Inspection CA",
    ) -> str:
        """Put a TLS-inspecting proxy (``lkice.lab.intercept``) in the firewall: the client's
        TCP to ``region``'s TURN addresses on ``port`` is redirected to it, and it answers with
        certificates from its own CA (``O=<organization>, OU=<unit>``), relaying to the real
        server behind. Returns the proxy CA's name as a certificate issuer shows it."""
        if self._interceptor is not None:
            raise LabError("the lab already intercepts TLS")
        self._require_running()
        assert self._work is not None
        helper = _Helper(
            "TLS-inspecting proxy",
            self.fw_ns,
            ["python3", "-m", "lkice.lab.intercept"],
            Path(self._work.name) / "intercept.log",
        )
        self._interceptor = helper
        listen = (FW_LAN_IP, INTERCEPT_PORT)
        config = {"host": listen[0], "port": listen[1], "organization": organization, "unit": unit}
        assert helper.process.stdin is not None
        helper.process.stdin.write((json.dumps(config) + "\n").encode())
        helper.process.stdin.flush()
        line = helper.read_line(20.0)
        if line != "ready":
            raise LabError(f"the TLS-inspecting proxy said {line!r}: {helper.log_tail()}")
        targets = f"{{ {self.server_ip(region)}, {self.alternate_ip(region)} }}"
        self._nft(
            self.fw_ns,
            "table ip lkintercept {\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname "{self._p}fc" ip daddr {targets} tcp dport {port} '
            f"dnat to {listen[0]}:{listen[1]}\n"
            "  }\n"
            "}\n",
        )
        return f"O={organization}, OU={unit}"

    def start_web_proxy(self, auth: tuple[str, str] | None = None) -> str:
        """(Re)start the firewall's web proxy (Debian's tinyproxy on 198.18.0.1:3128, CONNECT
        to port 443 only, Basic authentication when ``auth`` is given) and return its URL. The
        proxy's own traffic leaves from the firewall itself, so no profile filters it; the
        ``proxy-only`` profile starts one without authentication."""
        self._require_running()
        if self._web_proxy is not None:
            self._web_proxy.stop()
            self._web_proxy = None
        proxy = TinyProxy(
            connect_ports=[TURN_TLS_ALT_PORT],
            auth=auth,
            listen=FW_LAN_IP,
            ready_timeout=self.ready_timeout,
            netns=self.fw_ns,
        )
        proxy.start()
        self._web_proxy = proxy
        return proxy.url

    @property
    def web_proxy_url(self) -> str | None:
        return None if self._web_proxy is None else self._web_proxy.url

    def turn_host(self, region: str) -> str:
        self._index(region)
        return f"turn.{region}.{DOMAIN}"

    @property
    def ca_file(self) -> Path:
        """The lab CA (PEM) that signed every region's TURN/TLS certificate."""
        if self._ca_file is None:
            raise LabError("the lab is not started")
        return self._ca_file

    @property
    def profile(self) -> str:
        return self._profile

    def impairment(self, region: str, direction: str) -> Impairment:
        return self._impairments[region][direction]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = self._teardown()
        if problems and exc is None:
            raise LabError(f"lab {self.token} teardown left: {'; '.join(problems)}")

    def start(self) -> NetLab:
        """Build the lab. On any failure (or Ctrl-C) everything built so far is removed before
        the exception propagates."""
        if self._started:
            raise LabError("a NetLab can be started once")
        missing = prerequisites()
        if missing:
            raise LabError("the network lab cannot run here: " + "; ".join(missing))
        # Teardown removes everything carrying the token: never adopt one that is in use.
        in_use = leftovers(self.token)
        if in_use:
            raise LabError(
                f"lab token {self.token} is in use ({'; '.join(in_use[:3])}); "
                f"if that lab is dead, remove it with lkice.lab.netlab.destroy({self.token!r})"
            )
        self._started = True
        atexit.register(self._teardown)
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def close(self) -> None:
        """Tear down now; raises LabError naming anything that could not be removed."""
        problems = self._teardown()
        if problems:
            raise LabError(f"lab {self.token} teardown left: {'; '.join(problems)}")

    def _teardown(self) -> list[str]:
        with self._lock:
            if self._closed or not self._started:
                return []
            self._closed = True
            problems: list[str] = []
            with _sigint_deferred():
                # A coturn still starting would otherwise be launched after its namespace was
                # swept; start-up is bounded, so this wait is too.
                for thread in self._threads:
                    thread.join(self.ready_timeout + 10.0)
                helpers = [*self._echo.values(), *self._livekit.values()]
                helpers += [self._router] if self._router else []
                helpers += [self._interceptor] if self._interceptor else []
                for helper in helpers:
                    try:
                        helper.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping {helper.name}: {exc}")
                self._echo.clear()
                self._livekit.clear()
                self._router = None
                self._interceptor = None
                if self._web_proxy is not None:
                    try:
                        self._web_proxy.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping the web proxy: {exc}")
                    self._web_proxy = None
                for server in [*self._coturn.values()]:
                    try:
                        server.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping coturn: {exc}")
                self._coturn.clear()
                if self._dns is not None:
                    try:
                        self._dns.stop()
                    except (OSError, subprocess.SubprocessError) as exc:
                        problems.append(f"stopping dnsmasq: {exc}")
                    self._dns = None
                if self._work is not None:
                    with contextlib.suppress(OSError):
                        self._work.cleanup()
                    self._work = None
                problems += destroy(self.token)
                problems += leftovers(self.token)
                _NS_INODES.pop(self.token, None)
                atexit.unregister(self._teardown)
            return problems

    def _build(self) -> None:
        self._work = tempfile.TemporaryDirectory(prefix=f"lkice-netlab-{self.token}-")
        work = Path(self._work.name)
        p = self._p
        for ns in self.namespaces:
            self._add_namespace(ns)
        # client <-> fw
        self._veth(self.client_ns, f"{p}c", self.fw_ns, f"{p}fc")
        self._addr(self.client_ns, f"{p}c", f"{CLIENT_IP}/24")
        self._addr(self.fw_ns, f"{p}fc", f"{FW_LAN_IP}/24")
        self._ip(self.client_ns, "route", "add", "default", "via", FW_LAN_IP)
        # fw <-> router
        self._veth(self.fw_ns, f"{p}fo", self.router_ns, f"{p}ro")
        self._addr(self.fw_ns, f"{p}fo", f"{FW_WAN_IP}/30")
        self._addr(self.router_ns, f"{p}ro", f"{ROUTER_WAN_IP}/30")
        self._ip(self.fw_ns, "route", "add", "198.19.0.0/16", "via", ROUTER_WAN_IP)
        self._ip(self.router_ns, "route", "add", CLIENT_NET, "via", FW_WAN_IP)
        # router <-> regions
        for i, region in enumerate(self.regions):
            ns = self.region_ns(region)
            self._veth(self.router_ns, f"{p}rr{i}", ns, f"{p}sv{i}")
            self._addr(self.router_ns, f"{p}rr{i}", f"198.19.{i}.1/24")
            self._addr(ns, f"{p}sv{i}", f"{self.server_ip(region)}/24")
            self._addr(ns, f"{p}sv{i}", f"{self.alternate_ip(region)}/24")
            self._addr(ns, f"{p}sv{i}", f"{self.signal_ip(region)}/24")
            self._ip(ns, "route", "add", LAB_NET, "via", f"198.19.{i}.1")
        self._write_resolv_conf()
        self._apply_profile(self._profile)
        self._start_router(work)
        self._nft(self.router_ns, self._impairment_table())
        self._dns = Dnsmasq(
            {
                **{self.turn_host(r): [self.server_ip(r)] for r in self.regions},
                **{self.livekit_host(r): [self.signal_ip(r)] for r in self.regions},
            },
            domain=DOMAIN,
            listen_ip=FW_LAN_IP,
            port=53,
            netns=self.fw_ns,
        )
        self._dns.start()
        self._start_coturns(work)
        if PROFILES[self._profile].name == "proxy-only":
            self.start_web_proxy()

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        _NS_INODES.setdefault(self.token, set()).add((_NETNS_DIR / ns).stat().st_ino)
        self._ip(ns, "link", "set", "lo", "up")
        settings = [
            "net.ipv6.conf.all.disable_ipv6=1",  # the lab is IPv4; no RS/MLD noise, no DAD waits
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",  # packets come back out of the TUN device
            "net.ipv4.conf.default.rp_filter=0",
        ]
        if ns in (self.fw_ns, self.router_ns):
            settings.append("net.ipv4.ip_forward=1")
        _run(_in_ns(ns, ["sysctl", "-q", "-e", "-w", *settings]))  # -e: a kernel without IPv6

    def _ip(self, ns: str, *args: str) -> None:
        ip_in(ns, *args)

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        add_address(ns, dev, cidr)

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        veth_pair(ns_a, name_a, ns_b, name_b)

    def _nft(self, ns: str, script: str) -> None:
        nft_script(ns, script)

    def _write_resolv_conf(self) -> None:
        """``ip netns exec`` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the
        resolver of the client (and of the web proxy on the firewall) is the lab's dnsmasq."""
        for ns in (self.client_ns, self.fw_ns):
            directory = _ETC_NETNS / ns
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "resolv.conf").write_text(
                f"# lkice network lab {self.token}\nnameserver {FW_LAN_IP}\n"
                "options timeout:1 attempts:2\n"
            )

    def _make_pki(self, work: Path) -> dict[str, LabPki]:
        """One lab CA, one certificate per region naming its host and addresses."""
        names = {
            r: (self.turn_host(r), self.server_ip(r), self.alternate_ip(r)) for r in self.regions
        }
        self._ca_file, pkis = make_pki(work, self.token, names)
        return pkis

    def turn_server_kind(self, region: str) -> str:
        """Which TURN server ``region`` runs: "coturn" or "pion"."""
        self._index(region)
        return "pion" if region in self.pion_regions else "coturn"

    def _turn_server(self, region: str, pki: LabPki) -> Coturn | PionTurn:
        """The region's TURN server on its addresses and ports: coturn, or pion/turn for
        ``pion_regions`` (on the same addresses and ports as its coturn would be)."""
        make = pion_server if region in self.pion_regions else coturn_server
        return make(
            self.server_ip(region),
            self.alternate_ip(region),
            self.region_ns(region),
            {self.turn_user: self.turn_password},
            pki,
            self.ready_timeout,
        )

    def _start_coturns(self, work: Path) -> None:
        """A real TURN server per region (coturn, or pion/turn for ``pion_regions``); started in
        parallel (each takes a moment to be ready)."""
        pkis = self._make_pki(work)
        errors: list[BaseException] = []

        def start(region: str) -> None:
            server = self._turn_server(region, pkis[region])
            with self._lock:
                self._coturn[region] = server  # registered first: teardown stops it
            try:
                server.start()
            except BaseException as exc:  # collected, re-raised by the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(r,), daemon=True) for r in self.regions]
        self._threads = threads
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.ready_timeout + 15.0)
        if any(t.is_alive() for t in threads):
            raise LabError("TURN server start-up did not finish in time")
        if errors:
            raise errors[0]

    # -- the firewall ------------------------------------------------------------------------

    def _firewall_table(self, profile: Profile) -> str:
        blocks = [(self.region_net(region), proto) for region, proto in sorted(self._blocks)]
        return firewall_table(self._p, profile, blocks)

    def _apply_profile(self, name: str) -> None:
        self._nft(self.fw_ns, self._firewall_table(PROFILES[name]))
        self._profile = name

    # -- outages (for resilience tests: a probe must report them as data and recover) ---------

    def stop_turn(self, region: str) -> None:
        """Stop ``region``'s coturn (its ports then refuse or stay silent, as a dead server)."""
        self._require_running()
        self._coturn[self.regions[self._index(region)]].stop()

    def start_turn(self, region: str) -> None:
        """Start ``region``'s coturn again, same addresses, ports and users; waits until ready."""
        self._require_running()
        self._coturn[self.regions[self._index(region)]].start()

    def stop_dns(self) -> None:
        """Stop the lab's DNS server: names stop resolving (the resolver times out)."""
        self._require_running()
        assert self._dns is not None
        self._dns.stop()

    def start_dns(self) -> None:
        self._require_running()
        assert self._dns is not None
        self._dns.start()

    def cut_client_link(self, cut: bool = True) -> None:
        """Take the cable out between the client and its firewall (``cut=False`` puts it back):
        the firewall's side of the link goes down, so nothing passes either way."""
        self._require_running()
        state = "down" if cut else "up"
        _run(_in_ns(self.fw_ns, ["ip", "link", "set", f"{self._p}fc", state]))

    def block_region(self, region: str, protocol: str = "udp") -> None:
        """Drop ``protocol`` ("udp" or "tcp") from the client to one region only, on top of the
        profile (e.g. the nearest region's UDP blocked while the others' is open)."""
        if protocol not in ("udp", "tcp"):
            raise ValueError(f"protocol must be udp or tcp, not {protocol!r}")
        self._index(region)
        self._require_running()
        self._blocks.add((region, protocol))
        self._apply_profile(self._profile)

    def set_profile(self, name: str) -> None:
        """Switch the firewall profile (atomically; its drop counters start from zero).
        Connections already tracked keep their NAT mapping; new ones (every agent run uses
        fresh sockets) see the new profile. Add profiles to :data:`PROFILES`."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}: one of {', '.join(PROFILES)}")
        self._require_running()
        self._apply_profile(name)
        if name == "proxy-only" and self._web_proxy is None:
            self.start_web_proxy()

    # -- impairments -------------------------------------------------------------------------

    def _start_router(self, work: Path) -> None:
        tun = f"{self._p}tun"
        self._router = _Helper(
            "delay router",
            self.router_ns,
            ["python3", "-m", "lkice.lab.router", "forward", "--tun", tun],
            work / "router.log",
        )
        line = self._router.read_line(self.ready_timeout)
        if line != f"ready {tun}":
            raise LabError(f"delay router said {line!r}: {self._router.log_tail()}")
        self._push_delays()
        r, p = self.router_ns, self._p
        self._ip(r, "link", "set", tun, "up")
        table = str(DIVERT_TABLE)
        self._ip(r, "route", "add", "default", "dev", tun, "table", table)
        self._ip(r, "route", "add", "blackhole", "default", "metric", "4000", "table", table)
        for dev in [f"{p}ro"] + [f"{p}rr{i}" for i in range(len(self.regions))]:
            self._ip(r, "rule", "add", "iif", dev, "lookup", table, "pref", "100")

    def _push_delays(self) -> None:
        assert self._router is not None
        flows = router_flows(self.regions, self._impairments, self.region_net)
        self._router.request({"reorder": self.reorder, "flows": flows})

    def _impairment_table(self) -> str:
        """The router's nftables table (:func:`~lkice.lab.netlab.impair.impairment_table`)."""
        return impairment_table(len(self.regions))

    def _impairment_rules(self) -> str:
        return impairment_rules(self._p, self.regions, self._impairments, self.region_net)

    def set_impairment(
        self,
        region: str,
        upstream: Impairment | None = None,
        downstream: Impairment | None = None,
    ) -> None:
        """Set what the lab does to ``region``'s traffic; a direction left None is unchanged.
        Upstream is client -> server, downstream server -> client. Takes effect for the next
        packet (the router acknowledges the change before this returns)."""
        self._index(region)
        self._require_running()
        with self._lock:
            if upstream is not None:
                self._impairments[region][UPSTREAM] = upstream
            if downstream is not None:
                self._impairments[region][DOWNSTREAM] = downstream
            self._apply_impairments()

    def clear_impairments(self) -> None:
        """No delay, jitter, loss or rate cap anywhere."""
        self._require_running()
        with self._lock:
            for region in self.regions:
                self._impairments[region] = dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT)
            self._apply_impairments()

    def _apply_impairments(self) -> None:
        self._push_delays()
        self._nft(self.router_ns, self._impairment_rules())

    def _require_running(self) -> None:
        if not self._started or self._closed:
            raise LabError("the lab is not running")

    # -- ground truth and measurement ---------------------------------------------------------

    def ground_truth(self) -> GroundTruth:
        """The configured impairments and profile, with the kernel's drop counters and the delay
        router's packet counts: what the agent's measurements should be compared with."""
        self._require_running()
        assert self._router is not None
        router_stats = json.loads(self._router.request({"stats": True}))
        imp = nft_counters(self.router_ns, "lkimp")
        fw = nft_counters(self.fw_ns, "lkfw")
        return ground_truth_from(
            self._profile, self.reorder, self.regions, self._impairments, router_stats, imp, fw
        )

    def _ensure_echo(self, region: str) -> None:
        if region in self._echo:
            return
        assert self._work is not None
        helper = _Helper(
            f"echo server in {region}",
            self.region_ns(region),
            [
                "python3",
                "-m",
                "lkice.lab.router",
                "echo",
                "--bind",
                self.server_ip(region),
                "--port",
                str(ECHO_PORT),
            ],
            Path(self._work.name) / f"echo-{region}.log",
        )
        self._echo[region] = helper
        line = helper.read_line(10.0)
        if line != "ready":
            raise LabError(f"echo server in {region} said {line!r}: {helper.log_tail()}")

    def ping(
        self, region: str, count: int = 20, interval: float = 0.01, timeout: float = 1.0
    ) -> PingStats:
        """UDP ping-pong from the client to ``region`` under the current profile and impairments
        (a UDP-blocking profile loses every probe): one probe at a time, each given up after
        ``timeout`` seconds, so the whole run is bounded by ``count`` x ``timeout``."""
        self._index(region)
        self._require_running()
        if not 1 <= count <= 1000:
            raise ValueError("count must be within 1..1000")
        if not 0.01 <= timeout <= 10.0 or not 0.0 <= interval <= 1.0:
            raise ValueError("timeout must be within 0.01..10 s and interval within 0..1 s")
        self._ensure_echo(region)
        argv = ["python3", "-m", "lkice.lab.router", "ping", "--to", self.server_ip(region)]
        argv += ["--port", str(ECHO_PORT), "--count", str(count), "--interval", str(interval)]
        argv += ["--timeout", str(timeout)]
        proc = self.run_in_client(argv, timeout=count * (interval + timeout) + 15.0)
        if proc.returncode != 0:
            raise LabError(f"ping from the client failed ({proc.returncode}): {proc.stderr}")
        data = json.loads(proc.stdout)
        return PingStats(region, count, int(data["lost"]), tuple(float(x) for x in data["rtts_ms"]))

    def measure_overhead(self, region: str | None = None, count: int = 50) -> PingStats:
        """The lab's own round-trip time (veths, NAT, the userspace delay router and the probe's
        Python) with nothing injected: UDP ping-pong to an echo server in ``region``. The
        region's impairments are zeroed, and a UDP-blocking profile swapped for ``open`` (which
        restarts the firewall's drop counters), for the measurement and restored after. A
        measured RTT should be injected RTT + this."""
        region = region or self.regions[0]
        self._index(region)
        with self._lock:
            saved = dict(self._impairments[region])
            saved_profile = self._profile
            try:
                if any(not imp.is_zero for imp in saved.values()):
                    self._impairments[region] = dict.fromkeys(DIRECTIONS, NO_IMPAIRMENT)
                    self._apply_impairments()
                if not PROFILES[saved_profile].udp_egress:
                    self._apply_profile("open")
                return self.ping(region, count=count)
            finally:
                if self._profile != saved_profile:
                    self._apply_profile(saved_profile)
                if self._impairments[region] != saved:
                    self._impairments[region] = saved
                    self._apply_impairments()

    # -- running things ----------------------------------------------------------------------

    def run_in(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in one of the lab's namespaces and return its result (any exit status).
        ``python3``/``python`` as the program means this interpreter. A command still running at
        ``timeout`` is killed and reported as a LabError."""
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not one of this lab's namespaces")
        self._require_running()
        full = _in_ns(ns, _python(argv))
        try:
            return subprocess.run(
                full,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, **env} if env is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"'{' '.join(full)}' did not finish within {timeout:g} s") from exc

    def popen_in_client(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a long-running command as the client (a scheduled probe, say), stdout and
        stderr piped. The caller stops it (and must, before the lab is closed)."""
        self._require_running()
        return subprocess.Popen(
            _in_ns(self.client_ns, _python(argv)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env is not None else None,
        )

    def run_in_client(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the client (behind the firewall, resolving with the lab's DNS)."""
        return self.run_in(self.client_ns, argv, timeout=timeout, env=env, input_text=input_text)

    def lkice(self, *args: str, timeout: float = 60.0) -> LkiceRun:
        """``lkice run <args> --json`` as the client; the report is None if stdout is not JSON
        (a usage or internal error: see ``stderr``)."""
        proc = self.run_in_client(
            ["python3", "-m", "lkice", "run", *args, "--json"], timeout=timeout
        )
        try:
            report = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            report = None
        return LkiceRun(proc.returncode, report, proc.stderr)

    def turn_args(self) -> list[str]:
        """``lkice run`` options for this lab's TURN servers: credentials and the lab CA."""
        return ["-u", self.turn_user, "-p", self.turn_password, "--ca-file", str(self.ca_file)]

    def describe(self) -> dict[str, Any]:
        """Names and numbers of the running lab, for logs and reports."""
        return {
            "token": self.token,
            "profile": self._profile,
            "client": {"namespace": self.client_ns, "ip": CLIENT_IP, "resolver": FW_LAN_IP},
            "firewall": {"namespace": self.fw_ns, "outside_ip": FW_WAN_IP},
            "router": {"namespace": self.router_ns},
            "regions": {
                r: {
                    "namespace": self.region_ns(r),
                    "host": self.turn_host(r),
                    "turn_server": self.turn_server_kind(r),
                    "ip": self.server_ip(r),
                    "alternate_ip": self.alternate_ip(r),
                    "ports": {"udp/tcp": TURN_PORT, "tls": [TURN_TLS_PORT, TURN_TLS_ALT_PORT]},
                }
                for r in self.regions
            },
        }
