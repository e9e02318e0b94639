"""Earlier tool calls and results reach each server in its own message shape (OpenAI's for
vLLM and SGLang, Ollama's for Ollama), checked by the strict stand-in servers of
tests/servers/wire.py; a completion-style endpoint gets them as Hermes text. The old code
sent only ``role`` and ``content``, so the calls and the result's call id were lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from structgen.engine import Engine
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer, VLLMWireServer, WireServer

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
FAILED = "FAILED tests/test_orders.py::test_total"
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "pytest fails"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "RunTests", "arguments": '{"target": "tests/test_orders.py"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": FAILED}]
SECTIONS = {"vllm": {}, "sglang": {"api": "openai"}, "ollama": {}}


@pytest.fixture(scope="module", params=["vllm", "sglang", "ollama"])
def server(request: pytest.FixtureRequest) -> Iterator[WireServer]:
    cls = {"vllm": VLLMWireServer, "sglang": SGLangWireServer, "ollama": OllamaWireServer}
    with cls[request.param]() as srv:
        yield srv


async def test_the_history_goes_in_the_servers_shape(server: WireServer) -> None:
    engine = Engine(server_config(server.flavor, server.base_url, model="m",
                                  **SECTIONS[server.flavor]))
    server.reset()
    await engine.arun(HISTORY, SCHEMA)
    await engine.aclose()
    assert server.violations == []
    messages = server.requests[-1][1]["messages"]
    assert messages[0] == {"role": "user", "content": "pytest fails"}
    if server.flavor == "ollama":
        assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "RunTests", "arguments": {"target": "tests/test_orders.py"}}}]}
        assert messages[2] == {"role": "tool", "content": FAILED, "tool_name": "RunTests"}
    else:
        assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "RunTests", "arguments": '{"target": "tests/test_orders.py"}'}}]}
        assert messages[2] == {"role": "tool", "content": FAILED, "tool_call_id": "call_1"}


async def test_a_text_prompt_writes_the_history_in_the_hermes_layout() -> None:
    with SGLangWireServer() as server:  # SGLang's native /generate takes one text
        engine = Engine(server_config("sglang", server.base_url))
        await engine.arun(HISTORY, SCHEMA)
        await engine.aclose()
        assert server.violations == []
        text = server.requests[-1][1]["text"]
    assert ('assistant: <tool_call>\n{"name": "RunTests", "arguments": '
            '{"target": "tests/test_orders.py"}}\n</tool_call>') in text
    assert f"user: <tool_response>\n{FAILED}\n</tool_response>\nassistant:" in text
