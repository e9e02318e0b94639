"""The official ``openai`` package against a live ``structgen serve`` on the tiny random
model: every answer must be valid for what was asked, whatever the model would write."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from tests.server.conftest import KEY, Served

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"},
    "n": {"type": "integer", "minimum": 0, "maximum": 9},
    "tag": {"enum": ["bug", "feature"]}},
    "required": ["ok", "n", "tag"], "additionalProperties": False}
MESSAGES: list[Any] = [{"role": "system", "content": "Answer in JSON."},
                       {"role": "user", "content": "Is the build green?"}]
READ_FILE = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the repository",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string", "pattern": "^[a-z]{1,8}\\.py$"}},
        "required": ["path"], "additionalProperties": False}}}
RUN_TESTS = {"type": "function", "function": {
    "name": "run_tests", "parameters": {"type": "object", "properties": {
        "k": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["k"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(tiny_server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.openai_url, api_key=KEY, max_retries=0,
                         timeout=300)


def test_models_lists_structgen(client: openai.OpenAI) -> None:
    assert "structgen" in [m.id for m in client.models.list()]


def test_json_schema_answer_is_valid_with_provenance(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_tokens=80, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "status", "schema": SCHEMA, "strict": True}})
    choice = response.choices[0]
    jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
    assert choice.finish_reason == "stop"
    assert response.usage is not None and response.usage.completion_tokens > 0
    extension = (response.model_extra or {})["structgen"]
    assert extension["backend"] == "local" and extension["cached"] is False
    assert {"repairs", "post_enforced", "attempts"} <= set(extension)

    again = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_tokens=80, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "status", "schema": SCHEMA, "strict": True}})
    assert (again.model_extra or {})["structgen"]["cached"] is True
    assert again.choices[0].message.content == choice.message.content


def test_json_object(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_completion_tokens=40,
        response_format={"type": "json_object"})
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(("extension", "check"), [
    ({"choice": ["red", "green", "blue"]}, lambda s: s in ("red", "green", "blue")),
    ({"regex": "[0-9]{3}-[a-z]{2}"}, lambda s: re.fullmatch("[0-9]{3}-[a-z]{2}", s)),
    ({"json": SCHEMA}, lambda s: jsonschema.validate(json.loads(s), SCHEMA) is None),
    ({"grammar": 'start: "yes" | "no"'}, lambda s: s in ("yes", "no")),
])
def test_vllm_structured_outputs(client: openai.OpenAI, extension: dict[str, Any],
                                 check: Any) -> None:
    response = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_tokens=60, temperature=0.7, top_p=0.9,
        seed=11, stop=["\n\n"], extra_body={"structured_outputs": extension})
    content = response.choices[0].message.content or ""
    assert check(content), content


def test_named_tool_call_is_valid(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="structgen", messages=[{"role": "user", "content": "Open the main module"}],
        tools=[READ_FILE, RUN_TESTS],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "read_file"}}, max_tokens=60)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "read_file"  # type: ignore[union-attr]
    assert calls[0].id
    jsonschema.validate(json.loads(calls[0].function.arguments),  # type: ignore[union-attr]
                        READ_FILE["function"]["parameters"])


def test_parallel_required_tool_calls(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="structgen", messages=[{"role": "user", "content": "Check everything"}],
        tools=[READ_FILE, RUN_TESTS], tool_choice="required",  # type: ignore[list-item]
        parallel_tool_calls=True, max_tokens=120)
    calls = response.choices[0].message.tool_calls or []
    assert calls
    tools = {"read_file": READ_FILE, "run_tests": RUN_TESTS}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments),  # type: ignore[union-attr]
                            tools[call.function.name]["function"]["parameters"])  # type: ignore


def test_streamed_json_deltas_add_up_to_the_valid_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_tokens=80, stream=True, seed=5,
        temperature=0.8, response_format={
            "type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert (last.model_extra or {})["structgen"]["backend"] == "local"


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="structgen", messages=[{"role": "user", "content": "Run a test"}],
        tools=[READ_FILE, RUN_TESTS], tool_choice="required",  # type: ignore[list-item]
        max_tokens=60, stream=True)
    name, args, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            name += (delta.function.name or "") if delta.function else ""
            args += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name in ("read_file", "run_tests")
    tools = {"read_file": READ_FILE, "run_tests": RUN_TESTS}
    jsonschema.validate(json.loads(args), tools[name]["function"]["parameters"])


def test_two_turn_tool_conversation_is_rendered(client: openai.OpenAI) -> None:
    """An earlier call and its result go into the prompt (more prompt tokens than the
    turn without them) and the next answer is again valid."""
    first = [{"role": "user", "content": "What does app.py do?"}]
    turn = [*first,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "read_file", "arguments": '{"path": "app.py"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "print('hello')"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA}}
    short = client.chat.completions.create(model="structgen", messages=first,  # type: ignore
                                           max_tokens=60, response_format=fmt)
    long = client.chat.completions.create(model="structgen", messages=turn,  # type: ignore
                                          max_tokens=60, response_format=fmt)
    jsonschema.validate(json.loads(long.choices[0].message.content or ""), SCHEMA)
    assert long.usage and short.usage
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 10


def test_text_parts_and_plain_text(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="structgen", max_tokens=8,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
    assert isinstance(response.choices[0].message.content, str)
    assert response.choices[0].finish_reason in ("stop", "length")


# Errors, in OpenAI's shape -----------------------------------------------------------------
def test_wrong_key_is_401(tiny_server: Served) -> None:
    bad = openai.OpenAI(base_url=tiny_server.openai_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_bad_schema_is_400_with_its_pointer(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="structgen", messages=MESSAGES, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"a": {"type": "no-such-type"}}}}})
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_schema"
    assert error["param"] == "/properties/a/type", error


def test_bad_sampling_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="structgen", messages=MESSAGES, top_p=5,
                                       response_format={"type": "json_object"})
