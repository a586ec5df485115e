"""A diagnosis as a job: options -> the orchestrated probes -> a concluded Report.

The command line (``lkice run``, ``demo``) and the scheduled probes (``lkice probe``) build a
:class:`RunRequest` and call :func:`diagnose`; everything between (TLS trust, credentials, the
LiveKit signaling, regions, the STUN/TURN engine and the SFU sessions running at once, then the
findings and recommendation) lives here, with no click in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from lkice.errors import ErrorKind, UsageError

if TYPE_CHECKING:
    import ssl
    from datetime import datetime

    from lkice.credentials import Secret, TurnCredentials
    from lkice.engine import EngineSettings
    from lkice.livekit import LiveKitUrl
    from lkice.probe.proxy import Proxies
    from lkice.probe.releases import Releases
    from lkice.probe.signal import IceServer, Region, SignalSettings
    from lkice.probe.train import LoopMonitor, TrainSettings
    from lkice.render.progress import Progress
    from lkice.report import ErrorInfo, PathResult, Report, SignalResult
    from lkice.uri import IceUri

log = logging.getLogger("lkice")

T = TypeVar("T")
MAX_SECRET_BYTES = 64 * 1024  # a token with metadata is a few KB
MAX_STUN_USERNAME = 500  # RFC 8489: < 513 bytes; the REST form adds "<expiry>:" to --turn-user
# After a cut, how long cancelled probes get to record where they were; their cleanups are
# bounded well under this, so a partial report follows within a fraction of a second.
CANCEL_GRACE_S = 0.4


def tls_context(
    ca_files: Sequence[str], insecure: bool, *, system_cas: bool = True
) -> ssl.SSLContext:
    """``system_cas`` False: without the system's CAs, which the caller then loads
    (``probe.tcp.load_system_cas``)."""
    import ssl

    from lkice.probe.tcp import client_tls_context, load_system_cas

    ctx = client_tls_context(system_cas=False)
    for ca in ca_files:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            from lkice.textsafe import visible

            raise UsageError(
                f"--ca-file {visible(ca)}: cannot load trust anchors ({exc.__class__.__name__})"
            ) from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if system_cas:
        load_system_cas(ctx)
    return ctx


def turn_credentials(
    uris: Sequence[IceUri],
    username: str | None,
    credential: str | None,
    turn_secret: str | None,
    turn_user: str,
) -> TurnCredentials | None:
    from lkice.credentials import Secret, TurnCredentials, rest_credentials

    if turn_secret is not None and (username is not None or credential is not None):
        raise UsageError("give either --turn-secret or --username/--credential, not both")
    if turn_secret is not None:
        return rest_credentials(Secret(turn_secret), user=turn_user)
    if (username is None) != (credential is None):
        raise UsageError("--username and --credential go together")
    if username is not None and credential is not None:
        return TurnCredentials(Secret(username), Secret(credential))
    turn = [str(u) for u in uris if u.kind == "turn"]
    if turn:
        raise UsageError(
            f"{turn[0]} needs credentials: give --username and --credential, or --turn-secret "
            "(or LKICE_TURN_USERNAME/LKICE_TURN_CREDENTIAL/LKICE_TURN_SECRET in the environment)"
        )
    return None


async def run_engine(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    livekit: LiveKitJob | None = None,
    region_of_uri: dict[str, str] | None = None,
    progress: Progress | None = None,
    credentials_by_uri: Mapping[str, TurnCredentials] | None = None,
    stop: asyncio.Event | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> Report:
    """The whole diagnosis; ``region_of_uri`` tags the paths of STUN/TURN URIs given with
    ``--region NAME=URI``; ``credentials_by_uri`` gives some URIs their own TURN credentials
    (a probe definition's per-region ones)."""
    from lkice.render.progress import Progress

    progress = progress or Progress()
    try:
        report = await _diagnose(uris, settings, livekit, progress, credentials_by_uri or {}, stop)
    finally:
        progress.close()
    for path in report.paths:
        if path.region is None and region_of_uri:
            path.region = region_of_uri.get(path.uri)
    if thresholds:
        # In the report, so its findings can be re-derived from it (explain, support tools).
        report.settings["thresholds"] = dict(thresholds)
    from lkice.verdict import conclude

    conclude(report)
    return report


class _Clock:
    """One budget for the whole diagnosis (signaling, regions, STUN/TURN, the SFU) and one
    stop event (Ctrl-C, SIGTERM, a scheduler): every stage runs under both, so a slow or
    hostile server can hold the run no longer than ``--deadline`` (+ the quality train)."""

    def __init__(self, budget: float, stop: asyncio.Event, setup: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.end = self.loop.time() + budget
        # Connection setup (signaling, regions) has the user's --deadline alone: the quality
        # train's share of the budget is for the trains, which cannot start before setup.
        self.setup_end = self.end if setup is None else min(self.end, self.loop.time() + setup)
        self.stop = stop
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.cut: ErrorKind | None = None  # why the run was cut short, once it was

    def remaining(self) -> float:
        return self.end - self.loop.time()

    async def bounded(
        self, stage: str, coro: Coroutine[Any, Any, T], *, setup: bool = False
    ) -> T | None:
        """``coro``'s result, or None when the deadline (the setup deadline with ``setup``) or
        the stop event came first (then it is cancelled, and given a moment to record where it
        was)."""
        started = time.perf_counter()
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self.stop.wait())
        end = self.setup_end if setup else self.end
        try:
            await asyncio.wait(
                {task, stopper},
                timeout=max(0.0, end - self.loop.time()),
                return_when=FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()
            self.stages[stage] = self.stages.get(stage, 0.0) + _ms(started)
        if task.done() and not task.cancelled():
            return task.result()
        self.cut = ErrorKind.INTERRUPTED if self.stop.is_set() else ErrorKind.DEADLINE
        task.cancel()
        # Probes end at once when cancelled (their cleanups are bounded); the wait only
        # collects them, and never holds the partial report back.
        await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
        if not task.done():
            task.add_done_callback(_retrieved)  # whatever it ends with is read, never logged
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug in a probe: never dropped
        return None


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, own: bool) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM sets ``stop`` (a partial report follows at once); a second
    Ctrl-C falls back to the default. ``own`` False: a scheduler handles signals itself."""
    if not own:
        yield
        return
    loop = asyncio.get_running_loop()
    installed: dict[signal.Signals, Any] = {}

    def restore(signum: signal.Signals) -> None:
        # asyncio puts back SIG_DFL, not what was there (the CLI's own SIGTERM handler, which
        # lets a lab's teardown run): put that back.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)
            signal.signal(signum, installed[signum])

    def on_signal(signum: signal.Signals) -> None:
        stop.set()
        if signum == signal.SIGINT:
            restore(signal.SIGINT)

    # Not on the main thread, or not supported (Windows): Ctrl-C then ends without a report.
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            previous = signal.getsignal(signum)
            loop.add_signal_handler(signum, on_signal, signum)
            installed[signum] = previous
    # A library task that fails after a cut (aiortc's own, on a second Ctrl-C) is logged at
    # debug level by type only: asyncio would print its traceback and contents.
    loop.set_exception_handler(_quiet_exceptions)
    try:
        yield
    finally:
        for signum in installed:
            restore(signum)


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.debug(
        "asyncio: %s%s",
        str(context.get("message", "error"))[:200],
        f" ({type(exc).__name__})" if exc is not None else "",
    )


async def _diagnose(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    livekit: LiveKitJob | None,
    progress: Progress,
    own_credentials: Mapping[str, TurnCredentials],
    given_stop: asyncio.Event | None,
) -> Report:
    """``given_stop`` set (by a scheduler, which handles signals itself) ends the run with a
    partial report; without it, the first Ctrl-C or SIGTERM does."""
    from datetime import datetime, timezone

    stop = given_stop or asyncio.Event()
    started_at = datetime.now(timezone.utc)
    with _stop_on_signals(stop, own=given_stop is None):
        train = settings.probe.train
        setup = None if train is None else settings.deadline - train.duration - train.grace
        clock = _Clock(settings.deadline, stop, setup)
        if livekit is None:
            progress.stage("probing STUN/TURN paths")
            report = await _engine(uris, settings, own_credentials, clock, progress.path_done)
        else:
            report = await _diagnose_livekit(
                uris, settings, livekit, progress, own_credentials, clock
            )
    report.started_at = started_at
    report.duration_ms = (time.perf_counter() - clock.start) * 1000
    report.stages_ms = dict(clock.stages)
    if clock.cut is ErrorKind.INTERRUPTED or stop.is_set():
        report.interrupted = True
    return report


async def _engine(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    credentials: Mapping[str, TurnCredentials],
    clock: _Clock,
    on_path_done: Callable[[PathResult], None],
) -> Report:
    """The STUN/TURN engine on what is left of the budget (it keeps its own deadline and stop:
    its paths are cut with their partial figures)."""
    from lkice import engine

    started = time.perf_counter()
    try:
        return await engine.run(
            uris,
            replace(settings, deadline=max(0.0, clock.remaining())),
            credentials=credentials,
            stop=clock.stop,
            on_path_done=on_path_done,
            conclude=False,  # concluded once, with signaling and the SFU paths (run_engine)
        )
    finally:
        clock.stages["turn"] = _ms(started)


async def _diagnose_livekit(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    livekit: LiveKitJob,
    progress: Progress,
    own_credentials: Mapping[str, TurnCredentials],
    clock: _Clock,
) -> Report:
    from lkice.probe.signal import probe_signal
    from lkice.report import Report, SignalResult

    progress.stage(f"LiveKit signaling to {livekit.url.host}")
    signal_result = SignalResult(url=livekit.url.given)
    probed = await clock.bounded(
        "signal",
        probe_signal(livekit.url, livekit.token, livekit.settings, signal_result),
        setup=True,
    )
    servers = [] if probed is None else probed[1]
    if probed is None and signal_result.error is None:
        _cut(signal_result, clock)  # an error already known (a rejected certificate) stays
    given = [name for name, url in livekit.regions if url == livekit.url.given]
    main_region = (
        given[0] if given else (signal_result.server or {}).get("region") or livekit.url.host
    )
    region_of = {str(s.uri): main_region for s in servers}
    regions: list[dict[str, object]] | None = None
    if signal_result.ok and clock.cut is None:
        progress.stage("regions")
        probe = _RegionProbe(livekit, signal_result)
        await clock.bounded("regions", probe.run(), setup=True)
        regions = probe.summary(clock)
        for name, found in probe.found:
            servers += found
            for s in found:
                region_of.setdefault(str(s.uri), name)
    sfu_paths: list[PathResult] = []
    if clock.cut is not None:
        report = Report(
            started_at=datetime_now(),
            duration_ms=0.0,
            targets=[str(u) for u in uris],
            paths=_untried(uris, clock),
            verdict="failed",
            settings=_settings_record(settings),
        )
    else:
        advertised = list(dict.fromkeys(s.uri for s in servers))
        # Each URI gets the credentials of whoever named it: the join's for what the server
        # advertised, the user's (-u/-p, --turn-secret) only for the URIs the user gave. An
        # advertised TURN server without credentials never receives the user's.
        credentials = {str(s.uri): s.credentials for s in servers if s.credentials is not None}
        if settings.probe.credentials is not None:
            credentials.update({str(u): settings.probe.credentials for u in uris})
        credentials.update(own_credentials)
        # One loop monitor for the engine and the SFU sessions, which share this loop.
        from lkice.probe.train import LoopMonitor

        monitor = LoopMonitor()
        settings = replace(settings, probe=replace(settings.probe, monitor=monitor))
        engine_settings = replace(settings, probe=replace(settings.probe, credentials=None))
        main_servers = [s for s in servers if region_of.get(str(s.uri)) == main_region]
        finished = _EngineAnswers()

        def engine_path_done(path: PathResult) -> None:
            finished.add(path)
            progress.path_done(path)

        progress.stage("ICE servers and media sessions through the SFU")
        sfu = _SfuStage(livekit, signal_result, main_servers, settings, finished, progress)
        monitor.start()
        try:
            report, _ = await asyncio.gather(
                _engine(
                    [*advertised, *uris], engine_settings, credentials, clock, engine_path_done
                ),
                clock.bounded("sfu", sfu.run()),
            )
        finally:
            await monitor.stop()
        report.settings = _settings_record(settings)  # the user's auth mode, as given
        sfu_paths = sfu.paths
        _judge_with_the_sfu(report, sfu_paths, monitor, settings.probe.train is not None)
        for path in sfu_paths:
            if not path.ok and path.error is None:
                _cut(path, clock)
    for path in report.paths:
        path.region = region_of.get(path.uri)
    for path in sfu_paths:
        path.region = main_region
    report.paths.extend(sfu_paths)
    report.signal = signal_result
    report.regions = regions
    report.targets.insert(0, livekit.url.given)
    return report


def _judge_with_the_sfu(
    report: Report, sfu_paths: Sequence[PathResult], monitor: LoopMonitor, trains: bool
) -> None:
    """The engine's trains and the SFU's echo trains ran on the job's loop and clock, the SFU's
    often for longer: once both stages have ended, the job (the monitor's owner) judges them all
    together, against every stall its monitor saw: an SFU echo over UDP witnesses shared holds,
    the SFU trains' windows count in the agent's stalls during trains (reported when either
    stage had trains to run: ``trains``, the engine's)."""
    from lkice.engine import judge_trains, train_windows

    every = [*report.paths, *sfu_paths]
    judge_trains(every, monitor.stalls)
    if trains or any(p.trains.by_name for p in sfu_paths):
        report.loop_stalls = monitor.summary(train_windows(every))


def _untried(uris: Sequence[IceUri], clock: _Clock) -> list[PathResult]:
    """The user's own STUN/TURN targets when signaling used up the run: listed, not dropped,
    as not tried (not evidence of anything)."""
    from lkice.errors import ProbeError
    from lkice.report import PathResult

    why = "interrupted" if clock.cut is ErrorKind.INTERRUPTED else "the overall deadline ended"
    paths = []
    for uri in uris:
        for transport in uri.transports():
            path = PathResult(
                server=uri.server, transport=transport.value, kind=uri.kind, uri=str(uri)
            )
            path.fail(
                ProbeError(
                    clock.cut or ErrorKind.DEADLINE,
                    f"not tried: {why} during LiveKit signaling, before this target's turn",
                )
            )
            paths.append(path)
    return paths


def datetime_now() -> datetime:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _settings_record(settings: EngineSettings) -> dict[str, Any]:
    from lkice.engine import settings_record

    return settings_record(settings)


def _cut(result: PathResult | SignalResult, clock: _Clock) -> None:
    """Mark a result the deadline or the stop event cut, with the step it was in."""
    from lkice.errors import Phase
    from lkice.report import interrupted_error

    phase = result.phase
    try:
        step = None if phase is None else Phase(phase)
    except ValueError:
        step = None
    result.fail(interrupted_error(clock.cut or ErrorKind.DEADLINE, step))
    result.phase = None


class _SfuStage:
    """The media paths through the SFU (direct, and forced through each TURN URL): two
    participants of lkice's own per path with the API key and secret, else the user's token(s):
    one participant (ICE, DTLS, data channels; the path says what a second would add), or two
    with ``--token2``. ``paths`` holds each result from the moment it exists, so a cut keeps
    what was measured."""

    def __init__(
        self,
        livekit: LiveKitJob,
        signal_result: SignalResult,
        servers: list[IceServer],
        settings: EngineSettings,
        finished: _EngineAnswers,
        progress: Progress,
    ) -> None:
        self.livekit, self.signal_result, self.servers = livekit, signal_result, servers
        self.settings, self.finished, self.progress = settings, finished, progress
        self.paths: list[PathResult] = []

    async def run(self) -> None:
        livekit, settings, servers = self.livekit, self.settings, self.servers
        if not self.signal_result.ok:
            return
        from lkice.probe.sfu import GivenTokens, SfuSettings, probe_sfu_paths, room_token_factory

        train = settings.probe.train
        sfu = SfuSettings(
            # No quality measurement asked for: setup only (ICE, DTLS, the data channels and
            # one data round trip through the SFU), no train.
            duration=train.duration if train is not None else 0.0,
            interval=train.interval if train is not None else SfuSettings.interval,
            # ICE gets the same bound as every other step (--timeout), and on a UDP leg the
            # UDP one (--udp-timeout): a blocked path must not hold the verdict back longer
            # than the engine's own UDP probes do.
            ice_timeout=settings.probe.timeout,
            udp_timeout=settings.probe.udp_timeout,
            known=lambda uri: self.finished.error(uri, settings.probe.timeout + 1.0),
            tls_context=livekit.settings.tls_context,
            custom_ca=livekit.custom_ca,
            proxies=livekit.settings.proxies,
            monitor=settings.probe.monitor,
            releases=settings.probe.releases,
        )
        tokens: Callable[[str], Secret] | GivenTokens
        if livekit.api_key is not None and livekit.api_secret is not None:
            tokens = room_token_factory(livekit.api_key, livekit.api_secret)
        else:
            # The user's token(s): one participant per path, or two with --token2.
            tokens = GivenTokens(livekit.token, livekit.second_token)
        await probe_sfu_paths(
            livekit.url, tokens, servers, sfu, self.progress.path_done, out=self.paths
        )
        proxies = livekit.settings.proxies
        for path in self.paths:
            relay = next((s.uri for s in servers if str(s.uri) == path.relay), None)
            if (
                relay is not None
                and (relay.secure or relay.transport == "tcp")
                and proxies.for_(relay.host, relay.port) is not None
            ):
                path.notes.append(
                    "the WebRTC stack (aiortc) reaches TURN directly: it cannot tunnel through "
                    "the web proxy, so this session tried the direct route only; TURN through "
                    "the proxy is measured on its own path"
                )


class _EngineAnswers:
    """What the STUN/TURN engine has found so far, by URI, as paths finish: the SFU probe asks
    it why a relay path got no candidate instead of asking the TURN server a second time."""

    def __init__(self) -> None:
        self.paths: dict[str, list[PathResult]] = {}
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, uri: str) -> asyncio.Event:
        return self._events.setdefault(uri, asyncio.Event())

    def add(self, path: PathResult) -> None:
        self.paths.setdefault(path.uri, []).append(path)
        self._event(path.uri).set()

    async def error(self, uri: str, within: float) -> ErrorInfo | None:
        """The engine's error for ``uri`` once it has an answer (its steps are bounded, so this
        wait is too); None if the answer is a success or none came ``within`` seconds."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event(uri).wait(), within)
        paths = self.paths.get(uri, [])
        if not paths or any(p.ok for p in paths):
            return None
        return paths[0].error


class _RegionProbe:
    """LiveKit Cloud: every region's signaling at once, and the ICE servers each one offers.
    Each region's result exists before it is probed, so a cut keeps what was measured."""

    def __init__(self, livekit: LiveKitJob, signal_result: SignalResult) -> None:
        self.livekit, self.signal_result = livekit, signal_result
        self.regions: list[Region] | None = None
        self.results: list[SignalResult] = []
        self.found: list[tuple[str, list[IceServer]]] = []

    async def run(self) -> None:
        from lkice.livekit import parse_livekit_url
        from lkice.probe.signal import Region, fetch_regions, probe_signal
        from lkice.report import SignalResult

        livekit = self.livekit
        if livekit.regions:
            # Given on the command line: the user pointed lkice at these.
            self.regions = [Region(n, u, None) for n, u in livekit.regions]
        else:
            fetched, notes = await fetch_regions(livekit.url, livekit.token, livekit.settings)
            self.signal_result.notes.extend(notes)
            if fetched is None:
                return
            self.regions = fetched
        self.results = [SignalResult(url=r.url) for r in self.regions]
        probed = await asyncio.gather(
            *(
                probe_signal(parse_livekit_url(r.url), livekit.token, livekit.settings, result)
                for r, result in zip(self.regions, self.results, strict=True)
            )
        )
        self.found = [
            (region.name, servers)
            for region, (_, servers) in zip(self.regions, probed, strict=True)
        ]

    def summary(self, clock: _Clock) -> list[dict[str, object]] | None:
        if self.regions is None:
            return None
        out: list[dict[str, object]] = []
        for region, result in zip(self.regions, self.results, strict=True):
            if not result.ok and result.error is None:
                _cut(result, clock)
            out.append(
                {
                    "region": region.name,
                    "url": region.url,
                    "distance": region.distance,
                    "signal": result.to_dict(),
                }
            )
        return out


def train_settings(duration: float, interval_ms: float) -> TrainSettings | None:
    from lkice.probe.train import TrainSettings

    if duration <= 0:
        return None
    if duration * 1000 < interval_ms:
        raise UsageError(
            f"--quality-duration {duration:g}: shorter than one probe interval "
            f"({interval_ms:g} ms); give 0 to skip the quality measurement"
        )
    return TrainSettings(interval=interval_ms / 1000, duration=duration)


def setup_deadline(setup: float, train: TrainSettings | None) -> float:
    """The user's deadline bounds connection setup; the train's own length comes on top."""
    return setup if train is None else setup + train.duration + train.grace


def is_livekit(target: str) -> bool:
    from lkice.livekit import is_livekit_url

    return is_livekit_url(target)


def parse_regions(options: Sequence[str]) -> list[tuple[str, str]]:
    """``--region NAME=URI`` values, checked: a usable name, once each, and a URI that parses."""
    import re

    from lkice.livekit import parse_livekit_url
    from lkice.uri import parse_ice_uri

    regions: list[tuple[str, str]] = []
    for option in options:
        name, sep, uri = option.partition("=")
        name, uri = name.strip(), uri.strip()
        if not sep or not name or not uri:
            raise UsageError(
                f"--region {option!r}: expected NAME=URI, e.g. eu=turn:turn.eu.example.com"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise UsageError(
                f"--region {option!r}: a region name is letters, digits, '.', '_' or '-'"
            )
        # A region may have several STUN/TURN servers (one --region each), one LiveKit URL.
        if is_livekit(uri) and any(n == name and is_livekit(u) for n, u in regions):
            raise UsageError(f"--region {name} is given two LiveKit URLs")
        # Parsed now, so a malformed URI is a usage error naming its --region.
        try:
            if is_livekit(uri):
                parse_livekit_url(uri)
            else:
                parse_ice_uri(uri)
        except UsageError as exc:
            raise UsageError(f"--region {name}: {exc}") from None
        if any(u == uri and n != name for n, u in regions):
            raise UsageError(f"--region {name}: {uri[:100]!r} is already given for another region")
        regions.append((name, uri))
    return regions


@dataclass(frozen=True)
class LiveKitJob:
    url: LiveKitUrl
    token: Secret
    settings: SignalSettings
    # With the API key and secret, lkice can seat two participants of its own in one room and
    # test the media paths through the SFU; a given token is one participant only, unless a
    # second token (--token2) seats the other.
    api_key: str | None = None
    api_secret: Secret | None = None
    second_token: Secret | None = None
    custom_ca: bool = False  # --ca-file given
    # --region NAME=<LiveKit URL>: probed like LiveKit Cloud's /settings/regions (signaling and
    # TURN per region); when given, /settings/regions is not asked.
    regions: tuple[tuple[str, str], ...] = ()


def livekit_job(
    targets: list[str],
    api_key: str | None,
    api_secret: str | None,
    token: str | None,
    timeout: float,
    tls: ssl.SSLContext,
    nameserver: tuple[str, int] | None,
    proxies: Proxies,
    token2: str | None = None,
) -> LiveKitJob | None:
    from lkice.credentials import Secret
    from lkice.livekit import (
        check_token_fresh,
        check_token_text,
        diagnostic_token,
        is_livekit_url,
        parse_livekit_url,
    )

    urls = [t for t in targets if is_livekit_url(t)]
    if not urls:
        return None
    from lkice.probe.signal import SignalSettings  # websockets, aiohttp: only for LiveKit

    if len(urls) > 1:
        raise UsageError("give one LiveKit URL per run (its regions and TURN servers come with it)")
    targets.remove(urls[0])
    url = parse_livekit_url(urls[0])
    if token is not None:
        secret = Secret(token)
    elif api_key and api_secret:
        secret = diagnostic_token(api_key, Secret(api_secret))
    else:
        raise UsageError(
            f"{url.given} needs a token: give --api-key and --api-secret (lkice mints a short-lived "
            "one) or --token (LIVEKIT_API_KEY, LIVEKIT_API_SECRET, LIVEKIT_TOKEN in the environment)"
        )
    check_token_text(secret)
    check_token_fresh(secret)
    signal_settings = SignalSettings(
        timeout=timeout, tls_context=tls, nameserver=nameserver, proxies=proxies
    )
    if token is None and api_key and api_secret:
        if token2 is not None:
            raise UsageError(
                "--token2 goes with --token: with --api-key/--api-secret lkice seats both "
                "participants itself"
            )
        return LiveKitJob(url, secret, signal_settings, api_key, Secret(api_secret))
    second = None if token2 is None else _second_token(secret, Secret(token2))
    return LiveKitJob(url, secret, signal_settings, second_token=second)


def _second_token(first: Secret, second: Secret) -> Secret:
    """--token2: checked like --token, and against it: another identity in the same room (one
    identity joining twice makes LiveKit drop the first; two rooms share no data)."""
    from lkice.livekit import check_token_fresh, check_token_text, token_identity, token_room

    check_token_text(second)
    check_token_fresh(second)
    if second.reveal() == first.reveal():
        raise UsageError("--token2 is the same token as --token: give one for another identity")
    ids = token_identity(first), token_identity(second)
    if ids[0] is not None and ids[0] == ids[1]:
        raise UsageError(
            "--token and --token2 carry the same participant identity: LiveKit would drop the "
            "first when the second joins; give a token for another identity"
        )
    rooms = token_room(first), token_room(second)
    if None not in rooms and rooms[0] != rooms[1]:
        raise UsageError(
            "--token and --token2 are for different rooms: the data round trip needs both "
            "participants in one room"
        )
    return second


@dataclass(frozen=True)
class RunRequest:
    """Everything one diagnosis needs, as ``lkice run`` takes it (and probe definitions give
    it). Secrets are plain strings only until :func:`prepare` wraps them."""

    targets: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()  # NAME=URI
    api_key: str | None = None
    api_secret: str | None = None
    token: str | None = None
    # A second participant's token (same room, another identity): the SFU paths' data round
    # trip with --token, which alone seats one participant.
    token2: str | None = None
    username: str | None = None
    credential: str | None = None
    turn_secret: str | None = None
    turn_user: str = "lkice"
    ca_files: tuple[str, ...] = ()
    insecure: bool = False
    nameserver: str | None = None
    deadline: float = 20.0
    udp_timeout: float = 3.0
    timeout: float = 5.0
    quality_duration: float = 5.0
    quality_interval: float = 20.0
    # Per-URI TURN credentials (a probe definition's regions): URI -> (username, password), or
    # URI -> TURN REST shared secret.
    turn_by_uri: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    turn_secret_by_uri: Mapping[str, str] = field(default_factory=dict)
    # Quality thresholds of this probe (lkice.findings.Limits keys); the field's otherwise.
    thresholds: Mapping[str, float] = field(default_factory=dict)
    # The web proxy: an http:// URL (credentials may be in it), and the environment whose
    # https_proxy/HTTPS_PROXY and NO_PROXY apply (the CLI passes the process's; empty: none).
    proxy: str | None = None
    proxy_env: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the secrets must not reach a log or a traceback
        return f"RunRequest(targets={self.targets!r}, regions={self.regions!r})"


@dataclass(frozen=True)
class Prepared:
    uris: list[IceUri]
    settings: EngineSettings
    livekit: LiveKitJob | None
    region_of_uri: dict[str, str] = field(default_factory=dict)
    credentials_by_uri: dict[str, TurnCredentials] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


def _check_secrets(request: RunRequest) -> None:
    """Every secret must be text that can be sent (UTF-8). Bytes that are not (a password typed
    in another encoding, a file in Latin-1) arrive as surrogates; they would fail deep inside a
    probe, with the secret in the exception. Refused here, named by option, never shown."""
    named = {
        "--api-key": request.api_key,
        "--api-secret": request.api_secret,
        "--token": request.token,
        "--token2": request.token2,
        "--username": request.username,
        "--credential": request.credential,
        "--turn-secret": request.turn_secret,
        "--turn-user": request.turn_user,
        "--proxy": request.proxy,
    }
    for uri, (user, password) in request.turn_by_uri.items():
        named[f"the TURN username for {uri}"] = user
        named[f"the TURN password for {uri}"] = password
    for uri, secret in request.turn_secret_by_uri.items():
        named[f"the TURN secret for {uri}"] = secret
    for option, value in named.items():
        if value is None:
            continue
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise UsageError(
                f"{option}: not valid UTF-8 text (check the terminal's or the file's encoding); "
                "it was not sent anywhere"
            ) from None
        if size > MAX_SECRET_BYTES:
            raise UsageError(f"{option}: {size} bytes, longer than any credential")
    for option, value in (("--username", request.username), ("--turn-user", request.turn_user)):
        if value is not None and len(value.encode("utf-8")) > MAX_STUN_USERNAME:
            raise UsageError(
                f"{option}: longer than a STUN USERNAME may be ({MAX_STUN_USERNAME} bytes, "
                "RFC 8489)"
            )


def prepare(request: RunRequest) -> Prepared:
    """Check and turn a request into what the probes take; every mistake is a UsageError."""
    _check_secrets(request)
    from lkice.probe.proxy import Proxies, parse_proxy_url
    from lkice.probe.resolve import parse_nameserver
    from lkice.uri import parse_ice_uri

    regions = parse_regions(request.regions)
    livekit_regions = [(name, uri) for name, uri in regions if is_livekit(uri)]
    region_of_uri = {}
    for name, uri in regions:
        if not is_livekit(uri):
            region_of_uri[str(parse_ice_uri(uri))] = name
    targets = list(request.targets)
    if livekit_regions and not any(is_livekit(t) for t in targets):
        targets.insert(0, livekit_regions[0][1])  # the first region's server is the one joined
    targets += [uri for _, uri in regions if not is_livekit(uri)]
    if not targets:
        raise UsageError("nothing to probe: give a LiveKit URL (or LIVEKIT_URL) or STUN/TURN URIs")
    train = train_settings(request.quality_duration, request.quality_interval)
    ns = None
    if request.nameserver is not None:
        try:
            ns = parse_nameserver(request.nameserver)
        except ValueError:
            raise UsageError(
                f"--nameserver {request.nameserver!r}: expected IP or IP:PORT"
            ) from None
    # The system's CAs are read in a thread once the request is known to be good, beside the
    # first round trips; LiveKit's signaling and SFU sessions use the context without awaiting
    # them (the STUN/TURN paths do), so with a LiveKit URL they are read now.
    background_cas = not any(is_livekit(t) for t in targets)
    tls = tls_context(request.ca_files, request.insecure, system_cas=not background_cas)
    proxies = Proxies.from_environment(
        request.proxy_env, parse_proxy_url(request.proxy) if request.proxy else None
    )
    livekit = livekit_job(
        targets,
        request.api_key,
        request.api_secret,
        request.token,
        request.timeout,
        tls,
        ns,
        proxies,
        request.token2,
    )
    if livekit is not None and request.ca_files:
        livekit = replace(livekit, custom_ca=True)
    if livekit is not None and livekit_regions:
        livekit = replace(livekit, regions=tuple(livekit_regions))
    parsed = [parse_ice_uri(u) for u in targets]
    by_uri = _credentials_by_uri(request)
    shared = [u for u in parsed if str(u) not in by_uri]
    has_own_turn = any(u.kind == "turn" for u in shared)
    credentials = (
        turn_credentials(
            shared, request.username, request.credential, request.turn_secret, request.turn_user
        )
        if has_own_turn or livekit is None
        else None
    )
    # The probes' modules (aioice and the rest) only once the request is known to be good: a
    # usage error is told without them.
    from lkice.engine import EngineSettings
    from lkice.probe.path import ProbeSettings

    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=request.udp_timeout,
            timeout=request.timeout,
            credentials=credentials,
            tls_context=tls,
            train=train,
        ),
        deadline=setup_deadline(request.deadline, train),
        dns_timeout=min(request.timeout, request.deadline),
        nameserver=ns,
        proxies=proxies,
    )
    if background_cas:
        from lkice.probe.tcp import load_system_cas

        load_system_cas(tls, background=True)
    return Prepared(parsed, settings, livekit, region_of_uri, by_uri, dict(request.thresholds))


def _credentials_by_uri(request: RunRequest) -> dict[str, TurnCredentials]:
    from lkice.credentials import Secret, TurnCredentials, rest_credentials
    from lkice.uri import parse_ice_uri

    out: dict[str, TurnCredentials] = {}
    for uri, (user, password) in request.turn_by_uri.items():
        out[str(parse_ice_uri(uri))] = TurnCredentials(Secret(user), Secret(password))
    for uri, secret in request.turn_secret_by_uri.items():
        out[str(parse_ice_uri(uri))] = rest_credentials(Secret(secret), user=request.turn_user)
    return out


async def diagnose(
    request: RunRequest,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    releases: Releases | None = None,
) -> Report:
    """One whole diagnosis, concluded (findings, recommendation, verdict); ``stop`` cuts it
    short with a partial report. With ``releases``, the TURN allocations are released in the
    background instead of before the verdict: the caller then calls
    :func:`release_allocations` before it exits."""
    job = prepare(request)
    settings = job.settings
    if releases is not None:
        settings = replace(settings, probe=replace(settings.probe, releases=releases))
    return await run_engine(
        job.uris,
        settings,
        job.livekit,
        job.region_of_uri,
        progress,
        job.credentials_by_uri,
        stop,
        job.thresholds,
    )


async def release_allocations(
    releases: Releases, timeout: float | None = None, *, first: Callable[[], None] | None = None
) -> None:
    """Call ``first`` (the verdict printed), then wait for the releases :func:`diagnose` handed
    over, ``timeout`` seconds at most (the release grace by default). From the moment ``first``
    is called, the first Ctrl-C or SIGTERM ends the wait at once (and lets the caller finish)."""
    from lkice.probe.releases import RELEASE_GRACE_S

    stop = asyncio.Event()
    with _stop_on_signals(stop, own=True):
        try:
            if first is not None:
                first()
        finally:
            await releases.finish(RELEASE_GRACE_S if timeout is None else timeout, stop)
