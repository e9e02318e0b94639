"""A streamed answer through ``structgen serve`` reports the tokens it took: the last
OpenAI chunk's ``usage`` and Ollama's ``eval_count`` are the unstreamed answer's, not zeros
(the app in-process in front of the vLLM wire stand-in, which counts a character a token;
the ``openai`` and ``ollama`` packages as the clients)."""

from __future__ import annotations

import json
from typing import Any

import ollama
import openai
from starlette.testclient import TestClient

from tests.server.test_wire_requests import client, http, vllm  # noqa: F401 (fixtures)
from tests.servers.wire import VLLMWireServer

SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}},
          "required": ["status"], "additionalProperties": False}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA}}
MESSAGES: list[Any] = [{"role": "user", "content": "Status?"}]
REPLY = json.dumps({"status": "green"})


def test_openai_stream_usage_is_the_calls(vllm: VLLMWireServer,  # noqa: F811
                                          client: openai.OpenAI) -> None:  # noqa: F811
    vllm.reply = REPLY
    called = client.chat.completions.create(model="structgen", messages=MESSAGES,
                                            response_format=FORMAT)
    chunks = list(client.chat.completions.create(
        model="structgen", messages=MESSAGES, response_format=FORMAT, stream=True,
        stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert called.usage is not None and called.usage.completion_tokens == len(REPLY)
    assert usage and usage[-1].completion_tokens == called.usage.completion_tokens
    assert usage[-1].prompt_tokens == called.usage.prompt_tokens > 0
    assert usage[-1].total_tokens == called.usage.total_tokens


def test_ollama_stream_counts_are_the_calls(vllm: VLLMWireServer,  # noqa: F811
                                            http: TestClient) -> None:  # noqa: F811
    vllm.reply = REPLY
    api = ollama.Client(host="http://testserver")
    api._client = http  # the app in-process, through the ollama package
    called = api.chat(model="structgen", messages=MESSAGES, format=SCHEMA)
    last = list(api.chat(model="structgen", messages=MESSAGES, format=SCHEMA,
                         stream=True))[-1]
    assert called.eval_count == len(REPLY)
    assert last.done and last.eval_count == called.eval_count
    assert last.prompt_eval_count == called.prompt_eval_count > 0
