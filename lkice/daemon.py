"""Scheduled probes: one probe definition run every N seconds, unattended.

- Runs never overlap: the next starts on the schedule's next tick after the current one ends; a
  run that takes longer than the interval is logged and counted as an overrun, and the next one
  starts at once (no burst of catch-up runs).
- SIGTERM/SIGINT: the run in progress is cut short (its partial report is still recorded, marked
  interrupted) and the daemon exits 0. SIGHUP: the definition is reloaded before the next run; a
  broken definition is refused with its file/line/key problems and the last good one is kept.
- Every run is data, whatever happened: a network outage is a report with failed paths; a
  missing secret or a bug in a run is logged and counted, and the schedule goes on.
- Each report goes to the sinks: JSON Lines history, Prometheus metrics (served by the caller),
  a node_exporter textfile, a Pushgateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkice.errors import UsageError, bug_summary
from lkice.logs import get_logger
from lkice.probedef import DefinitionError, ProbeDefinition, format_duration, load, to_request

if TYPE_CHECKING:
    from lkice.metrics import ReportMetrics
    from lkice.report import Report
    from lkice.report.read import ReportDoc

__all__ = ["ProbeDaemon", "Sinks", "record"]

log = get_logger("lkice.daemon")


@dataclass(frozen=True)
class Sinks:
    history: Path | None = None
    history_max_bytes: int = 64 * 1024 * 1024
    metrics: ReportMetrics | None = None
    textfile: Path | None = None
    push: str | None = None  # Pushgateway URL


def record(
    report: ReportDoc | None,
    sinks: Sinks,
    *,
    job: str,
    run_seconds: float,
    overran: bool = False,
    result: str | None = None,
    interval_seconds: float | None = None,
) -> None:
    """Send one run's outcome to every sink; a sink that fails is logged, never fatal.
    ``interval_seconds``: the schedule, exported for the not-reporting alert."""
    if report is not None and sinks.history is not None:
        from lkice.history import append

        try:
            append(sinks.history, report, max_bytes=sinks.history_max_bytes)
        except OSError as exc:
            log.error("history_write_failed", path=str(sinks.history), error=str(exc))
    if sinks.metrics is None:
        return
    sinks.metrics.update(
        report,
        probe=job,
        run_seconds=run_seconds,
        overran=overran,
        result=result,
        interval_seconds=interval_seconds,
    )
    if sinks.textfile is None and sinks.push is None:
        return
    from lkice import metrics

    registry = metrics.registry_with(sinks.metrics)
    if sinks.textfile is not None:
        try:
            metrics.write_textfile(sinks.textfile, registry)
        except OSError as exc:
            log.error("textfile_write_failed", path=str(sinks.textfile), error=str(exc))
    if sinks.push is not None:
        try:
            metrics.push(sinks.push, "lkice", registry, {"probe": job})
        except metrics.PushError as exc:
            from lkice.textsafe import redact_url  # --push may carry user:password@

            log.error("push_failed", gateway=redact_url(sinks.push), error=str(exc))


class ProbeDaemon:
    def __init__(
        self,
        config: Path,
        sinks: Sinks,
        *,
        every: float | None = None,
        max_runs: int | None = None,
        diagnose: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.sinks = sinks
        self.every_override = every
        self.max_runs = max_runs
        self.definition: ProbeDefinition = load(config)  # DefinitionError: the caller says why
        self.runs = 0
        self.overruns = 0
        self._reload = asyncio.Event()
        self._stop = asyncio.Event()
        self._run_stop: asyncio.Event | None = None
        self._diagnose = diagnose

    @property
    def every(self) -> float:
        every = self.every_override or self.definition.every_s
        if every is None:
            raise UsageError(
                f"{self.config}: no schedule: give --every DURATION or probe.every in the file"
            )
        return every

    def stop(self) -> None:
        self._stop.set()
        if self._run_stop is not None:
            self._run_stop.set()

    def reload(self) -> None:
        self._reload.set()

    def _apply_reload(self) -> None:
        self._reload.clear()
        try:
            definition = load(self.config)
        except DefinitionError as exc:
            log.error(
                "reload_refused",
                config=str(self.config),
                problems=exc.problems,
                keeping=self.definition.name,
            )
            return
        self.definition = definition
        log.info("reloaded", config=str(self.config), probe=definition.summary())

    async def serve(self) -> None:
        """Run on schedule until stopped (or ``max_runs``). Installs SIGTERM/SIGINT/SIGHUP."""
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload}
        for signum, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler)
        log.info(
            "started",
            config=str(self.config),
            probe=self.definition.summary(),
            every=format_duration(self.every),
        )
        try:
            next_start = time.monotonic()
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._apply_reload()
                started = time.monotonic()
                data, seconds, result = await self.run_once()
                next_start += self.every
                now = time.monotonic()
                overran = now > next_start
                if overran:
                    # Slow run: say so, and start the next one now rather than catching up.
                    self.overruns += 1
                    log.warning(
                        "run_overran",
                        took_s=round(now - started, 3),
                        every_s=self.every,
                        overruns=self.overruns,
                    )
                    next_start = now
                record(
                    data,
                    self.sinks,
                    job=self.definition.name,
                    run_seconds=seconds,
                    overran=overran,
                    result=result,
                    interval_seconds=self.every,
                )

                if self.max_runs is not None and self.runs >= self.max_runs:
                    break
                if overran:
                    continue
                stopper = asyncio.ensure_future(self._stop.wait())
                reloader = asyncio.ensure_future(self._reload.wait())
                try:
                    await asyncio.wait(
                        {stopper, reloader},
                        timeout=next_start - now,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stopper.cancel()
                    reloader.cancel()
                while self._reload.is_set() and not self._stop.is_set():
                    # SIGHUP between runs: reload now, then keep waiting for the tick.
                    self._apply_reload()
                    remaining = next_start - time.monotonic()
                    if remaining > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), remaining)
        finally:
            for signum in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)
            log.info("stopped", runs=self.runs, overruns=self.overruns)

    async def run_once(self) -> tuple[ReportDoc | None, float, str]:
        """One run: (its report or None if it could not start, seconds, result for metrics:
        the verdict, "interrupted", "config_error" or "error")."""
        from lkice.job import diagnose

        definition = self.definition
        self.runs += 1
        started = time.perf_counter()
        log.info("run_started", run=self.runs, probe=definition.name)
        self._run_stop = asyncio.Event()
        report: Report | None = None
        result: str
        try:
            from lkice.probe.proxy import system_proxy_env

            request = to_request(definition, system_proxy_env(os.environ))
            run = self._diagnose or diagnose
            report = await run(request, stop=self._run_stop)
        except (DefinitionError, UsageError) as exc:
            result = "config_error"
            problems = exc.problems if isinstance(exc, DefinitionError) else [str(exc)]
            log.error("run_not_started", run=self.runs, problems=problems)
        except Exception as exc:  # a bug: logged and counted; the schedule goes on
            result = "error"
            # The bug's type and place only: its text may hold what a server sent or a secret.
            log.error("run_crashed", run=self.runs, error=bug_summary(exc))
        else:
            result = "interrupted" if report.interrupted else report.verdict
        finally:
            self._run_stop = None
        seconds = time.perf_counter() - started
        data: ReportDoc | None = None
        if report is not None:
            report.probe = {
                "name": definition.name,
                "labels": dict(definition.labels),
                "definition": str(self.config),
            }
            data = report.to_dict()
            log.info(
                "run_finished",
                run=self.runs,
                verdict=report.verdict,
                interrupted=report.interrupted,
                duration_s=round(seconds, 3),
                paths=len(report.paths),
                paths_ok=sum(p.ok for p in report.paths),
                findings=[f["id"] for f in report.findings or [] if f["severity"] != "info"],
                recommended=(report.recommendation or {}).get("region"),
            )
        return data, seconds, result
