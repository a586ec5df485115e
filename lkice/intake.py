"""Reports that come in: the one way a decoded report reaches lkice's renderers (pure).

A report read back (``lkice explain`` on a paste, a test fixture) was written by someone: an
older or newer lkice, a hand edit, an attacker who recomputed the paste's checksum. Before
anything reads it, :func:`load_report`

* bounds it: at most :data:`MAX_REPORT_BYTES` of JSON text and :data:`MAX_DEPTH` levels of
  nesting (checked iteratively, so the check itself cannot overflow the stack);
* names its schema: only ``lkice.report/1`` is read, a newer one is refused as such;
* validates it against the shipped JSON Schema (``lkice/schema/report-1.json``), naming the
  path of the first few mistakes with their values shown visibly and truncated.

Two deliberate differences from a plain validator (see :func:`validation_schema`): patterns
are read as ECMA-262, as JSON Schema specifies (Python's ``$`` also matches before a final
newline, its ``\\d`` any Unicode digit), and addresses may be ``--redact`` placeholders
(``ip-3:3478``), so a redacted paste reads back. Every refusal is a :class:`ReportError` (a ``ValueError``).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from lkice.textsafe import visible

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

    from lkice.report.read import ReportDoc

__all__ = [
    "MAX_CONTAINERS",
    "MAX_DEPTH",
    "MAX_REPORT_BYTES",
    "SCHEMA_ID",
    "ReportError",
    "load_report",
    "validation_schema",
]

SCHEMA_ID = "lkice.report/1"
_SCHEMA_PREFIX = "lkice.report/"
# Real reports: 23 KB (lkice demo, nine paths, 1 s trains), 1.4 MB (the same with 60 s trains
# at 5 ms: 12,000 probes a path); 4 MiB leaves room for several regions and long trains while
# keeping a hostile report's decoded size (and the renderers' memory) small.
MAX_REPORT_BYTES = 4 * 1024 * 1024
# Real reports nest 7 levels (paths[i].quality.series.rtt_ms[j]); recursive readers of the
# report (json, redaction) stay far from Python's recursion limit.
MAX_DEPTH = 64
# Objects and arrays: a real report has ~15 a path (~140 for lkice demo's nine, however long
# its trains); they are what makes decoded JSON large in memory (an empty object costs 64 bytes
# for its 3 of text), so 4 MiB of "{}," would take ~170 MB. Counted in the text before parsing.
MAX_CONTAINERS = 20_000
# Integers beyond a double's exact range are not interoperable JSON (RFC 8259, section 6), and
# formatting them as floats would overflow.
_MAX_INT = 2**53
_SHOWN_ERRORS = 3
_MAX_PRUNE_ROUNDS = 4
_SHOWN_CHARS = 40
# A placeholder written by --redact where the schema expects an IP address and port.
_PLACEHOLDER_ADDRESS = r"(?a)^(?:\[ip-\d+\]|(?:ip|host)-\d+):\d{1,5}\Z"


class ReportError(ValueError):
    """The data is not a report this lkice can read; the message says why."""


# --------------------------------------------------------------------------------------------
# the schema as validated


def _strict_anchors(node: Any) -> Any:
    """Every ``pattern`` as ECMA-262 reads it: a final ``$`` becomes ``\\Z`` (no final newline
    slips by) and classes are ASCII (``\\d`` is not a Thai or Devanagari digit)."""
    if isinstance(node, dict):
        out = {key: _strict_anchors(value) for key, value in node.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str):
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                pattern = pattern[:-1] + "\\Z"
            out["pattern"] = "(?a)" + pattern
        return out
    if isinstance(node, list):
        return [_strict_anchors(item) for item in node]
    return node


@functools.cache
def _schema() -> dict[str, Any]:
    from lkice.report import load_schema

    schema: dict[str, Any] = _strict_anchors(load_schema())
    address = schema["$defs"]["address"]
    schema["$defs"]["address"] = {
        "anyOf": [address, {"type": "string", "pattern": _PLACEHOLDER_ADDRESS}]
    }
    return schema


def validation_schema() -> dict[str, Any]:
    """The JSON Schema :func:`load_report` validates against: the shipped one with patterns read
    as ECMA-262 (``(?a)`` ASCII classes, ``\\Z`` for a final ``$``) and ``--redact``
    placeholders allowed as addresses."""
    return copy.deepcopy(_schema())


def _simple_number(items: Any) -> bool:
    """An array item schema lkice checks itself: a number (or null) with a minimum, as in the
    quality series, whose tens of thousands of items jsonschema checks at ~13 us each."""
    if not isinstance(items, dict) or set(items) - {"type", "minimum"}:
        return False
    kind = items.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind}
    return bool(kinds) and kinds <= {"number", "null"} and "number" in kinds


def _number_ok(item: Any, items: dict[str, Any]) -> bool:
    kind = items["type"]
    if item is None:
        return isinstance(kind, list) and "null" in kind
    if isinstance(item, bool) or not isinstance(item, int | float):
        return False
    minimum = items.get("minimum")
    return minimum is None or item >= minimum


@functools.cache
def _validator() -> Validator:
    try:
        import jsonschema  # lazy: only reading a report needs it
    except ImportError:  # a build that left it out: say so rather than "internal error"
        raise ReportError(
            "this lkice cannot check reports: the jsonschema package is missing"
        ) from None

    base = jsonschema.Draft202012Validator
    standard = base.VALIDATORS["items"]

    def items(validator: Any, items: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if (
            _simple_number(items)
            and "prefixItems" not in schema
            and validator.is_type(instance, "array")
        ):
            for index, item in enumerate(instance):
                if not _number_ok(item, items):
                    # The standard check names what is wrong with this item.
                    yield from validator.descend(item, items, path=index)
            return
        yield from standard(validator, items, instance, schema)

    extend: Any = jsonschema.validators.extend  # untyped in jsonschema's stubs
    cls = extend(base, {"items": items})
    validator: Validator = cls(_schema())
    return validator


# --------------------------------------------------------------------------------------------
# errors, named


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A value as it appears in a message: short, with nothing a terminal acts on."""
    if isinstance(value, str):
        text = visible(value[: _SHOWN_CHARS + 1])
        if len(value) > _SHOWN_CHARS:
            text = text[:_SHOWN_CHARS] + "..."
        return f'"{text}"'
    if isinstance(value, list | dict):
        return _json_type(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _where(path: Any) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = visible(str(part))
            name = name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."
            out += f".{name}" if out else name
    return out or "the report"


def _types(value: Any) -> str:
    names = value if isinstance(value, list) else [value]
    return " or ".join(str(n) for n in names)


def _describe(error: ValidationError) -> str:
    where = _where(error.absolute_path)
    rule, got = error.validator, error.instance
    expected: Any = error.validator_value
    if rule == "type":
        shown = "" if isinstance(got, list | dict) else f" {_show(got)}"
        return f"{where}: expected {_types(expected)}, got {_json_type(got)}{shown}"
    if rule == "required" and isinstance(got, dict):
        missing = [_show(str(name))[1:-1] for name in expected if name not in got]
        more = f" and {len(missing) - _SHOWN_ERRORS} more" if len(missing) > _SHOWN_ERRORS else ""
        return f"{where}: missing {', '.join(missing[:_SHOWN_ERRORS])}{more}"
    if rule == "enum":
        choices = ", ".join(json.dumps(v) for v in expected)
        return f"{where}: {_show(got)} is not one of {choices}"
    if rule == "const":
        return f"{where}: expected {json.dumps(expected)}, got {_show(got)}"
    if rule in ("minimum", "exclusiveMinimum"):
        return f"{where}: {_show(got)} is below the minimum {expected}"
    if rule in ("maximum", "exclusiveMaximum"):
        return f"{where}: {_show(got)} is above the maximum {expected}"
    if rule == "pattern":
        return f"{where}: {_show(got)} is not in the expected form"
    if rule == "minLength":
        return f"{where}: {_show(got)} is shorter than {expected} characters"
    if rule == "additionalProperties" and isinstance(got, dict):
        props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [_show(k) for k in got if k not in props]
        return f"{where}: unexpected field {', '.join(extra[:_SHOWN_ERRORS])}"
    return f"{where}: {_show(got)} does not match the schema ({rule})"


def _version(text: object) -> tuple[int, ...] | None:
    if not isinstance(text, str):
        return None
    match = re.match(r"(\d{1,6})(?:\.(\d{1,6}))?(?:\.(\d{1,6}))?", text)
    return None if match is None else tuple(int(g or 0) for g in match.groups())


def _from_a_newer_lkice(report: Mapping[str, Any]) -> bool:
    from lkice import __version__

    theirs, ours = _version(report.get("lkice_version")), _version(__version__)
    return theirs is not None and ours is not None and theirs > ours


def _unknown_fields(error: ValidationError) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(where, key) of every field an ``additionalProperties: false`` refused, in ``error`` and
    in the branches of a oneOf/anyOf it stands for."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for key in error.instance:
            if key not in props:
                yield tuple(error.absolute_path), key
    for sub in error.context or ():
        yield from _unknown_fields(sub)


def _without_unknown_fields(report: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(report)
    for _ in range(_MAX_PRUNE_ROUNDS):  # a field inside an unknown one goes with it: few rounds
        errors = itertools.islice(_validator().iter_errors(out), 200)
        found = {hit for error in errors for hit in _unknown_fields(error)}
        if not found:
            break
        for where, key in found:
            node: Any = out
            for step in where:
                node = node[step]
            if isinstance(node, dict):
                node.pop(key, None)
    return out


def _focus(error: ValidationError) -> ValidationError:
    """The error inside a oneOf/anyOf that names the mistake: one of the branch that fits the
    value's type (a "null or an object" field holding a broken object: the object's error)."""
    while error.context:
        depth = len(error.absolute_path)
        fitting = [
            e
            for e in error.context
            if not (e.validator == "type" and len(e.absolute_path) == depth)
        ]
        pool = fitting or list(error.context)
        error = max(pool, key=lambda e: len(e.absolute_path))  # the first of the deepest
    return error


def _schema_problems(report: dict[str, Any]) -> list[str]:
    # A bounded number of errors is enough to name the first few; sorted so the message does
    # not depend on the order jsonschema walks the schema in.
    errors = list(itertools.islice(_validator().iter_errors(report), 50))
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    out: list[str] = []
    for error in errors:
        # oneOf/anyOf (null or an object): the branch that fits the value names the mistake.
        # A list of at most 50 errors was collected; more are summed up as "and N more".
        text = _describe(_focus(error))
        if text not in out:
            out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# bounds


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(data: str | bytes) -> Any:
    size = len(data)
    if size > MAX_REPORT_BYTES:
        raise ReportError(
            f"the data is {size} bytes, more than any report (at most {MAX_REPORT_BYTES})"
        )
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ReportError(f"the data is not JSON (not UTF-8: {exc.reason})") from None
    # An upper bound (brackets inside strings count too), at C speed, before any object exists.
    if text.count("{") + text.count("[") > MAX_CONTAINERS:
        raise _too_many()
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError
        raise ReportError(f"the data is not JSON ({visible(str(exc))[:120]})") from None


def _too_many() -> ReportError:
    return ReportError(
        f"the data has more than {MAX_CONTAINERS} objects and arrays, more than any report"
    )


def _too_deep() -> ReportError:
    return ReportError(f"the data is nested deeper than {MAX_DEPTH} levels, more than any report")


def _check_shape(value: Any, *, counted: bool) -> None:
    """Depth (and, unless ``counted`` from the text already, size) bounds, and JSON types only.
    A hot loop (a report has ~10^5 values): exact types, C-level iteration, no recursion, and
    memory that grows with the depth only."""
    budget = MAX_REPORT_BYTES  # about one unit per byte of JSON text
    containers = MAX_CONTAINERS
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is str:
                budget -= len(item) + 2
            elif kind is float:
                if not math.isfinite(item):
                    raise ReportError(f"the data holds {item!r}, which is not a JSON number")
                budget -= 8
            elif kind is int:
                if not -_MAX_INT <= item <= _MAX_INT:
                    digits = len(str(abs(item)))
                    raise ReportError(
                        f"the data holds a number of {digits} digits, more than JSON numbers carry"
                    )
                budget -= 8
            elif item is None or kind is bool:
                budget -= 4
            elif kind is dict or kind is list or isinstance(item, Mapping | list):
                if len(stack) > MAX_DEPTH:
                    raise _too_deep()
                containers -= 1
                if containers < 0:
                    raise _too_many()
                budget -= 2 + len(item)
                if kind is dict or (kind is not list and isinstance(item, Mapping)):
                    for key in item:
                        if type(key) is not str:
                            raise ReportError(f"the data has a non-string key {_show(key)}")
                        budget -= len(key) + 3
                    children: Iterator[Any] = iter(item.values())
                else:
                    children = iter(item)
                if budget < 0 and not counted:
                    break
                stack.append(children)
                break
            else:
                raise ReportError(f"the data holds a {kind.__name__}, which JSON has not")
        else:
            stack.pop()
        if budget < 0 and not counted:
            raise ReportError(
                f"the data is larger than any report (at most {MAX_REPORT_BYTES} bytes)"
            )


def _check_schema_id(report: dict[str, Any]) -> None:
    schema = report.get("schema")
    if schema == SCHEMA_ID:
        return
    if not isinstance(schema, str) or not schema.startswith(_SCHEMA_PREFIX):
        raise ReportError(f"the data is not an lkice report (schema field is {_show(schema)})")
    version = schema[len(_SCHEMA_PREFIX) :]
    if re.fullmatch(r"[0-9]{1,9}", version) and int(version) > 1:
        raise ReportError(
            f"the report was written by a newer lkice: {visible(schema)}; "
            f"this lkice reads {SCHEMA_ID}"
        )
    raise ReportError(f"unsupported report schema {_show(schema)}; this lkice reads {SCHEMA_ID}")


def load_report(data: object) -> ReportDoc:
    """The report in ``data`` (JSON text, or an already decoded value), checked: bounded in
    size and depth, of schema ``lkice.report/1`` and valid against the shipped JSON Schema.

    Raises :class:`ReportError` naming what is wrong; nothing else for any input.
    """
    value = _parse(data) if isinstance(data, str | bytes) else data
    _check_shape(value, counted=isinstance(data, str | bytes))
    if not isinstance(value, Mapping):
        raise ReportError(f"the data is not an lkice report ({_json_type(value)}, not an object)")
    report = value if isinstance(value, dict) else dict(value)
    _check_schema_id(report)
    problems = _schema_problems(report)
    if problems and _from_a_newer_lkice(report):
        # lkice.report/1 only ever gains optional fields: a newer lkice's paste reads here with
        # the fields this version does not know left out. From this version or an older one,
        # an unknown field is a mistake (a hand edit, a writer that drifted) and refused.
        report = _without_unknown_fields(report)
        problems = _schema_problems(report)
    if problems:
        shown = "; ".join(problems[:_SHOWN_ERRORS])
        if len(problems) > _SHOWN_ERRORS:
            shown += f"; and {len(problems) - _SHOWN_ERRORS} more"
        raise ReportError(f"the report does not match {SCHEMA_ID}: {shown}")
    return cast("ReportDoc", report)  # valid against the schema the read model mirrors
