"""The ``lkice`` command. Exit statuses follow the Nagios/Icinga convention (see verdict.py);
click's own usage errors (exit 2) become 3 UNKNOWN here, in one place: ``main``.

Heavy modules (the engine, aioice, dnspython, cryptography) are imported inside the commands so
``lkice --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lkice import __version__
from lkice.errors import UsageError

if TYPE_CHECKING:
    import ssl

    from lkice.credentials import Secret, TurnCredentials
    from lkice.engine import EngineSettings
    from lkice.livekit import LiveKitUrl
    from lkice.probe.signal import IceServer, SignalSettings
    from lkice.probe.train import TrainSettings
    from lkice.render.progress import Progress
    from lkice.report import ErrorInfo, PathResult, Report, SignalResult
    from lkice.uri import IceUri

EXIT_UNKNOWN = 3
log = logging.getLogger("lkice")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lkice: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lkice")
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lkice")
def cli() -> None:
    """ICE/TURN connectivity diagnostics for LiveKit deployments.

    Exit status: 0 OK, 1 WARNING (degraded), 2 CRITICAL (no usable path), 3 UNKNOWN (usage or
    internal error, or interrupted).
    """


def _tls_context(ca_files: Sequence[str], insecure: bool) -> ssl.SSLContext:
    import ssl

    ctx = ssl.create_default_context()
    for ca in ca_files:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"--ca-file {ca}: cannot load trust anchors ({exc.__class__.__name__})"
            ) from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _credentials(
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


async def _run_engine(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    livekit: _LiveKitJob | None = None,
    region_of_uri: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> Report:
    """The whole diagnosis; ``region_of_uri`` tags the paths of STUN/TURN URIs given with
    ``--region NAME=URI``."""
    from lkice.render.progress import Progress

    progress = progress or Progress()
    try:
        report = await _diagnose(uris, settings, livekit, progress)
    finally:
        progress.close()
    for path in report.paths:
        if path.region is None and region_of_uri:
            path.region = region_of_uri.get(path.uri)
    _conclude(report)
    return report


def _conclude(report: Report) -> None:
    """Findings, recommendation and the verdict they imply (pure rules over the report)."""
    from lkice.findings import evaluate, verdict_from_findings
    from lkice.recommend import recommend

    data = report.to_dict()
    report.findings = evaluate(data)
    report.recommendation = recommend(data)
    report.verdict = verdict_from_findings(report.findings)


async def _diagnose(
    uris: Sequence[IceUri],
    settings: EngineSettings,
    livekit: _LiveKitJob | None,
    progress: Progress,
) -> Report:
    from lkice import engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        # First Ctrl-C: finish with a partial report. A second one falls back to the default.
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    # Not on the main thread, or not supported (Windows): Ctrl-C then ends without a report.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        if livekit is None:
            progress.stage("probing STUN/TURN paths")
            return await engine.run(uris, settings, stop=stop, on_path_done=progress.path_done)
        from lkice.probe.signal import probe_signal
        from lkice.verdict import livekit_verdict

        progress.stage(f"LiveKit signaling to {livekit.url.host}")
        signal_result, servers = await probe_signal(livekit.url, livekit.token, livekit.settings)
        given = [name for name, url in livekit.regions if url == livekit.url.given]
        main_region = (
            given[0] if given else (signal_result.server or {}).get("region") or livekit.url.host
        )
        region_of = {str(s.uri): main_region for s in servers}
        regions: list[dict[str, object]] | None = None
        if signal_result.ok:
            progress.stage("regions")
            regions, region_servers = await _probe_regions(livekit, signal_result)
            for name, found in region_servers:
                servers += found
                for s in found:
                    region_of.setdefault(str(s.uri), name)
        advertised = list(dict.fromkeys(s.uri for s in servers))
        credentials = {str(s.uri): s.credentials for s in servers if s.credentials is not None}
        main_servers = [s for s in servers if region_of.get(str(s.uri)) == main_region]
        finished = _EngineAnswers()

        def engine_path_done(path: PathResult) -> None:
            finished.add(path)
            progress.path_done(path)

        progress.stage("ICE servers and media sessions through the SFU")
        report, sfu_paths = await asyncio.gather(
            engine.run(
                [*advertised, *uris],
                settings,
                credentials=credentials,
                stop=stop,
                on_path_done=engine_path_done,
            ),
            _sfu_paths(livekit, signal_result, main_servers, settings, finished, progress),
        )
        for path in report.paths:
            path.region = region_of.get(path.uri)
        for path in sfu_paths:
            path.region = main_region
        report.paths.extend(sfu_paths)
        report.signal = signal_result
        report.regions = regions
        report.targets.insert(0, livekit.url.given)
        report.verdict = livekit_verdict(report).value
        return report
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _sfu_paths(
    livekit: _LiveKitJob,
    signal_result: SignalResult,
    servers: list[IceServer],
    settings: EngineSettings,
    finished: _EngineAnswers,
    progress: Progress,
) -> list[PathResult]:
    """Media paths through the SFU (direct, and forced through each TURN URL), when lkice can
    seat two participants of its own; otherwise the report says why they were not tested."""
    if not signal_result.ok:
        return []
    if livekit.api_key is None or livekit.api_secret is None:
        signal_result.notes.append(
            "media paths through the SFU not tested: they need --api-key/--api-secret (two "
            "participants of lkice's own in one room), not a single --token"
        )
        return []
    from lkice.probe.sfu import SfuSettings, probe_sfu_paths, room_token_factory

    train = settings.probe.train
    sfu = SfuSettings(
        duration=max(1.0, train.duration) if train is not None else 1.0,
        # ICE gets the same bound as every other step (--timeout): a blocked path must not
        # hold the verdict back longer than a refused connect would.
        ice_timeout=settings.probe.timeout,
        known=lambda uri: finished.error(uri, settings.probe.timeout + 1.0),
        tls_context=livekit.settings.tls_context,
        custom_ca=livekit.custom_ca,
    )
    make_token = room_token_factory(livekit.api_key, livekit.api_secret)
    return await probe_sfu_paths(livekit.url, make_token, servers, sfu, progress.path_done)


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


async def _probe_regions(
    livekit: _LiveKitJob, signal_result: SignalResult
) -> tuple[list[dict[str, object]] | None, list[tuple[str, list[IceServer]]]]:
    """LiveKit Cloud: every region's signaling at once, and the ICE servers each one offers."""
    from lkice.livekit import parse_livekit_url
    from lkice.probe.signal import Region, fetch_regions, probe_signal

    regions: list[Region]
    if livekit.regions:
        regions = [Region(n, u, None) for n, u in livekit.regions]
    else:
        fetched, why = await fetch_regions(livekit.url, livekit.token, livekit.settings)
        if fetched is None:
            if why:
                signal_result.notes.append(why)
            return None, []
        regions = fetched
    probed = await asyncio.gather(
        *(probe_signal(parse_livekit_url(r.url), livekit.token, livekit.settings) for r in regions)
    )
    summary: list[dict[str, object]] = []
    found: list[tuple[str, list[IceServer]]] = []
    for region, (result, servers) in zip(regions, probed, strict=True):
        summary.append(
            {
                "region": region.name,
                "url": region.url,
                "distance": region.distance,
                "signal": result.to_dict(),
            }
        )
        found.append((region.name, servers))
    return summary, found


