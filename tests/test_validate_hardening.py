"""uniqueItems is checked in linear time, and strict Pydantic models validate model text
(issue 24, B3 and B11)."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from structgen.schema import compile_output
from structgen.validate import schema_errors, validate_text


@pytest.mark.parametrize(("items", "unique"), [
    ([1, 2, 3], True), ([1, 1.0], False), ([True, 1], True), ([False, 0], True),
    ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False), ([[1, 2], [2, 1]], True),
    ([[1, {"x": [1]}], [1, {"x": [1.0]}]], False), ([None, "null"], True),
    (["a", "a"], False), ([{"a": 1}, {"a": 1, "b": None}], True), ([], True),
])
def test_unique_items_keeps_json_equality(items: list[Any], unique: bool) -> None:
    errors = schema_errors(items, {"type": "array", "uniqueItems": True})
    assert (errors == []) == unique
    if not unique:
        assert errors[0].keyword == "uniqueItems"


def test_unique_items_over_many_objects_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    # jsonschema compares every pair (10,000 objects took 112 s); count the comparisons
    # its helper would make: none, the set does the work
    import jsonschema._utils as utils

    calls = [0]
    real = utils.equal

    def counting(one: Any, two: Any) -> bool:
        calls[0] += 1
        return bool(real(one, two))

    monkeypatch.setattr(utils, "equal", counting)
    items = [{"id": i, "tags": ["x"]} for i in range(2000)]
    assert schema_errors(items, {"type": "array", "uniqueItems": True}) == []
    assert calls[0] < 2000  # the old check: ~2,000,000


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Strict(BaseModel):
    model_config = ConfigDict(strict=True)

    color: Color
    pair: tuple[int, int]
    id: uuid.UUID
    day: datetime.date
    n: int


def test_strict_models_validate_json_text() -> None:
    output = compile_output(Strict)
    text = json.dumps({"color": "red", "pair": [1, 2], "id": str(uuid.UUID(int=7)),
                       "day": "2024-05-01", "n": 3})
    outcome = validate_text(text, output)
    assert outcome.ok, outcome.errors
    assert outcome.value == Strict(color=Color.RED, pair=(1, 2), id=uuid.UUID(int=7),
                                   day=datetime.date(2024, 5, 1), n=3)
    # strict still means strict where JSON has the type: "3" is no integer
    assert not validate_text(text.replace('"n": 3', '"n": "3"'), output).ok
