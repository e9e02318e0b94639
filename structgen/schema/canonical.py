"""Canonical JSON encoding and hashing: the identity of a schema for every cache; the
compact, JSON-clean copy of a schema every compile starts from (:func:`json_copy`).

A schema's identity (:func:`schema_identity`) is its JSON with every key sorted, plus one
thing sorting would lose: the member order of each ``properties`` map. That order is the
order in which constrained decoders (llguidance, XGrammar, outlines-core) make a model
write the fields, so it changes what gets generated and is part of the hash. Everything
else (keyword order, whitespace, key order inside ``const``/``enum``/``default`` values)
is not.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from structgen.errors import SchemaError
from structgen.schema.check import walk
from structgen.schema.limits import DEFAULT_LIMITS, nesting_depth


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of the UTF-8 encoding of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def schema_identity(schema: Any) -> str:
    """The canonical text of a schema: compact JSON with every key sorted, then the member
    order of each ``properties`` map with more than one member, by JSON pointer.

    Built by the C JSON encoder and one pass over the subschemas. Equal schemas up to
    keyword order give equal text; a different ``properties`` order gives a different text.
    """
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    orders = sorted((pointer, list(node["properties"])) for pointer, node in walk(schema)
                    if isinstance(node.get("properties"), dict) and len(node["properties"]) > 1)
    if not orders:
        return text
    return f"{text}\n{json.dumps(orders, separators=(',', ':'), ensure_ascii=False)}"


def schema_hash(schema: Any) -> str:
    """SHA-256 of :func:`schema_identity`: keyword order and whitespace do not matter."""
    return sha256_hex(schema_identity(schema))


# One encoder for every compile (json.dumps with options builds one per call). No circular
# check: a schema that contains itself fails with RecursionError instead. Non-string keys
# are written as strings, as json.dumps does.
ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            check_circular=False)


def json_copy(schema: Any, max_depth: int = DEFAULT_LIMITS.max_schema_depth
              ) -> tuple[dict[str, Any], str]:
    """(a JSON-clean deep copy of ``schema`` in its own key order, its compact JSON text).

    The copy keeps the caller's order: ``properties`` order is the order a constrained
    decoder writes the fields in. The text is what grammar engines are given, so callers
    building a CompiledOutput pass it on (:func:`json_output`) instead of encoding again.
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        text = ENCODER.encode(schema)
    except RecursionError:
        raise SchemaError("schema is not JSON-serializable: it contains itself or nests "
                          "too deeply") from None
    except (TypeError, ValueError) as exc:
        # NaN/inf, sets, non-str keys...: nothing a JSON-speaking backend could receive
        pointer = _non_finite(schema)
        if pointer is not None:
            key = pointer.rsplit("/", 1)[-1]
            raise SchemaError(f"{key} must be finite (NaN and infinity are not JSON)",
                              pointer) from None
        raise SchemaError(f"schema is not JSON-serializable: {exc}") from None
    depth = nesting_depth(text, max_depth)
    if depth > max_depth:
        raise SchemaError(f"the schema nests {depth} levels deep (limit: "
                          f"[limits] max_schema_depth = {max_depth})")
    copy: dict[str, Any] = json.loads(text)
    return copy, text


def _non_finite(value: Any, pointer: str = "") -> str | None:
    """The JSON pointer of the first NaN or infinite float in ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return pointer
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        found = _non_finite(item, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
        if found is not None:
            return found
    return None
