"""Reports that come in: bounded, of a schema this lkice reads, valid, or refused by name."""

from __future__ import annotations

import contextlib
import copy
import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lkice.intake import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_REPORT_BYTES,
    SCHEMA_ID,
    ReportError,
    load_report,
    validation_schema,
)
from lkice.redact import redact_report
from tests.conftest import plain

FIXTURE = Path(__file__).parent / "data" / "report-udp-blocked.json"
REPORT: dict[str, Any] = json.loads(FIXTURE.read_text("utf-8"))
INVALID = f"the report does not match {SCHEMA_ID}: "


def error_of(data: object) -> str:
    with pytest.raises(ReportError) as info:
        load_report(data)
    return str(info.value)


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def test_a_real_report_as_text_bytes_or_decoded() -> None:
    text = FIXTURE.read_text("utf-8")
    assert load_report(text) == REPORT
    assert load_report(text.encode()) == REPORT
    assert load_report(REPORT) is REPORT  # checked, not copied


def test_the_shapes_that_reached_internal_error() -> None:
    """issue 12: each of these ended in KeyError/TypeError/RecursionError in explain."""
    assert error_of({"schema": SCHEMA_ID}) == (
        INVALID + "the report: missing lkice_version, started_at, duration_ms and 2 more"
    )
    assert error_of(dict(REPORT, paths="abc")) == (
        INVALID + 'paths: expected array, got a string "abc"'
    )
    assert error_of(dict(REPORT, duration_ms="12")) == (
        INVALID + 'duration_ms: expected number, got a string "12"'
    )
    assert error_of(dict(REPORT, findings={"a": 1})) == (
        INVALID + "findings: expected array or null, got an object"
    )
    deep = dict(REPORT, settings={"x": nested(900)})
    assert error_of(deep) == "the data is nested deeper than 64 levels, more than any report"
    assert error_of(json.dumps(deep)) == error_of(deep)


def test_schema_versions() -> None:
    assert error_of(dict(REPORT, schema="lkice.report/99")) == (
        "the report was written by a newer lkice: lkice.report/99; this lkice reads lkice.report/1"
    )
    assert error_of(dict(REPORT, schema="lkice.report/0")) == (
        'unsupported report schema "lkice.report/0"; this lkice reads lkice.report/1'
    )
    assert error_of(dict(REPORT, schema="lkice.report/1\n")) == (
        'unsupported report schema "lkice.report/1\\n"; this lkice reads lkice.report/1'
    )
    assert error_of({"schema": "other.thing/1"}) == (
        'the data is not an lkice report (schema field is "other.thing/1")'
    )
    assert error_of({}) == "the data is not an lkice report (schema field is null)"
    assert error_of([1, 2]) == "the data is not an lkice report (an array of 2, not an object)"
    assert error_of("3") == "the data is not an lkice report (a number, not an object)"


def test_mistakes_are_located_shown_visibly_and_truncated() -> None:
    bad = dict(REPORT, verdict="\x1b[2J" + "x" * 100)
    msg = error_of(bad)
    assert msg == (
        INVALID + 'verdict: "\\x1b[2Jxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..." is not one of '
        '"ok", "degraded", "failed"'
    )
    assert not [ch for ch in msg if unicodedata.category(ch).startswith("C")]
    summary = {"paths": -1, "ok": 1.5, "failed": "x"}
    assert error_of(dict(REPORT, summary=summary)) == INVALID + (
        'summary.failed: expected integer, got a string "x"; '
        "summary.ok: expected integer, got a number 1.5; "
        "summary.paths: -1 is below the minimum 0"
    )
    many = dict(REPORT, paths=[{}] * 5)
    assert error_of(many).endswith("; and 2 more")


def test_a_broken_object_where_null_is_allowed_names_the_object_s_mistake() -> None:
    """oneOf [null, object]: the branch that fits says what is wrong, not "not valid under any
    of the given schemas"."""
    assert error_of(dict(REPORT, signal={"url": "wss://x"})) == (
        INVALID + "signal: missing ok, error, timings_ms and 1 more"
    )
    path = copy.deepcopy(REPORT["paths"][0])
    path["error"] = {"kind": "no-such-kind", "message": "m"}
    msg = error_of(dict(REPORT, paths=[path]))
    assert msg.startswith(INVALID + 'paths[0].error.kind: "no-such-kind" is not one of "dns", ')
    ok_with_error = dict(REPORT["paths"][0], ok=True)
    assert error_of(dict(REPORT, paths=[ok_with_error])) == (
        INVALID + "paths[0].error: expected null, got an object"
    )


