"""Inputs built to explode (issue 24): nested counted repetitions in regular expressions
(the ``regex`` module unrolls them: 2.2 GB for ``((a{200}){200}){200}``) and answers for
nested unions (coercion and validation once doubled per level). Each generated case must
come back bounded: a compiled pattern whose unrolled size is within the limit, or a
SchemaError; a repair whose schema checks grow with the answer, not with 2^depth."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.errors import SchemaError
from structgen.repair import MAX_COERCE_STEPS, repair_locally
from structgen.schema import compile_output
from structgen.schema.ecma_regex import (
    MAX_EXPANDED_ATOMS,
    PatternTimeout,
    compile_ecma,
    expanded_atoms,
)

from .conftest import TRIED, examples

ATOMS = ["a", "b", "[a-z]", r"\d", ".", "(a|bc)", "(?:xy)"]
# a backreference or lookaround makes RE2 refuse the pattern: the fallback gets it
FALLBACK = [r"\1", "(?=a)", "(?!b)", "(?<=a)"]


@st.composite
def repetition_bomb(draw: st.DrawFn) -> str:
    pattern = "(" + draw(st.sampled_from(ATOMS)) + ")"
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.sampled_from([2, 10, 50, 200, 1000]))
        low = draw(st.sampled_from(["", "0,", "1,"]))
        pattern = f"(?:{pattern}{{{low}{count}}})" if draw(st.booleans()) else \
            f"({pattern}{{{low}{count}}})"
        if draw(st.booleans()):
            pattern += draw(st.sampled_from(ATOMS))
    return pattern + draw(st.sampled_from(FALLBACK))


@settings(max_examples=examples(150))
@given(repetition_bomb())
def test_regex_bombs_are_refused_or_bounded(pattern: str) -> None:
    TRIED["regex bombs"] += 1
    size = expanded_atoms(pattern)
    try:
        compiled = compile_ecma(pattern)
    except SchemaError:
        return  # refused (too large, or RE2 and regex both found it malformed)
    if compiled.engine == "regex":
        assert size <= MAX_EXPANDED_ATOMS, (pattern, size)
    with contextlib.suppress(PatternTimeout):  # bounded by FALLBACK_TIMEOUT_S
        compiled.search("a" * 50 + "bc")


def _union_schema(kinds: list[str]) -> dict[str, Any]:
    """A recursive anyOf of objects told apart by a const ``op`` (a pydantic Union of
    models), plus integer leaves."""
    node = {"anyOf": [{"$ref": f"#/$defs/{k}"} for k in kinds] + [{"type": "integer"}]}
    defs = {k: {"type": "object", "properties": {
        "left": {"$ref": "#/$defs/Node"}, "op": {"const": k},
        "right": {"$ref": "#/$defs/Node"}}, "required": ["op", "left", "right"]}
        for k in kinds}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/Node"}},
            "required": ["root"], "$defs": {**defs, "Node": node}}


@st.composite
def union_answer(draw: st.DrawFn) -> tuple[list[str], Any]:
    kinds = draw(st.sampled_from([["add", "mul"], ["add", "mul", "sub"], ["x", "y", "z", "w"]]))

    def tree(depth: int) -> Any:
        if depth == 0 or draw(st.integers(0, 4)) == 0:
            leaf = draw(st.integers(-5, 5))
            return str(leaf) if draw(st.booleans()) else leaf  # strings: coerced
        return {"op": draw(st.sampled_from(kinds)), "left": tree(depth - 1),
                "right": tree(depth - 1) if draw(st.integers(0, 3)) == 0 else
                draw(st.integers(0, 9))}

    return kinds, {"root": tree(draw(st.integers(1, 14)))}


@settings(max_examples=examples(60))
@given(union_answer())
def test_nested_union_answers_are_repaired_in_bounded_work(case: tuple[list[str], Any]
                                                           ) -> None:
    TRIED["nested unions"] += 1
    kinds, data = case
    output = compile_output(_union_schema(kinds))
    text = json.dumps(data)
    import structgen.repair as repair

    calls = [0]
    real = repair.schema_valid

    def counting(*args: Any) -> bool:
        calls[0] += 1
        return real(*args)

    repair.schema_valid = counting  # type: ignore[assignment]
    try:
        fix = repair_locally(text, output)
    finally:
        repair.schema_valid = real  # type: ignore[assignment]
    nodes = text.count("{") + text.count(",") + 1
    assert calls[0] <= min(MAX_COERCE_STEPS, 10 * len(kinds) * nodes), (calls[0], nodes)
    assert fix.outcome.ok or fix.outcome.errors
