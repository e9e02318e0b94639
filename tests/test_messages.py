"""Chat messages (structgen/messages.py): earlier tool calls and results, and text parts,
are read once, in OpenAI's and Ollama's shapes, and reach a model's chat template (or the
Hermes layout) instead of being dropped; malformed ones are a MessageError naming the
message and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessage

from schemas.intent import Intent
from schemas.toolkits import RunScope, RunTests
from structgen.backends.local.llamacpp_runtime import render_chat_template
from structgen.backends.local.runtime import chat_messages
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import MessageError, StructgenError
from structgen.messages import (
    hermes_messages,
    normalize_messages,
    ollama_messages,
    openai_messages,
    tool_arguments,
)
from structgen.types import ToolCall

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
FAILED = "FAILED tests/test_orders.py::test_total - KeyError: 'SKU-1042'"


def history(content: Any = None) -> list[dict[str, Any]]:
    """A debugger turn in OpenAI's shape: the call, its result, the next question."""
    return [
        {"role": "system", "content": "You are the debugger step of a coding agent."},
        {"role": "user", "content": "pytest tests/test_orders.py fails"},
        {"role": "assistant", "content": content, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "RunTests", "arguments": '{"target": "tests/test_orders.py"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": FAILED},
        {"role": "user", "content": "Classify the failure."}]


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "RunTests", "arguments": {"target": "tests/test_orders.py"}}}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(Config.from_dict({"cache": {"backend": "none"},
                                    "metrics": {"enabled": False}}))


# Reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [None, ""])
def test_an_assistant_tool_call_and_its_result_are_kept(engine: Engine, content: Any) -> None:
    """content=None raised a generic StructgenError; content="" dropped the calls and the
    tool_call_id (the old code kept only role and content)."""
    messages = engine.build_request(history(content), Intent).messages
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert messages[3] == {"role": "tool", "content": FAILED, "tool_call_id": "call_1",
                           "name": "RunTests"}
    assert normalize_messages(messages) == messages  # normalized is a fixed point


def test_the_cache_key_sees_the_calls(tmp_path: Path) -> None:
    """Two histories that differ only in a call's arguments are two requests (the old
    code dropped the calls, so both had one key)."""
    other = history("")
    other[2]["tool_calls"][0]["function"]["arguments"] = '{"target": "tests/"}'
    engine = Engine(Config.from_dict({"cache": {"backend": "disk", "dir": str(tmp_path)},
                                      "metrics": {"enabled": False}}))
    keys = {engine.cache_key(engine.build_request(h, Intent), backend="local")
            for h in (history(""), other)}
    engine.close()
    assert len(keys) == 2


def test_text_parts_are_joined() -> None:
    messages = normalize_messages([{"role": "user", "content": [
        {"type": "text", "text": "Read app.py"}, {"type": "text", "text": "then fix it"}]}])
    assert messages == [{"role": "user", "content": "Read app.py\nthen fix it"}]


def test_ollamas_shape_links_results_by_tool_name() -> None:
    messages = normalize_messages([
        {"role": "user", "content": "check"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "RunTests", "arguments": {"target": "a"}}},
            {"function": {"name": "ReadFile", "arguments": {"path": "b.py"}}}]},
        {"role": "tool", "tool_name": "ReadFile", "content": "print(1)"},
        {"role": "tool", "content": "1 failed"}])  # no name: the call not answered yet
    first, second = messages[1]["tool_calls"]
    assert first["id"] == "call00100" and second["id"] == "call00101"  # made up, stable
    assert messages[2]["tool_call_id"] == second["id"] and messages[2]["name"] == "ReadFile"
    assert messages[3]["tool_call_id"] == first["id"] and messages[3]["name"] == "RunTests"


def test_sdk_messages_and_structgen_calls_are_read() -> None:
    """The ``openai`` package's message object and structgen's own ToolCall go into the
    history as they come back."""
    sdk = ChatCompletionMessage.model_validate({"role": "assistant", "content": None,
                                                "tool_calls": [CALL | {"function": {
                                                    "name": "RunTests",
                                                    "arguments": '{"target": "t"}'}}]})
    ours = ToolCall("RunTests", RunTests(target="t", scope=RunScope.all))
    messages = normalize_messages([{"role": "user", "content": "go"}, sdk,
                                   {"role": "assistant", "tool_calls": [ours]},
                                   {"role": "tool", "content": "ok"}])
    assert messages[1]["tool_calls"][0]["function"] == {"name": "RunTests",
                                                        "arguments": {"target": "t"}}
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {
        "target": "t", "scope": "all", "max_failures": 5}
    assert messages[3]["tool_call_id"] == "call_1"  # the oldest call not answered


