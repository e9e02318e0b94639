"""Repair does bounded work and keeps the first valid answer (issue 24, B2 and B17)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Literal, Union

from pydantic import BaseModel

from structgen.backends import GenerationRequest, GenerationResult
from structgen.config import RepairConfig
from structgen.repair import coerce, finalize, repair_locally
from structgen.schema import compile_output


class Add(BaseModel):
    op: Literal["add"]
    left: Union[Add, Mul, int]  # noqa: UP007
    right: Union[Add, Mul, int]  # noqa: UP007


class Mul(BaseModel):
    op: Literal["mul"]
    left: Union[Add, Mul, int]  # noqa: UP007
    right: Union[Add, Mul, int]  # noqa: UP007


class Expr(BaseModel):
    root: Union[Add, Mul, int]  # noqa: UP007


def _tree(depth: int) -> Any:
    """A left-deep expression whose leaves are strings ("1"): each must be coerced."""
    node: Any = "1"
    for i in range(depth):
        node = {"op": "add" if i % 2 else "mul", "left": node, "right": "2"}
    return {"root": node}


def _validations(data: Any, schema: dict[str, Any], monkeypatch: Any) -> int:
    """How many schema validations coercing ``data`` runs (the unit of its work)."""
    import structgen.repair as repair

    calls = [0]
    real = repair.schema_valid

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(repair, "schema_valid", counting)
    _, changes = coerce(data, schema)
    monkeypatch.setattr(repair, "schema_valid", real)
    assert changes  # every leaf "1"/"2" became an integer
    return calls[0]


def test_nested_union_coercion_is_not_exponential(monkeypatch: Any) -> None:
    output = compile_output(Expr)
    schema = output.json_schema
    assert schema is not None
    # the old walk re-tried every branch below every anyOf: the count doubled per level
    # (depth 10: 7,000+ validations); now it grows with the size of the answer
    counts = [_validations(_tree(d), schema, monkeypatch) for d in (5, 10)]
    assert counts[1] <= 3 * counts[0], counts
    fixed = repair_locally(json.dumps(_tree(12)), output)
    assert fixed.outcome.ok and "coerce" in fixed.stages


def test_coercion_gives_up_past_its_step_budget(monkeypatch: Any) -> None:
    import structgen.repair as repair

    monkeypatch.setattr(repair, "MAX_COERCE_STEPS", 10)
    output = compile_output(Expr)
    assert output.json_schema is not None
    data = _tree(6)
    assert coerce(data, output.json_schema) == (data, [])  # unchanged, nothing claimed


def test_validation_and_repair_run_off_the_event_loop() -> None:
    threads: list[str] = []
    import structgen.repair as repair

    real = repair.repair_locally

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    repair.repair_locally = spy  # type: ignore[assignment]
    try:
        output = compile_output(Expr)
        request = GenerationRequest(messages=[{"role": "user", "content": "x"}], output=output)
        gen = GenerationResult(text=json.dumps(_tree(3)), backend="b", model="m")

        async def reask(*_: Any) -> GenerationResult:
            raise AssertionError("not needed")

        async def main() -> Any:
            return await finalize(gen, request, RepairConfig(), reask)

        done = asyncio.run(main())
    finally:
        repair.repair_locally = real  # type: ignore[assignment]
    assert done.value.root.left.left.left == 1
    assert threads and threads[0] != threading.main_thread().name


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


def test_first_complete_valid_answer_wins() -> None:
    output = compile_output(SCHEMA)
    fixed = repair_locally('{"n": 1} garbage {"n": 2}', output)
    assert fixed.outcome.ok and fixed.outcome.value == {"n": 1}
    fixed = repair_locally('Sure! {"n": 1}\n{"n": 2}', output)  # adjacent: not a list
    assert fixed.outcome.ok and fixed.outcome.value == {"n": 1}
    # the first one invalid: the next valid one
    fixed = repair_locally('{"n": "x"} {"n": 2}', output)
    assert fixed.outcome.ok and fixed.outcome.value == {"n": 2}


def test_answer_cut_off_still_closed_by_json_repair() -> None:
    output = compile_output({"type": "object", "properties": {
        "a": {"type": "object"}, "b": {"type": "string"}}})
    fixed = repair_locally('{"a": {"x": 1}, "b": "hel', output)
    assert fixed.outcome.ok and fixed.outcome.value == {"a": {"x": 1}, "b": "hel"}
