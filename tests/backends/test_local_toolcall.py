"""Tool calls on the embedded backend, tiny random model, 50 BFCL tool sets.

The tool sets are built from the MaskBench dev BFCL schemas (each one function's arguments,
``{"<function>": {...arguments...}}``), 2-5 tools per set, chosen deterministically. A random
model is the honest adversary for constrained decoding: it writes whatever the grammar lets
through. What is asserted, greedy and with seeded sampling:

* ``tool_choice="required"`` and a named tool: the call comes straight out of the decoder
  valid (no repair stage ran), it names an offered tool (the named one), and its arguments
  validate against that tool's own schema: every time;
* ``tool_choice="auto"``: the answer is text or such a call, never a broken call.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.toolkits import ReadFile, RunTests, SearchCode
from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.schema.toolset import schema_tool
from structgen.types import ToolCall, ToolSpec
from structgen.validate import schema_errors

N_SETS = 50
SIZES = (2, 3, 4, 5)
MAX_TOKENS = 192
PROMPT = "Call the function that fits the request: book a table for two at 7pm."


def bfcl_functions(folder: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(record id, function name, arguments schema) of every BFCL function, in id order: a
    record is one function (``{"<function>": {...}}``) or several (``anyOf`` of those)."""
    records = []
    for path in sorted(folder.glob("BFCL*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records += [json.loads(line) for line in f]
    records.sort(key=lambda r: r["id"])
    return [(r["id"], function, parameters)
            for r in records for branch in r["schema"].get("anyOf", [r["schema"]])
            for function, parameters in branch["properties"].items()]


def bfcl_tool_sets(folder: Path, n_sets: int = N_SETS) -> list[list[ToolSpec]]:
    """``n_sets`` tool sets of 2-5 BFCL functions: every k-th function (so every BFCL
    split is drawn from), cut into consecutive groups."""
    functions = bfcl_functions(folder)
    need = sum(SIZES[i % len(SIZES)] for i in range(n_sets))
    picked = functions[::max(1, len(functions) // need)][:need]
    sets, at = [], 0
    for i in range(n_sets):
        group = picked[at:at + SIZES[i % len(SIZES)]]
        at += len(group)
        tools: list[ToolSpec] = []
        for record_id, function, parameters in group:
            # BFCL names ("math.factorial") hold dots: the tools format does not
            name = re.sub(r"[^a-zA-Z0-9_-]", "_", function)[:60]
            if any(t.name == name for t in tools):
                name = f"{name[:58]}_{len(tools)}"
            tools.append(schema_tool(name, parameters, f"BFCL {record_id}: {function}"))
        sets.append(tools)
    return sets


@pytest.fixture(scope="module")
def tool_sets(maskbench_dir: Path) -> list[list[ToolSpec]]:
    sets = bfcl_tool_sets(maskbench_dir)
    assert len(sets) == N_SETS and all(2 <= len(s) <= 5 for s in sets)
    return sets


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    cfg = Config()
    cfg.local.model = str(tiny_model_dir)
    eng = Engine(cfg, backends={"local": LocalBackend(cfg)})
    yield eng
    eng.close()


def assert_valid_call(call: Any, tools: list[ToolSpec], named: str | None = None) -> None:
    assert isinstance(call, ToolCall), call
    spec = {t.name: t for t in tools}[call.name]
    assert named is None or call.name == named
    assert schema_errors(call.arguments, spec.parameters) == [], (call, spec.parameters)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.95, "seed": 7}],
                         ids=["greedy", "sampled"])
def test_required_and_named_calls_always_validate(engine: Engine,
                                                  tool_sets: list[list[ToolSpec]],
                                                  sampling: dict[str, Any]) -> None:
    for i, tools in enumerate(tool_sets):
        named = tools[i % len(tools)]
        for choice in ("required", named):
            result = engine.run(PROMPT, tools=tools, tool_choice=choice, use_cache=False,
                                max_tokens=MAX_TOKENS, **sampling)
            # straight from the grammar: no repair stage had to mend anything
            assert result.repairs == [] and result.finish_reason == "stop", result.raw_text
            assert_valid_call(result.value, tools,
                              named.name if choice is named else None)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.95, "seed": 11}],
                         ids=["greedy", "sampled"])
