"""The canonical hash: keyword order and whitespace do not change it, meaning does."""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, Field

from schemas.intent import Intent
from structgen.schema import compile_output, schema_hash
from structgen.types import Choice, Regex

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": "string"}},
    "required": ["a"],
}


def _reordered(value: object) -> object:
    """The same JSON with every object's keys reversed, except ``properties`` members."""
    if isinstance(value, dict):
        keys = list(value) if "a" in value and "b" in value else list(reversed(value))
        return {k: _reordered(value[k]) for k in keys}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_key_order_and_whitespace_do_not_change_the_hash() -> None:
    pretty = json.dumps(_reordered(SCHEMA), indent=4)
    assert list(json.loads(pretty)) != list(SCHEMA)
    h = compile_output(SCHEMA).hash
    assert compile_output(pretty).hash == h  # a str spec is parsed JSON text
    assert compile_output(json.dumps(SCHEMA, separators=(",", ":"))).hash == h
    assert schema_hash(SCHEMA) == schema_hash(_reordered(SCHEMA))
    assert re.fullmatch(r"[0-9a-f]{64}", h), h  # a SHA-256 hex digest


def test_semantic_changes_change_the_hash() -> None:
    h = compile_output(SCHEMA).hash
    tighter = json.loads(json.dumps(SCHEMA))
    tighter["properties"]["a"]["minimum"] = 1
    both_required = {**SCHEMA, "required": ["a", "b"]}
    swapped = {**SCHEMA, "properties": {"b": {"type": "string"},
                                        "a": {"type": "integer", "minimum": 0}}}
    hashes = {h, compile_output(tighter).hash, compile_output(both_required).hash,
              compile_output(swapped).hash}
    # properties order is the generation order, so it is part of the identity
    assert len(hashes) == 4


def test_hash_separates_kinds_and_is_stable_for_models() -> None:
    assert compile_output(Intent).hash == compile_output(Intent).hash
    assert compile_output(Regex("a|b")).hash != compile_output(Choice(["a", "b"])).hash
    assert compile_output(Choice(["a", "b"])).hash != compile_output(Choice(["b", "a"])).hash

    class A(BaseModel):
        x: int = Field(le=3)

    class B(BaseModel):
        x: int = Field(le=4)

    assert compile_output(A).hash != compile_output(B).hash
    # the class identity is not part of it: the same schema under a dict hashes the same
    # when titled alike
    schema_a = compile_output(A).json_schema
    assert compile_output(dict(schema_a or {})).hash == compile_output(A).hash
