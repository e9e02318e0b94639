"""Pydantic v2 model → Draft 2020-12 JSON Schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from structgen.errors import SchemaError
from structgen.schema.canonical import json_copy
from structgen.schema.check import subschema_nodes


def model_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema (a JSON-clean copy) with ``$defs`` kept, so recursion works."""
    try:
        schema = model.model_json_schema(mode="validation")
    except Exception as exc:  # pydantic raises several types for unsupported fields
        raise SchemaError(f"cannot build a JSON Schema for {model.__name__}: {exc}") from None
    _require_discriminators(schema, schema.get("$defs", {}))
    out = json_copy(schema)[0]
    close_objects(out)
    return out


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """Close every object with declared ``properties`` and no ``additionalProperties``
    (``additionalProperties: false``), in place; returns ``schema``.

    For a Pydantic model whose ``extra`` is not ``"allow"`` (Pydantic writes
    ``additionalProperties: true`` for those, and ``false`` for ``"forbid"``), a key the
    model does not declare is thrown away by Pydantic anyway, so an open grammar only lets
    a small model invent keys until its budget ends. Raw JSON Schemas keep their meaning
    unless the caller asks (``JsonSchema(..., closed_objects=True)``).
    """
    for node in subschema_nodes(schema):
        if "properties" in node and "additionalProperties" not in node \
                and "patternProperties" not in node \
                and "unevaluatedProperties" not in node and node.get("type") == "object":
            ordered = list(node) == sorted(node)
            node["additionalProperties"] = False
            if ordered:  # keep a sorted node sorted (its text is part of cache keys)
                for key in sorted(node):
                    node[key] = node.pop(key)
    return schema


def _require_discriminators(schema: dict[str, Any], defs: dict[str, Any]) -> None:
    """Make the tag of every discriminated union a required property of each variant.

    Pydantic emits the tag field with a default, so the JSON Schema lets it be left out,
    but Pydantic's discriminated-union validator needs the tag in the data to pick the
    variant. Requiring it keeps the grammar and Pydantic in agreement (and the tag is a
    ``const``, which fast-forward then writes for free).
    """
    for node in subschema_nodes(schema):
        tag = node.get("discriminator", {}).get("propertyName") \
            if isinstance(node.get("discriminator"), dict) else None
        if not isinstance(tag, str):
            continue
        for variant in node.get("oneOf", []) + node.get("anyOf", []):
            target = variant
            ref = variant.get("$ref", "") if isinstance(variant, dict) else ""
            if ref.startswith("#/$defs/"):
                target = defs.get(ref.removeprefix("#/$defs/"), {})
            if isinstance(target, dict) and tag in target.get("properties", {}):
                required = target.setdefault("required", [])
                if tag not in required:
                    required.append(tag)
