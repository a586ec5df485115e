"""What each test needs, as pytest markers (docs/testing.md): ``pure``, ``servers``, ``tools``,
``root``, ``chromium``.

:func:`mark_kinds` (called by tests/conftest.py at collection) marks every test with what it
needs, from three tables: the fixtures it uses (:data:`FIXTURE_KINDS`), its module
(:data:`MODULE_KINDS`) and, for a test that starts a server in its own body, its id
(:data:`TEST_KINDS`); plus the markers written on the test itself (``@pytest.mark.root``).
A test that needs none of them is ``pure``.

Two checks keep the marking honest, independently of the tables:

- :func:`guarded` (tests/conftest.py runs every ``pure`` test under it): a pure test that starts
  a program other than this Python interpreter fails, naming the program.
- :func:`problems` (tests/test_suite_layout.py, over a fresh collection of the whole suite): a
  pure test must use no fixture of :data:`FIXTURE_KINDS`, and neither its code nor its fixtures'
  (nor the tests/ helpers they call, followed transitively) may refer to anything of
  :data:`STARTERS` or name a program of :data:`PROGRAMS`.
"""

from __future__ import annotations

import contextlib
import dis
import inspect
import os
import shlex
import shutil
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PURE, SERVERS, TOOLS, ROOT, CHROMIUM = "pure", "servers", "tools", "root", "chromium"

# The markers, as setup.cfg declares them ([tool:pytest] markers; test_suite_layout checks that
# the two agree).
KINDS: dict[str, str] = {
    PURE: "needs Python alone: no external program, no root, no browser (loopback sockets, "
    "in-process fakes and `python -m lkice` children are fine); applied automatically",
    SERVERS: "starts a lab server: coturn, pion/turn (and its Go build), dnsmasq, tinyproxy, "
    "Prometheus/Pushgateway, or the lab's LiveKit stand-in (in-process, aiortc sessions)",
    TOOLS: "runs an external tool: promtool, systemd-analyze, the PyInstaller build",
    ROOT: "needs root (network namespaces, nftables)",
    CHROMIUM: "drives Debian's headless Chromium (playwright)",
}
NEEDS = (SERVERS, TOOLS, ROOT, CHROMIUM)

REPO = Path(__file__).resolve().parent.parent

# -- the tables ------------------------------------------------------------------------------------

# Fixtures that start something, by their definition ("module.function"): a test that uses one,
# directly or through another fixture, needs what it starts.
FIXTURE_KINDS: dict[str, tuple[str, ...]] = {
    "tests.conftest.coturn": (SERVERS,),
    "tests.conftest.pion": (SERVERS,),
    # Parametrised over coturn and pion/turn; tests call turn_kind.server(...) to start one.
    "tests.conftest.turn_kind": (SERVERS,),
    "tests.conftest.turn_server": (SERVERS,),
    "tests.hostile.test_secret_sweep.lab": (SERVERS,),  # coturn and the lab LiveKit
    "tests.test_binary.binary": (TOOLS,),  # the PyInstaller build
    # The network lab, the lab LiveKit and LiveKit's ConnectionCheck in Chromium.
    "tests.test_connection_check.open_results": (ROOT, SERVERS, CHROMIUM),
    "tests.test_connection_check.udp_blocked_results": (ROOT, SERVERS, CHROMIUM),
    "tests.test_dns.lab_dns": (SERVERS,),  # dnsmasq
    "tests.test_html.browser": (CHROMIUM,),
    "tests.test_lab_holds.lab": (ROOT, SERVERS),  # the network lab (NetLab)
    "tests.test_lab_livekit.lk": (SERVERS,),
    "tests.test_lab_livekit.client_results": (ROOT, SERVERS),  # unshare --net, coturn
    "tests.test_lab_quality.lab": (ROOT, SERVERS),
    "tests.test_livekit_agent.livekit": (SERVERS,),
    "tests.test_netlab.lab": (ROOT, SERVERS),
    "tests.test_netlab_pion.lab": (ROOT, SERVERS),
    "tests.test_pion_lab.broken_source": (SERVERS,),  # the Go toolchain, compiling
    "tests.test_pion_lab.netns": (ROOT,),
    "tests.test_scenarios.lab_eu": (ROOT, SERVERS),
}

