"""Tool turns: tools from models and functions, the call envelope, validation and re-ask
for the chosen tool, the engine's API (sync, async, streaming), caching and metrics.

The backend here is a real :class:`Backend` that answers canned texts (or native
``tool_calls``, as a server does), so every step after generation is structgen's own code;
the decoding side runs in ``tests/backends/test_local_toolcall.py`` on real models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from schemas.toolkits import RunScope, RunTests
from structgen import generate_structured
from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.backends.base import Finished
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import StructgenError, ToolError, ValidationFailed
from structgen.schema.toolset import (
    envelope_output,
    parse_triggered,
    schema_tool,
    single_call_schema,
    tool_spec,
    tool_turn,
    trigger_grammar,
)
from structgen.types import RawToolCall, ToolCall, call_envelope
from structgen.validate import validate_text


class ReadFile(BaseModel):
    """Read a source file."""

    tool_name: ClassVar[str] = "read_file"
    model_config = ConfigDict(extra="forbid")
    path: str

    @field_validator("path")
    @classmethod
    def relative(cls, v: str) -> str:
        if v.startswith("/"):
            raise ValueError("path must be relative to the repository")
        return v


def search_code(query: str, limit: int = 10) -> list[str]:
    """Search the repository for a text."""
    return []


TOOLS = [RunTests, ReadFile, search_code]


# Tools ---------------------------------------------------------------------------------
def test_tools_from_models_and_functions() -> None:
    run, read, search = (tool_spec(t) for t in TOOLS)
    assert (run.name, run.description) == ("RunTests", "Run tests with pytest and report the "
                                                       "failures.")
    assert read.name == "read_file" and read.model is ReadFile
    assert run.parameters["properties"]["max_failures"]["maximum"] == 50
    assert search.name == "search_code" and search.description == "Search the repository " \
                                                                   "for a text."
    assert search.parameters["required"] == ["query"]
    assert search.parameters["additionalProperties"] is False
    assert search.model(query="x").limit == 10


def _no_annotation(path, lines: int = 3) -> None:
    """Untyped."""


def _star_args(*paths: str) -> None:
    """Varargs."""


def _bad_default(path: str, lines: int = "notint") -> None:  # type: ignore[assignment]
    """A default its own annotation refuses."""


def _good_defaults(path: str = "a.py", lines: int | None = None, depth: float = 1) -> None:
    """Defaults that match (an int for a float is one)."""


def _star_kwargs(**options: str) -> None:
    """Kwargs."""


class _BadName(BaseModel):
    model_config = ConfigDict(title="run tests!")
    path: str


@pytest.mark.parametrize(("tools", "message"), [
    ([_no_annotation], "parameter 'path' has no type annotation"),
    ([_star_args], "no schema"),
    ([_bad_default], r"parameter 'lines': its default 'notint' does not match"),
    ([_star_kwargs], "no schema"),
    ([RunTests, RunTests], "two tools have this name"),
    ([lambda x: x], "must match"),
    ([_BadName], "must match"),
    ([schema_tool.__name__], "not str"),
    ([], "non-empty list"),
], ids=["untyped", "args", "bad-default", "kwargs", "duplicate", "lambda", "bad-name", "str",
        "empty"])
def test_bad_tools_raise_typed_errors(tools: list[Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        tool_turn(tools)


def test_defaults_that_match_their_annotations_pass() -> None:
    spec = tool_turn([_good_defaults]).tools[0]
    assert spec.parameters["properties"]["lines"]["default"] is None


def test_bad_choice_and_long_name_raise_typed_errors() -> None:
    with pytest.raises(ToolError, match="names no offered tool"):
        tool_turn(TOOLS, "delete_repo")
    with pytest.raises(ToolError, match="not one of the offered tools"):
        tool_turn(TOOLS, _star_args)
    with pytest.raises(ToolError, match="must match"):
        schema_tool("x" * 65, {"type": "object"})
    assert tool_turn(TOOLS, ReadFile).choice == "read_file"
    assert tool_turn(TOOLS, search_code).choice == "search_code"


# The envelope ------------------------------------------------------------------------------
def test_envelope_validates_into_the_chosen_tools_model() -> None:
    output = envelope_output(tool_turn(TOOLS, "required"))
    ok = validate_text('{"name":"RunTests","arguments":{"target":"tests/"}}', output)
    assert ok.ok
    # a wrong argument: the errors are those of the tool the model chose, and only those
    bad = validate_text('{"name":"RunTests","arguments":{"target":"t","max_failures":99}}',
                        output)
    assert [(e.pointer, e.keyword) for e in bad.errors] == [("/arguments/max_failures",
                                                             "maximum")]
    # the model's own validator runs too (not expressible in the schema)
    absolute = validate_text('{"name":"read_file","arguments":{"path":"/etc/passwd"}}', output)
    assert not absolute.ok and "relative" in absolute.errors[0].message
    assert not validate_text('{"text":"no"}', output).ok  # required: no text answer
    named = envelope_output(tool_turn(TOOLS, "read_file"))
    assert not validate_text('{"name":"RunTests","arguments":{"target":"t"}}', named).ok
    auto = envelope_output(tool_turn(TOOLS, "auto", parallel=True))
    assert validate_text('{"text":"All done."}', auto).ok
    assert validate_text('[{"name":"search_code","arguments":{"query":"q"}}]', auto).ok


def test_envelope_relocates_each_tools_defs() -> None:
    class Hunk(BaseModel):
        start: int
        lines: list[str]

    class ApplyPatch(BaseModel):
        """Apply hunks."""

        file: str
        hunks: list[Hunk]

    class Other(BaseModel):
        hunk: Hunk  # a second tool with a $defs entry of the same name

    output = envelope_output(tool_turn([ApplyPatch, Other], "required"))
    assert output.json_schema is not None
    assert set(output.json_schema["$defs"]) == {"ApplyPatch.Hunk", "Other.Hunk"}
    text = '{"name":"ApplyPatch","arguments":{"file":"a.py","hunks":[{"start":1,"lines":[]}]}}'
    assert validate_text(text, output).ok
    bad = validate_text(text.replace('"start":1', '"start":"x"'), output)
    assert bad.errors[0].pointer == "/arguments/hunks/0/start"


def test_trigger_format_round_trip() -> None:
    calls, text = parse_triggered('Let me look.<tool_call>\n{"name":"read_file","arguments":'
                                  '{"path":"a.py"}}\n</tool_call>', parallel=False)
    assert calls == [RawToolCall("read_file", '{"path": "a.py"}')] and text == "Let me look."
    assert parse_triggered("Nothing to call.", parallel=False) == ([], "Nothing to call.")
    two, _ = parse_triggered('<tool_call>{"name":"a","arguments":{}}</tool_call>\n<tool_call>'
                             '{"name":"b","arguments":{"x":1}}</tool_call>', parallel=True)
    assert two is not None and [(c.name, json.loads(c.arguments)) for c in two] == [
        ("a", {}), ("b", {"x": 1})]
    cut, so_far = parse_triggered('<tool_call>{"name":"read_file","argum', parallel=False)
    assert cut is None and so_far == '{"name":"read_file","argum'
    assert json.loads(call_envelope(calls, text)) == {"name": "read_file",
                                                      "arguments": {"path": "a.py"}}


def test_trigger_grammar_holds_text_or_one_valid_call(tiny_model_dir: Path) -> None:
    import llguidance
    import llguidance.hf
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    ll = llguidance.hf.from_tokenizer(tok)  # type: ignore[arg-type]
    turn = tool_turn(TOOLS, "auto")
    grammar = llguidance.LLMatcher.grammar_from_lark(
        trigger_grammar(turn, single_call_schema(envelope_output(turn))))

    def accepts(text: str) -> bool:
        m = llguidance.LLMatcher(ll, grammar, log_level=0)
        return m.consume_tokens(tok.encode(text, add_special_tokens=False)) \
            and m.is_accepting()

    assert accepts("Everything passes already.")
    assert accepts('I will check.<tool_call>\n{"name":"read_file","arguments":{"path":"a"}}'
                   "\n</tool_call>")
    assert not accepts('<tool_call>{"name":"rm_rf","arguments":{}}</tool_call>')
    assert not accepts('<tool_call>{"name":"read_file","arguments":{"path":1}}</tool_call>')
    assert not accepts('<tool_call>{"name":"read_file","arguments":{"path":"a"}}</tool_call>'
                       " and more")
    assert not accepts("text <tool_call> more text")

    # reasoning=True: the think block is free, then the same turn grammar (as the embedded
    # backend compiles it: llguidance's reasoning prefix in front of the renamed start rule)
    from structgen.constrain.base import ConstraintOptions
    from structgen.constrain.llguidance import build_lark
    from structgen.schema.compiled import CompiledOutput

    turn_output = CompiledOutput(kind="grammar", grammar=trigger_grammar(
        turn, single_call_schema(envelope_output(turn))))
    grammar = llguidance.LLMatcher.grammar_from_lark(
        build_lark(turn_output, ConstraintOptions(reasoning=True)))
    assert accepts('<think>Read it first.</think>\n<tool_call>{"name":"read_file",'
                   '"arguments":{"path":"a"}}</tool_call>')
    assert accepts("<think>Nothing to call.</think>\nDone.")
    assert not accepts("Done, without thinking.")  # the think block comes first
    assert not accepts('<think>x</think>\n<tool_call>{"name":"read_file","arguments":{}}'
                       "</tool_call>")


# The engine ------------------------------------------------------------------------------
class Canned(BackendBase):
    """A real Backend: canned texts, or canned native tool calls as a server returns them."""

    name = "local"

    def __init__(self, *answers: str | list[RawToolCall]) -> None:
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, list):
            return GenerationResult(text="", backend="local", tool_calls=answer)
        return GenerationResult(text=answer, backend="local")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        text = (await self.agenerate(request)).text
        for i in range(0, len(text), 7):
            yield text[i:i + 7]
        yield Finished("", "stop")

    async def health(self) -> bool:
        return True


def engine_with(tmp_path: Path, backend: Canned, retries: int = 1) -> Engine:
    cfg = Config.from_dict({
        "llm_backend": {"provider": "local", "fallback": ["local"]},
        "cache": {"backend": "disk", "dir": str(tmp_path / "cache")},
        "repair": {"max_retries": retries},
        "metrics": {"state_file": str(tmp_path / "metrics.json")}})
    return Engine(cfg, backends={"local": backend})


def test_run_returns_a_validated_tool_call(tmp_path: Path) -> None:
    backend = Canned('{"name":"RunTests","arguments":{"target":"tests/","scope":"all"}}')
    engine = engine_with(tmp_path, backend)
    result = engine.run("run all tests", tools=TOOLS, tool_choice="required")
    assert result.value == ToolCall("RunTests", RunTests(target="tests/", scope=RunScope.all))
    assert backend.requests[0].tools is not None
    assert backend.requests[0].tools.choice == "required"
    with pytest.raises(StructgenError, match="either output or tools"):
        engine.run("x", RunTests, tools=TOOLS)
    with pytest.raises(StructgenError, match="or tools"):
        engine.run("x")


def test_native_tool_calls_become_the_envelope(tmp_path: Path) -> None:
    backend = Canned([RawToolCall("search_code", '{"query":"KeyError"}', "call_1"),
                      RawToolCall("read_file", '{"path":"shop/orders.py"}', "call_2")])
    engine = engine_with(tmp_path, backend)
    calls = engine.run("look", tools=TOOLS, tool_choice="required", parallel=True)
    assert [c.name for c in calls.value] == ["search_code", "read_file"]
    assert [c.id for c in calls.value] == ["call_1", "call_2"]  # to send the results back
    assert calls.value[1].arguments == ReadFile(path="shop/orders.py")
    assert json.loads(calls.raw_text)[0] == {"name": "search_code",
                                             "arguments": {"query": "KeyError"}}
    text = engine_with(tmp_path / "b", Canned([])).run("hi", tools=TOOLS)
    assert text.value == "" and text.raw_text == '{"text": ""}'


def test_native_calls_past_the_turns_count_are_cut_and_reported(tmp_path: Path) -> None:
    """A server that returns more calls than the turn allows (vLLM enforces
    parallel_tool_calls=false only by discarding calls after generation): structgen keeps
    the first ones and says so in ``post_enforced``, never silently."""
    three = [RawToolCall("search_code", '{"query":"a"}', "c1"),
             RawToolCall("read_file", '{"path":"b.py"}', "c2"),
             RawToolCall("search_code", '{"query":"c"}', "c3")]
    one = engine_with(tmp_path, Canned(three)).run("look", tools=TOOLS, tool_choice="required",
                                                   use_cache=False)
    assert isinstance(one.value, ToolCall) and one.value.id == "c1"
    assert "/tool_calls" in one.post_enforced
    two = engine_with(tmp_path / "b", Canned(three)).run(
        "look", tools=TOOLS, tool_choice="required", parallel=True, max_calls=2,
        use_cache=False)
    assert [c.id for c in two.value] == ["c1", "c2"] and "/tool_calls" in two.post_enforced
    within = engine_with(tmp_path / "c", Canned(three[:2])).run(
        "look", tools=TOOLS, tool_choice="required", parallel=True, max_calls=2,
        use_cache=False)
    assert len(within.value) == 2 and "/tool_calls" not in within.post_enforced


def test_reask_shows_the_chosen_tools_errors(tmp_path: Path) -> None:
    backend = Canned('{"name":"RunTests","arguments":{"target":"t","max_failures":500}}',
                     '{"name":"RunTests","arguments":{"target":"t","max_failures":50}}')
    engine = engine_with(tmp_path, backend)
    result = engine.run("run", tools=TOOLS, tool_choice="required")
    assert result.value.arguments.max_failures == 50 and [str(r) for r in result.repairs] == ["reask"]
    feedback = backend.requests[1].messages[-1]["content"]
    assert "/arguments/max_failures" in feedback
    assert "query" not in feedback and "read_file" not in feedback  # no other tool's errors
    assert backend.requests[1].tools == backend.requests[0].tools
    never = engine_with(tmp_path / "b", Canned('{"name":"read_file","arguments":{"path":"/x"}}'))
    with pytest.raises(ValidationFailed):
        never.run("read", tools=TOOLS, tool_choice=ReadFile)


def test_tool_calls_are_cached_under_their_tools(tmp_path: Path) -> None:
    backend = Canned('{"name":"read_file","arguments":{"path":"a.py"}}')
    engine = engine_with(tmp_path, backend)
    first = engine.run("read a.py", tools=TOOLS, tool_choice="required")
    again = engine.run("read a.py", tools=TOOLS, tool_choice="required")
    assert again.cached and again.value == first.value == ToolCall("read_file",
                                                                   ReadFile(path="a.py"))
    assert len(backend.requests) == 1
    # another tool set, another choice, parallel, a changed description: other keys
    # (the prompt lists every offered tool, so the key has them all, not only the schema's)
    variants: list[tuple[list[Any], Any, bool]] = [
        (TOOLS, "required", False), (TOOLS[1:], "required", False), (TOOLS, "auto", False),
        (TOOLS, "required", True), (TOOLS, ReadFile, False),
        # the same envelope as the named choice, other tools offered
        ([ReadFile], "required", False),
        ([RunTests, schema_tool("read_file", tool_spec(ReadFile).parameters, "Read it."),
          search_code], "required", False)]
    keys = {engine.cache.key(engine.build_request("read a.py", tools=tools, tool_choice=c,
                                                  parallel=p))
            for tools, c, p in variants}
    assert len(keys) == 7


def test_tool_call_metrics_per_tool_and_validity(tmp_path: Path) -> None:
    backend = Canned('{"name":"read_file","arguments":{"path":"a.py"}}',
                     '[{"name":"search_code","arguments":{"query":"x"}},'
                     '{"name":"read_file","arguments":{"path":"b"}}]',
                     '{"name":"read_file","arguments":{"path":"/abs"}}')
    engine = engine_with(tmp_path, backend, retries=0)
    engine.run("a", tools=TOOLS, tool_choice="required")
    engine.run("b", tools=TOOLS, tool_choice="required", parallel=True)
    with pytest.raises(ValidationFailed):
        engine.run("c", tools=TOOLS, tool_choice="required")
    engine.run("a", tools=TOOLS, tool_choice="required")  # a cache hit counts too
    reg = engine.metrics.registry

    def count(tool: str, valid: str) -> float | None:
        return reg.get_sample_value("structgen_tool_calls_total",
                                    {"tool": tool, "valid": valid})

    assert count("read_file", "true") == 3
    assert count("search_code", "true") == 1
    assert count("read_file", "false") == 1


def test_stream_yields_partial_calls_then_the_call(tmp_path: Path) -> None:
    backend = Canned('{"name":"RunTests","arguments":{"target":"tests/unit","max_failures":3}}')
    engine = engine_with(tmp_path, backend)
    items = list(engine.stream("run", tools=TOOLS, tool_choice="required"))
    assert items[-1] == ToolCall("RunTests", RunTests(target="tests/unit", max_failures=3))
    partials = items[:-1]
    assert partials and all(isinstance(p, ToolCall) and p.name == "RunTests"
                            for p in partials)
    paths = [p.arguments.target for p in partials if p.arguments is not None]
    assert "tests/unit" in paths and any(p and p != "tests/unit" for p in paths)
    assert type(partials[-1].arguments).__name__ == "PartialRunTests"


def test_async_twins(tmp_path: Path) -> None:
    backend = Canned('{"text":"Nothing to do."}', '{"text":"Nothing to do."}')
    engine = engine_with(tmp_path, backend)

    async def both() -> tuple[Any, list[Any]]:
        value = await engine.agenerate("hi", tools=TOOLS)
        items = [i async for i in engine.astream("hi", tools=TOOLS, use_cache=False)]
        return value, items

    value, items = asyncio.run(both())
    assert value == "Nothing to do." and items[-1] == "Nothing to do."


def test_generate_structured_takes_tools(tmp_path: Path) -> None:
    # the module-level API with a config file: a real engine (its own backends)
    cfg = tmp_path / "config.toml"
    cfg.write_text("[llm_backend]\nprovider = 'local'\n")
    with pytest.raises(ToolError):
        generate_structured("x", tools=[_no_annotation], config=cfg)


def test_tool_call_metric_labels_only_offered_tools(tmp_path: Path) -> None:
    """A failing answer naming tools nobody offered must not become label values: 50 made-up
    names were 50 series in /metrics (2,001 turns: 40 MB), each the model's text."""
    answers = [f'{{"name":"evil_{i}\\u2028<script>","arguments":{{}}}}' for i in range(50)]
    engine = engine_with(tmp_path, Canned(*answers), retries=0)
    for _ in answers:
        with pytest.raises(ValidationFailed):
            engine.run("x", tools=TOOLS, tool_choice="required", use_cache=False)
    reg = engine.metrics.registry
    tools = {s.labels["tool"] for metric in reg.collect() for s in metric.samples
             if s.name == "structgen_tool_calls_total"}
    assert tools == {"(unknown)"}
    assert reg.get_sample_value("structgen_tool_calls_total",
                                {"tool": "(unknown)", "valid": "false"}) == 50
