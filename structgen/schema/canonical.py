"""Canonical JSON encoding and hashing: the identity of a schema for every cache.

A schema's canonical form sorts every keyword, recursively, with one exception: the
member order of ``properties``. That order is the order in which constrained decoders
(llguidance, XGrammar, outlines-core) make a model write the fields, so it changes what
gets generated; it is kept, and it is part of the hash. Everything else (keyword order,
whitespace, key order inside ``const``/``enum``/``default`` values) is not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Keywords whose value is a schema, a list of schemas, or a name → schema map.
SUBSCHEMA_SINGLE = frozenset({
    "items", "additionalProperties", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties", "additionalItems",
})
SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SUBSCHEMA_MAPS = frozenset({
    "properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
})
# Among the maps, the one whose member order is meaningful to a decoder.
ORDERED_MAPS = frozenset({"properties"})


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of the UTF-8 encoding of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sorted_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_value(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_value(v) for v in value]
    return value


def canonical_schema(schema: Any) -> Any:
    """The canonical form of a schema (a new object; the input is not changed)."""
    if not isinstance(schema, dict):
        return _sorted_value(schema)
    out: dict[str, Any] = {}
    for key in sorted(schema):
        value = schema[key]
        if key in SUBSCHEMA_SINGLE:
            out[key] = canonical_schema(value)
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [canonical_schema(v) for v in value]
        elif key in SUBSCHEMA_MAPS and isinstance(value, dict):
            names = list(value) if key in ORDERED_MAPS else sorted(value)
            out[key] = {name: canonical_schema(value[name]) for name in names}
        else:
            out[key] = _sorted_value(value)
    return out


def schema_json(schema: Any) -> str:
    """Compact canonical JSON text of a schema (``properties`` order kept)."""
    return json.dumps(canonical_schema(schema), separators=(",", ":"), ensure_ascii=False)


def schema_hash(schema: Any) -> str:
    """SHA-256 of :func:`schema_json`: keyword order and whitespace do not matter."""
    return sha256_hex(schema_json(schema))