# Modules whose every test needs the same (files relative to the repository).
MODULE_KINDS: dict[str, tuple[str, ...]] = {
    "tests/test_binary.py": (TOOLS,),  # skipped without PyInstaller, every test
    "tests/test_certificates.py": (SERVERS,),  # coturn, pion/turn, the lab LiveKit
    "tests/test_lab_livekit.py": (SERVERS,),  # the lab LiveKit and its SFU (aiortc)
    "tests/test_lab_livekit_net.py": (ROOT, SERVERS),
    "tests/test_lab_prometheus.py": (SERVERS,),
    "tests/test_lab_quality.py": (ROOT, SERVERS),
    "tests/test_livekit_agent.py": (SERVERS,),
    "tests/test_netlab_pion.py": (ROOT, SERVERS),
    "tests/test_prometheus_e2e.py": (SERVERS,),
    "tests/test_resilience.py": (ROOT, SERVERS),
    "tests/test_scenarios.py": (ROOT, SERVERS),
    "tests/test_sfu_paths.py": (SERVERS,),
    "tests/test_train.py": (SERVERS,),  # skipped without coturn, every test
}

# Tests that start a server or a tool in their own body, in modules of mixed kinds (the test's
# id without parameters). A new such test is better marked where it is written
# (``@pytest.mark.servers``); this table spares editing the files that existed before it.
TEST_KINDS: dict[str, tuple[str, ...]] = {
    "tests/hostile/test_regions.py::test_regions_by_name_token_stays_in_the_project_domain": (
        SERVERS,
    ),
    "tests/hostile/test_regions.py::test_a_sibling_under_the_same_parent_domain_gets_no_token": (
        SERVERS,
    ),
    "tests/hostile/test_report_shape.py::test_duration_covers_every_stage_of_the_demo": (SERVERS,),
    "tests/hostile/test_signals.py::test_run_interrupted_during_sfu_sessions": (SERVERS,),
    "tests/test_cli.py::test_demo_runs_the_full_diagnosis": (SERVERS,),
    "tests/test_cli.py::test_turn_rest_secret_never_appears": (SERVERS,),
    "tests/test_cli.py::test_live_progress_only_on_a_terminal": (SERVERS,),
    "tests/test_engine_coturn.py::test_no_allocation_left_behind_with_quota_one": (SERVERS,),
    "tests/test_engine_coturn.py::test_a_relay_that_carries_nothing_is_the_servers_fault": (
        SERVERS,
    ),
    "tests/test_metrics.py::test_exposition_passes_promtool": (TOOLS,),
    "tests/test_metrics.py::test_promtool_would_catch_a_bad_exposition": (TOOLS,),
    "tests/test_metrics.py::test_alert_rules_pass_promtool": (TOOLS,),
    "tests/test_metrics.py::test_dashboard_queries_are_valid_promql": (TOOLS,),
    "tests/test_metrics.py::test_alerts_fire_as_intended": (TOOLS,),
    "tests/test_metrics.py::test_units_pass_systemd_analyze_verify": (TOOLS,),
    "tests/test_nat.py::test_two_address_server_on_loopback_no_nat": (SERVERS,),
    "tests/test_nat.py::test_single_address_server_cannot_tell": (SERVERS,),
    "tests/test_nat.py::test_lab_nat_profiles": (ROOT, SERVERS),
    "tests/test_netlab.py::test_a_dead_delay_router_blackholes_instead_of_bypassing": (
        ROOT,
        SERVERS,
    ),
    "tests/test_netlab.py::test_teardown_leaves_nothing_even_after_an_exception": (ROOT, SERVERS),
    "tests/test_netlab.py::test_setup_failing_half_way_leaves_nothing": (ROOT, SERVERS),
    "tests/test_packaging.py::test_alert_rules_pass_promtool": (TOOLS,),
    "tests/test_pion_differences.py::test_plain_tcp_to_the_tls_port_of_a_pion_that_closes": (
        SERVERS,
    ),
    "tests/test_pion_lab.py::test_the_build_is_cached_per_source": (SERVERS,),
    "tests/test_pion_lab.py::test_a_server_that_cannot_listen_says_why": (SERVERS,),
    "tests/test_pion_lab.py::test_a_missing_certificate_is_named": (SERVERS,),
    "tests/test_pion_lab.py::test_relay_port_range": (SERVERS,),
    "tests/test_pion_lab.py::test_extra_address_and_second_tls_port": (SERVERS,),
    "tests/test_pion_lab.py::test_in_a_network_namespace": (ROOT, SERVERS),
    "tests/test_probe_cli.py::test_a_definition_with_two_regions_runs_once": (SERVERS,),
    "tests/test_prometheus_e2e.py::test_textfile_for_node_exporter": (SERVERS, TOOLS),
    "tests/test_proxy.py::test_tunnel_to_turn_tls_and_refusals": (SERVERS,),
    "tests/test_proxy.py::test_proxy_authentication": (SERVERS,),
    "tests/test_proxy.py::test_turn_tls_through_the_proxy_beside_the_direct_paths": (SERVERS,),
    "tests/test_proxy.py::test_proxy_failures_are_named_and_credentials_never_echoed": (SERVERS,),
}


