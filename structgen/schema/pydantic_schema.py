"""Pydantic v2 model → canonical Draft 2020-12 JSON Schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from structgen.errors import SchemaError
from structgen.schema.compiled import canonicalize_schema


def model_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema with ``$defs`` kept (recursion works) and keys sorted."""
    try:
        schema = model.model_json_schema(mode="validation")
    except Exception as exc:  # pydantic raises several types for unsupported fields
        raise SchemaError(f"cannot build a JSON Schema for {model.__name__}: {exc}") from None
    return canonicalize_schema(schema)
