"""Tool sets at scale: 500 MaskBench function schemas (tests/data/toolsets) in one call
envelope, compiled on every embedded engine that takes them; a repeated set is a look-up;
exact call counts (``parallel=False``: one call; ``max_calls``) held by the grammar itself.

The grammars are compiled against the tiny test model's tokenizer and driven token by token
with known texts: what the grammar admits and refuses, not what a model happens to write
(tests/backends/test_local_tool_scale.py decodes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from structgen.constrain.base import ConstraintOptions, GrammarConstraint, TokenizerData
from structgen.constrain.grammar_cache import GrammarCache
from structgen.errors import ToolError
from structgen.schema import toolset
from structgen.schema.toolset import envelope_output, tool_turn, tool_value
from structgen.types import ToolCall, ToolSpec
from structgen.validate import validate_text
from tests.backends.helpers import count_schema_checks, generated_tools, maskbench_tools

ENGINES = ("llguidance", "xgrammar")


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> TokenizerData:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenizerData(hf, len(hf), (hf.eos_token_id,))


def constraint(tok: TokenizerData, engine: str, cache: GrammarCache) -> GrammarConstraint:
    from structgen.constrain.base import create_constraint

    return create_constraint(engine, tok, grammar_cache=cache)


def call_text(name: str, arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments}, separators=(",", ":"),
                      ensure_ascii=False)


def admits(matcher: Any, tok: TokenizerData, text: str) -> bool:
    """The grammar takes ``text`` whole and may end there (on a fork of ``matcher``)."""
    return matcher.completes_with(tok.encode(text))


@pytest.mark.parametrize("engine", ENGINES)
def test_500_maskbench_tools_compile_and_every_example_call_passes(
        tok: TokenizerData, engine: str) -> None:
    tools = maskbench_tools()
    assert len(tools) == 500
    turn = tool_turn([spec for spec, _ in tools], "required")
    output = envelope_output(turn)
    matcher = constraint(tok, engine, GrammarCache()).matcher(output, ConstraintOptions())
    examples = [(spec, ex) for spec, ex in tools if ex is not None]
    assert len(examples) > 300
    for spec, example in examples[::4]:  # every 4th: ~85 calls through the grammar
        text = call_text(spec.name, example)
        assert admits(matcher, tok, text), (engine, text[:200])
        outcome = validate_text(text, output)
        assert outcome.ok, (text[:200], outcome.errors)
        call = tool_value(outcome.value)
        assert isinstance(call, ToolCall) and call.name == spec.name
        assert call.arguments == example
    # a name outside the set, or one tool's name with another's arguments, is refused
    assert not admits(matcher, tok, call_text("no_such_tool", {}))
    first, second = examples[0], examples[1]
    wrong = call_text(first[0].name, second[1])
    assert not validate_text(wrong, output).ok


def test_a_repeated_tool_set_is_a_look_up(tok: TokenizerData) -> None:
    specs = [spec for spec, _ in maskbench_tools()]
    cache = GrammarCache()
    engine = constraint(tok, "llguidance", cache)
    first = envelope_output(tool_turn(specs, "required"))
    engine.matcher(first, ConstraintOptions())
    misses = cache.misses
    # a new list of the same tools (as an agent sends on every request): the same compiled
    # output comes back, and its grammar from the cache
    again = envelope_output(tool_turn(list(specs), "required"))
    assert again is first
    engine.matcher(again, ConstraintOptions())
    assert cache.misses == misses and cache.hits >= 1
    # a different choice, or one tool more, is another envelope
    assert envelope_output(tool_turn(specs, specs[3].name)) is not first
    assert envelope_output(tool_turn(specs[:-1], "required")) is not first


def test_schema_tools_build_no_model_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """The envelope's Pydantic model is one union; tools given as raw schemas share one
    call model, so 500 of them do not cost 500 ``create_model`` calls (the old code did)."""
    made: list[str] = []
    real = pydantic.create_model

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        made.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(toolset.pydantic, "create_model", counting)
    specs = generated_tools(500, "A forecast, variant {i} of a test of model building.")
    output = envelope_output(tool_turn(specs, "required"))
    assert made == []
    outcome = validate_text(call_text("forecast_321", {"city": "Oslo", "days": 3}), output)
    assert outcome.ok
    assert tool_value(outcome.value) == ToolCall("forecast_321", {"city": "Oslo", "days": 3})


class Lookup(BaseModel):
    """Look a word up."""

    word: str

    @pydantic.field_validator("word")
    @classmethod
    def lower(cls, v: str) -> str:
        return v.lower()


def test_model_tools_among_schema_tools_validate_into_their_models() -> None:
    specs: list[Any] = [*generated_tools(40, "Variant {i} beside a model tool."), Lookup]
    output = envelope_output(tool_turn(specs, "required", parallel=True))
    outcome = validate_text(
        "[" + call_text("Lookup", {"word": "HeLLo"}) + ","
        + call_text("forecast_007", {"city": "Rome", "days": 2}) + "]", output)
    assert outcome.ok, outcome.errors
    calls = tool_value(outcome.value)
    assert isinstance(calls, list)
    assert isinstance(calls[0].arguments, Lookup) and calls[0].arguments.word == "hello"
    assert calls[1].arguments == {"city": "Rome", "days": 2}


# One grammar per tool -----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_a_call_compiles_the_names_and_the_called_tool_only(
        tok: TokenizerData, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 tools: the engine compiles the call's head (the names) and, once the model has
    written a name, that tool's grammar: not every tool's schema (the old code compiled the
    whole envelope, ~130 KB of schema, before the first token)."""
    tools = maskbench_tools()
    output = envelope_output(tool_turn([spec for spec, _ in tools], "required"))
    engine_ = constraint(tok, engine, GrammarCache())
    compiled: list[int] = []
    real = type(engine_).compile

    def counting(self: GrammarConstraint, out: Any, options: ConstraintOptions) -> Any:
        compiled.append(len(out.json_text))
        return real(self, out, options)

    monkeypatch.setattr(type(engine_), "compile", counting)
    matcher = engine_.matcher(output, ConstraintOptions())
    spec, example = next((s, e) for s, e in tools[250:] if e is not None)
    assert matcher.consume_all(tok.encode(call_text(spec.name, example)))
    assert matcher.is_accepting()
    assert len(compiled) == 2, compiled  # the names, then the called tool
    assert sum(compiled) < len(output.json_text) / 10


