"""The probe engine: targets -> paths -> concurrent probes under one overall deadline -> Report.

Every path is its own task; the engine waits for all of them, the deadline or an interruption,
whichever comes first. Unfinished paths are cancelled and reported with the phase they were in,
so a partial report is always a true one.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from lkice.credentials import TurnCredentials
from lkice.errors import ErrorKind, Phase, ProbeBug, ProbeError
from lkice.probe.nat import FILTER_TIMEOUT, NatBehaviour, discover_nat
from lkice.probe.path import ProbeSettings, probe_path
from lkice.probe.proxy import Proxies, ProxyConfig, tunnelled
from lkice.probe.resolve import Resolution, resolve
from lkice.probe.train import LoopMonitor
from lkice.probe.turn import Redirect
from lkice.report import PathResult, Report, interrupted_error
from lkice.stun import format_address
from lkice.uri import IceUri, Transport
from lkice.verdict import Verdict
from lkice.verdict import conclude as conclude_report

log = logging.getLogger(__name__)

ProgressCallback = Callable[[PathResult], None]

# A name may resolve to many addresses (a hostile or broken DNS answer: hundreds); WebRTC stacks
# try a few. Each family keeps its first ones; the path notes say what was left out.
MAX_ADDRESSES_PER_FAMILY = 4


@dataclass(frozen=True)
class EngineSettings:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    deadline: float = 20.0
    dns_timeout: float = 5.0
    nameserver: tuple[str, int] | None = None
    # RFC 5780 NAT behaviour discovery against the first STUN/TURN server reachable over UDP
    # (it needs OTHER-ADDRESS; see probe/nat.py); runs beside the paths.
    nat_discovery: bool = True
    # Web proxies (--proxy, https_proxy): TURN over TLS, and over TCP on 443, is also tried
    # through the proxy as browsers do; the direct paths are tried as before.
    proxies: Proxies = field(default_factory=Proxies)  # none by default: direct only


def _family(ip: str) -> str:
    return f"ipv{ipaddress.ip_address(ip).version}"


class _Run:
    def __init__(self, settings: EngineSettings, on_path_done: ProgressCallback | None) -> None:
        self.settings = settings
        self.paths: list[PathResult] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_path_done = on_path_done
        self.credentials: dict[str, TurnCredentials] = {}
        self._resolutions: dict[str, asyncio.Task[Resolution]] = {}
        self.nat: NatBehaviour | None = None
        self.nat_task: asyncio.Future[NatBehaviour] | None = None
        self.nat_address: str | None = None
        self._nat_moot = asyncio.Event()
        self._nat_started = not settings.nat_discovery

    def _resolve(self, host: str) -> asyncio.Task[Resolution]:
        # One lookup per host, shared by all its URIs and transports.
        if host not in self._resolutions:
            self._resolutions[host] = asyncio.ensure_future(
                resolve(
                    host, timeout=self.settings.dns_timeout, nameserver=self.settings.nameserver
                )
            )
        return self._resolutions[host]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.add(asyncio.ensure_future(coro))

    def _proxied(self, uri: IceUri, transports: Sequence[Transport]) -> None:
        """The URI's paths through the web proxy, if one applies: no local DNS (the proxy
        resolves the name), one path per tunnelled transport."""
        proxy = self.settings.proxies.for_(uri.host, uri.port)
        if proxy is None:
            return
        for transport in transports:
            if not tunnelled(transport.value, uri.port):
                continue
            path = PathResult(
                server=uri.server,
                transport=transport.value,
                kind=uri.kind,
                uri=str(uri),
                proxy=proxy.label,
            )
            self.paths.append(path)
            # No redirect through a proxy: an ALTERNATE-SERVER is an address, not a name.
            self.spawn(self.path(uri, transport, (uri.host, uri.port), path, False, proxy))

    async def target(self, uri: IceUri) -> None:
        transports = uri.transports()
        self._proxied(uri, transports)
        placeholders = [
            PathResult(
                server=uri.server, transport=t.value, kind=uri.kind, uri=str(uri), phase=Phase.DNS
            )
            for t in transports
        ]
        self.paths.extend(placeholders)
        try:
            resolution = await self._resolve(uri.host)
        except ProbeError as exc:
            for path in placeholders:
                path.fail(exc)
                self._done(path)
            return
        log.debug(
            "resolved %s to %s (%s)", uri.host, ", ".join(resolution.addresses), resolution.source
        )
        for path in placeholders:
            self.paths.remove(path)
        addresses, dropped = _bounded_addresses(resolution.addresses)
        if not self._nat_started and Transport.UDP in transports and resolution.addresses:
            self._nat_started = True
            address = (resolution.addresses[0], uri.port)
            self.nat = NatBehaviour(server=format_address(address))
            mapped = asyncio.Event()
            # Not one of self.tasks: its filtering tests must not hold the run up (ended with
            # the paths); the mapping tests are awaited, so the answer never depends on timing.
            self.nat_task = asyncio.ensure_future(
                discover_nat(
                    address,
                    self.settings.probe.udp_timeout,
                    filter_timeout=min(self.settings.probe.udp_timeout, FILTER_TIMEOUT),
                    result=self.nat,
                    mapping_done=mapped,
                )
            )
            self.nat_address = format_address(address)
            self.spawn(self._until(mapped))
        for ip in addresses:
            for transport in transports:
                path = PathResult(
                    server=uri.server,
                    transport=transport.value,
                    kind=uri.kind,
                    uri=str(uri),
                    address=format_address((ip, uri.port)),
                    family=_family(ip),
                )
                path.timings_ms["dns"] = resolution.elapsed_ms
                if dropped:
                    path.notes.append(
                        f"{uri.host} resolved to {len(resolution.addresses)} addresses; lkice "
                        f"probed the first {MAX_ADDRESSES_PER_FAMILY} of each family and left "
                        f"out {dropped}"
                    )
                self.paths.append(path)
                self.spawn(self.path(uri, transport, (ip, uri.port), path, True))

    async def path(
        self,
        uri: IceUri,
        transport: Transport,
        address: tuple[str, int],
        result: PathResult,
        follow: bool,
        proxy: ProxyConfig | None = None,
    ) -> None:
        try:
            probe = replace(self.settings.probe, proxy=proxy)
            override = self.credentials.get(str(uri))
            if override is not None:
                probe = replace(probe, credentials=override)
            if result.redirected_from is not None:
                probe = replace(probe, credentials_note=self._foreign_note(uri, address, result))
            await probe_path(uri, transport, address, result, probe, follow)
        except Redirect as redirect:
            alt = redirect.alternate
            followed = PathResult(
                server=uri.server,
                transport=transport.value,
                kind=uri.kind,
                uri=str(uri),
                address=format_address(alt),
                family=_family(alt[0]),
                redirected_from=result.address,
            )
            followed.timings_ms["dns"] = result.timings_ms["dns"]
            self.paths.append(followed)
            self.spawn(self.path(uri, transport, alt, followed, False))
        self._done(result)

    def _foreign_note(
        self, uri: IceUri, address: tuple[str, int], result: PathResult
    ) -> str | None:
        """The note for a followed 300 whose alternate the user did not name (it is not one of
        the addresses the user's name resolves to): added the moment credentials are sent
        there, so a cut path says it too."""
        lookup = self._resolutions.get(uri.host)
        named = (
            lookup.result().addresses
            if lookup is not None and lookup.done() and not lookup.cancelled()
            and lookup.exception() is None
            else [uri.host]
        )  # fmt: skip
        if address[0] in named:
            return None
        return (
            f"the TURN username and a MESSAGE-INTEGRITY keyed with the password were sent to "
            f"{format_address(address)}, an address named by {result.redirected_from} in its "
            f"300 Try Alternate, not by you: check that it belongs to your TURN provider"
        )

    async def end_nat_discovery(self) -> None:
        if self.nat_task is not None:
            self.nat_task.cancel()
            await asyncio.gather(self.nat_task, return_exceptions=True)

    async def _until(self, mapped: asyncio.Event) -> None:
        """The run waits for the NAT mapping tests, unless UDP to that server has already
        failed (an ICMP refusal ends a path at once; the discovery's unconnected socket never
        hears it and would wait out its timeout for nothing)."""
        waiters = {
            asyncio.ensure_future(mapped.wait()),
            asyncio.ensure_future(self._nat_moot.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _done(self, path: PathResult) -> None:
        if (
            path.transport == "udp"
            and not path.ok
            and path.address is not None
            and path.address == self.nat_address
        ):
            self._nat_moot.set()
        if self.on_path_done is not None:
            self.on_path_done(path)

    async def wait(self, stop: asyncio.Event | None) -> bool:
        """Wait for every task (new ones may be spawned on the way). True if cut short."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.settings.deadline
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                pending = {t for t in self.tasks if not t.done()}
                if not pending:
                    return False
                remaining = end - loop.time()
                if remaining <= 0:
                    return True
                waiters: set[asyncio.Future[Any]] = set(pending)
                if stopper is not None:
                    waiters.add(stopper)
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if stopper is not None and stopper.done():
                    return True
        finally:
            if stopper is not None:
                stopper.cancel()

    async def cancel_all(self, kind: ErrorKind) -> None:
        """Cancel every task and collect them, within about a second whatever they do: a
        cancellation can be lost (Python 3.11's wait_for drops one that lands in the same step
        as a result), so the ones still running are cancelled again; any left after that are
        read when they end and never held the partial report back."""
        pending = {*self.tasks, *self._resolutions.values()}
        for _ in range(CANCEL_ROUNDS):
            pending = {t for t in pending if not t.done()}
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CANCEL_ROUND_S)
        for task in pending:
            if not task.done():
                task.add_done_callback(_retrieve)
        for task in {*self.tasks, *self._resolutions.values()}:
            if task.done():
                _retrieve(task)
        for path in self.paths:
            if not path.ok and path.error is None:
                path.fail(interrupted_error(kind, path.phase))

    def reraise_bugs(self) -> None:
        """A probe task only ends in an exception through a bug: surface it, never drop it.
        Every task's exception is retrieved (so asyncio never logs one, with its contents, as
        "never retrieved"); the first is raised with its type and no message of the probe's."""
        bugs = [
            exc
            for task in self.tasks
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None
        ]
        if bugs:
            raise ProbeBug(bugs[0], len(bugs)) from bugs[0]

    def ordered(self, uris: Sequence[IceUri]) -> list[PathResult]:
        """Paths in the order the user gave the targets, whatever order they finished in."""
        rank = {str(u): i for i, u in enumerate(uris)}
        transports = [t.value for t in Transport]
        return sorted(
            self.paths,
            key=lambda p: (
                rank.get(p.uri, len(rank)),
                p.proxy is not None,
                p.redirected_from is not None,
                p.family or "",
                p.address or "",
                transports.index(p.transport),
            ),
        )


