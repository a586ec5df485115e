"""Any report the shipped schema accepts is shown, redacted, pasted and exported as metrics.

The reports come from the schema itself: :func:`schema_strategy` turns the JSON Schema that
``lkice.intake`` validates against into a hypothesis strategy (the subset of JSON Schema the
report schema uses: types, enums, const, properties, items, anyOf/oneOf, $ref, bounds, patterns,
and the path's if/then by filtering). hypothesis-jsonschema's ``from_schema`` was measured at
1.2-1.4 s a report on this schema even with refs inlined (200 examples: over 4 minutes), so the
strategy is built here. Every generated report is checked with ``load_report`` first: a report
it refuses would be a bug of the generator or of the intake, and fails the test.

Strings are hostile on purpose: escape sequences (OSC 0 titles, OSC 52 clipboard writes, CSI 2J),
fake lkice lines after a newline, bidi overrides, Unicode line separators, lone surrogates.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lkice.findings import REGISTRY, evaluate
from lkice.intake import load_report, validation_schema
from lkice.metrics import ReportMetrics, exposition, registry_with
from lkice.paste import decode_paste, encode_paste, paste_summary
from lkice.recommend import recommend
from lkice.redact import redact_report
from lkice.render.html import render as render_html
from lkice.render.text import render as render_text

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOSTILE = [
    "\x1b]0;owned\x07",
    "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07",
    "\x1b[2J\x1b[H",
    "\nlkice: error: FAKE LINE",
    "\r\x1b[Kok",
    "\u202eevil\u202c",
    "\u2028\u2029",
    "\ud800",
    "\x85\x9b31m",
    "\x00\x7f",
    "turn:198.51.100.7:3478",
    "host.example.com",
]
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(HOSTILE),
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=6), max_size=4).map("".join),
)
LIMIT = 2**53  # intake refuses integers JSON cannot carry between programs
JSON_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-LIMIT, LIMIT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _number(node: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    exclude_low = "exclusiveMinimum" in node
    int_low = -LIMIT if low is None else math.ceil(low) + exclude_low
    int_high = LIMIT if high is None else min(math.floor(high), LIMIT)
    ints = st.integers(int_low, int_high)
    if integer:
        # JSON Schema's integer is a mathematical one: 3.0 is an integer too.
        return ints | ints.map(float)
    floats = st.floats(
        low,
        high,
        exclude_min=exclude_low,
        exclude_max="exclusiveMaximum" in node,
        allow_nan=False,
        allow_infinity=False,
    )
    return floats | ints


class _Strategies:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs = schema.get("$defs", {})
        self.memo: dict[str, st.SearchStrategy[Any]] = {}
        self.root = self.of(schema)

    def of(self, node: Any) -> st.SearchStrategy[Any]:
        if node is True or node == {}:
            return JSON_ANY
        assert isinstance(node, dict), node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name not in self.memo:
                self.memo[name] = st.deferred(lambda: self.of(self.defs[name]))
            return self.memo[name]
        if "allOf" in node:
            return self.conditional(node)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return st.one_of([self.of(branch) for branch in node[key]])
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kinds = node.get("type", ["null", "boolean", "number", "string", "array", "object"])
        kinds = kinds if isinstance(kinds, list) else [kinds]
        return st.one_of([self.typed(kind, node) for kind in kinds])

    def conditional(self, node: dict[str, Any]) -> st.SearchStrategy[Any]:
        """``allOf`` of if/then (a path: ok true means no error, false an error): the object is
        drawn, then each property a matching ``then`` names is drawn again to fit it."""
        base = self.of({k: v for k, v in node.items() if k != "allOf"})
        rules = []
        for rule in node["allOf"]:
            assert set(rule) == {"if", "then"}, rule
            then = {
                key: self.of(node["properties"][key]).filter(
                    jsonschema.Draft202012Validator(sub).is_valid
                )
                for key, sub in rule["then"]["properties"].items()
            }
            rules.append((jsonschema.Draft202012Validator(rule["if"]), then))

        @st.composite
        def build(draw: st.DrawFn) -> Any:
            out = draw(base)
            for condition, then in rules:
                if condition.is_valid(out):
                    out.update({key: draw(value) for key, value in then.items()})
            return out

        return build()

    def typed(self, kind: str, node: dict[str, Any]) -> st.SearchStrategy[Any]:
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind in ("integer", "number"):
            return _number(node, kind == "integer")
        if kind == "string":
            if "pattern" in node:
                return st.from_regex(node["pattern"])
            return TEXT.filter(lambda s: len(s) >= node.get("minLength", 0))
        if kind == "array":
            items = self.of(node["items"]) if "items" in node else JSON_ANY
            low = node.get("minItems", 0)
            return st.lists(items, min_size=low, max_size=max(low, node.get("maxItems", 3)))
        assert kind == "object", kind
        return self.object(node)

    def object(self, node: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Any] = node.get("properties", {})
        required = [k for k in node.get("required", []) if k in props]
        optional = [k for k in props if k not in required]
        extra_schema = node.get("additionalProperties", True)
        extra: st.SearchStrategy[dict[str, Any]]
        if extra_schema is False:
            extra = st.just({})
        else:
            values = JSON_ANY if extra_schema is True else self.of(extra_schema)
            keys = TEXT.filter(lambda k: k not in props)
            extra = st.dictionaries(keys, values, max_size=1)

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out = draw(extra)
            for key in required:
                out[key] = draw(self.of(props[key]))
            for key in optional:
                if draw(st.booleans()):
                    out[key] = draw(self.of(props[key]))
            return out

        return build()


REPORTS = _Strategies(validation_schema()).root
REGISTERED_IDS = {fid for rule in REGISTRY.values() for fid in rule.ids}


def raw_controls(text: str, allowed: str = "\n") -> list[str]:
    return [
        ch
        for ch in text
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Cn")
    ]


@FUZZ
@given(REPORTS)
def test_every_schema_valid_report_is_shown_redacted_and_pasted(report: dict[str, Any]) -> None:
    doc = load_report(report)  # the generator writes only what the intake accepts
    # The rules and the recommendation read any valid shape (support tools re-derive them).
    for finding in evaluate(doc):
        assert finding["id"] in REGISTERED_IDS
    recommend(doc)
    text = render_text(doc)
    assert text.endswith("\n")
    assert raw_controls(text) == []
    summary = paste_summary(report)
    assert raw_controls(summary) == []
    assert all(len(line) <= 72 for line in summary.split("\n"))
    assert decode_paste(encode_paste(report, summary)) == report
    for redact in (False, True):
        document = render_html(report, redact=redact)
        assert document.startswith("<!DOCTYPE html>")
        assert raw_controls(document) == []
    redacted = redact_report(report)
    assert raw_controls(json.dumps(redacted, ensure_ascii=False)) == []
    # What --redact --paste writes reads back: redaction keeps the report valid.
    assert decode_paste(encode_paste(redacted, paste_summary(redacted))) == redacted
    # The metrics of a probe run: a lone surrogate in a server name broke the whole exposition.
    metrics = ReportMetrics(server_labels=True)
    metrics.update(report, probe="p", run_seconds=1.0, labels={"site": "\x1b[2J"})
    scrape = exposition(registry_with(metrics)).decode("utf-8")
    assert raw_controls(scrape) == []
