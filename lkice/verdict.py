"""Verdict and exit status, decided in one place (pure): the verdict from the findings, the exit
status (and the metrics' ``lkice_verdict``) from the report.

Exit statuses follow the Nagios/Icinga plugin convention because monitoring systems run lkice:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from lkice.errors import ErrorKind
from lkice.report import Report


class ExitStatus(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class Verdict(str, enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


def verdict_of(findings: Sequence[Mapping[str, Any]]) -> Verdict:
    """The verdict the findings imply: failed on any critical finding, degraded on any
    warning, else ok. The only definition of the verdict (``lkice.findings`` says why)."""
    severities = {f.get("severity") for f in findings}
    if "critical" in severities:
        return Verdict.FAILED
    if "warning" in severities:
        return Verdict.DEGRADED
    return Verdict.OK


def conclude(report: Report) -> None:
    """Findings, recommendation and the verdict they imply (pure rules over the report)."""
    from lkice.findings import evaluate
    from lkice.recommend import recommend

    data = report.to_dict()
    report.findings = evaluate(data)
    report.recommendation = recommend(data)
    report.verdict = verdict_of(report.findings).value


def exit_status(verdict: Verdict, interrupted: bool = False) -> ExitStatus:
    if interrupted:
        return ExitStatus.UNKNOWN
    return {
        Verdict.OK: ExitStatus.OK,
        Verdict.DEGRADED: ExitStatus.WARNING,
        Verdict.FAILED: ExitStatus.CRITICAL,
    }[verdict]


# Signaling failures that mean "fix the configuration" (UNKNOWN), not "the network is broken".
CONFIGURATION_ERRORS = frozenset({ErrorKind.TOKEN_REJECTED.value})


def report_exit_status(report: Report) -> ExitStatus:
    return status_of(report.to_dict())


def status_of(data: Mapping[str, Any]) -> ExitStatus:
    """The exit status a report (a ``Report.to_dict()``, or a pasted one) stands for: UNKNOWN
    for a configuration error (a rejected token), an interrupted run, or a run in which this
    computer could test nothing (``_nothing_tested``); else the verdict's."""
    signal = data.get("signal")
    error = signal.get("error") if isinstance(signal, Mapping) else None
    kind = error.get("kind") if isinstance(error, Mapping) else None
    if isinstance(kind, str) and kind in CONFIGURATION_ERRORS | {"local"}:
        return ExitStatus.UNKNOWN
    paths = data.get("paths")
    if isinstance(paths, list) and _nothing_tested(paths, signal is None):
        return ExitStatus.UNKNOWN
    try:
        return exit_status(Verdict(data.get("verdict")), data.get("interrupted") is True)
    except (TypeError, ValueError):  # not a verdict (an unhashable value is a TypeError)
        return ExitStatus.UNKNOWN


def _nothing_tested(paths: Sequence[Any], alone: bool) -> bool:
    """Every path failed locally; or, with no signaling (``alone``), there was no path or none
    this computer could test: the run says nothing about the network."""
    kinds = [
        p.get("error", {}).get("kind") if isinstance(p.get("error"), Mapping) else None
        for p in paths
        if isinstance(p, Mapping)
    ]
    if len(kinds) != len(paths):
        return False
    if kinds and all(k == ErrorKind.LOCAL.value for k in kinds):
        return True
    untestable = (ErrorKind.LOCAL.value, ErrorKind.NOT_TESTED.value)
    return alone and all(k in untestable for k in kinds)