def test_a_tool_set_one_tool_apart_checks_that_tool_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [spec for spec, _ in maskbench_tools(200)]
    envelope_output(tool_turn(specs, "required"))
    checked = count_schema_checks(monkeypatch)
    new = ToolSpec("brand_new_tool", "A tool no set had.", {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}, None)
    output = envelope_output(tool_turn([*specs[:-1], new], "required"))
    # the new tool's schema and the head (its 200 names), not the 200 tools' schemas
    assert len(checked) == 2 and sum(checked) < len(output.json_text) / 5, checked
    outcome = validate_text(call_text("brand_new_tool", {"q": "x"}), output)
    assert outcome.ok and tool_value(outcome.value) == ToolCall("brand_new_tool", {"q": "x"})
    assert not validate_text(call_text("brand_new_tool", {"q": 1}), output).ok


def test_tokens_that_run_into_the_arguments_are_masked_while_the_name_is_open(
        tok: TokenizerData) -> None:
    """The head's arguments are a placeholder, so a token that would run from the name
    past the ``"arguments"`` key is masked out until the name is known (the tiny
    tokenizer has no such token: some allowed ones are named crossing here)."""
    import torch

    from structgen.constrain.calls import CallMatcher, crossing_tokens

    assert crossing_tokens([b"a", b'x","arguments":{', b'arguments"', b"args"]) == \
        frozenset({1, 2})
    output = envelope_output(tool_turn(_tools(), "required"))
    assert output.calls is not None
    engine_ = constraint(tok, "llguidance", GrammarCache())
    head = engine_.matcher(output.calls.head, ConstraintOptions())
    assert head.consume_all(tok.encode('{"name":"'))
    words = (tok.vocab_size + 31) // 32
    mask = torch.full((1, words), -1, dtype=torch.int32)
    head.fill_bitmask(mask, 0)
    allowed = [t for t in range(tok.vocab_size) if int(mask[0, t // 32]) >> (t % 32) & 1]
    crossing = frozenset([*(t for t in allowed if t % 32 == 31)][:3] + allowed[:2])
    matcher = CallMatcher(head, lambda name: engine_.matcher(output.calls.call(name),
                                                             ConstraintOptions()),
                          tok.token_bytes(), crossing)
    mask.fill_(-1)
    matcher.fill_bitmask(mask, 0)
    now = {t for t in range(tok.vocab_size) if int(mask[0, t // 32]) >> (t % 32) & 1}
    assert now == set(allowed) - crossing
    assert not any(matcher.accepts(t) for t in crossing)


def count_compiles(engine: GrammarConstraint, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the size of each output ``engine`` compiles (its schema or grammar)."""
    compiled: list[int] = []
    real = type(engine).compile

    def counting(self: GrammarConstraint, out: Any, options: ConstraintOptions) -> Any:
        compiled.append(len(out.json_text if out.kind == "json" else out.grammar))
        return real(self, out, options)

    monkeypatch.setattr(type(engine), "compile", counting)
    return compiled


def _examples(n: int = 500) -> tuple[list[ToolSpec], list[tuple[ToolSpec, Any]]]:
    tools = maskbench_tools(n)
    return [spec for spec, _ in tools], [(s, e) for s, e in tools if e is not None]


@pytest.mark.parametrize("engine", ENGINES)
def test_parallel_calls_compile_the_names_and_the_called_tools_only(
        tok: TokenizerData, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 tools, ``parallel=True, max_calls=3``: the engine compiles the array of calls
    with their arguments left open (the names and the count), then each called tool's own
    grammar (the old code compiled the whole envelope, ~130 KB of schema, first). The
    answers validate, and the count is the grammar's: 1 to 3 calls, never 4."""
    specs, examples = _examples()
    output = envelope_output(tool_turn(specs, "required", parallel=True, max_calls=3))
    engine_ = constraint(tok, engine, GrammarCache())
    compiled = count_compiles(engine_, monkeypatch)
    matcher = engine_.matcher(output, ConstraintOptions())
    (a, x), (b, y), (c, z) = examples[100], examples[200], examples[-1]
    calls = [call_text(a.name, x), call_text(b.name, y), call_text(c.name, z)]
    for n in (1, 2, 3, 4):
        text = "[" + ",".join((calls * 2)[:n]) + "]"
        assert admits(matcher, tok, text) == (n <= 3), (engine, n)
        if n <= 3:
            outcome = validate_text(text, output)
            assert outcome.ok, outcome.errors
            assert [c.name for c in tool_value(outcome.value)] == [a.name, b.name, c.name][:n]
    # the head (the names) and the three called tools, each compiled once
    assert len(compiled) == 4 and sum(compiled) < len(output.json_text) / 10, compiled
    # a later call's arguments are its own tool's: another tool's are refused
    assert not admits(matcher, tok, "[" + calls[0] + "," + call_text(b.name, x) + "]")
    assert not admits(matcher, tok, "[" + calls[0] + "," + call_text("no_such_tool", {}) + "]")


def test_auto_compiles_the_trigger_names_and_the_called_tools_only(
        tok: TokenizerData, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 tools, ``"auto"``: the embedded backend's trigger grammar is compiled with each
    call's arguments open, then the called tool's grammar beside it (the old code compiled
    one Lark grammar holding every tool's schema). A text answer, one call, and with
    ``max_calls=2`` two calls but not three; the calls read back validate."""
    from structgen.schema.toolset import decoded_output, parse_triggered

    specs, examples = _examples()
    (a, x), (b, y) = examples[50], examples[300]
    block = "<tool_call>\n{}\n</tool_call>"
    one, two = block.format(call_text(a.name, x)), block.format(call_text(b.name, y))
    for max_calls in (None, 2):
        turn = tool_turn(specs, "auto", parallel=max_calls is not None, max_calls=max_calls)
        envelope = envelope_output(turn)
        output = decoded_output(turn, envelope)
        assert decoded_output(tool_turn(list(specs), "auto", parallel=turn.parallel,
                                        max_calls=max_calls), envelope) is output  # kept
        engine_ = constraint(tok, "llguidance", GrammarCache())
        compiled = count_compiles(engine_, monkeypatch)
        matcher = engine_.matcher(output, ConstraintOptions())
        assert admits(matcher, tok, "No function fits: {\"a\": 1}.")
        assert admits(matcher, tok, "Sure.\n" + one)
        assert admits(matcher, tok, "\n".join([one, two])) == (max_calls == 2)
        assert not admits(matcher, tok, "\n".join([one, two, one]))
        assert not admits(matcher, tok, block.format(call_text(a.name, y)))
        # the head, the first tool, and the second where a second call may follow
        assert len(compiled) == (2 if max_calls is None else 3), compiled
        assert sum(compiled) < len(output.grammar or "") / 10, compiled
        calls, _ = parse_triggered("Sure.\n" + "\n".join([one, two]), turn.parallel)
        assert calls is not None and len(calls) == 2
        texts = [call_text(call.name, json.loads(call.arguments)) for call in calls]
        answer = f"[{','.join(texts)}]" if turn.parallel else texts[0]
        outcome = validate_text(answer, envelope)
        assert outcome.ok, outcome.errors
        assert tool_value(outcome.value) == ([ToolCall(a.name, x), ToolCall(b.name, y)]
                                             if turn.parallel else ToolCall(a.name, x))


@pytest.mark.parametrize("engine", [*ENGINES, "outlines"])
def test_an_open_ended_output_takes_any_text_after_it(tok: TokenizerData, engine: str) -> None:
    """``ConstraintOptions(open_end=True)``, what a call in a frame compiles with: the
    value as its schema says, then anything (the frame judges it)."""
    tool = ToolSpec("t", "", {"type": "object", "properties": {"q": {"type": "integer"}},
                              "required": ["q"], "additionalProperties": False}, None)
    output = toolset.call_output(tool)
    matcher = constraint(tok, engine, GrammarCache()).matcher(
        output, ConstraintOptions(open_end=True))
    assert admits(matcher, tok, call_text("t", {"q": 1}) + '},{"x":[ and more')
    assert not admits(matcher, tok, call_text("t", {"q": "1"}))
    assert not admits(matcher, tok, '{"name":"t","arguments":{"q":1,"r":2}}')


@pytest.mark.parametrize("engine", ENGINES)
def test_tokens_across_call_boundaries_in_a_frame(tok: TokenizerData, engine: str) -> None:
    """A token that starts before a call's ``{`` (`` {"`` after a spaced ``,``) or closes
    a string, the arguments and the call at once (``"}}``): the frame's mask allows them
    and the called tools' grammars judge what they carry."""
    tools = [ToolSpec(f"t{i}", "", {
        "type": "object", "properties": {"days": {"type": "integer"}, "city": {"type": "string"}},
        "required": ["days", "city"], "additionalProperties": False}, None) for i in range(3)]
    output = envelope_output(tool_turn(tools, "required", parallel=True, max_calls=2))
    options = ConstraintOptions(whitespace="spaced")
    matcher = constraint(tok, engine, GrammarCache()).matcher(output, options)
    space_open, close_all = tok.encode(' {"'), tok.encode('"}}')
    assert len(space_open) == 1 and len(close_all) == 1  # the tiny tokenizer has both

    def call(name: str, days: str) -> list[int]:
        return tok.encode(f'name": "{name}", "arguments": {{"days": {days}, "city": "Oslo') \
            + close_all

    good = tok.encode('[{"') + call("t1", "2") + tok.encode(",") + space_open + call("t2", "3")
    ahead = matcher.fork()
    for i, token in enumerate(good):
        if token in (*space_open, *close_all):
            import torch

            mask = torch.full((1, (tok.vocab_size + 31) // 32), -1, dtype=torch.int32)
            ahead.fill_bitmask(mask, 0)
            assert int(mask[0, token // 32]) >> (token % 32) & 1, (engine, i)
        assert ahead.consume(token), (engine, i)
    assert ahead.consume_all(tok.encode("]")) and ahead.is_accepting()
    bad = tok.encode('[{"') + call("t1", "2") + tok.encode(",") + space_open + call("t2", '"3"')
    assert not matcher.completes_with(bad + tok.encode("]"))


# Exact call counts ------------------------------------------------------------------------
def _tools() -> list[ToolSpec]:
    return generated_tools(3, "Count test {i}.")


@pytest.mark.parametrize("engine", [*ENGINES, "outlines"])
def test_without_parallel_the_grammar_holds_exactly_one_call(tok: TokenizerData,
                                                            engine: str) -> None:
    output = envelope_output(tool_turn(_tools(), "required"))
    matcher = constraint(tok, engine, GrammarCache()).matcher(output, ConstraintOptions())
    one = call_text("forecast_001", {"city": "Oslo", "days": 2})
    assert admits(matcher, tok, one)
    assert not admits(matcher, tok, f"[{one}]")
    assert not admits(matcher, tok, f"[{one},{one}]")
    after = matcher.fork()
    assert after.consume_all(tok.encode(one)) and after.is_accepting()
    assert not any(after.accepts(t) for t in tok.encode(",[{ \n"))  # only the end


@pytest.mark.parametrize("engine", [*ENGINES, "outlines"])
@pytest.mark.parametrize("max_calls", [1, 2, 3])
def test_max_calls_bounds_the_grammar(tok: TokenizerData, engine: str, max_calls: int) -> None:
    output = envelope_output(tool_turn(_tools(), "required", parallel=True,
                                       max_calls=max_calls))
    matcher = constraint(tok, engine, GrammarCache()).matcher(output, ConstraintOptions())
    one = call_text("forecast_002", {"city": "Lima", "days": 5})
    for n in range(1, max_calls + 2):
        text = "[" + ",".join([one] * n) + "]"
        assert admits(matcher, tok, text) == (n <= max_calls), (engine, n)
        assert validate_text(text, output).ok == (n <= max_calls)


def test_max_calls_is_checked() -> None:
    with pytest.raises(ToolError, match="needs parallel=True"):
        tool_turn(_tools(), "required", max_calls=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ToolError, match="positive integer"):
            tool_turn(_tools(), "required", parallel=True, max_calls=bad)  # type: ignore[arg-type]
    assert tool_turn(_tools(), "required", max_calls=1).max_calls is None  # one call anyway


@pytest.mark.parametrize("max_calls", [None, 2])
def test_the_auto_grammar_holds_the_same_counts(tok: TokenizerData,
                                                max_calls: int | None) -> None:
    """``"auto"`` on the embedded backend is the trigger grammar: one ``<tool_call>`` block
    without ``parallel``, at most ``max_calls`` with it."""
    import dataclasses

    from structgen.schema.toolset import decoded_output

    parallel = max_calls is not None
    turn = tool_turn(_tools(), "auto", parallel=parallel, max_calls=max_calls)
    output = decoded_output(turn, envelope_output(turn))
    block = "<tool_call>\n" + call_text("forecast_000", {"city": "Oslo", "days": 1}) + \
        "\n</tool_call>"
    allowed = max_calls or 1
    # one grammar per called tool beside the trigger grammar, and the whole grammar (the
    # engines' path with reasoning) hold the same counts
    for whole in (output, dataclasses.replace(output, calls=None)):
        matcher = constraint(tok, "llguidance", GrammarCache()).matcher(whole,
                                                                        ConstraintOptions())
        for n in range(1, allowed + 2):
            assert admits(matcher, tok, "Sure.\n" + "\n".join([block] * n)) == (n <= allowed)


# Short tool prompts -------------------------------------------------------------------------
def test_the_tools_prompt_is_one_line_per_tool() -> None:
    from structgen.schema.toolset import tools_prompt

    class Weather(BaseModel):
        """Get the weather for a city."""

        city: str
        unit: str = pydantic.Field("c", json_schema_extra={"enum": ["c", "f"]})
        days: list[int] | None = None

    turn = tool_turn([Weather, *generated_tools(3, "Forecast {i}.")], "required")
    prompt = tools_prompt(turn)
    assert "Weather(city: string, unit?: \"c\"|\"f\", days?: array of integer|null) - Get " \
        "the weather for a city." in prompt
    assert "forecast_002(city: string (The city), days: integer) - Forecast 2." in prompt
    assert '"properties"' not in prompt  # no JSON Schema in it: the grammar holds that
    # a named choice shows only the named tool
    named = tools_prompt(tool_turn([Weather, *generated_tools(3)], "forecast_001"))
    assert "forecast_001(" in named and "Weather" not in named and "forecast_002" not in named
    assert "Call the function forecast_001" in named
    # max_calls is said in the prompt as well
    assert "(at most 2)" in tools_prompt(tool_turn(generated_tools(2), "required",
                                                   parallel=True, max_calls=2))
    # the grammar writes a required or named call's JSON from its first token: the prompt
    # does not spend tokens describing it; "auto" says how to write the trigger and a call
    assert prompt.endswith("</tools>\n\nCall one of these functions.")
    assert '"arguments"' not in prompt and '"arguments"' not in named
    assert '{"name": <function-name>, "arguments": <args-json-object>}' in tools_prompt(
        tool_turn(generated_tools(2), "auto"))


def test_shorter_details_for_large_sets() -> None:
    from structgen.schema.toolset import PROMPT_DETAILS, tools_prompt

    turn = tool_turn([spec for spec, _ in maskbench_tools()], "required")
    sizes = [len(tools_prompt(turn, detail=d)) for d in PROMPT_DETAILS]
    full = len(tools_prompt(turn, full_schemas=True))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < full / 3
    bare = tools_prompt(turn, detail="bare")
    assert all(f"\n{spec.name}\n" in bare for spec in turn.tools[1:-1])


def test_a_forked_call_scan_leaves_the_original_where_it_was() -> None:
    """A frame's matcher is forked to try each crossing token; the fork's scan must not
    move the original's (it once shared its string state: after the fork closed a string,
    the original read the ``}`` inside its own string as the end of the call)."""
    from structgen.constrain.calls import CallScan

    scan = CallScan(1, False)
    assert [scan.step(b) for b in b'[{"q": "a'] == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    fork = scan.fork()
    assert [fork.step(b) for b in b'"}'] == [0, -1]  # the fork ends its string and call
    assert scan.step(ord("}")) == 0  # the original is still inside "a...": no call ends
    assert [scan.step(b) for b in b'"}'] == [0, -1]