CANCEL_ROUNDS = 8
CANCEL_ROUND_S = 0.1


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a finished task's outcome so asyncio never logs it (with its contents)."""
    if not task.cancelled():
        task.exception()


def _bounded_addresses(addresses: Sequence[str]) -> tuple[list[str], int]:
    kept: list[str] = []
    per_family: dict[int, int] = {}
    for ip in dict.fromkeys(addresses):
        version = ipaddress.ip_address(ip).version
        if per_family.get(version, 0) < MAX_ADDRESSES_PER_FAMILY:
            per_family[version] = per_family.get(version, 0) + 1
            kept.append(ip)
    return kept, len(addresses) - len(kept)


def _proxy_settings(proxies: Proxies) -> dict[str, Any]:
    """The report's record of the proxy in use: where it came from and its address, never its
    credentials; whether it needed them."""
    proxy = proxies.configured()
    if proxy is None:
        return {"proxy": None}
    return {
        "proxy": {
            "address": proxy.label,
            "source": proxies.source(),
            "credentials": proxy.username is not None,
            "no_proxy": proxies.env.get("no_proxy", proxies.env.get("NO_PROXY")) or None,
        }
    }


async def run(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    *,
    credentials: Mapping[str, TurnCredentials] | None = None,
    stop: asyncio.Event | None = None,
    on_path_done: ProgressCallback | None = None,
    conclude: bool = True,
) -> Report:
    """Probe every URI x resolved address x transport concurrently. ``credentials`` maps a URI
    (its canonical text) to its own credentials, as a LiveKit JoinResponse hands them out; the
    others use ``settings.probe.credentials``. ``stop`` (set on Ctrl-C) ends the run early with a
    partial report. ``conclude``: give the report its findings and verdict (``lkice.verdict``);
    a caller that adds to the report first (the job) concludes it itself."""
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    # A caller running other probes on this loop at the same time (the LiveKit job's SFU
    # sessions) hands its monitor over: one monitor per loop, started and stopped by its owner.
    own = settings.probe.monitor is None and settings.probe.train is not None
    monitor = LoopMonitor() if own else settings.probe.monitor
    if own:
        assert monitor is not None
        monitor.start()
        settings = replace(settings, probe=replace(settings.probe, monitor=monitor))
    state = _Run(settings, on_path_done)
    state.credentials = dict(credentials or {})
    # The same URI given twice (500 copies of one target, or a JoinResponse repeating what
    # the user gave) is one set of paths.
    uris = list(dict.fromkeys(uris))
    _load_resolver(uris)
    try:
        for uri in uris:
            state.spawn(state.target(uri))
        cut_short = await state.wait(stop)
        interrupted = cut_short and stop is not None and stop.is_set()
        if cut_short:
            await state.cancel_all(ErrorKind.INTERRUPTED if interrupted else ErrorKind.DEADLINE)
    finally:
        await state.end_nat_discovery()
        if own and monitor is not None:
            await monitor.stop()
    state.reraise_bugs()
    # The monitor's owner judges the trains once every train on its loop has ended: here when
    # the engine ran alone; the LiveKit job judges these with the SFU's (lkice.job).
    judged = monitor is None or own
    if judged:
        judge_trains(state.paths, () if monitor is None else monitor.stalls)
    duration = (time.perf_counter() - t0) * 1000
    report = Report(
        started_at=started_at,
        duration_ms=duration,
        targets=[str(u) for u in uris],
        paths=state.ordered(uris),
        verdict=Verdict.FAILED.value,  # until concluded from the findings
        settings=settings_record(settings),
        interrupted=interrupted,
        loop_stalls=None
        if monitor is None or not judged
        else monitor.summary(train_windows(state.paths)),
        nat=None if state.nat is None else state.nat.to_dict(),
    )
    if conclude:
        conclude_report(report)
    return report


