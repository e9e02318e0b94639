"""Number bounds a server's grammar can enforce: integers held to int64.

The embedded decoder bounds every number in its decode loop (``[local] max_number_digits``).
A server only sees the JSON Schema, and JSON Schema can bound an integer (``minimum`` /
``maximum``) but not the digits of a float, so what is sent to servers gets int64 bounds on
every integer the schema leaves unbounded: a small model writing ``12345678901234567890…``
is then stopped by the server's grammar instead of running to ``max_tokens``. Floats cannot
be bounded this way; validation still refuses what no float64 holds.
"""

from __future__ import annotations

from typing import Any

# The widest int64 range every server engine compiles: llguidance reads schema numbers as
# float64, and 2**63 - 1 rounds up to 2**63, past int64 ("Failed to generate regex for
# integer range", HTTP 400 from vLLM). 2**63 - 1024 is the largest float64 below 2**63.
INT64_MAX = 2**63 - 1024
INT64_MIN = -INT64_MAX

# Positions where a subschema constrains the value itself (or a part of it). Under ``not``,
# ``if``, ``contains`` or ``propertyNames`` a bound would change the meaning, so they are
# left alone.
_SINGLE = ("items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems",
           "then", "else")
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def bound_integers(schema: Any) -> Any:
    """A copy of ``schema`` whose unbounded integers are held to int64 (the input is kept)."""
    if not isinstance(schema, dict):
        return schema
    node = dict(schema)
    types = node.get("type")
    # a "number" alternative admits any float, so its bounds stay the schema's own
    is_integer = types == "integer" or (isinstance(types, list) and "integer" in types
                                        and "number" not in types)
    if is_integer:
        if "minimum" not in node and "exclusiveMinimum" not in node:
            node["minimum"] = INT64_MIN
        if "maximum" not in node and "exclusiveMaximum" not in node:
            node["maximum"] = INT64_MAX
    for key in _SINGLE:
        if isinstance(node.get(key), dict):
            node[key] = bound_integers(node[key])
    for key in _LISTS:
        if isinstance(node.get(key), list):
            node[key] = [bound_integers(sub) for sub in node[key]]
    for key in _MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {name: bound_integers(sub) for name, sub in node[key].items()}
    return node
