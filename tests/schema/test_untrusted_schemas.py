"""Untrusted schemas and model text (issue 11, items 1 and 2): structgen never fetches a
remote reference, and deep or huge JSON gets a typed error, never RecursionError or a bare
ValueError."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from structgen.errors import SchemaError
from structgen.schema import compile_output
from structgen.schema.limits import DEFAULT_LIMITS, Limits
from structgen.types import Regex
from structgen.validate import parse_json, schema_errors, validate_data, validate_text


@pytest.fixture
def listener() -> Iterator[tuple[str, list[int]]]:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join()
    server.close()


def _remote_schemas(base: str) -> dict[str, tuple[dict[str, Any], str]]:
    return {
        "dynamicRef": ({"$dynamicRef": f"{base}/s.json#meta"}, "/$dynamicRef"),
        "nested-dynamicRef": ({"type": "object", "properties": {
            "a": {"$dynamicRef": f"{base}/s.json"}}}, "/properties/a/$dynamicRef"),
        "ref": ({"$ref": f"{base}/s.json"}, "/$ref"),
        "relative-to-id": ({"$id": f"{base}/root.json", "items": {"$ref": "other.json"}},
                           "/items/$ref"),
    }


@pytest.mark.parametrize("name", ["dynamicRef", "nested-dynamicRef", "ref", "relative-to-id"])
def test_remote_references_are_schema_errors_and_never_fetched(
        listener: tuple[str, list[int]], name: str) -> None:
    base, accepted = listener
    schema, pointer = _remote_schemas(base)[name]
    with pytest.raises(SchemaError) as info:
        compile_output(schema)
    assert info.value.pointer == pointer
    assert "never fetches" in str(info.value)
    # the validator itself refuses retrieval too (schemas that bypass check_schema)
    with pytest.raises(SchemaError, match="unresolvable reference"):
        schema_errors([1] if name == "relative-to-id" else {"a": 1}, schema)
    assert accepted == []


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"allOf": [{"$ref": "#"}]},
    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"not": {"$ref": "#/$defs/a"}}},
     "$ref": "#/$defs/a"},
    {"$defs": {"a": {"$anchor": "x", "oneOf": [{"$ref": "#x"}]}}, "$ref": "#/$defs/a"},
])
def test_reference_cycles_without_progress_are_schema_errors(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match="reference cycle"):
        compile_output(schema)


def test_recursion_through_properties_is_fine() -> None:
    tree = compile_output({"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#"}}}})
    assert validate_data({"children": [{"children": []}]}, tree).ok


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 3000, "nests 3000 levels"),
    ('{"a":' * 3000 + "1" + "}" * 3000, "nests 3000 levels"),
    ("1" * 5000, "5000 digits"),
    ("[" + "9" * 4400 + "]", "4400 digits"),
    ("NaN", "NaN is not valid JSON"),
    ("[Infinity]", "Infinity is not valid JSON"),
    ("-Infinity", "-Infinity is not valid JSON"),
    ('{"x": 1e400}', "out of range"),
])
def test_hostile_model_text_is_a_validation_error(text: str, words: str) -> None:
    out = compile_output({})
    outcome = validate_text(text, out)
    assert not outcome.ok
    assert outcome.errors[0].keyword == "json"
    assert words in outcome.errors[0].message


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = '["' + "[" * 5000 + '"]'
    assert parse_json(text) == (["[" * 5000], [])


def test_limits_are_configurable() -> None:
    text = "[[[[1]]]]"
    assert parse_json(text)[1] == []
    data, errors = parse_json(text, Limits(max_depth=3))
    assert data is None and "limit: [limits] max_depth = 3" in errors[0].message
    assert parse_json("123456", Limits(max_number_digits=5))[1]
    assert parse_json("x" * 20, Limits(max_chars=10))[1]
    assert DEFAULT_LIMITS.max_depth == 128


def test_parsed_data_with_nan_or_deep_nesting_is_not_valid() -> None:
    # what syntax repair hands to validate_data: already Python values
    out = compile_output({"type": "number", "minimum": 0})
    assert not validate_data(float("nan"), out).ok
    assert not validate_data(float("inf"), out).ok
    deep: Any = 1
    for _ in range(3000):
        deep = [deep]
    outcome = validate_data(deep, compile_output({}))
    assert not outcome.ok and outcome.errors[0].keyword == "depth"


def test_deep_schemas_are_schema_errors() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(3000):
        schema = {"items": schema}
    with pytest.raises(SchemaError, match="nest"):
        compile_output(schema)
    schema = {"const": [[[[[[1]]]]]]}
    for _ in range(300):
        schema = {"not": {"not": schema}}
    with pytest.raises(SchemaError, match="nest"):
        compile_output(schema)


def test_deep_old_draft_schema_is_a_schema_error() -> None:
    # found by tests/fuzz: the draft upgrade copied the schema before any depth check
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(3000):
        schema = {"items": [schema]}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    with pytest.raises(SchemaError, match="nests too deeply"):
        compile_output(schema)


def test_regex_output_deep_text_is_fine() -> None:
    # regex outputs are not JSON: depth limits do not apply to them
    assert validate_text("[" * 3000, compile_output(Regex(r"\[+"))).ok
