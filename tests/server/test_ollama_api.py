"""The ``ollama`` package (``ollama.Client(host=...)``) against a live ``structgen serve`` on
the tiny random model."""

from __future__ import annotations

import json

import jsonschema
import ollama
import pytest

from tests.server.conftest import KEY, Served
from tests.server.test_openai_api import READ_FILE, SCHEMA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tiny_server: Served) -> ollama.Client:
    return ollama.Client(host=tiny_server.url, headers={"Authorization": f"Bearer {KEY}"})


def test_tags_and_version(client: ollama.Client) -> None:
    assert "structgen" in [m.model for m in client.list().models]
    assert client.ps is not None  # the client itself works unchanged


def test_chat_with_a_schema_format(client: ollama.Client) -> None:
    response = client.chat(model="structgen", format=SCHEMA,
                           messages=[{"role": "user", "content": "Status?"}],
                           options={"num_predict": 80, "seed": 1, "temperature": 0.5})
    jsonschema.validate(json.loads(response.message.content or ""), SCHEMA)
    assert response.done and response.done_reason == "stop"
    assert (response.eval_count or 0) > 0


def test_generate_json(client: ollama.Client) -> None:
    response = client.generate(model="structgen", prompt="A JSON object:", format="json",
                               system="Answer in JSON.", options={"num_predict": 40})
    assert isinstance(json.loads(response.response), dict)


def test_streamed_chat_adds_up_to_the_valid_answer(client: ollama.Client) -> None:
    parts = list(client.chat(model="structgen", format=SCHEMA, stream=True,
                             messages=[{"role": "user", "content": "Status?"}],
                             options={"num_predict": 80, "seed": 2, "temperature": 0.9}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert len(parts) > 2
    text = "".join(p.message.content or "" for p in parts)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_streamed_generate(client: ollama.Client) -> None:
    parts = list(client.generate(model="structgen", prompt="JSON:", format="json",
                                 stream=True, options={"num_predict": 40}))
    assert parts[-1].done
    assert isinstance(json.loads("".join(p.response for p in parts)), dict)


def test_chat_tools(client: ollama.Client) -> None:
    response = client.chat(model="structgen", tools=[READ_FILE],
                           messages=[{"role": "user", "content": "Read app.py"}],
                           options={"num_predict": 60})
    calls = response.message.tool_calls
    if calls:  # "auto": the tiny model may answer in words instead
        assert calls[0].function.name == "read_file"
        jsonschema.validate(dict(calls[0].function.arguments),
                            READ_FILE["function"]["parameters"])
    else:
        assert isinstance(response.message.content, str)


def test_errors_in_ollamas_shape(tiny_server: Served, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and "llama3.2" in info.value.error
    anonymous = ollama.Client(host=tiny_server.url)
    with pytest.raises(ollama.ResponseError) as info:
        anonymous.list()
    assert info.value.status_code == 401