def id_of(item: pytest.Item) -> str:
    """``tests/test_x.py::[Class::]test_name``: the test's id without its parameters."""
    return f"{module_of(item)}::{item.nodeid.split('::', 1)[1].split('[', 1)[0]}"


def module_of(item: pytest.Item) -> str:
    return Path(item.path).resolve().relative_to(REPO).as_posix()


def definition(func: Callable[..., object]) -> str:
    """``module.qualname`` of a function or class (a fixture's definition, a starter)."""
    func = inspect.unwrap(func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"


def fixtures_of(item: pytest.Item) -> dict[str, Callable[..., object]]:
    """Every fixture the test uses (its closure), by name: the definition it gets."""
    if not isinstance(item, pytest.Function):
        return {}
    found: dict[str, Callable[..., object]] = {}
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        if defs and name in item.fixturenames:
            found[name] = defs[-1].func
    return found


def needs_of(item: pytest.Item) -> set[str]:
    """What the test needs, from the tables and the markers written on it."""
    needs = {mark.name for mark in item.iter_markers() if mark.name in NEEDS}
    needs.update(MODULE_KINDS.get(module_of(item), ()))
    needs.update(TEST_KINDS.get(id_of(item), ()))
    for func in fixtures_of(item).values():
        needs.update(FIXTURE_KINDS.get(definition(func), ()))
    return needs


def mark_kinds(items: Iterable[pytest.Item]) -> None:
    """Mark each test with what it needs, or ``pure`` when it needs none of :data:`NEEDS`."""
    for item in items:
        needs = needs_of(item)
        for kind in sorted(needs):
            if item.get_closest_marker(kind) is None:
                item.add_marker(kind)
        if not needs and item.get_closest_marker(PURE) is None:
            item.add_marker(PURE)


def kinds_of(item: pytest.Item) -> frozenset[str]:
    return frozenset(mark.name for mark in item.iter_markers() if mark.name in KINDS)


# -- the guard: a pure test starts no program -----------------------------------------------------

_PYTHON = os.path.realpath(sys.executable)
_SPAWNS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn", "os.system"})
# As root, tests/hostile/harness.py runs lkice under ``unshare --mount`` (a private resolver,
# so a bug's DNS query stays on loopback); without root it runs lkice directly. Neither needs
# more than Python, so that wrapper around this interpreter is allowed.
WRAPPER = "unshare"
# What the standard library runs to look things up, whoever asks: ctypes.util.find_library
# (ldconfig, then gcc/cc, ld, objdump), platform.architecture (file) and platform.processor (uname).
LOOKUPS = frozenset({"ldconfig", "gcc", "cc", "ld", "objdump", "file", "uname"})
_guarded: str | None = None  # the id of the pure test running now
_spawned: list[str] = []  # what it started that a pure test may not


def _this_python(program: object) -> bool:
    try:
        name = os.fsdecode(program)  # type: ignore[arg-type]
    except TypeError:
        return False
    path = name if os.sep in name else shutil.which(name)
    return path is not None and os.path.realpath(path) == _PYTHON


def _argv(event: str, args: tuple[Any, ...]) -> list[str]:
    if event == "os.system":
        return ["/bin/sh", "-c", os.fsdecode(args[0])]
    executable, argv = (args[1], args[2]) if event == "os.spawn" else (args[0], args[1])
    shown = [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else repr(a) for a in argv]
    if executable is not None:
        shown[:1] = [os.fsdecode(executable)]
    return shown


def allowed(argv: list[str]) -> bool:
    """Whether a pure test may start ``argv``: this Python (lkice as a child, a probe snippet),
    perhaps behind the hostile harness's ``unshare`` wrapper, or a standard library look-up."""
    if not argv:
        return False
    if _this_python(argv[0]) or os.path.basename(argv[0]) in LOOKUPS:
        return True
    return os.path.basename(argv[0]) == WRAPPER and any(_this_python(a) for a in argv[1:])


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _guarded is None or event not in _SPAWNS:
        return
    argv = _argv(event, args)
    if allowed(argv):
        return
    # Noted, not refused: a refusal would leave a lab server half started (its files behind,
    # warnings in later tests); the test fails when it ends (tests/conftest.py).
    _spawned.append(
        f"{_guarded} is marked pure but started {shlex.join(argv)[:300]}: mark it with what it "
        "needs (tests/kinds.py, docs/testing.md)"
    )


sys.addaudithook(_audit)


@contextlib.contextmanager
def guarded(item: pytest.Item) -> Iterator[None]:
    """Run a test (setup, call, teardown) under the guard when it is ``pure``."""
    global _guarded
    if item.get_closest_marker(PURE) is None:
        yield
        return
    previous, _guarded = _guarded, item.nodeid
    _spawned.clear()
    try:
        yield
    finally:
        _guarded = previous


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """Lift the guard for a block that is not the test's own doing: test_suite_layout's fresh
    collection imports every test module, and the lab modules ask ``ip netns list`` then."""
    global _guarded
    previous, _guarded = _guarded, None
    try:
        yield
    finally:
        _guarded = previous


def spawned() -> list[str]:
    """What the running pure test started that it may not, then forgotten: reported once."""
    found = list(_spawned)
    _spawned.clear()
    return found


# -- the check: a pure test refers to nothing that starts a server ------------------------------

# What starts something (or needs root), by definition; a reference to one in a pure test's code,
# its fixtures' or a tests/ helper's they call, is a problem.
STARTERS: dict[str, str] = {
    "lkice.lab.coturn.Coturn": SERVERS,
    "lkice.lab.pion.PionTurn": SERVERS,
    "lkice.lab.pion.build_pion_turn": SERVERS,
    "lkice.lab.pion.pion_turn_path": SERVERS,  # builds pion/turn when no build is cached
    "lkice.lab.dns.Dnsmasq": SERVERS,
    "lkice.lab.tinyproxy.TinyProxy": SERVERS,
    "tests.support.prometheus.Prometheus": SERVERS,
    "tests.support.prometheus.Pushgateway": SERVERS,
    "lkice.lab.demo.DemoLab": SERVERS,
    "lkice.lab.demo.run_in_network_lab": ROOT,
    "lkice.lab.livekit_server.LabLiveKit": SERVERS,
    "lkice.lab.sfu_server.SfuTransport": SERVERS,
    "lkice.lab.netlab.NetLab": ROOT,
    "lkice.lab.netlab.lab.NetLab": ROOT,  # where NetLab is defined (the above re-exports it)
    "playwright.sync_api.sync_playwright": CHROMIUM,
    "playwright.async_api.async_playwright": CHROMIUM,
    # Runs playwright in a child (in the lab's client namespace), where the audit hook is not.
    "tests.support.connection_check.run_connection_check": CHROMIUM,
}
# Programs named in a test's code (a whole string constant), and what running them needs.
PROGRAMS: dict[str, str] = {
    "turnserver": SERVERS,
    "dnsmasq": SERVERS,
    "tinyproxy": SERVERS,
    "demo": SERVERS,  # lkice demo: coturn and the lab LiveKit
    "promtool": TOOLS,
    "npm": TOOLS,  # the livekit-client install of tests/support/connection_check.py
    "systemd-analyze": TOOLS,
    "nft": ROOT,
    "unshare": ROOT,
}
# tests/ helpers not followed, and why they need nothing.
NOT_FOLLOWED: dict[str, str] = {
    "tests.hostile.harness._confined": "adds the unshare wrapper only when already root",
}
# Pure tests that refer to a starter but start nothing, and why.
PURE_DESPITE: dict[str, str] = {
    "tests/test_netlab.py::test_lab_arguments_are_checked": "NetLab's checks: builds no lab",
    "tests/test_netlab.py::test_names_fit_interface_limits": "NetLab's names: builds no lab",
    "tests/test_pion_lab.py::test_a_bad_override_is_named": (
        "LKICE_PION_TURN names no file: the start fails before any build or process"
    ),
    "tests/test_cli.py::test_demo_without_coturn_says_how_to_install": (
        "LKICE_TURNSERVER names no file: the demo stops before it starts anything"
    ),
}


@dataclass(frozen=True)
class Reference:
    """Something a test's code refers to that needs ``kind``, and the chain of calls to it."""

    kind: str
    what: str
    via: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.what} ({self.kind}, via {' > '.join(self.via)})"


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _strings(consts: Iterable[object]) -> Iterator[str]:
    """The strings among constants, inside tuples too (``["promtool", "check"]`` is one)."""
    for const in consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, (tuple, frozenset)):
            yield from _strings(const)


