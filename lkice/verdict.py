"""Verdict and exit status, decided in one place (pure).

Exit statuses follow the Nagios/Icinga plugin convention because monitoring systems run lkice:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from lkice.errors import ErrorKind
from lkice.report import PathResult, Report


class ExitStatus(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class Verdict(str, enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


def _settled_by_redirect(path: PathResult, paths: Sequence[PathResult]) -> bool:
    """A 300 Try Alternate is not a failure when the alternate it named was reached."""
    if path.error is None or path.error.kind != ErrorKind.TRY_ALTERNATE.value:
        return False
    return any(p.ok and p.redirected_from == path.address for p in paths)


def decide(paths: Sequence[PathResult]) -> Verdict:
    """ok: every path works; degraded: some transports fail (or only TCP/TLS works); failed: none.
    Paths the agent could not test (``not_tested``) count neither way."""
    paths = [p for p in paths if p.error is None or p.error.kind != ErrorKind.NOT_TESTED.value]
    if not any(p.ok for p in paths):
        return Verdict.FAILED
    if all(p.ok or _settled_by_redirect(p, paths) for p in paths):
        return Verdict.OK
    return Verdict.DEGRADED


def exit_status(verdict: Verdict, interrupted: bool = False) -> ExitStatus:
    if interrupted:
        return ExitStatus.UNKNOWN
    return {
        Verdict.OK: ExitStatus.OK,
        Verdict.DEGRADED: ExitStatus.WARNING,
        Verdict.FAILED: ExitStatus.CRITICAL,
    }[verdict]


# Signaling failures that mean "fix the configuration" (UNKNOWN), not "the network is broken".
CONFIGURATION_ERRORS = frozenset({"token_rejected"})


def livekit_verdict(report: Report) -> Verdict:
    """With a LiveKit target, nothing works if signaling does not; with signaling alone and no
    ICE server to measure, the deployment is reachable but its media paths are unproven."""
    signal = report.signal
    if signal is None:
        return decide(report.paths)
    if not signal.ok:
        return Verdict.FAILED
    if not report.paths:
        return Verdict.DEGRADED
    return decide(report.paths)


def report_exit_status(report: Report) -> ExitStatus:
    return status_of(report.to_dict())


def status_of(data: Mapping[str, Any]) -> ExitStatus:
    """The exit status a report (a ``Report.to_dict()``, or a pasted one) stands for: UNKNOWN
    for a configuration error (a rejected token), an interrupted run, or a run in which this
    computer could test nothing (every path failed locally); else the verdict's."""
    signal = data.get("signal")
    error = signal.get("error") if isinstance(signal, Mapping) else None
    kind = error.get("kind") if isinstance(error, Mapping) else None
    if isinstance(kind, str) and kind in CONFIGURATION_ERRORS | {"local"}:
        return ExitStatus.UNKNOWN
    paths = data.get("paths")
    if isinstance(paths, list) and paths and _nothing_tested(paths):
        return ExitStatus.UNKNOWN
    try:
        return exit_status(Verdict(data.get("verdict")), data.get("interrupted") is True)
    except (TypeError, ValueError):  # not a verdict (an unhashable value is a TypeError)
        return ExitStatus.UNKNOWN


def _nothing_tested(paths: Sequence[Any]) -> bool:
    kinds = [
        p.get("error", {}).get("kind") if isinstance(p.get("error"), Mapping) else None
        for p in paths
        if isinstance(p, Mapping)
    ]
    return bool(kinds) and all(k == ErrorKind.LOCAL.value for k in kinds)
