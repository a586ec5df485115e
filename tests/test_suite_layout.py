"""The suite's layout (docs/testing.md): every test is marked with what it needs, a ``pure`` test
needs nothing but Python, and the tables of tests/kinds.py name only what exists.

The whole suite is collected afresh here (in this process, nothing run), whatever this run
selected, so the check holds for ``-m pure``, a single file or the full run alike."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import kinds

TESTS = Path(__file__).resolve().parent


class _Grab:
    def __init__(self) -> None:
        self.items: list[pytest.Item] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


@pytest.fixture(scope="module")
def suite() -> list[pytest.Item]:
    """Every test of the suite, collected and marked as a run would (nothing deselected)."""
    grab = _Grab()
    args = ["--collect-only", "-qq", "-p", "no:cacheprovider", "--assert=plain", str(TESTS)]
    with pytest.MonkeyPatch.context() as env, kinds.unguarded():
        env.delenv("PYTEST_ADDOPTS", raising=False)
        status = pytest.main(args, plugins=[grab])
    assert status == pytest.ExitCode.OK, f"collecting the suite failed: {status!r}"
    assert len(grab.items) > 500, len(grab.items)
    return grab.items


def test_every_pure_test_needs_nothing_but_python(suite: list[pytest.Item]) -> None:
    found = kinds.problems(kinds.Collected.of(item) for item in suite)
    assert found == [], "\n".join(found)


def test_the_tables_name_what_exists(suite: list[pytest.Item]) -> None:
    """A renamed fixture, module or test would silently drop its kind: every entry must still
    match something collected."""
    fixtures = {kinds.definition(f) for item in suite for f in kinds.fixtures_of(item).values()}
    modules = {kinds.module_of(item) for item in suite}
    ids = {kinds.id_of(item) for item in suite}
    assert sorted(set(kinds.FIXTURE_KINDS) - fixtures) == []
    assert sorted(set(kinds.MODULE_KINDS) - modules) == []
    assert sorted(set(kinds.TEST_KINDS) - ids) == []
    assert sorted(set(kinds.PURE_DESPITE) - ids) == []
    # A starter that moved (lkice/lab/prometheus.py went to tests/support) would match nothing.
    for name in kinds.STARTERS:
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), f"{name}: no such starter"
    # An exception is needed only while the test's code refers to a starter.
    by_id = {kinds.id_of(item): item for item in suite}
    for test in kinds.PURE_DESPITE:
        item = by_id[test]
        assert kinds.kinds_of(item) == {kinds.PURE}, (test, kinds.kinds_of(item))
        assert isinstance(item, pytest.Function)
        assert kinds.references(item.function), f"{test}: no longer needs its PURE_DESPITE entry"


def test_the_markers_are_declared_as_kinds_says() -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read(TESTS.parent / "setup.cfg")
    declared = {}
    for line in config["tool:pytest"]["markers"].strip().splitlines():
        name, _, description = line.partition(":")
        declared[name.strip()] = description.strip()
    assert {k: v for k, v in declared.items() if k in kinds.KINDS} == kinds.KINDS
    assert set(kinds.NEEDS) | {kinds.PURE} == set(kinds.KINDS)


def test_each_kind_has_tests_and_root_keeps_its_meaning(suite: list[pytest.Item]) -> None:
    by_kind: dict[str, set[str]] = {kind: set() for kind in kinds.KINDS}
    for item in suite:
        for kind in kinds.kinds_of(item):
            by_kind[kind].add(kinds.id_of(item))
    assert all(by_kind.values()), {k: len(v) for k, v in by_kind.items()}
    assert "tests/test_netlab.py::TestLab::test_the_lab_has_no_way_out" in by_kind[kinds.ROOT]
    assert "tests/test_html.py::test_in_chromium" in by_kind[kinds.CHROMIUM]
    assert "tests/test_dns.py::test_a_and_aaaa_are_separate_addresses" in by_kind[kinds.SERVERS]
    assert "tests/test_codec.py::test_framer_bounds_its_buffer" in by_kind[kinds.PURE]
    # The network lab needs root and starts servers in it; every root test says root.
    for test in by_kind[kinds.ROOT]:
        assert test not in by_kind[kinds.PURE], test


# -- the checks can fail ---------------------------------------------------------------------------

# Sample tests, compiled from text so that this module's own code refers to no starter.
SAMPLES = """
import subprocess
from lkice.lab import dns
from lkice.lab.coturn import Coturn, CoturnConfig

