"""Shared fixtures: real coturn and real pion/turn on loopback with a CA made per session.

``turn_server`` runs a test once against each TURN server (``[coturn]``, ``[pion]``); tests that
start their own server take ``turn_kind`` and call ``turn_kind.server(...)``.

Every test is marked with what it needs (``pure``, ``servers``, ``tools``, ``root``,
``chromium``; tests/kinds.py, docs/testing.md), and a ``pure`` test that starts a program fails."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import jsonschema
import pytest

from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.pion import PionConfig, PionTurn, RestForm, pion_unavailable_reason
from lkice.lab.pki import LabPki, make_pki
from lkice.report import load_schema
from lkice.report.read import ReportDoc
from tests import kinds

needs_coturn = pytest.mark.skipif(
    turnserver_path() is None, reason="coturn (turnserver) is not installed: apt-get install coturn"
)
# Only whether it can be had: a pion build that fails is an error in the ``pion`` fixture.
needs_pion = pytest.mark.skipif(
    pion_unavailable_reason() is not None, reason=pion_unavailable_reason() or ""
)

ServerName = Literal["coturn", "pion"]
TurnServer = Coturn | PionTurn


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPki:
    """A CA the client does not trust, named like a corporate TLS-inspection proxy."""
    return make_pki(
        tmp_path_factory.mktemp("rogue"),
        organization="Contoso Corp",
        unit="Contoso TLS Inspection CA",
        prefix="rogue",
    )


# A second user on the session's servers, for tests that need two usernames.
SECOND_USER = {"bob": "bobs-password"}


class TurnLab:
    def __init__(
        self, server: TurnServer, user: str, password: str, name: ServerName = "coturn"
    ) -> None:
        self.server = server
        self.user = user
        self.password = password
        self.name = name

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        return self.server.tls_port


@pytest.fixture(scope="session")
def coturn(pki: LabPki) -> Iterator[TurnLab]:
    if turnserver_path() is None:
        pytest.skip("coturn (turnserver) is not installed: apt-get install coturn")
    user, password = "alice", secrets.token_urlsafe(12)
    users = {user: password, **SECOND_USER}
    with Coturn(CoturnConfig(users=users, pki=pki)) as server:
        yield TurnLab(server, user, password)


@pytest.fixture
async def pion(pki: LabPki) -> AsyncIterator[TurnLab]:
    """pion/turn as LiveKit's built-in TURN runs it: static users, UDP, TCP and TLS.

    One per test (it starts in milliseconds), stopped inside the test's event loop: pion 2.1.0
    never closes a connection, so a client's TLS close (close_notify, then waiting for the
    server's) only ends when the server exits; the loop must still run then, or the socket
    outlives it and warns in some later test."""
    reason = pion_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    user, password = "alice", secrets.token_urlsafe(12)
    with PionTurn(PionConfig(users={user: password, **SECOND_USER}, pki=pki)) as server:
        yield TurnLab(server, user, password, name="pion")
    await asyncio.sleep(0.1)  # the clients' transports see the connections end


@dataclass(frozen=True)
class TurnKind:
    """Which TURN server a parametrised test runs against, and how to start another of it."""

    name: ServerName

    def server(
        self,
        *,
        users: dict[str, str] | None = None,
        pki: LabPki | None = None,
        static_auth_secret: str | None = None,
        rest_form: RestForm | None = None,
    ) -> TurnServer:
        """A server of this kind, not yet started (``with kind.server(...) as server:``).
        ``rest_form`` picks pion's REST username form (coturn's use-auth-secret has one)."""
        if self.name == "coturn":
            return Coturn(
                CoturnConfig(users=users or {}, pki=pki, static_auth_secret=static_auth_secret)
            )
        return PionTurn(
            PionConfig(
                users=users or {},
                pki=pki,
                static_auth_secret=static_auth_secret,
                rest_form=rest_form or "pion",
            )
        )


TURN_KINDS = [
    pytest.param(TurnKind("coturn"), id="coturn", marks=needs_coturn),
    pytest.param(TurnKind("pion"), id="pion", marks=needs_pion),
]


@pytest.fixture(params=TURN_KINDS)
def turn_kind(request: pytest.FixtureRequest) -> TurnKind:
    kind: TurnKind = request.param
    return kind


@pytest.fixture
def turn_server(turn_kind: TurnKind, request: pytest.FixtureRequest) -> TurnLab:
    """The ready server of ``turn_kind`` (coturn: the session's; pion: this test's): each test
    using it runs on coturn and on pion."""
    lab: TurnLab = request.getfixturevalue(turn_kind.name)
    return lab


def known_gap(request: pytest.FixtureRequest, server: str, on: str, reason: str) -> None:
    """The test asserts the correct behaviour, which lkice does not show against ``on`` yet:
    expect the failure there (strictly, so the fix that makes it pass must remove this)."""
    if server == on:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on TCP or UDP (released just before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def validate_report(data: Mapping[str, Any]) -> None:
    jsonschema.validate(data, load_schema(), format_checker=jsonschema.FormatChecker())


def as_doc(data: Mapping[str, Any]) -> ReportDoc:
    """A report a test built by hand, handed to the readers as lkice.intake.load_report would
    hand it over (the tests validate what they build where it matters)."""
    return cast("ReportDoc", data)


def plain(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A report read loosely by a test that pokes at nested figures it knows are there."""
    return cast("dict[str, Any]", doc)


def load_json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- what each test needs (tests/kinds.py) ---------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    kinds.mark_kinds(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    with kinds.guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A pure test that started a program fails, naming it (in the phase that started it)."""
    report = yield
    started = kinds.spawned() if item.get_closest_marker(kinds.PURE) else []
    if started:
        if report.passed:
            report.outcome = "failed"
            report.longrepr = "\n".join(started)
        else:
            report.sections.append(("pure test started a program", "\n".join(started)))
    return report