@dataclass(frozen=True)
class _Outputs:
    """Where the report goes besides stdout (--output, --paste, --html, --redact)."""

    as_json: bool = False
    output: str | None = None
    paste: str | None = None  # "-": after the human view on stdout
    html: str | None = None
    redact: bool = False


def _write(option: str, path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write ({exc.strerror})") from None


def _emit(report: Report, outputs: _Outputs) -> None:
    _emit_dict(report.to_dict(), outputs)
    if report.interrupted:
        click.echo("lkice: interrupted: the report above is partial", err=True)


def _emit_dict(data: dict[str, Any], outputs: _Outputs) -> None:
    """Every output of one report: the JSON (never redacted: it stays on this machine unless
    sent on purpose), the human view, the paste block and the HTML (redacted on request)."""
    import json

    from lkice.render.text import render

    text = json.dumps(data, indent=2)
    if outputs.output is not None:
        _write("--output", outputs.output, text + "\n")
    shared = data
    if outputs.redact and (outputs.paste or outputs.html):
        from lkice.redact import redact_report

        shared = redact_report(data)
    if outputs.html is not None:
        from lkice.render.html import render as render_html

        _write("--html", outputs.html, render_html(shared))
    block = None
    if outputs.paste is not None:
        from lkice.paste import encode_paste, paste_summary

        block = encode_paste(shared, paste_summary(shared))
        if outputs.paste != "-":
            _write("--paste", outputs.paste, block)
    if outputs.as_json:
        click.echo(text)
    else:
        click.echo(render(data), nl=False)
    if block is not None and outputs.paste == "-":
        click.echo("\nPaste everything below into your ticket:\n")
        click.echo(block, nl=not block.endswith("\n"))


def _train(duration: float, interval_ms: float) -> TrainSettings | None:
    from lkice.probe.train import TrainSettings

    if duration <= 0:
        return None
    return TrainSettings(interval=interval_ms / 1000, duration=duration)


def _deadline(setup: float, train: TrainSettings | None) -> float:
    """The user's deadline bounds connection setup; the train's own length comes on top."""
    return setup if train is None else setup + train.duration + train.grace


def _is_livekit(target: str) -> bool:
    from lkice.livekit import is_livekit_url

    return is_livekit_url(target)


def _parse_regions(options: Sequence[str]) -> list[tuple[str, str]]:
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
        if _is_livekit(uri) and any(n == name and _is_livekit(u) for n, u in regions):
            raise UsageError(f"--region {name} is given two LiveKit URLs")
        # Parsed now, so a malformed URI is a usage error naming its --region.
        try:
            if _is_livekit(uri):
                parse_livekit_url(uri)
            else:
                parse_ice_uri(uri)
        except UsageError as exc:
            raise UsageError(f"--region {name}: {exc}") from None
        regions.append((name, uri))
    return regions


def _finish(report: Report) -> int:
    from lkice.verdict import report_exit_status

    return int(report_exit_status(report))


_common_probe_options = [
    click.option(
        "--deadline",
        type=click.FloatRange(min=0.5, max=600),
        default=20.0,
        show_default=True,
        help="Overall deadline for connection setup, in seconds (the quality train's length is added).",
    ),
    click.option(
        "--udp-timeout",
        type=click.FloatRange(min=0.1, max=30),
        default=3.0,
        show_default=True,
        help="Give up on a UDP STUN transaction after this many seconds.",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1, max=60),
        default=5.0,
        show_default=True,
        help="TCP connect, TLS handshake and stream answer timeout, in seconds.",
    ),
    click.option(
        "--quality-duration",
        type=click.FloatRange(min=0, max=300),
        default=5.0,
        show_default=True,
        help="Length of the probe train that measures RTT, jitter, loss and head-of-line stalls "
        "on every working path, in seconds (0: skip).",
    ),
    click.option(
        "--quality-interval",
        type=click.FloatRange(min=5, max=1000),
        default=20.0,
        show_default=True,
        help="Milliseconds between probes (20 ms is an audio packet's cadence).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Write the JSON report to stdout."),
    click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False),
        help="Also write the JSON report to FILE.",
    ),
    click.option(
        "--paste",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Write the ticket paste block (a short summary and the whole report, checksummed, "
        "that survives email and chat) to FILE; '-' prints it after the report.",
    ),
    click.option(
        "--html",
        type=click.Path(dir_okay=False),
        help="Write a self-contained HTML report with charts to FILE (opens offline).",
    ),
    click.option(
        "--redact",
        is_flag=True,
        help="Hide host names and IP addresses (not loopback) in the paste block and HTML.",
    ),
    click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug)."),
]