def _load_resolver(uris: Sequence[IceUri]) -> None:
    """dnspython, imported before any probe starts when a target is a name (an import inside
    the run would stall the loop under the other paths' timings); IP addresses need none."""
    for uri in uris:
        try:
            ipaddress.ip_address(uri.host)
        except ValueError:
            importlib.import_module("dns.asyncresolver")
            return


def judge_trains(paths: Sequence[PathResult], blind: Sequence[tuple[float, float]]) -> None:
    """Every train of the run judged together once all have ended (``lkice.quality``): a stall
    on a TCP/TLS path at a moment when a UDP train of the run was held as much is a shared hold
    (the way or this computer held everything, UDP too), not TCP's doing; answers that arrived
    while the agent's own loop stalled (``blind``) are left out. All trains run on one host and
    one clock (``time.perf_counter()``), so any UDP train of the run is a witness."""
    shared = [h for p in paths for train in p.trains.by_name.values() for h in train.holds(blind)]
    for p in paths:
        for name, train in p.trains.by_name.items():
            setattr(p, name, train.figures(blind=blind, shared=shared))


def train_windows(paths: Sequence[PathResult]) -> list[tuple[float, float]]:
    """Each train's first send to its last answer (the samples' clock)."""
    windows = (t.window() for p in paths for t in p.trains.by_name.values())
    return [w for w in windows if w is not None]


def settings_record(settings: EngineSettings) -> dict[str, Any]:
    """The report's ``settings``: what the run was allowed (never a credential)."""
    probe = settings.probe
    return {
        "deadline_s": settings.deadline,
        "udp_timeout_s": probe.udp_timeout,
        "timeout_s": probe.timeout,
        "dns_timeout_s": settings.dns_timeout,
        "nameserver": None if settings.nameserver is None else format_address(settings.nameserver),
        "tls_verify": probe.tls_context is None or probe.tls_context.verify_mode != 0,
        **_proxy_settings(settings.proxies),
        "auth": None if probe.credentials is None else probe.credentials.mode,
        "quality": None
        if probe.train is None
        else {
            "interval_ms": probe.train.interval * 1000,
            "duration_s": probe.train.duration,
            "probes": probe.train.count,
            "probe": "STUN Binding request, one transaction per probe, no retransmission",
        },
    }
