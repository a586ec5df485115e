"""The ``lkice`` command. Exit statuses follow the Nagios/Icinga convention (see verdict.py);
click's own usage errors (exit 2) become 3 UNKNOWN here, in one place: ``main``.

Heavy modules (asyncio, the engine, aioice, dnspython, cryptography) are imported inside the
commands so ``lkice --help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lkice import __version__
from lkice.errors import UsageError, bug_summary

if TYPE_CHECKING:
    from lkice.daemon import Sinks
    from lkice.job import RunRequest
    from lkice.render.progress import Progress
    from lkice.report import Report
    from lkice.report.read import ReportDoc

EXIT_UNKNOWN = 3
log = logging.getLogger("lkice")


def _proxy_env() -> dict[str, str]:
    from lkice.probe.proxy import system_proxy_env

    return system_proxy_env(os.environ)


def _proxy_with_password(url: str | None) -> str | None:
    """``--proxy`` as given, or with the password asked for (not echoed) when the URL names a
    user without one; without a terminal to ask on, a usage error."""
    if not url:
        return None
    from urllib.parse import quote, urlsplit

    text = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return url  # parse_proxy_url names the problem
    if parts.username is None or parts.password is not None:
        return url
    where = parts.netloc.rsplit("@", 1)[-1]
    if not sys.stdin.isatty():
        raise UsageError(
            f"--proxy names user {parts.username!r} but no password, and there is no terminal "
            f"to ask for it: give http://user:password@{where}"
        )
    password = click.prompt(
        f"Password for {parts.username} at proxy {where}", hide_input=True, err=True
    )
    netloc = f"{parts.username}:{quote(password, safe='')}@{where}"
    return parts._replace(netloc=netloc).geturl()


def _log_level(verbose: int) -> int:
    return logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG


def _setup_logging(verbose: int) -> None:
    """Plain ``lkice: LEVEL logger: message`` lines on stderr, structlog events included, with
    control characters made visible and URL passwords hidden (lkice.logs.configure_plain)."""
    from lkice import logs

    logs.configure_plain(_log_level(verbose))


class _Finite(click.FloatRange):
    """A float option within its range, and a real number: ``nan`` passes every range check
    (comparisons with it are false), so it is refused here by name."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        if isinstance(value, str) and not value.strip().isascii():
            # float() reads Arabic-Indic and other non-ASCII digits: nobody means that.
            self.fail(f"{value[:40]!r} is not a number", param, ctx)
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lkice")
def cli() -> None:
    """ICE/TURN connectivity diagnostics for LiveKit deployments.

    Exit status: 0 OK, 1 WARNING (degraded), 2 CRITICAL (no usable path), 3 UNKNOWN (usage or
    internal error, or interrupted).
    """


@dataclass(frozen=True)
class _Outputs:
    """Where the report goes besides stdout (--output, --paste, --html, --redact)."""

    as_json: bool = False
    output: str | None = None
    paste: str | None = None  # "-": after the human view on stdout
    html: str | None = None
    redact: bool = False
    # The double-click mode writes next to the program (a Downloads folder): no symlink there
    # is written through.
    follow_symlinks: bool = True
    view: bool = True  # False: the human view is already on stdout (lkice run)


class OutputError(Exception):
    """Files that could not be written; the report itself was printed (exit 3)."""


def _emit(report: Report, outputs: _Outputs) -> None:
    """Every output of one report (see :func:`_emit_dict`); raises OutputError after printing
    the report when a file could not be written."""
    try:
        _emit_dict(report.to_dict(), outputs)
    finally:
        if report.interrupted:
            click.echo("lkice: interrupted: the report above is partial", err=True)