def probe_options(fn: Any) -> Any:
    for option in reversed(_common_probe_options):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class _LiveKitJob:
    url: LiveKitUrl
    token: Secret
    settings: SignalSettings
    # With the API key and secret, lkice can seat two participants of its own in one room and
    # test the media paths through the SFU; a given token is one participant only.
    api_key: str | None = None
    api_secret: Secret | None = None
    custom_ca: bool = False  # --ca-file given
    # --region NAME=<LiveKit URL>: probed like LiveKit Cloud's /settings/regions (signaling and
    # TURN per region); when given, /settings/regions is not asked.
    regions: tuple[tuple[str, str], ...] = ()


def _livekit_job(
    targets: list[str],
    api_key: str | None,
    api_secret: str | None,
    token: str | None,
    timeout: float,
    tls: ssl.SSLContext,
    nameserver: tuple[str, int] | None,
) -> _LiveKitJob | None:
    from lkice.credentials import Secret
    from lkice.livekit import check_token_fresh, diagnostic_token, is_livekit_url, parse_livekit_url
    from lkice.probe.signal import SignalSettings

    urls = [t for t in targets if is_livekit_url(t)]
    if not urls:
        return None
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
    check_token_fresh(secret)
    signal_settings = SignalSettings(timeout=timeout, tls_context=tls, nameserver=nameserver)
    if token is None and api_key and api_secret:
        return _LiveKitJob(url, secret, signal_settings, api_key, Secret(api_secret))
    return _LiveKitJob(url, secret, signal_settings)


