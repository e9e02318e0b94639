"""Repair stages on real broken outputs (tests/data/repair_cases/*.json).

Each case names its schema, the broken text and the stage expected to fix it: ``syntax``,
``coerce``, ``valid`` (nothing to do) or ``fail`` (no local stage can: only a re-ask).
The ``smollm_*`` cases are unconstrained SmolLM2-135M outputs (collect_smollm.py), the
``tiny_*`` ones unconstrained outputs of the tiny random test model (collect_tiny.py), the
``hand_*`` ones hand-broken JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ValidationFailed
from structgen.repair import coerce, reask_request, repair_locally
from structgen.schema import CompiledOutput, compile_output
from structgen.schema.specs import load_spec
from structgen.types import Choice, Regex
from structgen.validate import validate_text

CASES_DIR = Path(__file__).parent / "data" / "repair_cases"
CASES = sorted(CASES_DIR.glob("*.json"))


def load_case(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def output_for(case: dict[str, Any]) -> CompiledOutput:
    ref = case["schema"]
    if isinstance(ref, dict):
        return compile_output(ref)
    if ref.endswith(".json"):
        return compile_output(json.loads((CASES_DIR / "schemas" / ref).read_text()))
    return compile_output(load_spec(ref))


def by_expected(stage: str) -> list[Path]:
    return [p for p in CASES if load_case(p)["expected"] == stage]


class ScriptedModel(BackendBase):
    """A backend that answers each call with the next canned text and records requests.

    Stands in for the model in re-ask tests: what is under test is the follow-up turn the
    repair stage builds and what it does with the answer.
    """

    def __init__(self, answers: list[str], name: str = "local") -> None:
        self.name = name
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        text = self.answers.pop(0) if self.answers else ""
        return GenerationResult(text=text, backend=self.name)

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        yield (await self.agenerate(request)).text

    async def health(self) -> bool:
        return True


def make_engine(tmp_path: Path, backend: BackendBase | None = None, **repair: Any) -> Engine:
    cfg = Config.from_dict({
        "llm_backend": {"provider": "local", "fallback": ["local"], "timeout_s": 30},
        "cache": {"backend": "none"}, "repair": repair,
        "metrics": {"state_file": str(tmp_path / "metrics.json")}})
    return Engine(cfg, backends={"local": backend or ScriptedModel([])})


def test_enough_cases_of_every_kind() -> None:
    cases = [load_case(p) for p in CASES]
    assert len(cases) >= 40
    assert {c["expected"] for c in cases} == {"valid", "syntax", "coerce", "fail"}
    assert sum(c["source"].startswith("smollm2") for c in cases) >= 10
    for c in cases:
        assert isinstance(c["text"], str)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_local_stages_on_case(path: Path) -> None:
    case = load_case(path)
    output = output_for(case)
    fix = repair_locally(case["text"], output, max_repairs=2,
                         truncated=case.get("finish_reason") == "length")
    expected = case["expected"]
    if expected == "fail":
        assert not fix.outcome.ok
        assert fix.attempts[0].errors  # the validator said why
        return
    assert fix.outcome.ok, [str(e) for a in fix.attempts for e in a.errors]
    # Never a value that fails validation: the repaired text validates on its own.
    assert validate_text(fix.text, output).ok
    if expected == "valid":
        assert fix.stages == []
    else:
        assert fix.stages[-1] == expected
        assert len(fix.attempts) == len(fix.stages) + 1
    if expected == "coerce":
        assert fix.changes


@pytest.mark.parametrize("path", by_expected("syntax"), ids=lambda p: p.stem)
def test_syntax_alone_is_not_enough_without_budget(path: Path) -> None:
    case = load_case(path)
    fix = repair_locally(case["text"], output_for(case), max_repairs=0)
    assert not fix.outcome.ok and fix.stages == []


@pytest.mark.parametrize("path", by_expected("coerce"), ids=lambda p: p.stem)
async def test_finalize_reports_coerce(path: Path, tmp_path: Path) -> None:
    case = load_case(path)
    engine = make_engine(tmp_path, max_retries=0)
    request = engine.build_request("x", output_for(case))
    done = await engine.finalize(GenerationResult(case["text"], "local"), request)
    assert done.repaired and done.stages[-1] == "coerce"
    assert validate_text(done.text, request.output).ok  # type: ignore[arg-type]


@pytest.mark.parametrize("path", by_expected("fail"), ids=lambda p: p.stem)
async def test_fail_cases_raise_validation_failed(path: Path, tmp_path: Path) -> None:
    case = load_case(path)
    engine = make_engine(tmp_path, max_retries=0)
    request = engine.build_request("x", output_for(case))
    with pytest.raises(ValidationFailed) as info:
        await engine.finalize(GenerationResult(case["text"], "local"), request)
    exc = info.value
    assert exc.raw_text == case["text"]
    assert exc.errors and all(e.message for e in exc.errors)
    assert exc.attempts[0].stage == "generate" and exc.attempts[0].text == case["text"]
    assert exc.to_dict()["attempts"][0]["text"] == case["text"]


def _valid_answer(output: CompiledOutput, case: dict[str, Any]) -> str:
    """A valid answer for the case's schema (an agent schema example, or hand-written)."""
    if output.model is not None:
        import importlib

        module = importlib.import_module(output.model.__module__)
        return module.EXAMPLES[0].model_dump_json()  # type: ignore[no-any-return]
    return {"Person": '{"name": "Ada", "age": 36}',
            "Ticket": '{"title": "Crash", "priority": "low", "tags": []}'}.get(
        output.name, '{"mode": "fast"}')


