"""Shared fixtures: real coturn on loopback with a CA made per session."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lkice.lab.coturn import Coturn, CoturnConfig, turnserver_path
from lkice.lab.pki import LabPki, make_pki
from lkice.report import load_schema

needs_coturn = pytest.mark.skipif(
    turnserver_path() is None, reason="coturn (turnserver) is not installed: apt-get install coturn"
)


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


class TurnLab:
    def __init__(self, server: Coturn, user: str, password: str) -> None:
        self.server = server
        self.user = user
        self.password = password

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
    with Coturn(CoturnConfig(users={user: password}, pki=pki)) as server:
        yield TurnLab(server, user, password)


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on TCP or UDP (released just before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def validate_report(data: dict[str, Any]) -> None:
    jsonschema.validate(data, load_schema(), format_checker=jsonschema.FormatChecker())


def load_json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