@cli.command()
@click.argument("uris", nargs=-1, metavar="URI...")
@click.option("--api-key", envvar="LIVEKIT_API_KEY", help="LiveKit API key (with --api-secret).")
@click.option(
    "--api-secret",
    envvar="LIVEKIT_API_SECRET",
    help="LiveKit API secret: lkice mints a short-lived token; the secret never leaves this machine.",
)
@click.option("--token", envvar="LIVEKIT_TOKEN", help="A LiveKit access token to join with.")
@click.option(
    "--username", "-u", envvar="LKICE_TURN_USERNAME", help="TURN username (long-term credentials)."
)
@click.option("--credential", "-p", envvar="LKICE_TURN_CREDENTIAL", help="TURN password.")
@click.option(
    "--turn-secret",
    envvar="LKICE_TURN_SECRET",
    help="TURN REST shared secret (coturn use-auth-secret): lkice derives time-limited credentials.",
)
@click.option(
    "--turn-user", default="lkice", show_default=True, help="User part of TURN REST usernames."
)
@click.option(
    "--ca-file",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Extra trust anchors (PEM) for TURN over TLS. Repeatable.",
)
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (still reported).")
@click.option(
    "--nameserver",
    help="Resolve names with this DNS server (IP or IP:PORT) instead of the system's.",
)
@click.option(
    "--region",
    "region_options",
    multiple=True,
    metavar="NAME=URI",
    help="A region to compare (repeatable): URI is a LiveKit URL (its signaling and TURN are "
    "probed) or a STUN/TURN URI. All regions are probed at once and ranked.",
)
@probe_options
def run(
    uris: tuple[str, ...],
    api_key: str | None,
    api_secret: str | None,
    token: str | None,
    username: str | None,
    credential: str | None,
    turn_secret: str | None,
    turn_user: str,
    ca_file: tuple[str, ...],
    insecure: bool,
    nameserver: str | None,
    region_options: tuple[str, ...],
    deadline: float,
    udp_timeout: float,
    timeout: float,
    quality_duration: float,
    quality_interval: float,
    as_json: bool,
    output: str | None,
    paste: str | None,
    html: str | None,
    redact: bool,
    verbose: int,
) -> None:
    """Diagnose a LiveKit deployment or STUN/TURN servers on every transport.

    URI is a LiveKit URL (wss://host, also https://; LIVEKIT_URL when none is given), whose
    signaling is probed step by step and whose advertised ICE servers are then probed; and/or
    STUN/TURN URIs: stun:host[:port], stuns:host[:port], turn:host[:port][?transport=udp|tcp],
    turns:host[:port][?transport=tcp] (RFC 7064/7065). turn: without a transport is probed over
    both UDP and TCP.
    """
    from lkice.engine import EngineSettings
    from lkice.probe.path import ProbeSettings
    from lkice.probe.resolve import parse_nameserver
    from lkice.uri import parse_ice_uri

    _setup_logging(verbose)
    regions = _parse_regions(region_options)
    livekit_regions = [(name, uri) for name, uri in regions if _is_livekit(uri)]
    region_of_uri = {}
    for name, uri in regions:
        if not _is_livekit(uri):
            region_of_uri[str(parse_ice_uri(uri))] = name
    targets = list(uris) or ([os.environ["LIVEKIT_URL"]] if os.environ.get("LIVEKIT_URL") else [])
    if livekit_regions and not any(_is_livekit(t) for t in targets):
        targets.insert(0, livekit_regions[0][1])  # the first region's server is the one joined
    targets += [uri for _, uri in regions if not _is_livekit(uri)]
    if not targets:
        raise UsageError("nothing to probe: give a LiveKit URL (or LIVEKIT_URL) or STUN/TURN URIs")
    train = _train(quality_duration, quality_interval)
    ns = None
    if nameserver is not None:
        try:
            ns = parse_nameserver(nameserver)
        except ValueError:
            raise UsageError(f"--nameserver {nameserver!r}: expected IP or IP:PORT") from None
    tls = _tls_context(ca_file, insecure)
    livekit = _livekit_job(targets, api_key, api_secret, token, timeout, tls, ns)
    if livekit is not None and ca_file:
        livekit = replace(livekit, custom_ca=True)
    if livekit is not None and livekit_regions:
        livekit = replace(livekit, regions=tuple(livekit_regions))
    parsed = [parse_ice_uri(u) for u in targets]
    has_own_turn = any(u.kind == "turn" for u in parsed)
    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=udp_timeout,
            timeout=timeout,
            credentials=_credentials(parsed, username, credential, turn_secret, turn_user)
            if has_own_turn or livekit is None
            else None,
            tls_context=tls,
            train=train,
        ),
        deadline=_deadline(deadline, train),
        dns_timeout=min(timeout, deadline),
        nameserver=ns,
    )
    from lkice.render.progress import progress_for

    progress = progress_for(not as_json and verbose == 0)
    report = asyncio.run(_run_engine(parsed, settings, livekit, region_of_uri, progress))
    _emit(report, _Outputs(as_json, output, paste, html, redact))
    sys.exit(_finish(report))


