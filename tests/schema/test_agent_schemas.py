"""The three agent schemas compile to all four targets, and every target accepts the
compact JSON of every example and rejects a broken copy."""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel
from xgrammar.testing import _is_grammar_accept_string

from schemas import debugger, intent, reflection
from structgen.schema import CompiledOutput, compile_output
from structgen.schema.grammar_check import grammar_accepts
from structgen.validate import validate_text

AGENTS: list[tuple[ModuleType, type[BaseModel]]] = [
    (intent, intent.Intent),
    (debugger, debugger.Diagnosis),
    (reflection, reflection.Reflection),
]
IDS = [m.__name__ for _, m in AGENTS]


def _compiled(model: type[BaseModel]) -> CompiledOutput:
    return compile_output(model)


def _broken(example: BaseModel) -> str:
    """The example with its confidence/score pushed out of range: still valid JSON."""
    data: dict[str, Any] = example.model_dump(mode="json")
    if "confidence" in data:
        data["confidence"] = 1.5
    else:
        data["score"] = 11
    return json.dumps(data, separators=(",", ":"))


def _missing_field(example: BaseModel) -> str:
    """The example without its last required field (a shape error every target sees)."""
    data: dict[str, Any] = example.model_dump(mode="json")
    required = [n for n, f in type(example).model_fields.items() if f.is_required()]
    del data[required[-1]]
    return json.dumps(data, separators=(",", ":"))


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_model_is_documented_and_has_examples(module: ModuleType, model: type[BaseModel]) -> None:
    assert model.__doc__ and len(model.__doc__) > 40
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name} has no description"
    assert len(module.EXAMPLES) >= 3
    assert all(isinstance(e, model) for e in module.EXAMPLES)


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_every_string_and_list_is_bounded(module: ModuleType, model: type[BaseModel]) -> None:
    """So that even a random model under the grammar finishes the object."""
    from structgen.schema.check import walk

    for pointer, sub in walk(_compiled(model).json_schema):
        if sub.get("type") == "string" and "enum" not in sub and "const" not in sub:
            bounded = "maxLength" in sub or re.search(r"\{\d+,\d+\}\$$", sub.get("pattern", ""))
            assert bounded, f"unbounded string at {pointer}"
        if sub.get("type") == "array":
            assert "maxItems" in sub, f"unbounded list at {pointer}"


def test_shapes_the_brief_asks_for() -> None:
    s_int = _compiled(intent.Intent).json_schema
    s_dbg = _compiled(debugger.Diagnosis).json_schema
    s_ref = _compiled(reflection.Reflection).json_schema
    assert s_int and s_dbg and s_ref
    kinds = s_int["$defs"]["IntentKind"]["enum"]
    assert set(kinds) == {"create_file", "edit_code", "explain", "run_tests", "debug",
                          "refactor", "other"}
    assert s_int["properties"]["confidence"] == {
        "description": s_int["properties"]["confidence"]["description"],
        "maximum": 1.0, "minimum": 0.0, "title": "Confidence", "type": "number"}
    evidence = s_dbg["properties"]["evidence"]["items"]
    assert evidence["discriminator"]["propertyName"] == "type"
    assert len(evidence["oneOf"]) == 3
    # the tag Pydantic needs to pick a variant is required, so the grammar always writes it
    for name in ("StackFrame", "LogLine", "TestFailure"):
        assert "type" in s_dbg["$defs"][name]["required"]
    untagged = {"error_type": "KeyError", "root_cause": "x", "fix_steps": ["y"],
                "confidence": 0.5, "evidence": [{"test_id": "t", "assertion": "a"}]}
    assert not validate_text(json.dumps(untagged), _compiled(debugger.Diagnosis)).ok
    assert s_dbg["$defs"]["CodeLocation"]["properties"]["line"]["minimum"] == 1
    assert s_dbg["properties"]["fix_steps"]["minItems"] == 1
    critique = s_ref["$defs"]["Critique"]
    assert critique["properties"]["sub_points"]["items"] == {"$ref": "#/$defs/Critique"}
    assert s_ref["properties"]["verdict"]["enum"] == ["pass", "revise", "fail"]


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_json_schema_round_trip(module: ModuleType, model: type[BaseModel]) -> None:
    compiled = _compiled(model)
    for example in module.EXAMPLES:
        outcome = validate_text(example.model_dump_json(), compiled)
        assert outcome.ok, outcome.errors
        assert outcome.value == example
        bad = validate_text(_broken(example), compiled)
        assert not bad.ok
        assert bad.errors[0].pointer in ("/confidence", "/score")
        assert bad.errors[0].keyword == "maximum"


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_lark_target(module: ModuleType, model: type[BaseModel]) -> None:
    lark = _compiled(model).to_lark()
    assert lark.startswith("start: %json {")
    for example in module.EXAMPLES:
        assert grammar_accepts(lark, example.model_dump_json()) == (True, "")
        ok, reason = grammar_accepts(lark, _broken(example))
        assert not ok and "rejects" in reason
        assert not grammar_accepts(lark, _missing_field(example))[0]


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_ebnf_target(module: ModuleType, model: type[BaseModel]) -> None:
    import xgrammar as xgr

    ebnf = _compiled(model).to_ebnf()
    assert "root ::=" in ebnf
    grammar = xgr.Grammar.from_ebnf(ebnf)  # the printed form parses back
    for example in module.EXAMPLES:
        assert _is_grammar_accept_string(grammar, example.model_dump_json())
        assert not _is_grammar_accept_string(grammar, _broken(example))
        assert not _is_grammar_accept_string(grammar, _missing_field(example))


@pytest.mark.parametrize(("module", "model"), AGENTS, ids=IDS)
def test_regex_target(module: ModuleType, model: type[BaseModel]) -> None:
    pattern = re.compile(_compiled(model).to_regex())
    for example in module.EXAMPLES:
        assert pattern.fullmatch(example.model_dump_json())
        # outlines-core's regex does not encode float bounds (validation enforces them),
        # so the broken copy here is a shape error
        assert not pattern.fullmatch(_missing_field(example))


def test_recursive_regex_is_a_bounded_unrolling() -> None:
    """Reflection.critique is recursive: the regex unrolls it REGEX_RECURSION_DEPTH deep,
    so a shallow tree matches and a deeper one does not (never a wrong shape)."""
    from structgen.schema.targets import REGEX_RECURSION_DEPTH

    pattern = re.compile(_compiled(reflection.Reflection).to_regex())

    def tree(depth: int) -> reflection.Critique:
        node = reflection.Critique(point="leaf")
        for _ in range(depth):
            node = reflection.Critique(point="inner", sub_points=[node])
        return node

    def text(depth: int) -> str:
        return reflection.Reflection(verdict="pass", critique=[tree(depth)], next_action="x",
                                     score=5).model_dump_json()

    assert pattern.fullmatch(text(REGEX_RECURSION_DEPTH - 1))
    deep = text(REGEX_RECURSION_DEPTH + 2)
    assert not pattern.fullmatch(deep)
    assert validate_text(deep, _compiled(reflection.Reflection)).ok  # the schema allows it