def starts_coturn():
    with Coturn(CoturnConfig()):
        pass

def helper():
    from lkice.lab.livekit_server import LabLiveKit
    return LabLiveKit

def calls_a_helper():
    return helper()

def asks_promtool():
    return subprocess.run(["promtool", "check", "metrics"], check=False)

def uses_a_module():
    return dns.Dnsmasq({})

def clean():
    return sum([1, 2])
"""


def samples() -> dict[str, Callable[..., object]]:
    namespace: dict[str, object] = {"__name__": "tests.layout_samples"}
    exec(compile(SAMPLES, "<layout samples>", "exec"), namespace)  # noqa: S102
    return {k: v for k, v in namespace.items() if isinstance(v, types.FunctionType)}


def sample(
    name: str, *, kinds_: frozenset[str] = frozenset({kinds.PURE}), **fixtures: str
) -> kinds.Collected:
    functions = samples()
    return kinds.Collected(
        f"tests/samples.py::{name}",
        f"tests/samples.py::{name}",
        kinds_,
        functions[name],
        {fixture: functions[body] for fixture, body in fixtures.items()},
    )


def test_references_are_found_through_helpers_imports_and_strings() -> None:
    functions = samples()
    assert [(r.kind, r.what) for r in kinds.references(functions["starts_coturn"])] == [
        (kinds.SERVERS, "lkice.lab.coturn.Coturn")
    ]
    (via_helper,) = kinds.references(functions["calls_a_helper"])
    assert via_helper.what == "lkice.lab.livekit_server.LabLiveKit"
    assert via_helper.via == ("calls_a_helper", "helper")
    assert [r.what for r in kinds.references(functions["asks_promtool"])] == ["'promtool'"]
    assert [r.what for r in kinds.references(functions["uses_a_module"])] == [
        "lkice.lab.dns.Dnsmasq"
    ]
    assert kinds.references(functions["clean"]) == []


def test_problems_name_a_pure_test_that_is_not() -> None:
    assert kinds.problems([sample("clean", closed="clean")]) == []
    (body,) = kinds.problems([sample("starts_coturn")])
    assert "pure but its code refers to lkice.lab.coturn.Coturn" in body
    assert "@pytest.mark.servers" in body
    (fixture,) = kinds.problems([sample("clean", lab="calls_a_helper")])
    assert "its fixture 'lab'" in fixture
    assert "FIXTURE_KINDS" in fixture
    (both,) = kinds.problems([sample("clean", kinds_=frozenset({kinds.PURE, kinds.ROOT}))])
    assert "marked pure and root" in both
    (unmarked,) = kinds.problems([sample("clean", kinds_=frozenset())])
    assert "no kind marker" in unmarked


def test_a_pure_test_using_a_server_fixture_is_named(suite: list[pytest.Item]) -> None:
    """A real fixture of FIXTURE_KINDS (coturn) under a test marked pure: named."""
    user = next(item for item in suite if "coturn" in kinds.fixtures_of(item))
    collected = kinds.Collected.of(user)
    forced = kinds.Collected(
        collected.test_id,
        collected.nodeid,
        frozenset({kinds.PURE}),
        samples()["clean"],
        collected.fixtures,
    )
    found = kinds.problems([forced])
    assert any("pure but uses fixture 'coturn' (servers)" in p for p in found), found


def test_the_guard_notes_a_pure_test_starting_a_program() -> None:
    """This test is pure: starting anything but this Python is noted, even a program that is not
    there (noted before the exec; taken back here, or tests/conftest.py would fail this test)."""
    absent = "/nonexistent/lkice-layout-probe"
    with pytest.raises(FileNotFoundError):
        subprocess.run([absent, "--version"], check=False)
    (noted,) = kinds.spawned()
    assert "test_the_guard_notes_a_pure_test_starting_a_program is marked pure but started" in noted
    assert f"started {absent} --version:" in noted
    assert kinds.spawned() == []  # reported once
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, check=True)
    assert done.stdout == b"42\n"
    wrapped = [kinds.WRAPPER, "--mount", "--", "/bin/sh", "-c", "x", "arg0", sys.executable]
    assert kinds.allowed(wrapped)
    assert not kinds.allowed([kinds.WRAPPER, "--net", "/usr/sbin/a-server"])
    assert not kinds.allowed(["/bin/sh", "-c", f"{sys.executable} -c pass"])
    assert kinds.allowed(["/sbin/ldconfig", "-p"])  # ctypes.util.find_library, in a library