@cli.command()
@click.option(
    "--network",
    metavar="PROFILE",
    help="Run inside the namespace lab behind this firewall profile instead of on loopback "
    "(needs root): open, udp-blocked, tcp443-only, symmetric-nat, nat.",
)
@click.option(
    "--rtt", type=click.FloatRange(0, 5000), default=0.0, help="With --network: added RTT, ms."
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 1000),
    default=0.0,
    help="With --network: jitter each way, ms.",
)
@click.option(
    "--loss", type=click.FloatRange(0, 100), default=0.0, help="With --network: loss each way, %."
)
@probe_options
def demo(
    network: str | None,
    rtt: float,
    jitter: float,
    loss: float,
    deadline: float,
    udp_timeout: float,
    timeout: float,
    quality_duration: float,
    quality_interval: float,
    as_json: bool,
    output: str | None,
    paste: str | None,
    html: str | None,
    redact: bool,
    verbose: int,
) -> None:
    """Start a local lab (real coturn, a throwaway CA) and diagnose it.

    By default the lab is on loopback. With --network (root), it is a lab of network namespaces:
    the diagnosis runs from a client behind the chosen firewall profile, across a router adding
    the given delay, jitter and loss, to a TURN server with its own DNS name. Support staff can
    reproduce a customer's network this way, e.g. --network udp-blocked --rtt 80 --loss 2.
    """
    if network is not None:
        passthrough = [
            "--deadline", str(deadline), "--udp-timeout", str(udp_timeout), "--timeout", str(timeout),
            "--quality-duration", str(quality_duration), "--quality-interval", str(quality_interval),
            *(["--json"] if as_json else []), *(["--output", output] if output else []),
            *(["--paste", paste] if paste else []), *(["--html", html] if html else []),
            *(["--redact"] if redact else []),
            *(["-" + "v" * verbose] if verbose else []),
        ]  # fmt: skip
        sys.exit(_demo_in_network(network, rtt, jitter, loss, passthrough))
    import secrets
    import tempfile

    from lkice.credentials import Secret
    from lkice.engine import EngineSettings
    from lkice.lab.coturn import Coturn, CoturnConfig, LabError
    from lkice.lab.livekit import IceServer, LabLiveKit
    from lkice.lab.pki import make_pki
    from lkice.livekit import diagnostic_token, parse_livekit_url
    from lkice.probe.path import ProbeSettings
    from lkice.probe.signal import SignalSettings

    _setup_logging(verbose)
    train = _train(quality_duration, quality_interval)
    user, password = "demo", secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="lkice-demo-") as tmp:
        pki = make_pki(Path(tmp))
        try:
            server = Coturn(CoturnConfig(users={user: password}, pki=pki)).start()
        except LabError as exc:
            raise UsageError(f"cannot start the demo lab: {exc}") from None
        livekit_server = None
        try:
            # The lab LiveKit hands out the lab's coturn, as a deployment hands out its TURN.
            ice = [
                IceServer([f"stun:127.0.0.1:{server.port}"], "", ""),
                IceServer(
                    [
                        f"turn:127.0.0.1:{server.port}?transport=udp",
                        f"turn:127.0.0.1:{server.port}?transport=tcp",
                        f"turns:127.0.0.1:{server.tls_port}?transport=tcp",
                    ],
                    user,
                    password,
                ),
            ]
            api_secret = Secret(secrets.token_urlsafe(32))
            livekit_server = LabLiveKit(
                api_key="APIlkicedemo",
                api_secret=api_secret.reveal(),
                ice_servers=ice,
                region="lab",
                ice_tcp_port=0,  # ICE/TCP as LiveKit's 7881, on a free port
            )
            livekit_server.start_in_thread()
            if not as_json:
                click.echo(
                    f"lkice demo: lab LiveKit at {livekit_server.url}, coturn on 127.0.0.1 "
                    f"(UDP/TCP {server.port}, TLS {server.tls_port}), throwaway CA\n"
                )
            tls = _tls_context([str(pki.ca_file)], insecure=False)
            job = _LiveKitJob(
                parse_livekit_url(livekit_server.url),
                diagnostic_token("APIlkicedemo", api_secret),
                SignalSettings(timeout=timeout, tls_context=tls),
                "APIlkicedemo",
                api_secret,
                custom_ca=True,  # the lab's throwaway CA
            )
            settings = EngineSettings(
                probe=ProbeSettings(
                    udp_timeout=udp_timeout, timeout=timeout, tls_context=tls, train=train
                ),
                deadline=_deadline(deadline, train),
            )
            from lkice.render.progress import progress_for

            progress = progress_for(not as_json and verbose == 0)
            report = asyncio.run(_run_engine([], settings, job, progress=progress))
        finally:
            if livekit_server is not None:
                livekit_server.stop_thread()
            server.stop()
    _emit(report, _Outputs(as_json, output, paste, html, redact))
    sys.exit(_finish(report))