def _followed(obj: object) -> Iterator[types.FunctionType]:
    """The functions of a tests/ helper: itself, or a class's methods (its tests/ bases too)."""
    if isinstance(obj, types.FunctionType):
        yield obj
    elif isinstance(obj, type):
        for klass in obj.__mro__:
            if not klass.__module__.startswith("tests."):
                continue
            for value in vars(klass).values():
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    value = value.fget
                if isinstance(value, types.FunctionType):
                    yield value


def _referred(code: types.CodeType, namespace: Mapping[str, Any]) -> Iterator[tuple[str, object]]:
    """(definition, object or None) of what one code object refers to: globals it loads (and
    their attributes, for a module), and what it imports inside the function."""
    module = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval in namespace:
            obj = namespace[ins.argval]
            if isinstance(obj, types.ModuleType):
                for attr in code.co_names:
                    if hasattr(obj, attr):
                        found = getattr(obj, attr)
                        yield f"{obj.__name__}.{attr}", found
            else:
                yield definition(obj) if callable(obj) else "", obj
        elif ins.opname == "IMPORT_NAME":
            module = str(ins.argval)
        elif ins.opname == "IMPORT_FROM" and module is not None:
            yield f"{module}.{ins.argval}", None


def _in_tests(obj: object) -> bool:
    """A helper of the test suite (not this module: it names starters only as data)."""
    module = str(getattr(obj, "__module__", None) or "")
    return module.startswith("tests.") and module != __name__


