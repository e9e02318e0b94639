"""Integers sent to servers are held to int64 unless the schema bounds them itself."""

from __future__ import annotations

import jsonschema

from structgen.schema.bounds import INT64_MAX, INT64_MIN, bound_integers


def test_the_bounds_are_int64_and_exact_as_float64() -> None:
    """llguidance reads schema numbers as float64: a bound that rounds leaves int64."""
    assert INT64_MIN > -(2**63) and INT64_MAX < 2**63
    assert float(INT64_MAX) == INT64_MAX and float(INT64_MIN) == INT64_MIN


def test_unbounded_integers_get_int64_bounds_everywhere_they_constrain_the_value() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "opt": {"type": ["integer", "null"]},
                       "xs": {"type": "array", "items": {"$ref": "#/$defs/I"}}},
        "$defs": {"I": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
    }
    bounded = bound_integers(schema)
    assert bounded["properties"]["n"] == {"type": "integer", "minimum": INT64_MIN,
                                          "maximum": INT64_MAX}
    assert bounded["properties"]["opt"]["maximum"] == INT64_MAX
    assert bounded["$defs"]["I"]["anyOf"][0]["minimum"] == INT64_MIN
    assert "minimum" not in schema["properties"]["n"]  # the input is not changed
    validator = jsonschema.Draft202012Validator(bounded)
    assert validator.is_valid({"n": INT64_MAX, "opt": None, "xs": [INT64_MIN, "a"]})
    assert not validator.is_valid({"n": INT64_MAX + 1})
    assert not validator.is_valid({"n": 0, "xs": [INT64_MIN - 1]})


def test_the_schemas_own_bounds_floats_and_negated_positions_are_kept() -> None:
    schema = {"type": "object", "properties": {
        "big": {"type": "integer", "maximum": 10**30},
        "pos": {"type": "integer", "exclusiveMinimum": 0},
        "f": {"type": "number"},
        "either": {"type": ["integer", "number"]},
        "nope": {"not": {"type": "integer"}},
    }}
    props = bound_integers(schema)["properties"]
    assert props["big"] == {"type": "integer", "maximum": 10**30, "minimum": INT64_MIN}
    assert props["pos"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": INT64_MAX}
    assert props["f"] == {"type": "number"}
    assert props["either"] == {"type": ["integer", "number"]}
    assert props["nope"] == {"not": {"type": "integer"}}