def _emit_dict(data: ReportDoc, outputs: _Outputs) -> None:
    """Every output of one report: the JSON (never redacted: it stays on this machine unless
    sent on purpose), the human view, the paste block and the HTML (redacted on request).
    The report is printed first, whatever happens to the files; each file is written whole or
    not at all (a full disk leaves the old file), and each failure is named."""
    import json

    from lkice.files import write_atomic
    from lkice.render.text import render

    text = (
        json.dumps(data, indent=2, allow_nan=False)
        if outputs.as_json or outputs.output is not None
        else ""
    )  # indented JSON costs time and memory on big reports: only when it goes somewhere
    shared = data
    if outputs.redact and (outputs.paste or outputs.html):
        from lkice.redact import redact_report

        shared = redact_report(data)
    files: list[tuple[str, str, Callable[[], str]]] = []
    if outputs.output is not None:
        files.append(("--output", outputs.output, lambda: text + "\n"))
    if outputs.html is not None:
        from lkice.render.html import render as render_html

        files.append(("--html", outputs.html, lambda: render_html(shared)))
    block = None
    if outputs.paste is not None:
        from lkice.paste import encode_paste, paste_summary

        block = encode_paste(shared, paste_summary(shared))
        if outputs.paste != "-":
            paste_text = block
            files.append(("--paste", outputs.paste, lambda: paste_text))
    if outputs.as_json:
        click.echo(text)
    elif outputs.view:
        click.echo(render(data), nl=False)
    if block is not None and outputs.paste == "-":
        click.echo("\nPaste everything below into your ticket:\n")
        click.echo(block, nl=not block.endswith("\n"))
    failed: list[str] = []
    for option, path, make in files:
        try:
            write_atomic(path, make(), follow_symlinks=outputs.follow_symlinks)
        except OSError as exc:
            failed.append(f"{option} {_shown(path)}: cannot write ({exc.strerror or exc})")
    if failed:
        raise OutputError("; ".join(failed) + " (the report was printed above)")


def _shown(text: str) -> str:
    from lkice.textsafe import visible

    return visible(text)


def _finish(report: Report) -> int:
    from lkice.verdict import report_exit_status

    return int(report_exit_status(report))


