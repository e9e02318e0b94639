"""Tool calling at scale on the embedded backend: large tool sets decode into valid calls,
call counts are exact, and the tools prompt fits the model's context.

The tiny random model (2,048 positions) writes whatever the grammar lets through, on both
JSON engines; SmolLM2 (8,192) shows the prompt budget on the default runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import SchemaError
from structgen.schema.toolset import PROMPT_DETAILS
from structgen.types import ToolCall, ToolSpec
from structgen.validate import schema_errors
from tests.backends.helpers import generated_tools, maskbench_tools

PROMPT = "Call the function that fits the request."
SAMPLINGS = [{}, {"temperature": 1.0, "top_p": 0.95, "seed": 3},
             {"temperature": 1.0, "seed": 12}]


@pytest.fixture(scope="module", params=["llguidance", "xgrammar"])
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[Engine]:
    cfg = Config()
    cfg.local.model = str(tiny_model_dir)
    cfg.local.engine = request.param
    eng = Engine(cfg, backends={"local": LocalBackend(cfg)})
    yield eng
    eng.close()


def assert_valid(call: Any, tools: list[ToolSpec]) -> None:
    assert isinstance(call, ToolCall), call
    spec = {t.name: t for t in tools}[call.name]
    assert schema_errors(call.arguments, spec.parameters) == [], (call, spec.parameters)


def test_64_maskbench_tools_decode_valid_calls(engine: Engine) -> None:
    """The tools prompt of 64 tools in full would not leave the tiny model (its byte-level
    tokenizer: several tokens a word) room to answer; it is shortened, and every call
    (greedy and sampled) is valid straight from the grammar."""
    tools = [spec for spec, _ in maskbench_tools(64)]
    rt = engine.backend("local").runtime(None)  # type: ignore[attr-defined]
    request = engine.build_request(PROMPT, tools=tools, tool_choice="required",
                                   max_tokens=160)
    assert len(rt.render_ids(request, PROMPT_DETAILS[0])) + 160 > rt.context_tokens
    assert len(rt.prompt_ids(request)) + 160 <= rt.context_tokens
    for sampling in SAMPLINGS:
        result = engine.run(PROMPT, tools=tools, tool_choice="required", use_cache=False,
                            max_tokens=160, **sampling)
        assert result.repairs == [], result.raw_text
        assert_valid(result.value, tools)


@pytest.mark.parametrize("max_calls", [None, 1, 2])
def test_call_counts_are_exact(engine: Engine, max_calls: int | None) -> None:
    """``parallel=False``: one call, always; ``parallel=True, max_calls=N``: 1 to N calls,
    from the grammar (no repair trimmed them)."""
    tools = generated_tools(4, "Count test {i}.")
    for sampling in SAMPLINGS:
        if max_calls is None:
            result = engine.run(PROMPT, tools=tools, tool_choice="required", use_cache=False,
                                max_tokens=96, **sampling)
            assert result.repairs == [] and isinstance(result.value, ToolCall)
            assert_valid(result.value, tools)
            continue
        result = engine.run(PROMPT, tools=tools, tool_choice="required", parallel=True,
                            max_calls=max_calls, use_cache=False, max_tokens=200, **sampling)
        assert result.repairs == [], result.raw_text
        assert isinstance(result.value, list) and 1 <= len(result.value) <= max_calls
        for call in result.value:
            assert_valid(call, tools)


def test_auto_with_max_calls(engine: Engine) -> None:
    tools = generated_tools(3, "Auto count test {i}.")
    if engine.config.local.engine != "llguidance":  # "auto" is an llguidance grammar
        with pytest.raises(SchemaError, match="needs the llguidance engine"):
            engine.run(PROMPT, tools=tools, tool_choice="auto", parallel=True, max_calls=2,
                       use_cache=False, max_tokens=50)
        return
    for sampling in SAMPLINGS[1:]:
        result = engine.run(PROMPT, tools=tools, tool_choice="auto", parallel=True,
                            max_calls=2, use_cache=False, max_tokens=200, **sampling)
        assert isinstance(result.value, str) or 1 <= len(result.value) <= 2


def test_max_calls_needs_tools(engine: Engine) -> None:
    from structgen.errors import StructgenError

    with pytest.raises(StructgenError, match="max_calls"):
        engine.build_request(PROMPT, {"type": "object"}, max_calls=2)


# SmolLM2 (the default model, 8,192 tokens of context) ------------------------------------
@pytest.mark.slow
def test_smollm2_prompts_fit_and_500_tools_decode() -> None:
    """200 tools of two parameters: their prompt fits SmolLM2's context with every
    description (the JSON Schema layout was over 15,000 tokens); 500 MaskBench tools fit by
    name, and SmolLM2 answers with a valid call of the named one."""
    config = Config()
    config.llm_backend.timeout_s = 600
    eng = Engine(config)
    try:
        rt = eng.backend("local").runtime(None)  # type: ignore[attr-defined]
        small = generated_tools(200)
        request = eng.build_request(PROMPT, tools=small, tool_choice="required")
        ids = rt.prompt_ids(request)
        assert len(ids) + request.sampling.max_tokens <= rt.context_tokens
        assert rt.text(ids).count(" - The weather forecast number") == 200  # descriptions kept
        tools = maskbench_tools()
        specs = [spec for spec, _ in tools]
        target, example = next((s, e) for s, e in tools[250:] if e is not None)
        hint = ", ".join(f"{k}={v!r}" for k, v in example.items())
        result = eng.run(f"Call {target.name} with {hint}.", tools=specs,
                         tool_choice="required", use_cache=False, max_tokens=120)
        assert result.usage.prompt_tokens + 120 <= rt.context_tokens
        assert result.repairs == [], result.raw_text
        assert_valid(result.value, specs)
    finally:
        eng.close()
