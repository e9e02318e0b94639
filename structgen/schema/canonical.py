"""Canonical JSON encoding and hashing: the identity of a schema for every cache.

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
from typing import Any

from structgen.schema.check import walk


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
