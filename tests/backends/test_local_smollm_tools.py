"""SmolLM2-135M-Instruct on the embedded backend (default runtime), calling the three
agents' tools (``schemas/toolkits.py``) on realistic requests.

SmolLM2's chat template takes no ``tools``, so they reach it in the system prompt (the
Hermes layout, see ``structgen.backends.local.runtime.chat_messages``). Decoding is greedy.
What is asserted: a validated call of an offered tool (the named one when one is named),
with no repair, and for the named calls arguments taken from the request, so the model
read it; with ``"auto"`` and a worked example, the model writes the ``<tool_call>``
trigger itself and the call after it comes back validated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from schemas.toolkits import (
    DEBUGGER_TOOLS,
    INTENT_TOOLS,
    REFLECTION_TOOLS,
    ReadFile,
    RequestRevision,
    RunTests,
)
from structgen.config import Config
from structgen.engine import Engine
from structgen.types import StructuredResult, ToolCall

pytestmark = pytest.mark.slow

INTENT = ("You are the intent step of a coding agent. Before acting, look at the code with a "
          "tool. Example: for 'where is the cache key built? see structgen/cache.py' you call "
          'ReadFile with {"path": "structgen/cache.py"}.')
INTENT_REQUEST = ("Where is the retry logic for HTTP requests? I think it is in "
                  "structgen/backends/http.py")
DEBUGGER = ("You are the debugger step of a coding agent. Reproduce a failure first. Example: "
            "for 'tests/test_cli.py fails with ValueError' you call RunTests with "
            '{"target": "tests/test_cli.py"}.')
DEBUGGER_REQUEST = ("pytest tests/test_orders.py fails with KeyError: 'SKU-1042' in "
                    "shop/orders.py line 57.")
REFLECTION = ("You review the answer a coding agent just gave. Example: for an answer that "
              "skips error handling you call RequestRevision with "
              '{"issues": ["errors are swallowed"], "severity": 4}.')
REFLECTION_REQUEST = ("The agent answered: 'I fixed the KeyError by using "
                      "prices.get(item.sku, 0)'. The fix hides missing prices instead of "
                      "reporting them.")


@pytest.fixture(scope="module")
def engine(smollm_dir: Path) -> Iterator[Engine]:
    config = Config()
    assert config.local.model is None  # the default model, SmolLM2
    config.llm_backend.timeout_s = 900  # a loaded machine: this is about answers, not speed
    eng = Engine(config)
    yield eng
    eng.close()


def call(engine: Engine, system: str, user: str, tools: list[type[BaseModel]],
         choice: Any) -> ToolCall:
    result: StructuredResult = engine.run(
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
        tools=tools, tool_choice=choice, backend="local", use_cache=False, max_tokens=160)
    print(f"\n{choice if isinstance(choice, str) else choice.__name__}: {result.raw_text}")
    assert result.backend == "local" and "SmolLM2" in result.model
    assert result.repairs == [], result.raw_text
    assert isinstance(result.value, ToolCall)
    assert type(result.value.arguments) in tools
    if not isinstance(choice, str):
        assert isinstance(result.value.arguments, choice)
    return result.value


def test_intent_tools(engine: Engine) -> None:
    call(engine, INTENT, INTENT_REQUEST, INTENT_TOOLS, "required")
    read = call(engine, INTENT, INTENT_REQUEST, INTENT_TOOLS, ReadFile)
    assert read.arguments.path == "structgen/backends/http.py"


def test_debugger_tools(engine: Engine) -> None:
    call(engine, DEBUGGER, DEBUGGER_REQUEST, DEBUGGER_TOOLS, "required")
    run = call(engine, DEBUGGER, DEBUGGER_REQUEST, DEBUGGER_TOOLS, RunTests)
    assert "test_orders.py" in run.arguments.target


def test_reflection_tools(engine: Engine) -> None:
    call(engine, REFLECTION, REFLECTION_REQUEST, REFLECTION_TOOLS, "required")
    call(engine, REFLECTION, REFLECTION_REQUEST, REFLECTION_TOOLS, RequestRevision)


def test_auto_the_model_writes_the_trigger(engine: Engine) -> None:
    system = ("You are a coding agent. Example:\nUser: Read app.py\nAssistant: <tool_call>\n"
              '{"name": "ReadFile", "arguments": {"path": "app.py"}}\n</tool_call>')
    read = call(engine, system, "Read the file shop/orders.py", DEBUGGER_TOOLS, "auto")
    # With the one-line tool signatures (issue 31) greedy SmolLM2 writes "shop.py" here; with
    # the full JSON Schemas it wrote "shop/orders.py" (and with a slimmed JSON listing,
    # "shop.py" too): a 135M model's answer to one prompt, not a rule. The aggregate
    # effect of the shorter prompt is measured in benchmarks/results/tools.md.
    assert read.name == "ReadFile" and read.arguments.path.startswith("shop")


RUN_RESULT = ("FAILED tests/test_orders.py::test_total - KeyError: 'SKU-1042'\n"
              "shop/orders.py:57: in total\n    price = prices[item.sku]")


def test_debugger_loop_call_result_next_call(engine: Engine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two turns of the debugger: it calls RunTests; the call (as structgen returned it)
    and the test run's output go back as an assistant ``tool_calls`` turn and a ``tool``
    result; the next request's prompt holds both (SmolLM2's template renders no tool
    turns: the Hermes layout) and its answer is again a validated call."""
    messages: list[Any] = [{"role": "system", "content": DEBUGGER},
                           {"role": "user", "content": DEBUGGER_REQUEST}]
    run = call(engine, DEBUGGER, DEBUGGER_REQUEST, DEBUGGER_TOOLS, RunTests)
    messages += [{"role": "assistant", "content": None, "tool_calls": [run]},
                 {"role": "tool", "content": RUN_RESULT}]

    runtime = engine.backend("local").runtime(None)  # type: ignore[attr-defined]
    assert runtime.tool_arguments is None  # SmolLM2's template: the Hermes layout
    prompts: list[str] = []
    rendered = runtime.prompt_ids

    def recording(request: Any) -> list[int]:
        ids = rendered(request)
        prompts.append(runtime.text(ids))
        return ids

    monkeypatch.setattr(runtime, "prompt_ids", recording)
    second: StructuredResult = engine.run(messages, tools=DEBUGGER_TOOLS,
                                          tool_choice="required", backend="local",
                                          use_cache=False, max_tokens=160)
    print(f"\nnext: {second.raw_text}")
    prompt = prompts[-1]
    arguments = json.dumps(run.arguments.model_dump(mode="json", exclude_none=True))
    # (the special tokens <|im_start|>/<|im_end|> decode to no text)
    assert (f'assistant\n<tool_call>\n{{"name": "RunTests", "arguments": {arguments}}}\n'
            "</tool_call>\n") in prompt
    assert prompt.endswith(f"user\n<tool_response>\n{RUN_RESULT}\n</tool_response>\n"
                           "assistant\n")
    assert second.repairs == [] and isinstance(second.value, ToolCall)
    assert type(second.value.arguments) in DEBUGGER_TOOLS