def test_addresses_redacted_placeholders_and_ecma_anchors() -> None:
    path = REPORT["paths"][2]
    for address in ("ip-3:3478", "[ip-12]:443", "host-2:80", "127.0.0.1:3478", "[::1]:3478"):
        load_report(dict(REPORT, paths=[dict(path, mapped_address=address)]))
    thai = "\u0e51.\u0e52.\u0e53.\u0e54:\u0e55"  # Python's \\d takes these digits; ECMA's not
    for address in ("198.51.100.7:3478\n", "ip-3", "evil:80", "1.2.3.4:80 x", thai):
        msg = error_of(dict(REPORT, paths=[dict(path, mapped_address=address)]))
        assert msg.startswith(INVALID + "paths[0].mapped_address: "), msg
    # A redacted report reads back: what --redact --paste writes, explain reads.
    redacted = plain(redact_report(REPORT))
    assert redacted["paths"][2]["mapped_address"].startswith("ip-")
    assert load_report(redacted) == redacted


def test_validation_schema_is_the_shipped_one_adjusted() -> None:
    from lkice.report import load_schema

    schema = validation_schema()
    shipped = load_schema()
    assert schema["required"] == shipped["required"]
    assert schema["properties"]["started_at"]["pattern"] == "(?a)(Z|\\+00:00)\\Z"
    assert schema["$defs"]["address"]["anyOf"][0]["type"] == shipped["$defs"]["address"]["type"]
    schema["required"].append("mutated")  # a copy: the intake is not affected
    load_report(REPORT)


def test_bounds() -> None:
    big = dict(REPORT, padding="x" * MAX_REPORT_BYTES)
    assert error_of(json.dumps(big)).startswith(
        f"the data is {len(json.dumps(big))} bytes, more than any report (at most 4194304)"
    )
    assert error_of(big) == "the data is larger than any report (at most 4194304 bytes)"
    assert MAX_DEPTH == 64
    load_report(dict(REPORT, settings={"x": nested(MAX_DEPTH - 2)}))  # 63 levels in all: fine
    many = "[" + ",".join(["{}"] * (MAX_CONTAINERS + 1)) + "]"
    assert error_of(many) == (
        "the data has more than 20000 objects and arrays, more than any report"
    )
    assert error_of(dict(REPORT, x=[{}] * (MAX_CONTAINERS + 1))) == error_of(many)
    assert error_of("[" * 100_000) == error_of(many)  # counted before parsing: no recursion


def test_what_json_cannot_carry() -> None:
    assert error_of('{"a": NaN}') == "the data is not JSON (NaN is not a JSON number)"
    assert error_of('{"a": -Infinity}') == "the data is not JSON (-Infinity is not a JSON number)"
    assert error_of('{"a": 1e400}') == "the data holds inf, which is not a JSON number"
    assert error_of({"a": float("nan")}) == "the data holds nan, which is not a JSON number"
    assert error_of(dict(REPORT, n=10**20)) == (
        "the data holds a number of 21 digits, more than JSON numbers carry"
    )
    assert error_of('{"a": ' + "9" * 5000 + "}").startswith("the data is not JSON (")
    assert error_of({1: 2}) == "the data has a non-string key 1"
    assert error_of({"a": {1, 2}}) == "the data holds a set, which JSON has not"
    assert error_of(b"\xff{}") == "the data is not JSON (not UTF-8: invalid start byte)"
    assert error_of("{").startswith("the data is not JSON (Expecting property name")
    assert error_of(None) == "the data is not an lkice report (null, not an object)"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from([SCHEMA_ID, "lkice.report/2", "\x1b[2J"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_any_json_value_is_a_report_or_a_report_error(value: Any) -> None:
    for data in (value, json.dumps(value)):
        message = ""
        try:
            load_report(data)
        except ReportError as exc:
            message = str(exc)
        assert not [ch for ch in message if unicodedata.category(ch).startswith("C")]


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_any_text_is_a_report_or_a_report_error(data: str | bytes) -> None:
    with pytest.raises(ReportError):
        load_report(data)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_fixture_with_one_field_changed(data: st.DataObject) -> None:
    report = copy.deepcopy(REPORT)
    node: Any = report
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict) and node:
        node[data.draw(st.sampled_from(list(node)))] = data.draw(JSON)
    with contextlib.suppress(ReportError):
        assert load_report(report) is report
