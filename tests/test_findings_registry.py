"""The findings registry (lkice/findings/registry.py): every rule declares the ids it may emit, the
declarations match docs/findings.md, every rule runs in the one order, and a rule that emits an
id it did not declare is a bug that stops the run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import lkice.findings
from lkice.findings import ORDER, REGISTRY, evaluate, registry
from lkice.findings.common import Finding, _Ctx, _finding
from tests.conftest import as_doc
from tests.test_findings import make_path, make_report, make_signal, run

DOCS = Path(__file__).parent.parent / "docs" / "findings.md"
PROXY = "198.18.0.1:3128"


def documented_ids() -> set[str]:
    """The ids of docs/findings.md's table: backticked in the first column, one or more a row."""
    table = DOCS.read_text().split("## Finding ids", 1)[1].split("\n## ", 1)[0]
    ids: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            ids |= set(re.findall(r"`([a-z0-9-]+)`", line.split("|")[1]))
    return ids


def test_the_registry_and_the_docs_table_name_the_same_ids() -> None:
    documented = documented_ids()
    assert documented, "no ids found in docs/findings.md"
    declared = registry.ids()
    assert declared == documented, (
        f"declared, not documented: {sorted(declared - documented)}; "
        f"documented, not declared: {sorted(documented - declared)}"
    )


def test_every_registered_rule_runs_once_in_the_order() -> None:
    assert sorted(ORDER) == sorted(REGISTRY)
    assert len(set(ORDER)) == len(ORDER)
    assert [r.name for r in lkice.findings._RUN] == list(ORDER)
    # path-failed reports what no rule before it explained: it must run last.
    assert ORDER[-1] == "unexplained"
    assert REGISTRY["unexplained"].ids == ("path-failed",)


def test_each_rule_lives_in_the_module_of_its_family() -> None:
    for r in REGISTRY.values():
        assert r.fn.__module__ == f"lkice.findings.{r.family}", r
        assert r.fn.__name__ == f"_rule_{r.name}", r
        assert r.ids, r
        assert r.severity, r
    families = {r.family for r in REGISTRY.values()}
    assert not families & {"common", "registry"}


def test_an_id_belongs_to_one_rule() -> None:
    declared = [i for r in REGISTRY.values() for i in r.ids]
    assert len(declared) == len(set(declared))


def bad_rule(ctx: _Ctx) -> list[Finding]:
    return [_finding("not-declared", "warning", "s", "i", ["e"], "a")]


def throwaway(**kwargs: Any) -> registry.Rule:
    return registry.Rule("throwaway", "tests", ("declared",), "warning", bad_rule, **kwargs)


def test_an_undeclared_id_is_a_bug() -> None:
    ctx = _Ctx(as_doc(make_report([])), [], [])
    with pytest.raises(RuntimeError, match=r"'throwaway'.*'not-declared'"):
        registry.checked(throwaway(), bad_rule(ctx))


def test_evaluate_stops_on_a_rule_that_emits_an_undeclared_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lkice.findings, "_RUN", (*lkice.findings._RUN[:-1], throwaway()))
    with pytest.raises(RuntimeError, match=r"'throwaway'.*'not-declared'"):
        evaluate(as_doc(make_report([])))


def test_registering_a_rule_keeps_the_registry_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))

    @registry.rule(("declared",), "warning")
    def _rule_throwaway(ctx: _Ctx) -> list[Finding]:
        return []

    entry = registry.REGISTRY["throwaway"]
    assert (entry.family, entry.ids, entry.fn) == (
        "test_findings_registry",
        ("declared",),
        _rule_throwaway,
    )
    with pytest.raises(RuntimeError, match="not listed"):
        registry.ordered(ORDER)  # registered, not in the order
    with pytest.raises(RuntimeError, match="unknown"):
        registry.ordered((*ORDER, "throwaway", "no-such-rule"))
    assert registry.ordered((*ORDER, "throwaway"))[-1] is entry
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.rule(("other",), "warning")(_rule_throwaway)
    with pytest.raises(RuntimeError, match="both declare no-path"):

        @registry.rule(("no-path",), "critical")
        def _rule_another(ctx: _Ctx) -> list[Finding]:
            return []


def test_signaling_leaves_the_kinds_other_rules_explain_to_them() -> None:
    assert registry.kinds_of("proxy_required", "tls", "token") == {
        "proxy",
        "tls_verify",
        "token_rejected",
    }
    for kind, name in (
        ("proxy", "proxy_required"),
        ("tls_verify", "tls"),
        ("token_rejected", "token"),
    ):
        _, by_id = run(make_report([], signal=make_signal(False, kind)))
        assert set(by_id) & set(REGISTRY[name].ids), (kind, list(by_id))
        assert "signal-failed" not in by_id, (kind, list(by_id))
    _, by_id = run(make_report([], signal=make_signal(False, "connect_timeout")))
    assert "signal-failed" in by_id


def proxy_refused_one_port() -> dict[str, Any]:
    refused = make_path(
        "turn",
        "tls",
        False,
        "proxy",
        port=5349,
        message=f"proxy {PROXY} refused CONNECT (HTTP 403)",
    )
    works = make_path("turn", "tls", True, rtt=20.0, relay_rtt=40.0)
    for p in (works, refused):
        p["proxy"] = PROXY
    return make_report([works, refused])


def test_an_info_finding_explains_a_failure_only_when_its_rule_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    findings, by_id = run(proxy_refused_one_port())
    assert by_id["proxy-policy"]["severity"] == "info"
    assert REGISTRY["via_proxy"].explains_failures
    assert "path-failed" not in by_id  # the policy finding explains the refused path
    # Without the declaration the same refusal is a failure nothing explained.
    monkeypatch.setattr(
        lkice.findings,
        "_RUN",
        tuple(
            registry.Rule(r.name, r.family, r.ids, r.severity, r.fn, r.kinds)
            if r.name == "via_proxy"
            else r
            for r in lkice.findings._RUN
        ),
    )
    assert "path-failed" in {f["id"] for f in evaluate(as_doc(proxy_refused_one_port()))}
    # "works" findings explain nothing.
    assert not any(REGISTRY[n].explains_failures for n in ("works", "agent_busy", "nat"))
    assert findings
