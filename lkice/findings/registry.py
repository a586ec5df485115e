"""The findings registry: every rule, the finding ids it may emit, and the check that it keeps to
them.

A rule is a pure function of the run's context (``common._Ctx``) to a list of findings, declared
where its code is with ``@rule(...)``::

    @rule(("udp-blocked", "udp-refused"), "warning")
    def _rule_udp_blocked(ctx: _Ctx) -> list[Finding]: ...

Its name is the function's without ``_rule_`` (``udp_blocked``), its family the module it lives in
(``reachability``). ``lkice.findings.ORDER`` lists every rule once, in the order they run (the
order of findings within a severity); ``run`` refuses a finding whose id its rule did not declare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lkice.findings.common import Finding, _Ctx

RuleFn = Callable[[_Ctx], list[Finding]]


@dataclass(frozen=True)
class Rule:
    """One rule of the findings engine."""

    name: str  # the function's name without "_rule_": what ORDER lists
    family: str  # the module it lives in (lkice/findings/<family>.py)
    ids: tuple[str, ...]  # every finding id it may emit (docs/findings.md has each one)
    severity: str  # one line: how it picks a severity
    fn: RuleFn
    # Error kinds (signaling's or a path's) whose failures this rule explains, if it is the
    # rule for them: other rules leave them to it (``kinds_of``).
    kinds: frozenset[str] = frozenset()
    # Its info findings explain the failed paths they name (a web proxy refusing one port of a
    # server it lets through on another): those paths are not path-failed. Info findings of
    # other rules ("works") explain nothing; warnings and criticals always do.
    explains_failures: bool = False


# Every registered rule by name, in the order of registration (not of the run: ORDER).
REGISTRY: dict[str, Rule] = {}


def rule(
    ids: Sequence[str],
    severity: str,
    *,
    kinds: Iterable[str] = (),
    explains_failures: bool = False,
) -> Callable[[RuleFn], RuleFn]:
    """Register the decorated function as a rule that may emit ``ids`` (the function itself is
    returned unchanged). A name registered twice, or an id another rule declares, is refused."""

    def register(fn: RuleFn) -> RuleFn:
        entry = Rule(
            name=fn.__name__.removeprefix("_rule_"),
            family=fn.__module__.rsplit(".", 1)[-1],
            ids=tuple(ids),
            severity=severity,
            fn=fn,
            kinds=frozenset(kinds),
            explains_failures=explains_failures,
        )
        if not entry.ids or len(set(entry.ids)) != len(entry.ids):
            raise RuntimeError(f"findings rule {entry.name!r}: ids must be given, each once")
        if entry.name in REGISTRY:
            raise RuntimeError(f"findings rule {entry.name!r} is registered twice")
        for other in REGISTRY.values():
            shared = set(entry.ids) & set(other.ids)
            if shared:
                raise RuntimeError(
                    f"findings rules {other.name!r} and {entry.name!r} both declare "
                    f"{', '.join(sorted(shared))}: an id belongs to one rule"
                )
        REGISTRY[entry.name] = entry
        return fn

    return register


def ordered(names: Sequence[str]) -> tuple[Rule, ...]:
    """The registered rules in the order ``names`` gives: every one exactly once."""
    unknown = [n for n in names if n not in REGISTRY]
    twice = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n in REGISTRY if n not in names]
    if unknown or twice or missing:
        raise RuntimeError(
            "the findings run order must list every registered rule once: "
            f"unknown {unknown}, listed twice {twice}, not listed {missing}"
        )
    return tuple(REGISTRY[n] for n in names)


def ids() -> frozenset[str]:
    """Every finding id a registered rule may emit."""
    return frozenset(i for r in REGISTRY.values() for i in r.ids)


def kinds_of(*names: str) -> frozenset[str]:
    """The error kinds the named rules explain (their declared ``kinds``)."""
    return frozenset(k for n in names for k in REGISTRY[n].kinds)


def checked(entry: Rule, findings: list[Finding]) -> list[Finding]:
    """``findings`` as ``entry`` returned them, if each has an id it declared; an undeclared id
    is a bug in the rule (or its declaration) and raises RuntimeError."""
    for f in findings:
        if f["id"] not in entry.ids:
            raise RuntimeError(
                f"findings rule {entry.name!r} emitted the undeclared id {f['id']!r} "
                f"(it declares {', '.join(entry.ids)})"
            )
    return findings


def run(rules: Sequence[Rule], ctx: _Ctx) -> list[Finding]:
    """Every rule's findings, in the order of ``rules`` (unsorted). ``ctx.covered`` gathers, as
    they come, the paths the findings so far explain, for the rule that runs last (path-failed:
    a failure no rule before it explained)."""
    findings: list[Finding] = []
    for entry in rules:
        found = checked(entry, entry.fn(ctx))
        findings.extend(found)
        ctx.covered.update(
            i
            for f in found
            if f["severity"] != "info" or entry.explains_failures
            for i in f["paths"]
        )
    return findings
