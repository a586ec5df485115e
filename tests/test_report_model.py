"""The typed read model (lkice.report.read) and the JSON Schema agree key for key, both ways;
the schema closes its objects; the vocabularies are defined once and agree with lkice.errors."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from lkice.errors import ErrorKind, Phase
from lkice.report import fields, load_schema, read
from lkice.verdict import Verdict

SCHEMA = load_schema()
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (float,),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
    "null": (type(None),),
}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def alternatives(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A schema node's alternatives (oneOf/anyOf flattened, $refs resolved)."""
    node = resolve(node)
    for key in ("oneOf", "anyOf"):
        if key in node:
            return [alt for sub in node[key] for alt in alternatives(sub)]
    return [node]


def schema_types(node: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for alt in alternatives(node):
        if "enum" in alt or "const" in alt:
            values = alt.get("enum", [alt.get("const")])
            out |= {"null" if v is None else "literal" for v in values}
            continue
        kind = alt.get("type")
        if kind is None and "properties" in alt:
            kind = "object"
        out |= set(kind) if isinstance(kind, list) else {kind} if kind else set()
    return out


def schema_literals(node: dict[str, Any]) -> set[Any]:
    return {
        v
        for alt in alternatives(node)
        for v in alt.get("enum", [alt["const"]] if "const" in alt else [])
        if v is not None
    }


def hint_parts(hint: Any) -> list[Any]:
    if get_origin(hint) in (typing.Union, types.UnionType):
        return [p for arg in get_args(hint) for p in hint_parts(arg)]
    return [hint]


def hint_types(hint: Any) -> set[str]:
    out: set[str] = set()
    for part in hint_parts(hint):
        origin = get_origin(part)
        if part is type(None):
            out.add("null")
        elif origin is Literal:
            out.add("literal")
        elif is_typeddict(part) or origin is dict or part is dict:
            out.add("object")
        elif origin is list:
            out.add("array")
        elif part is Any:
            out.add("any")
        else:
            out |= {name for name, py in PRIMITIVES.items() if part in py}
    return out


def hint_literals(hint: Any) -> set[Any]:
    return {v for p in hint_parts(hint) if get_origin(p) is Literal for v in get_args(p)}


def object_node(node: dict[str, Any]) -> dict[str, Any] | None:
    found = [alt for alt in alternatives(node) if "properties" in alt]
    return found[0] if found else None


def items_node(node: dict[str, Any]) -> dict[str, Any] | None:
    found = [alt for alt in alternatives(node) if "items" in alt]
    return found[0]["items"] if found else None


def walk(doc: Any, node: dict[str, Any], where: str) -> Iterator[str]:
    """Every disagreement between a TypedDict and a schema object, recursively."""
    obj = object_node(node)
    assert obj is not None, f"{where}: no object in the schema"
    hints = get_type_hints(doc)
    keys, props = set(hints), set(obj["properties"])
    for key in sorted(keys - props):
        yield f"{where}.{key}: in the read model, not in the schema"
    for key in sorted(props - keys):
        yield f"{where}.{key}: in the schema, not in the read model"
    for key in sorted(keys & props):
        hint, prop, here = hints[key], obj["properties"][key], f"{where}.{key}"
        want, have = schema_types(prop), hint_types(hint)
        if "integer" in want and "number" not in want:
            pass  # an int is an int on both sides
        if "any" not in have and want != have:
            yield f"{here}: schema types {sorted(want)}, read model {sorted(have)}"
        if schema_literals(prop) != hint_literals(hint):
            yield f"{here}: schema values {schema_literals(prop)}, read model {hint_literals(hint)}"
        yield from nested(hint, prop, here)


def nested(hint: Any, prop: dict[str, Any], here: str) -> Iterator[str]:
    for part in hint_parts(hint):
        if is_typeddict(part):
            yield from walk(part, prop, here)
        elif get_origin(part) is list:
            (item,) = get_args(part)
            items = items_node(prop)
            assert items is not None, f"{here}: a list in the read model, no items in the schema"
            for sub in hint_parts(item):
                if is_typeddict(sub):
                    yield from walk(sub, items, f"{here}[]")
                elif get_origin(sub) is list:
                    yield from nested(sub, items, f"{here}[]")


def test_the_read_model_and_the_schema_agree_key_for_key() -> None:
    problems = list(walk(read.ReportDoc, SCHEMA, "report"))
    assert problems == []


def test_the_agreement_check_can_fail() -> None:
    """The walker is no check that cannot fail: a key the schema lacks is found."""

    class Broken(typing.TypedDict, total=False):
        url: str
        ok: bool
        not_in_the_schema: int

    problems = list(walk(Broken, SCHEMA["$defs"]["signal"], "signal"))
    assert "signal.not_in_the_schema: in the read model, not in the schema" in problems
    assert any("signal.timings_ms: in the schema" in p for p in problems)


def closed_objects(node: Any, where: str = "$") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if "properties" in node:
            yield where, node.get("additionalProperties", True)
        for key, value in node.items():
            if key not in ("if", "then", "else"):  # conditions constrain, they do not describe
                yield from closed_objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from closed_objects(value, f"{where}[{i}]")


def test_the_schema_closes_every_object_it_describes() -> None:
    """Within lkice.report/1 a key the schema does not name is a mistake (a writer that drifted,
    a hand-edited paste): refused at load, not read as absent."""
    open_ones = [where for where, extra in closed_objects(SCHEMA) if extra is not False]
    assert open_ones == []


def test_vocabularies_are_defined_once_and_agree() -> None:
    path = SCHEMA["$defs"]["path"]["properties"]
    assert set(path["timings_ms"]["properties"]) == set(fields.TIMING_KEYS_ALL)
    assert set(path["timings_ms"]["required"]) <= set(fields.TIMING_KEYS)
    signal = SCHEMA["$defs"]["signal"]["properties"]["timings_ms"]
    assert set(signal["properties"]) == set(fields.SIGNAL_TIMING_KEYS)
    assert set(fields.SETUP_STEPS) <= set(fields.TIMING_KEYS_ALL)
    assert set(fields.SIGNAL_STEPS) <= set(fields.SIGNAL_TIMING_KEYS)
    assert get_args(read.Severity) == fields.SEVERITIES
    assert get_args(read.VerdictName) == fields.VERDICTS == tuple(v.value for v in Verdict)
    assert set(get_args(read.ErrorKindName)) == {k.value for k in ErrorKind}
    assert set(get_args(read.PhaseName)) == {p.value for p in Phase}
    error = SCHEMA["$defs"]["error"]["properties"]
    assert set(error["kind"]["enum"]) == {k.value for k in ErrorKind}
    assert set(error["phase"]["enum"]) - {None} == {p.value for p in Phase}


@pytest.mark.parametrize("name", sorted(read.__all__))
def test_every_exported_name_exists(name: str) -> None:
    assert hasattr(read, name)
