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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lkice import __version__
from lkice.errors import UsageError

if TYPE_CHECKING:
    import ssl

    from lkice.credentials import TurnCredentials
    from lkice.engine import EngineSettings
    from lkice.probe.train import TrainSettings
    from lkice.report import Report
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


async def _run_engine(uris: Sequence[IceUri], settings: EngineSettings) -> Report:
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
        return await engine.run(uris, settings, stop=stop)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def _emit(report: Report, as_json: bool, output: str | None) -> None:
    from lkice.render.text import render

    data = report.to_dict()
    if output is not None:
        try:
            Path(output).write_text(report.to_json() + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output {output}: cannot write ({exc.strerror})") from None
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(render(data), nl=False)
    if report.interrupted:
        click.echo("lkice: interrupted: the report above is partial", err=True)


def _train(duration: float, interval_ms: float) -> TrainSettings | None:
    from lkice.probe.train import TrainSettings

    if duration <= 0:
        return None
    return TrainSettings(interval=interval_ms / 1000, duration=duration)


def _deadline(setup: float, train: TrainSettings | None) -> float:
    """The user's deadline bounds connection setup; the train's own length comes on top."""
    return setup if train is None else setup + train.duration + train.grace


def _finish(report: Report) -> int:
    from lkice.verdict import Verdict, exit_status

    return int(exit_status(Verdict(report.verdict), report.interrupted))


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
    click.option("-v", "--verbose", count=True, help="Log progress to stderr (-vv for debug)."),
]


def probe_options(fn: Any) -> Any:
    for option in reversed(_common_probe_options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("uris", nargs=-1, required=True, metavar="URI...")
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
@probe_options
def run(
    uris: tuple[str, ...],
    username: str | None,
    credential: str | None,
    turn_secret: str | None,
    turn_user: str,
    ca_file: tuple[str, ...],
    insecure: bool,
    nameserver: str | None,
    deadline: float,
    udp_timeout: float,
    timeout: float,
    quality_duration: float,
    quality_interval: float,
    as_json: bool,
    output: str | None,
    verbose: int,
) -> None:
    """Probe STUN/TURN servers on every transport and report what works.

    URI is stun:host[:port], stuns:host[:port], turn:host[:port][?transport=udp|tcp] or
    turns:host[:port][?transport=tcp] (RFC 7064/7065). turn: without a transport is probed over
    both UDP and TCP.
    """
    from lkice.engine import EngineSettings
    from lkice.probe.path import ProbeSettings
    from lkice.probe.resolve import parse_nameserver
    from lkice.uri import parse_ice_uri

    _setup_logging(verbose)
    parsed = [parse_ice_uri(u) for u in uris]
    train = _train(quality_duration, quality_interval)
    ns = None
    if nameserver is not None:
        try:
            ns = parse_nameserver(nameserver)
        except ValueError:
            raise UsageError(f"--nameserver {nameserver!r}: expected IP or IP:PORT") from None
    settings = EngineSettings(
        probe=ProbeSettings(
            udp_timeout=udp_timeout,
            timeout=timeout,
            credentials=_credentials(parsed, username, credential, turn_secret, turn_user),
            tls_context=_tls_context(ca_file, insecure),
            train=train,
        ),
        deadline=_deadline(deadline, train),
        dns_timeout=min(timeout, deadline),
        nameserver=ns,
    )
    report = asyncio.run(_run_engine(parsed, settings))
    _emit(report, as_json, output)
    sys.exit(_finish(report))


@cli.command()
@probe_options
def demo(
    deadline: float,
    udp_timeout: float,
    timeout: float,
    quality_duration: float,
    quality_interval: float,
    as_json: bool,
    output: str | None,
    verbose: int,
) -> None:
    """Start a local lab on loopback (real coturn, a throwaway CA) and diagnose it."""
    import secrets
    import tempfile

    from lkice.credentials import Secret, TurnCredentials
    from lkice.engine import EngineSettings
    from lkice.lab.coturn import Coturn, CoturnConfig, LabError
    from lkice.lab.pki import make_pki
    from lkice.probe.path import ProbeSettings
    from lkice.uri import parse_ice_uri

    _setup_logging(verbose)
    train = _train(quality_duration, quality_interval)
    user, password = "demo", secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="lkice-demo-") as tmp:
        pki = make_pki(Path(tmp))
        try:
            server = Coturn(CoturnConfig(users={user: password}, pki=pki)).start()
        except LabError as exc:
            raise UsageError(f"cannot start the demo lab: {exc}") from None
        try:
            uris = [
                parse_ice_uri(f"stun:127.0.0.1:{server.port}"),
                parse_ice_uri(f"turn:127.0.0.1:{server.port}?transport=udp"),
                parse_ice_uri(f"turn:127.0.0.1:{server.port}?transport=tcp"),
                parse_ice_uri(f"turns:127.0.0.1:{server.tls_port}?transport=tcp"),
            ]
            if not as_json:
                click.echo(
                    f"lkice demo: coturn on 127.0.0.1 (UDP/TCP {server.port}, TLS {server.tls_port}), "
                    "throwaway CA\n"
                )
            settings = EngineSettings(
                probe=ProbeSettings(
                    udp_timeout=udp_timeout,
                    timeout=timeout,
                    credentials=TurnCredentials(Secret(user), Secret(password)),
                    tls_context=_tls_context([str(pki.ca_file)], insecure=False),
                    train=train,
                ),
                deadline=_deadline(deadline, train),
            )
            report = asyncio.run(_run_engine(uris, settings))
        finally:
            server.stop()
    _emit(report, as_json, output)
    sys.exit(_finish(report))


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
