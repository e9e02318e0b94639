"""Random and mutated JSON Schemas through ``compile_output`` and ``check_schema``: a
``SchemaError`` or a compiled output, never another exception, never a hang."""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.errors import SchemaError
from structgen.schema import compile_output
from structgen.schema.check import check_schema

from .conftest import TRIED, examples, maskbench_schemas

KEYWORDS = ["type", "properties", "items", "prefixItems", "required", "enum", "const",
            "minimum", "maximum", "exclusiveMinimum", "multipleOf", "minLength", "maxLength",
            "pattern", "patternProperties", "additionalProperties", "anyOf", "oneOf", "allOf",
            "not", "if", "then", "else", "$ref", "$dynamicRef", "$defs", "$anchor", "$id",
            "format", "minItems", "maxItems", "uniqueItems", "contains", "propertyNames",
            "dependentSchemas", "unevaluatedProperties", "default", "$schema"]
PATTERNS = [r"^\d+$", r"(a+)+b", "([a-z", r"\p{L}", r"\u{1F600}", r"[z-a]", "a\\", r"\k<x>",
            r"(?<x>a)\k<x>", r"^\w+\s$", "[]", "[^]", r"\cJ", r"x{2,1}", "(?=a)b", ".*"]
REFS = ["#", "#/$defs/a", "#/$defs/missing", "#a", "http://127.0.0.1:9/x.json",
        "other.json", "#/properties/0", "#/%ZZ", "#/$defs/a/../b"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)


def _value_for(keyword: str, schema: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    if keyword in ("properties", "patternProperties", "$defs", "dependentSchemas"):
        keys = st.sampled_from(PATTERNS) if keyword == "patternProperties" \
            else st.text(max_size=4)
        return st.dictionaries(keys, schema, max_size=3)
    if keyword in ("anyOf", "oneOf", "allOf", "prefixItems"):
        return st.lists(schema, max_size=3)
    if keyword in ("items", "not", "if", "then", "else", "additionalProperties", "contains",
                   "propertyNames", "unevaluatedProperties"):
        return schema
    if keyword == "pattern":
        return st.one_of(st.sampled_from(PATTERNS), st.text(max_size=6))
    if keyword in ("$ref", "$dynamicRef"):
        return st.one_of(st.sampled_from(REFS), st.text(max_size=6))
    if keyword == "type":
        names = st.sampled_from(["object", "array", "string", "integer", "number",
                                 "boolean", "null", "nope"])
        return st.one_of(names, st.lists(names, max_size=3))
    if keyword == "format":
        return st.sampled_from(["date", "email", "regex", "uuid", "unknown-x", "int32"])
    return json_values  # any JSON where a number, list or string belongs: retyped


schemas = st.recursive(
    st.one_of(st.booleans(), st.just({})),
    lambda inner: st.lists(st.sampled_from(KEYWORDS), max_size=4, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _value_for(k, inner) for k in keys})),
    max_leaves=10)


def _compile(schema: Any) -> None:
    started = time.perf_counter()
    for step in (lambda: compile_output(schema), lambda: check_schema(schema)):
        with contextlib.suppress(SchemaError):
            step()
    assert time.perf_counter() - started < 10, "a schema took over 10 s to check"


@settings(max_examples=examples(2000))
@given(schemas)
def test_random_schemas_raise_only_schema_error(schema: Any) -> None:
    TRIED["random schemas"] += 1
    _compile(schema)


SAMPLE = maskbench_schemas()


def _nodes(value: Any, out: list[Any]) -> list[Any]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    schema = copy.deepcopy(draw(st.sampled_from(SAMPLE)))
    for _ in range(draw(st.integers(1, 4))):
        nodes = _nodes(schema, [])
        node = draw(st.sampled_from(nodes))
        action = draw(st.sampled_from(["drop", "duplicate", "retype", "deep", "enum",
                                       "pattern", "cycle", "add"]))
        keys = sorted(node)
        if action == "drop" and keys:
            node.pop(draw(st.sampled_from(keys)))
        elif action == "duplicate" and keys:  # the same keyword's value somewhere else
            key = draw(st.sampled_from(keys))
            draw(st.sampled_from(nodes))[key] = copy.deepcopy(node[key])
        elif action == "retype" and keys:
            node[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "deep":
            inner: Any = {"type": "integer"}
            for _ in range(draw(st.sampled_from([50, 300, 3000]))):
                inner = {draw(st.sampled_from(["items", "not", "allOf"])): inner}
                if "allOf" in inner:
                    inner["allOf"] = [inner["allOf"]]
            node["items"] = inner
            break  # nothing after this walks a 3000-level tree
        elif action == "enum":
            node["enum"] = list(range(draw(st.sampled_from([0, 1, 1000, 10000]))))
        elif action == "pattern":
            node["pattern"] = draw(st.sampled_from(PATTERNS))
        elif action == "cycle":
            node["$ref"] = draw(st.sampled_from(REFS))
        else:
            node[draw(st.sampled_from(KEYWORDS))] = draw(json_values)
    return schema


@settings(max_examples=examples(1000))
@given(mutated())
def test_mutated_maskbench_schemas_raise_only_schema_error(maskbench_dir: Path,
                                                           schema: Any) -> None:
    # maskbench_dir fails the test, before any example, when the data is missing
    TRIED["mutated MaskBench schemas"] += 1
    _compile(schema)