def references(func: Callable[..., object]) -> list[Reference]:
    """What ``func`` refers to that needs a kind: a starter, or a program named in a string,
    in its own code or in the tests/ helpers it refers to (followed transitively)."""
    found: list[Reference] = []
    seen: set[types.FunctionType] = set()

    def walk(function: types.FunctionType, via: tuple[str, ...]) -> None:
        if function in seen or definition(function) in NOT_FOLLOWED:
            return
        seen.add(function)
        via = (*via, function.__qualname__)
        for code in _codes(function.__code__):
            for const in _strings(code.co_consts):
                if const in PROGRAMS:
                    found.append(Reference(PROGRAMS[const], repr(const), via))
            for name, obj in _referred(code, function.__globals__):
                if name in STARTERS:
                    found.append(Reference(STARTERS[name], name, via))
                elif _in_tests(obj):
                    for helper in _followed(obj):
                        walk(helper, via)

    unwrapped = inspect.unwrap(func)
    if isinstance(unwrapped, types.FunctionType):
        walk(unwrapped, ())
    return found


@dataclass(frozen=True)
class Collected:
    """One collected test, as :func:`problems` needs it."""

    test_id: str
    nodeid: str
    kinds: frozenset[str]
    function: Callable[..., object]
    fixtures: Mapping[str, Callable[..., object]]

    @classmethod
    def of(cls, item: pytest.Item) -> Collected:
        assert isinstance(item, pytest.Function), item
        return cls(id_of(item), item.nodeid, kinds_of(item), item.function, fixtures_of(item))


def problems(tests: Iterable[Collected]) -> list[str]:
    """Why tests are not marked as what they are (empty when every one is)."""
    found: list[str] = []
    for test in tests:
        if not test.kinds:
            found.append(f"{test.nodeid}: no kind marker (tests/conftest.py did not mark it)")
        if PURE not in test.kinds:
            continue
        if test.kinds - {PURE}:
            others = ", ".join(sorted(test.kinds - {PURE}))
            found.append(f"{test.nodeid}: marked pure and {others}")
        for name, func in sorted(test.fixtures.items()):
            where = definition(func)
            if where in FIXTURE_KINDS:
                needs = ", ".join(FIXTURE_KINDS[where])
                found.append(f"{test.nodeid}: pure but uses fixture {name!r} ({needs})")
                continue
            for ref in references(func):
                found.append(
                    f"{test.nodeid}: pure but its fixture {name!r} ({where}) refers to {ref}: "
                    "add the fixture to FIXTURE_KINDS in tests/kinds.py"
                )
        if test.test_id in PURE_DESPITE:
            continue
        for ref in references(test.function):
            found.append(
                f"{test.nodeid}: pure but its code refers to {ref}: mark the test "
                f"@pytest.mark.{ref.kind} (or list it in tests/kinds.py)"
            )
    return found
