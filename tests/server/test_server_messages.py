"""Both APIs hand the engine the structured messages (structgen/messages.py): an earlier
assistant's tool calls and the tool results stay calls and results, as the Python API
takes them, instead of text (the old server wrote them into the content as ``<tool_call>``
text, and a tool result lost its call id). Built in-process: nothing is generated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from structgen.config import Config
from structgen.engine import Engine
from structgen.server import ollama, openai
from structgen.server.calls import ApiError

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "app.py"}'}}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(Config.from_dict({"cache": {"backend": "none"},
                                   "metrics": {"enabled": False}}))
    yield eng
    eng.close()


def test_openai_history_reaches_the_engine_as_calls_and_results(engine: Engine) -> None:
    req = openai.parse_request({"model": "structgen", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "What does app.py do?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print('hello')"}]})
    messages = openai.to_call(engine, req).messages
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "read_file", "arguments": {"path": "app.py"}}}]}
    assert messages[3] == {"role": "tool", "content": "print('hello')",
                           "tool_call_id": "call_1", "name": "read_file"}


def test_ollama_history_reaches_the_engine_as_calls_and_results(engine: Engine) -> None:
    req = ollama.parse_chat({"model": "structgen", "messages": [
        {"role": "user", "content": "What does app.py do?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "read_file", "arguments": {"path": "app.py"}}}]},
        {"role": "tool", "tool_name": "read_file", "content": "print('hello')"}]})
    messages = ollama.chat_call(engine, req).messages
    assert messages[1]["tool_calls"][0]["function"] == {"name": "read_file",
                                                        "arguments": {"path": "app.py"}}
    assert messages[2]["name"] == "read_file"
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "assistant", "content": None, "tool_calls": [
        {**CALL, "function": {"name": "read_file", "arguments": "{oops"}}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"role": "tool", "tool_call_id": "call_7", "content": "x"}, "messages[1].tool_call_id"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     "messages[1].content[0]"),
])
def test_a_malformed_message_is_a_400_naming_it(engine: Engine, message: dict[str, Any],
                                                param: str) -> None:
    req = openai.parse_request({"model": "structgen", "messages": [
        {"role": "user", "content": "hi"}, message]})
    with pytest.raises(ApiError) as info:
        openai.to_call(engine, req)
    assert info.value.status == 400 and info.value.param == param