@pytest.mark.parametrize(("messages", "where", "words"), [
    ([{"role": "wizard", "content": "hi"}], "messages[0].role", "not one of"),
    ([{"role": "user", "content": 42}], "messages[0].content", "string, null or a list"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"},
                                   {"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content[1]", "'image_url'"),
    ([{"role": "user", "content": "a", "tool_calls": [CALL]}], "messages[0].tool_calls",
     "only an assistant"),
    ([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages[0].tool_calls[0].function.arguments", "not JSON"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[0].tool_calls[0].function.arguments", "JSON object"),
    ([{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}],
     "messages[0].tool_calls[0].function.name", "name"),
    ([{"role": "assistant", "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
     "messages[1].tool_call_id", "answers no earlier"),
    (["hi"], "messages[0]", "a dict with a role"),
])
def test_malformed_messages_name_the_message_and_field(engine: Engine, messages: Any,
                                                       where: str, words: str) -> None:
    with pytest.raises(MessageError, match=words) as info:
        engine.build_request(messages, Intent)
    assert str(info.value).startswith(f"{where}: ")
    assert isinstance(info.value, StructgenError)
    assert info.value.index == int(where[9])


# Writing ------------------------------------------------------------------------------------
def test_each_wire_shape() -> None:
    messages = normalize_messages(history())
    openai = openai_messages(messages)
    assert openai[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {
            "name": "RunTests", "arguments": '{"target": "tests/test_orders.py"}'}}]}
    assert openai[3] == {"role": "tool", "content": FAILED, "tool_call_id": "call_1"}
    ollama = ollama_messages(messages)
    assert ollama[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "RunTests", "arguments": {"target": "tests/test_orders.py"}}}]}
    assert ollama[3] == {"role": "tool", "content": FAILED, "tool_name": "RunTests"}
    hermes = hermes_messages(messages)
    assert [m["role"] for m in hermes] == ["system", "user", "assistant", "user", "user"]
    assert hermes[2]["content"] == ('<tool_call>\n{"name": "RunTests", "arguments": '
                                    '{"target": "tests/test_orders.py"}}\n</tool_call>')
    assert hermes[3]["content"] == f"<tool_response>\n{FAILED}\n</tool_response>"


def test_results_in_a_row_are_one_user_turn() -> None:
    messages = normalize_messages([
        {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"}])
    hermes = hermes_messages(messages)
    assert len(hermes) == 2 and hermes[1] == {"role": "user", "content": (
        "<tool_response>\ntwo\n</tool_response>\n<tool_response>\none\n</tool_response>")}


# Chat templates -----------------------------------------------------------------------------
@pytest.mark.parametrize(("template", "arguments"), [
    ("Qwen-Qwen2.5-7B-Instruct", "object"),
    ("mistralai-Mistral-Nemo-Instruct-2407", "object"),
    ("meetkai-functionary-medium-v3.2", "text"),
    ("microsoft-Phi-3.5-mini-instruct", None),
    ("chatml", None)])  # SmolLM2's and the tiny test model's kind
def test_a_template_renders_the_call_and_its_result(engine: Engine, template: str,
                                                    arguments: str | None) -> None:
    """Real models' templates: one that renders tool turns gets the messages as they are
    (the arguments as it takes them), one that cannot gets the Hermes layout; either way
    the prompt holds the call and its result (the old code rendered neither)."""
    text = CHATML if template == "chatml" else (TEMPLATES / f"{template}.jinja").read_text()

    def render(messages: list[dict[str, Any]]) -> str:
        return render_chat_template(text, messages, "<s>", "</s>")

    assert tool_arguments(render) == arguments
    history_ = history()[:-1]  # the model answers the tool result (Mistral: no user turn)
    history_[2]["tool_calls"][0]["id"] = "call12345"  # Mistral's nine-character ids
    history_[3]["tool_call_id"] = "call12345"
    request = engine.build_request(history_, Intent)
    messages, _ = chat_messages(request, text, tool_arguments(render))
    prompt = render(messages)
    assert "RunTests" in prompt and FAILED in prompt and "tests/test_orders.py" in prompt
    assert ("<tool_response>" in prompt) == (template in ("chatml", "Qwen-Qwen2.5-7B-Instruct",
                                                          "microsoft-Phi-3.5-mini-instruct"))
    assert json.dumps({"target": "tests/test_orders.py"}) in prompt


CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_that_fails_on_tool_turns_gets_the_hermes_layout() -> None:
    def render(messages: list[dict[str, Any]]) -> str:
        return render_chat_template("{{ raise_exception('no tools here') }}", messages, "", "")

    assert tool_arguments(render) is None
