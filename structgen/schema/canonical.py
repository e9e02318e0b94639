"""Canonical JSON encoding and hashing: the identity of a schema for every cache."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def schema_hash(value: Any) -> str:
    """SHA-256 of the canonical encoding (whitespace and key order do not matter)."""
    return sha256_hex(canonical_json(value))