@cli.command()
@click.argument("source", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Write the decoded JSON report to stdout.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Also write the JSON report to FILE."
)
@click.option("--html", type=click.Path(dir_okay=False), help="Write the HTML report to FILE.")
@click.option("--redact", is_flag=True, help="Hide host names and IP addresses in the HTML.")
def explain(
    source: str | None, as_json: bool, output: str | None, html: str | None, redact: bool
) -> None:
    """Read a pasted lkice report and show it as lkice run would.

    SOURCE is a file holding the paste (a whole ticket or email is fine: the text around the
    BEGIN/END block, quote marks and re-wrapped lines are ignored), or '-' / nothing for stdin.
    Exit status: the report's own (0 ok, 1 degraded, 2 failed), 3 if the paste cannot be read.
    """
    from lkice.paste import PasteError, decode_paste

    if source is None or source == "-":
        text = click.get_text_stream("stdin").read()
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise UsageError(f"{source}: cannot read ({exc.strerror})") from None
        text = raw.decode("utf-8", errors="replace")
    try:
        data = decode_paste(text)
    except PasteError as exc:
        raise UsageError(f"cannot read the pasted report: {exc}") from None
    _emit_dict(data, _Outputs(as_json, output, None, html, redact))
    sys.exit(_status_of(data))


