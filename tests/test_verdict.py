"""Verdict and exit status (pure)."""

from __future__ import annotations

import pytest

from lkice.errors import ErrorKind, ProbeError
from lkice.report import PathResult
from lkice.verdict import ExitStatus, Verdict, decide, exit_status


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
        address=address,
        redirected_from=redirected_from,
    )
    if not ok:
        result.fail(ProbeError(kind, "failed"))
    return result


def test_all_ok() -> None:
    assert decide([path("udp", True), path("tcp", True)]) is Verdict.OK


def test_only_tcp_works_is_degraded() -> None:
    assert decide([path("udp", False), path("tcp", True), path("tls", True)]) is Verdict.DEGRADED


def test_nothing_works_is_failed() -> None:
    assert (
        decide([path("udp", False), path("tcp", False, ErrorKind.CONNECT_TIMEOUT)])
        is Verdict.FAILED
    )
    assert decide([]) is Verdict.FAILED


def test_followed_redirect_is_not_a_failure() -> None:
    first = path("udp", False, ErrorKind.TRY_ALTERNATE, address="192.0.2.1:3478")
    followed = path("udp", True, address="192.0.2.2:3478", redirected_from="192.0.2.1:3478")
    assert decide([first, followed]) is Verdict.OK
    unrelated = path("udp", True, address="192.0.2.3:3478")
    assert decide([first, unrelated]) is Verdict.DEGRADED


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
    assert decide([path("udp", True), untested]) is Verdict.OK
    assert decide([path("udp", False), untested]) is Verdict.FAILED