@pytest.mark.parametrize("path", by_expected("fail"), ids=lambda p: p.stem)
async def test_reask_fixes_fail_cases(path: Path, tmp_path: Path) -> None:
    case = load_case(path)
    output = output_for(case)
    model = ScriptedModel([_valid_answer(output, case)])
    engine = make_engine(tmp_path, model, max_retries=1)
    request = engine.build_request([{"role": "user", "content": "make one"}], output)
    done = await engine.finalize(GenerationResult(case["text"], "local"), request)
    assert done.repaired and done.stages[-1] == "reask"
    # The follow-up turn: the model's own answer, then the validator's errors.
    follow = model.requests[0]
    assert follow.output is request.output  # the same constraint
    assert follow.messages[-2] == {"role": "assistant", "content": case["text"] or "(empty)"}
    errors = [e for a in done.attempts[:-1] for e in a.errors]
    assert any(e.message in follow.messages[-1]["content"] for e in errors)


async def test_reask_that_stays_invalid_raises_with_every_attempt(tmp_path: Path) -> None:
    case = load_case(CASES_DIR / "hand_out_of_range.json")
    model = ScriptedModel(['{"kind": "nope"}', "still not json"])
    engine = make_engine(tmp_path, model, max_retries=2)
    request = engine.build_request("x", output_for(case))
    with pytest.raises(ValidationFailed) as info:
        await engine.finalize(GenerationResult(case["text"], "local"), request)
    stages = [a.stage for a in info.value.attempts]
    assert stages.count("reask") == 2 and len(model.requests) == 2
    assert "still not json" in [a.text for a in info.value.attempts]
    # The second re-ask shows the model its second answer, not the first.
    assert model.requests[1].messages[-2]["content"] == '{"kind": "nope"}'


async def test_reask_disabled_by_config(tmp_path: Path) -> None:
    case = load_case(CASES_DIR / "hand_out_of_range.json")
    model = ScriptedModel(["unused"])
    engine = make_engine(tmp_path, model, reask=False)
    with pytest.raises(ValidationFailed):
        await engine.finalize(GenerationResult(case["text"], "local"),
                              engine.build_request("x", output_for(case)))
    assert model.requests == []


@pytest.mark.slow
async def test_reask_with_tiny_model_under_grammar(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Stage 3 for real: the embedded backend re-generates under the same grammar."""
    cfg = Config.from_dict({
        "llm_backend": {"provider": "local", "fallback": ["local"], "timeout_s": 120},
        "local": {"model": str(tiny_model_dir)}, "cache": {"backend": "none"},
        "metrics": {"state_file": str(tmp_path / "m.json")}})
    engine = Engine(cfg)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "minimum": 0}},
              "required": ["ok", "n"], "additionalProperties": False}
    request = engine.build_request("answer", schema, max_tokens=64)
    try:
        done = await engine.finalize(GenerationResult("I think it is fine.", "local"), request,
                              allow_truncated=True)
    finally:
        await engine.aclose()
    # Prose: syntax repair finds no JSON, then the re-ask answers under the grammar (the
    # random model may stop at max_tokens inside it, which syntax repair then closes; such
    # a value is accepted only with allow_truncated, and marked).
    assert done.stages[:2] == ["syntax", "reask"] and done.repaired
    assert done.attempts[1].errors[0].message == "no JSON value found"
    value = done.value
    assert set(value) == {"ok", "n"}, value  # both required, no other member
    # exactly the schema's types (a bool is no integer here, a float no integer either)
    assert type(value["ok"]) is bool and type(value["n"]) is int and value["n"] >= 0, value


def test_coerce_only_when_unambiguous() -> None:
    two_ways = {"anyOf": [{"type": "integer"}, {"type": "boolean"}, {"type": "null"}]}
    assert coerce("3", two_ways) == (3, ["/: '3' → 3 (integer)"])
    # "1" could be the integer or (after a list wrap) an array: two branches, no choice.
    assert coerce("1", {"anyOf": [{"type": "integer"}, {"type": "array"}]}) == ("1", [])
    assert coerce("x", {"enum": ["X", "x "]}) == ("x", [])
    cyclic = {"$defs": {"N": {"type": "object", "properties": {
        "v": {"type": "integer"}, "next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"}
    data, changes = coerce({"v": "1", "next": {"v": "2"}}, cyclic)
    assert data == {"v": 1, "next": {"v": 2}} and len(changes) == 2


def test_non_json_outputs_coerce() -> None:
    choice = compile_output(Choice(["Yes", "No"]))
    assert repair_locally(" yes\n", choice).outcome.value == "Yes"
    assert not repair_locally("maybe", choice).outcome.ok
    regex = compile_output(Regex(r"\d{3}"))
    assert repair_locally('"123"', regex).text == "123"


def test_reask_request_lists_pointer_and_message() -> None:
    output = compile_output({"type": "object", "properties": {"a": {"type": "integer"}}})
    request = GenerationRequest([{"role": "user", "content": "q"}], output)
    fix = repair_locally('{"a": "x"}', output)
    follow = reask_request(request, '{"a": "x"}', fix.attempts[-1].errors)
    assert follow.messages[:1] == request.messages and len(follow.messages) == 3
    assert "/a: 'x' is not of type 'integer'" in follow.messages[-1]["content"]
    assert request.messages == [{"role": "user", "content": "q"}]  # not mutated
