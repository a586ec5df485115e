"""Verdict and exit status (pure): the verdict comes from the findings alone."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lkice.errors import ErrorKind, ProbeError
from lkice.report import PathResult, Report
from lkice.verdict import ExitStatus, Verdict, conclude, exit_status, status_of, verdict_of


def path(
    transport: str,
    ok: bool,
    kind: ErrorKind = ErrorKind.UDP_NO_RESPONSE,
    address: str | None = None,
    redirected_from: str | None = None,
) -> PathResult:
    result = PathResult(
        server="h:3478",
        transport=transport,
        kind="turn",
        uri="turn:h:3478",
        ok=ok,
        address=address or "192.0.2.9:3478",
        redirected_from=redirected_from,
    )
    if not ok:
        result.fail(ProbeError(kind, "failed"))
    return result


def verdict(*paths: PathResult) -> Verdict:
    report = Report(
        started_at=datetime.now(timezone.utc),
        duration_ms=1.0,
        targets=["turn:h:3478"],
        paths=list(paths),
        verdict="not concluded",
        settings={},
    )
    conclude(report)
    assert report.findings is not None
    assert report.verdict == verdict_of(report.findings).value
    return Verdict(report.verdict)


def test_all_ok() -> None:
    assert verdict(path("udp", True), path("tcp", True)) is Verdict.OK


def test_only_tcp_works_is_degraded() -> None:
    assert verdict(path("udp", False), path("tcp", True), path("tls", True)) is Verdict.DEGRADED


def test_nothing_works_is_failed() -> None:
    assert (
        verdict(path("udp", False), path("tcp", False, ErrorKind.CONNECT_TIMEOUT)) is Verdict.FAILED
    )


def test_nothing_tried_or_nothing_testable_is_not_ok() -> None:
    """No evidence is no "ok": a warning, and the exit status says unknown."""
    for paths in ([], [path("tls", False, ErrorKind.NOT_TESTED)]):
        report = Report(
            started_at=datetime.now(timezone.utc), duration_ms=1.0, targets=[],
            paths=list(paths), verdict="not concluded", settings={},
        )  # fmt: skip
        conclude(report)
        assert report.findings is not None
        assert [f["id"] for f in report.findings] == ["nothing-tested"]
        assert report.verdict == "degraded"
        assert status_of(report.to_dict()) is ExitStatus.UNKNOWN


def test_followed_redirect_is_not_a_failure() -> None:
    first = path("udp", False, ErrorKind.TRY_ALTERNATE, address="192.0.2.1:3478")
    followed = path("udp", True, address="192.0.2.2:3478", redirected_from="192.0.2.1:3478")
    assert verdict(first, followed) is Verdict.OK


@pytest.mark.parametrize(
    ("severities", "expected"),
    [
        ([], Verdict.OK),
        (["info"], Verdict.OK),
        (["info", "warning"], Verdict.DEGRADED),
        (["warning", "critical", "info"], Verdict.FAILED),
    ],
)
def test_the_verdict_is_the_most_severe_finding(severities: list[str], expected: Verdict) -> None:
    assert verdict_of([{"severity": s} for s in severities]) is expected


@pytest.mark.parametrize(
    ("verdict", "interrupted", "status"),
    [
        (Verdict.OK, False, ExitStatus.OK),
        (Verdict.DEGRADED, False, ExitStatus.WARNING),
        (Verdict.FAILED, False, ExitStatus.CRITICAL),
        (Verdict.OK, True, ExitStatus.UNKNOWN),
    ],
)
def test_exit_status(verdict: Verdict, interrupted: bool, status: ExitStatus) -> None:
    assert exit_status(verdict, interrupted) is status
    assert int(status) == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[status.name]


def test_paths_the_agent_cannot_test_count_neither_way() -> None:
    untested = path("tls", False, ErrorKind.NOT_TESTED)
    assert verdict(path("udp", True), untested) is Verdict.OK
    assert verdict(path("udp", False), untested) is Verdict.FAILED


def test_a_rejected_token_is_unknown_not_critical() -> None:
    """A configuration error: the exit status (and the metrics' gauge) say unknown."""
    data = {
        "verdict": "failed",
        "paths": [],
        "signal": {"ok": False, "error": {"kind": ErrorKind.TOKEN_REJECTED.value}},
    }
    assert status_of(data) is ExitStatus.UNKNOWN
    data["signal"] = {"ok": False, "error": {"kind": ErrorKind.CONNECT_TIMEOUT.value}}
    assert status_of(data) is ExitStatus.CRITICAL
