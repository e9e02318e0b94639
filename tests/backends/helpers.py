"""Small shared helpers for the backend tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

from structgen.backends.base import GenerationRequest
from structgen.config import Config
from structgen.schema import compile_output
from structgen.types import Sampling, ToolSpec, ToolTurn, normalize_messages

# 500 function schemas from the MaskBench dev splits (BFCL, Glaiveai2K): README.md there
TOOLSET_FILE = Path(__file__).resolve().parents[1] / "data" / "toolsets" / \
    "maskbench_tools.jsonl.gz"


def count_schema_checks(monkeypatch: Any) -> list[int]:
    """From now on, the size (JSON characters) of each schema structgen checks."""
    from structgen.schema import compiled as compiled_module

    checked: list[int] = []
    real = compiled_module.check_schema

    def counting(schema: Any, **kwargs: Any) -> Any:
        checked.append(len(json.dumps(schema)))
        return real(schema, **kwargs)

    monkeypatch.setattr(compiled_module, "check_schema", counting)
    return checked


def maskbench_tools(n: int | None = None) -> list[tuple[ToolSpec, Any]]:
    """The first ``n`` tools of the MaskBench tool set, each with a valid example of its
    arguments (None where the record has none)."""
    with gzip.open(TOOLSET_FILE, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f][:n]
    return [(ToolSpec(t["name"], "", t["parameters"], None), t["example"]) for t in lines]


def generated_tools(n: int, description: str = "The weather forecast number {i} for a city.",
                    ) -> list[ToolSpec]:
    """``n`` small tools of two parameters each (a city and a number of days)."""
    params = {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city"},
        "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "days"], "additionalProperties": False}
    return [ToolSpec(f"forecast_{i:03d}", description.format(i=i), params, None)
            for i in range(n)]


GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar",
                 "guided_decoding_backend", "guided_whitespace_pattern", "guided_json_object")


def server_config(backend: str, base_url: str, *, retries: int = 0, **section: Any) -> Config:
    """A config that routes only to ``backend`` at ``base_url`` (no cache, no re-ask)."""
    return Config.from_dict({
        backend: {"base_url": base_url, "retries": retries, "read_timeout_s": 10, **section},
        "llm_backend": {"provider": backend, "fallback": [backend], "timeout_s": 30},
        "cache": {"backend": "none"}, "metrics": {"enabled": False},
        "repair": {"max_retries": 0}})


def request(output: Any, prompt: str = "Fix the failing test in app.py", *,
            max_tokens: int = 64, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=normalize_messages(prompt), output=compile_output(output),
                             sampling=Sampling(max_tokens=max_tokens), **kw)


def walk_keys(obj: Any) -> set[str]:
    """Every key at any depth of a JSON body."""
    if isinstance(obj, dict):
        out = set(obj)
        for v in obj.values():
            out |= walk_keys(v)
        return out
    if isinstance(obj, list):
        out = set()
        for v in obj:
            out |= walk_keys(v)
        return out
    return set()


# Tool turns at the backend level ------------------------------------------------------
# The engine compiles a tool turn itself (structgen/schema/toolset.py); these build the
# same records by hand so the backends' wire paths are tested on their own.
class RunTests(BaseModel):
    """Run the test suite, or one test file."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=40)
    verbose: bool


class ReadFile(BaseModel):
    """Read lines of a file of the repository."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=40)
    max_lines: int = Field(ge=1, le=500)


def tool_spec(model: type[BaseModel]) -> ToolSpec:
    return ToolSpec(name=model.__name__, description=(model.__doc__ or "").strip(),
                    parameters=model.model_json_schema(), model=model)


def envelope_schema(turn: ToolTurn) -> dict[str, Any]:
    """``{"name": N, "arguments": <N's schema>}`` per tool; an array with ``parallel``;
    ``{"text": str}`` as one more branch under ``"auto"`` (flat tool schemas only)."""
    tools = [t for t in turn.tools if turn.choice in ("auto", "required", t.name)]
    calls: list[dict[str, Any]] = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    call: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if turn.parallel:
        bound = {} if turn.max_calls is None else {"maxItems": turn.max_calls}
        call = {"type": "array", "items": call, "minItems": 1, **bound}
    if turn.choice != "auto":
        return call
    text = {"type": "object", "properties": {"text": {"type": "string"}},
            "required": ["text"], "additionalProperties": False}
    return {"anyOf": [call, text]}


def tool_request(choice: str = "required", *, tools: tuple[type[BaseModel], ...] = (
                     RunTests, ReadFile), parallel: bool = False,
                 prompt: str | list[Any] = "Run the tests in tests/test_app.py",
                 max_tokens: int = 64, max_calls: int | None = None,
                 **kw: Any) -> GenerationRequest:
    """A tool turn as the engine hands it to a backend."""
    turn = ToolTurn(tuple(tool_spec(t) for t in tools), choice, parallel, max_calls)
    return GenerationRequest(messages=normalize_messages(prompt),
                             output=compile_output(envelope_schema(turn)),
                             sampling=Sampling(max_tokens=max_tokens), tools=turn, **kw)


def check_call(turn: ToolTurn, name: str, arguments: str) -> None:
    """The call names one of the turn's tools and its arguments validate (jsonschema)."""
    specs = {t.name: t for t in turn.tools}
    assert name in specs, name
    jsonschema.validate(json.loads(arguments), specs[name].parameters)


def check_envelope(turn: ToolTurn, text: str) -> Any:
    """The envelope text validates against the turn's envelope schema; its value."""
    value = json.loads(text)
    jsonschema.validate(value, envelope_schema(turn))
    return value