def _status_of(data: dict[str, Any]) -> int:
    """The exit status a report stands for (the pasted run's own), from its fields alone."""
    from lkice.verdict import CONFIGURATION_ERRORS, ExitStatus, Verdict, exit_status

    signal = data.get("signal") or {}
    if (signal.get("error") or {}).get("kind") in CONFIGURATION_ERRORS:
        return int(ExitStatus.UNKNOWN)
    try:
        return int(exit_status(Verdict(data.get("verdict")), bool(data.get("interrupted"))))
    except ValueError:
        return int(ExitStatus.UNKNOWN)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps every user error to a message and exit 3, never a traceback."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="lkice", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors, bad option values
        exc.show()
        sys.exit(EXIT_UNKNOWN)
    except UsageError as exc:
        click.echo(f"lkice: error: {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except (click.Abort, KeyboardInterrupt):
        click.echo("lkice: interrupted", err=True)
        sys.exit(EXIT_UNKNOWN)
    except Exception as exc:  # a bug: say so briefly; LKICE_DEBUG=1 shows the traceback
        if os.environ.get("LKICE_DEBUG"):
            raise
        click.echo(
            f"lkice: internal error: {exc.__class__.__name__}: {exc} "
            "(please report it; LKICE_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(EXIT_UNKNOWN)
    sys.exit(0)


def _demo_in_network(
    profile: str, rtt: float, jitter: float, loss: float, passthrough: list[str]
) -> int:
    """The diagnosis from inside the namespace lab; returns lkice's own exit status there."""
    from lkice.lab.coturn import LabError
    from lkice.lab.netlab import PROFILES, Impairment, NetLab, prerequisites

    if profile not in PROFILES:
        raise UsageError(f"--network {profile!r}: unknown profile (one of {', '.join(PROFILES)})")
    missing = prerequisites()
    if missing:
        raise UsageError("--network needs the namespace lab: " + "; ".join(missing))
    way = Impairment(delay_ms=rtt / 2, jitter_ms=jitter, loss=loss / 100)
    try:
        with NetLab(regions=("eu",), profile=profile) as lab:
            lab.set_impairment("eu", upstream=way, downstream=way)
            host = lab.turn_host("eu")
            click.echo(
                f"lkice demo: namespace lab, firewall profile {profile}, +{rtt:g} ms RTT, "
                f"±{jitter:g} ms jitter, {loss:g} % loss each way; TURN server {host}\n",
                err=True,
            )
            argv = [
                "python3", "-m", "lkice", "run",
                f"stun:{host}:3478", f"turn:{host}:3478?transport=udp", f"turn:{host}:3478?transport=tcp",
                f"turns:{host}:5349?transport=tcp", f"turns:{host}:443?transport=tcp",
                *lab.turn_args(), *passthrough,
            ]  # fmt: skip
            proc = lab.run_in_client(argv, timeout=600)
    except LabError as exc:
        raise UsageError(f"cannot start the namespace lab: {exc}") from None
    click.echo(proc.stdout, nl=False)
    click.echo(proc.stderr, nl=False, err=True)
    return proc.returncode