def test_auto_is_text_or_a_valid_call(engine: Engine, tool_sets: list[list[ToolSpec]],
                                      sampling: dict[str, Any]) -> None:
    for tools in tool_sets:
        result = engine.run(PROMPT, tools=tools, tool_choice="auto", use_cache=False,
                            max_tokens=MAX_TOKENS, **sampling)
        assert result.repairs == [], result.raw_text
        if not isinstance(result.value, str):
            assert_valid_call(result.value, tools)


# The engine's other paths on the embedded backend -----------------------------------------
AGENT_TOOLS = [RunTests, ReadFile, SearchCode]


def test_stream_and_async_on_the_embedded_backend(engine: Engine) -> None:
    eng = engine
    items = list(eng.stream("go", tools=AGENT_TOOLS, tool_choice="required", max_tokens=120,
                            use_cache=False))
    final = items[-1]
    assert isinstance(final, ToolCall) and type(final.arguments) in AGENT_TOOLS
    partials = items[:-1]
    assert partials and all(isinstance(p, ToolCall) and p.name == final.name for p in partials)
    assert type(partials[0].arguments).__name__ == f"Partial{final.name}"
    # "auto" streams the envelope once the trigger format is read, as one chunk: at most
    # one partial item, then the final one
    auto = list(eng.stream("go", tools=AGENT_TOOLS, max_tokens=120, use_cache=False))
    assert 1 <= len(auto) <= 2 and isinstance(auto[-1], ToolCall | str)

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(
            eng.agenerate(f"go {i}", tools=AGENT_TOOLS, tool_choice=choice, max_tokens=120,
                          use_cache=False)
            for i, choice in enumerate(["required", RunTests, "auto", SearchCode]))))

    got = asyncio.run(together())
    assert isinstance(got[1].arguments, RunTests) and isinstance(got[3].arguments, SearchCode)
    assert all(isinstance(v, str) or type(v.arguments) in AGENT_TOOLS for v in got)


def test_a_template_that_takes_tools_gets_them(engine: Engine) -> None:
    from structgen.backends.local.llamacpp_runtime import render_chat_template
    from structgen.backends.local.runtime import chat_messages

    request = engine.build_request("run them", tools=AGENT_TOOLS, tool_choice="required")
    # a Hermes/Qwen-style template reads ``tools``: they go to it, the messages stay as given
    template = ("{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}"
                "</tools>{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n"
                "{% endfor %}")
    messages, tools = chat_messages(request, template)
    assert messages == request.messages and tools is not None
    assert render_chat_template(template, messages, "", "", tools=tools).startswith(
        "<tools>RunTests;ReadFile;SearchCode;</tools>user: run them")
    # a template without them (SmolLM2's, the tiny model's): the system prompt carries them
    messages, tools = chat_messages(request, "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert tools is None and messages[0]["role"] == "system"
    assert "ApplyPatch" not in messages[0]["content"]
    assert "\nRunTests(target: string" in messages[0]["content"] and "Call one of" in \
        messages[0]["content"]
    # a named choice: the template gets that tool alone
    named = engine.build_request("run them", tools=AGENT_TOOLS, tool_choice=ReadFile)
    assert [t["function"]["name"] for t in chat_messages(named, template)[1] or []] == \
        ["ReadFile"]


def test_a_tool_result_turn_on_the_transformers_runtime(engine: Engine) -> None:
    """The tiny model's template (ChatML-like, no tool turns) gets an earlier call and its
    result in the Hermes layout through transformers' apply_chat_template too, and the
    next turn is a validated call."""
    backend = engine.backend("local")
    runtime = backend.runtime(None)  # type: ignore[attr-defined]
    assert type(runtime).__name__ == "TransformersRuntime" and runtime.tool_arguments is None
    messages: list[Any] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            ToolCall("RunTests", RunTests(target="tests/test_app.py"))]},
        {"role": "tool", "content": "1 failed"}]
    request = engine.build_request(messages, tools=AGENT_TOOLS, tool_choice="required")
    prompt = runtime.tokenizer.decode(runtime.prompt_ids(request))
    assert ('<tool_call>\n{"name": "RunTests", "arguments": {"target": "tests/test_app.py", '
            '"scope": "file", "max_failures": 5}}\n</tool_call>') in prompt
    assert "<tool_response>\n1 failed\n</tool_response>" in prompt
    result = engine.run(messages, tools=AGENT_TOOLS, tool_choice="required", max_tokens=120,
                        use_cache=False)
    assert isinstance(result.value, ToolCall) and type(result.value.arguments) in AGENT_TOOLS