_common_probe_options = [
    click.option(
        "--deadline",
        type=_Finite(min=0.5, max=600),
        default=20.0,
        show_default=True,
        help="Overall deadline for connection setup, in seconds (the quality train's length is added).",
    ),
    click.option(
        "--udp-timeout",
        type=_Finite(min=0.1, max=30),
        default=3.0,
        show_default=True,
        help="Give up on a UDP STUN transaction after this many seconds.",
    ),
    click.option(
        "--timeout",
        type=_Finite(min=0.1, max=60),
        default=5.0,
        show_default=True,
        help="TCP connect, TLS handshake and stream answer timeout, in seconds.",
    ),
    click.option(
        "--quality-duration",
        type=_Finite(min=0, max=300),
        default=5.0,
        show_default=True,
        help="Length of the probe train that measures RTT, jitter, loss and head-of-line stalls "
        "on every working path, in seconds (0: skip).",
    ),
    click.option(
        "--quality-interval",
        type=_Finite(min=5, max=1000),
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
    "--token2",
    envvar="LIVEKIT_TOKEN2",
    help="With --token: a second participant's token (same room, another identity), so the "
    "media paths through the SFU also get the data round trip between two participants.",
)
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
@click.option(
    "--proxy",
    metavar="URL",
    help="Web proxy, http://[user[:password]@]host[:port] (default port 3128; asks for the "
    "password if only the user is given). Default: HTTPS_PROXY/https_proxy, with NO_PROXY. "
    "Signaling and TURN over TLS (and TCP 443) go through it; UDP is always direct.",
)
@click.option(
    "--no-proxy",
    "no_proxy",
    is_flag=True,
    help="Ignore HTTPS_PROXY/https_proxy: connect directly only.",
)
@probe_options
def run(
    uris: tuple[str, ...],
    api_key: str | None,
    api_secret: str | None,
    token: str | None,
    token2: str | None,
    username: str | None,
    credential: str | None,
    turn_secret: str | None,
    turn_user: str,
    ca_file: tuple[str, ...],
    insecure: bool,
    nameserver: str | None,
    region_options: tuple[str, ...],
    proxy: str | None,
    no_proxy: bool,
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
    from lkice.job import RunRequest
    from lkice.render.progress import progress_for

    _setup_logging(verbose)
    targets = uris or ((os.environ["LIVEKIT_URL"],) if os.environ.get("LIVEKIT_URL") else ())
    request = RunRequest(
        targets=tuple(targets),
        regions=region_options,
        api_key=api_key,
        api_secret=api_secret,
        token=token,
        token2=token2,
        username=username,
        credential=credential,
        turn_secret=turn_secret,
        turn_user=turn_user,
        ca_files=ca_file,
        insecure=insecure,
        nameserver=nameserver,
        deadline=deadline,
        udp_timeout=udp_timeout,
        timeout=timeout,
        quality_duration=quality_duration,
        quality_interval=quality_interval,
        proxy=_proxy_with_password(proxy),
        proxy_env={} if no_proxy else _proxy_env(),
    )
    progress = progress_for(not as_json and verbose == 0)
    import asyncio

    report = asyncio.run(
        _diagnose_then_release(request, progress, _Outputs(as_json, output, paste, html, redact))
    )
    sys.exit(_finish(report))


async def _diagnose_then_release(
    request: RunRequest, progress: Progress, outputs: _Outputs
) -> Report:
    """The diagnosis, its verdict printed at once, then the TURN allocations' release (Refresh
    lifetime 0: sent when each path concluded, waited for here, briefly) before the outputs that
    record the report (JSON, the files, the paste block), so they say whether each allocation
    was released. Every allocation is released, or given up, before lkice exits."""
    from lkice.job import diagnose, release_allocations
    from lkice.probe.releases import Releases

    releases = Releases()
    try:
        report = await diagnose(request, progress, releases=releases)
    except BaseException:
        await release_allocations(releases)
        raise
    if outputs.as_json:
        await release_allocations(releases)
    else:
        from lkice.render.text import render

        await release_allocations(
            releases, first=lambda: click.echo(render(report.to_dict()), nl=False)
        )
        outputs = replace(outputs, view=False)
    _emit(report, outputs)
    return report


@cli.command()
@click.option(
    "--network",
    metavar="PROFILE",
    help="Run inside the namespace lab behind this firewall profile instead of on loopback "
    "(needs root): open, udp-blocked, tcp443-only, proxy-only, symmetric-nat, nat.",
)
@click.option("--rtt", type=_Finite(0, 5000), default=0.0, help="With --network: added RTT, ms.")
@click.option(
    "--jitter",
    type=_Finite(0, 1000),
    default=0.0,
    help="With --network: jitter each way, ms.",
)
@click.option("--loss", type=_Finite(0, 100), default=0.0, help="With --network: loss each way, %.")
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
    if network is None and (rtt or jitter or loss):
        raise UsageError("--rtt, --jitter and --loss shape the namespace lab: give --network too")
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
    from lkice.job import train_settings
    from lkice.lab.demo import DemoLab
    from lkice.lab.server import LabError
    from lkice.render.progress import progress_for

    _setup_logging(verbose)
    train = train_settings(quality_duration, quality_interval)
    try:
        lab = DemoLab().start()
    except LabError as exc:
        raise UsageError(f"cannot start the demo lab: {exc}") from None
    try:
        if not as_json:
            click.echo(
                f"lkice demo: lab LiveKit at {lab.livekit_url}, coturn on 127.0.0.1 "
                f"(UDP/TCP {lab.turn_port}, TLS {lab.tls_port}), throwaway CA\n"
            )
        progress = progress_for(not as_json and verbose == 0)
        report = lab.diagnose(
            deadline=deadline,
            udp_timeout=udp_timeout,
            timeout=timeout,
            train=train,
            progress=progress,
        )
    finally:
        lab.stop()
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
    BEGIN/END block, quote marks and re-wrapped lines are ignored) or a JSON report (--json,
    --output), or '-' / nothing for stdin.
    Exit status: the report's own (0 ok, 1 degraded, 2 failed), 3 if the paste cannot be read.
    """
    from lkice.intake import ReportError
    from lkice.paste import MAX_TEXT, decode_paste
    from lkice.textsafe import visible

    # A whole ticket thread is fine; gigabytes are not read in (one byte more than the cap
    # says the input is too large).
    name = "the input" if source is None or source == "-" else visible(source)
    try:
        if source is None or source == "-":
            raw = click.get_binary_stream("stdin").read(MAX_TEXT + 1)
        else:
            with open(source, "rb") as stream:
                raw = stream.read(MAX_TEXT + 1)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_TEXT:
        raise UsageError(
            f"cannot read the pasted report: {name} is larger than {MAX_TEXT // 2**20} MiB, "
            "more than a ticket with a report holds: paste only the message with the block"
        )
    text = raw.decode("utf-8", errors="replace")
    try:
        if text.lstrip().startswith("{"):
            # A JSON report as written by --json / --output, checked like a paste.
            from lkice.intake import load_report

            data = load_report(text)
        else:
            data = decode_paste(text)
    except ReportError as exc:  # PasteError too: damaged, or intact and not a valid report
        raise UsageError(f"cannot read the pasted report: {visible(str(exc))}") from None
    _emit_dict(data, _Outputs(as_json, output, None, html, redact))
    sys.exit(_status_of(data))


@cli.command()
@click.argument("definitions", nargs=-1, type=click.Path(dir_okay=False), metavar="[FILE...]")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="The probe definition (TOML) to run once.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Only validate the definitions given (FILE... and --config): exit 0 if all are "
    "valid, 3 if not, naming file, line and key of every mistake.",
)
@click.option("--json", "as_json", is_flag=True, help="Write the JSON report to stdout.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Also write the JSON report to FILE."
)
@click.option("--paste", type=click.Path(dir_okay=False, allow_dash=True), help="As for run.")
@click.option("--html", type=click.Path(dir_okay=False), help="As for run.")
@click.option("--redact", is_flag=True, help="As for run.")
@click.option(
    "--every",
    metavar="DURATION",
    help="Run as a daemon, once every DURATION (30s, 5m, 1h): runs never overlap; SIGTERM "
    "stops, SIGHUP reloads the definition.",
)
@click.option("--daemon", is_flag=True, help="Run as a daemon on the definition's probe.every.")
@click.option(
    "--max-runs",
    type=click.IntRange(min=1),
    help="With --every/--daemon: stop after this many runs.",
)
@click.option(
    "--history",
    type=click.Path(dir_okay=False),
    help="Append every report to this JSON Lines file (rotated by size).",
)
@click.option(
    "--history-max-bytes",
    type=click.IntRange(min=4096),
    default=64 * 1024 * 1024,
    show_default=True,
    help="Rotate the history file past this size (3 old files are kept).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="With --every/--daemon: serve Prometheus metrics on http://HOST:PORT/metrics.",
)
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    help="Write the metrics to this node_exporter textfile-collector file after each run.",
)
@click.option("--push", metavar="URL", help="Push the metrics to this Prometheus Pushgateway.")
@click.option(
    "--server-labels",
    is_flag=True,
    help="Label path metrics with their server (host:port): more series per probe.",
)
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug).")
def probe(
    definitions: tuple[str, ...],
    config: str | None,
    check: bool,
    as_json: bool,
    output: str | None,
    paste: str | None,
    html: str | None,
    redact: bool,
    every: str | None,
    daemon: bool,
    max_runs: int | None,
    history: str | None,
    history_max_bytes: int,
    metrics_listen: str | None,
    textfile: str | None,
    push: str | None,
    server_labels: bool,
    verbose: int,
) -> None:
    """Run a probe definition from probes/ (TOML) once, or validate definitions.

    Runs once with the same report, outputs and exit status as lkice run (0 ok, 1 degraded,
    2 failed, 3 unknown), for cron, systemd timers and Nagios/Icinga. Credentials come from the
    environment variables or files the definition names; a mistake in a definition is reported
    with its file, line and key.
    """
    from lkice.probedef import DefinitionError, load, to_request

    if check:
        problems: list[str] = []
        files = [*definitions, *([config] if config else [])]
        if not files:
            raise UsageError("--check needs the definition files to validate: --check FILE...")
        for path in files:
            try:
                definition = load(path)
            except DefinitionError as exc:
                problems += exc.problems
                continue
            click.echo(f"{path}: ok ({definition.summary()})")
        if problems:
            for problem in problems:
                click.echo(problem, err=True)
            sys.exit(EXIT_UNKNOWN)
        sys.exit(0)
    if definitions:
        raise UsageError("to run a definition give --config FILE; to validate, --check FILE...")
    if config is None:
        raise UsageError("give --config FILE to run a definition, or --check FILE to validate")
    from lkice.daemon import Sinks, record
    from lkice.job import diagnose
    from lkice.render.progress import progress_for

    interval = None
    if every is not None:
        from lkice.probedef import EVERY_MAX_S, EVERY_MIN_S, parse_duration

        interval = parse_duration(every)
        if interval is None or not EVERY_MIN_S <= interval <= EVERY_MAX_S:
            raise UsageError(
                f"--every {every[:40]!r}: a duration from 1s to 24h, like 30s, 5m, 1h30m"
            )
    metrics = None
    if metrics_listen or textfile or push:
        from lkice.metrics import ReportMetrics

        metrics = ReportMetrics(server_labels=server_labels)
    sinks = Sinks(
        history=Path(history) if history else None,
        history_max_bytes=history_max_bytes,
        metrics=metrics,
        textfile=Path(textfile) if textfile else None,
        push=push,
    )
    if interval is not None or daemon:
        sys.exit(_probe_daemon(Path(config), sinks, interval, max_runs, metrics_listen, verbose))
    if metrics_listen:
        raise UsageError("--metrics-listen needs --every or --daemon (a one-shot run ends)")
    from lkice import logs

    # Structured logs (the sinks log through structlog) go to stderr: stdout is the report's.
    logs.configure(level=_log_level(verbose))
    try:
        definition = load(config)
        request = to_request(definition, _proxy_env())
    except DefinitionError as exc:
        raise UsageError("\n".join(exc.problems)) from None
    progress = progress_for(not as_json and verbose == 0)
    started = time.perf_counter()
    import asyncio

    report = asyncio.run(diagnose(request, progress))
    report.probe = {
        "name": definition.name,
        "labels": dict(definition.labels),
        "definition": config,
    }
    try:
        _emit(report, _Outputs(as_json, output, paste, html, redact))
    finally:
        # The sinks get the run whatever happened to the output files.
        record(
            report.to_dict(),
            sinks,
            job=definition.name,
            run_seconds=time.perf_counter() - started,
            result="interrupted" if report.interrupted else report.verdict,
            # A timer's one-shot runs have the definition's schedule, if it states one.
            interval_seconds=definition.every_s,
        )

    sys.exit(_finish(report))


def _probe_daemon(
    config: Path,
    sinks: Sinks,
    every: float | None,
    max_runs: int | None,
    metrics_listen: str | None,
    verbose: int,
) -> int:
    """The scheduled probe; exit 0 when stopped by SIGTERM/SIGINT or after --max-runs."""
    from lkice import logs
    from lkice.daemon import ProbeDaemon
    from lkice.probedef import DefinitionError

    logs.configure(level=logging.DEBUG if verbose > 1 else logging.INFO)
    try:
        daemon = ProbeDaemon(config, sinks, every=every, max_runs=max_runs)
    except DefinitionError as exc:
        raise UsageError("\n".join(exc.problems)) from None
    _ = daemon.every  # no schedule at all: a usage error now, not after the first run
    if metrics_listen:
        from lkice import metrics as prom

        assert sinks.metrics is not None
        host, _, port = metrics_listen.rpartition(":")
        try:
            prom.serve(host or "127.0.0.1", int(port), prom.registry_with(sinks.metrics))
        except (ValueError, OSError) as exc:
            raise UsageError(f"--metrics-listen {metrics_listen}: {exc}") from None
    import asyncio

    asyncio.run(daemon.serve())
    return 0


def _status_of(data: Mapping[str, Any]) -> int:
    """The exit status a report stands for (the pasted run's own), from its fields alone."""
    from lkice.verdict import status_of

    return int(status_of(data))


def _enduser() -> int | None:
    """No arguments: the double-click mode (lkice.enduser), when there is something to test;
    None to show the usual help instead."""
    from lkice import enduser
    from lkice.job import diagnose
    from lkice.render.progress import progress_for

    found = enduser.default_request(enduser.executable_dir())
    if found is None:
        return None
    request, source = found
    click.echo(
        f"lkice {__version__}: testing {_shown(', '.join(request.targets))} ({_shown(source)})\n"
    )
    import asyncio

    report = asyncio.run(diagnose(request, progress_for(True)))
    paste, html = enduser.output_names(enduser.output_dir(enduser.executable_dir()))
    _emit(report, _Outputs(paste=str(paste), html=str(html), follow_symlinks=False))
    click.echo(f"\nFor your support ticket, send this file: {paste}")
    click.echo(f"The same report with charts (open it in a browser): {html}")
    return _finish(report)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps every user error to a message and exit 3, never a traceback."""
    args = list(argv) if argv is not None else sys.argv[1:]
    _terminate_like_interrupt()
    try:
        if not args:
            status = _enduser()
            if status is not None:
                from lkice.enduser import wait_for_key

                wait_for_key()
                sys.exit(status)
            args = ["--help"]  # nothing to test: say what lkice can do
        cli.main(args=args, prog_name="lkice", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors, bad option values
        exc.show()
        sys.exit(EXIT_UNKNOWN)
    except (UsageError, OutputError) as exc:
        click.echo(f"lkice: error: {_shown_lines(str(exc))}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except (click.Abort, KeyboardInterrupt):
        click.echo("lkice: interrupted", err=True)
        sys.exit(EXIT_UNKNOWN)
    except Exception as exc:  # a bug: say so briefly; LKICE_DEBUG=1 shows the traceback
        if os.environ.get("LKICE_DEBUG"):
            raise
        # The type and where it was raised only: an exception's text may hold what a server
        # sent or a secret being processed.
        click.echo(
            f"lkice: internal error: {bug_summary(exc)} "
            "(please report it; LKICE_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(EXIT_UNKNOWN)
    sys.exit(0)


def _terminate_like_interrupt() -> None:
    """SIGTERM outside a diagnosis (a lab starting or stopping) ends lkice as Ctrl-C does: the
    ``with`` blocks run, so no lab server is orphaned and no temporary secret stays on disk.
    (During a diagnosis it cuts the run short with a partial report: job._stop_on_signals.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, terminate)


def _shown_lines(text: str) -> str:
    """A message for stderr: several lines stay lines, each with control characters visible."""
    return "\n".join(_shown(line) for line in text.split("\n"))


def _demo_in_network(
    profile: str, rtt: float, jitter: float, loss: float, passthrough: list[str]
) -> int:
    """The diagnosis from inside the namespace lab; returns lkice's own exit status there."""
    from lkice.lab.demo import run_in_network_lab
    from lkice.lab.netlab import PROFILES, prerequisites
    from lkice.lab.server import LabError

    if profile not in PROFILES:
        raise UsageError(f"--network {profile!r}: unknown profile (one of {', '.join(PROFILES)})")
    missing = prerequisites()
    if missing:
        raise UsageError("--network needs the namespace lab: " + "; ".join(missing))

    def announce(host: str) -> None:
        click.echo(
            f"lkice demo: namespace lab, firewall profile {profile}, +{rtt:g} ms RTT, "
            f"±{jitter:g} ms jitter, {loss:g} % loss each way; TURN server {host}\n",
            err=True,
        )

    try:
        proc = run_in_network_lab(profile, rtt, jitter, loss, passthrough, announce)
    except LabError as exc:
        raise UsageError(f"cannot start the namespace lab: {exc}") from None
    click.echo(proc.stdout, nl=False)
    click.echo(proc.stderr, nl=False, err=True)
    return proc.returncode
