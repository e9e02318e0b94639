"""Ollama wire-format tests against a LOCAL stand-in server (tests/servers/wire.py).

They prove that structgen sends exactly the documented request shape (``format`` = the
schema OBJECT, ``options`` with num_predict/seed/temperature, ``think``, ``keep_alive``,
NDJSON streaming) and reads the documented answers. They do NOT prove anything about a
real Ollama server's decoding.
"""

from __future__ import annotations

import pytest

from schemas.intent import Intent
from structgen.backends.ollama import OllamaBackend
from structgen.engine import Engine
from structgen.errors import BackendUnavailable, ConfigError, ValidationFailed
from structgen.types import Choice, Grammar, Regex
from tests.backends.helpers import request, server_config
from tests.servers.wire import OllamaWireServer


def backend(server: OllamaWireServer, **section: object) -> OllamaBackend:
    return OllamaBackend(server_config("ollama", server.base_url, model="smollm2:135m",
                                       **section))


async def test_ollama_wire_format_chat_format_is_schema_object(ollama: OllamaWireServer):
    b = backend(ollama)
    req = request(Intent, max_tokens=40)
    req.sampling.seed = 3
    result = await b.agenerate(req)
    path, body = ollama.requests[-1]
    assert ollama.violations == [] and path == "/api/chat"
    assert isinstance(body["format"], dict) and body["format"]["type"] == "object"
    assert body["options"] == {"temperature": 0.0, "top_p": 1.0, "num_predict": 40, "seed": 3}
    assert body["stream"] is False and body["keep_alive"] == "5m"
    assert "think" not in body
    Intent.model_validate_json(result.text)
    assert result.server_time_s == pytest.approx(0.004)
    assert result.prompt_tokens == 5


async def test_ollama_wire_format_generate_endpoint_and_think(ollama: OllamaWireServer):
    ollama.thinking = "Let me think."
    b = backend(ollama, endpoint="generate")
    result = await b.agenerate(request(Intent, reasoning=True))
    path, body = ollama.requests[-1]
    assert path == "/api/generate" and ollama.violations == []
    assert body["prompt"] == "Fix the failing test in app.py" and body["think"] is True
    assert result.reasoning_text == "Let me think."
    chat = backend(ollama)
    result = await chat.agenerate(request(Intent, reasoning=True))
    assert result.reasoning_text == "Let me think."


async def test_ollama_wire_format_choice_as_enum_and_unwrapped(ollama: OllamaWireServer):
    b = backend(ollama)
    result = await b.agenerate(request(Choice(["pass", "revise", "fail"])))
    assert ollama.requests[-1][1]["format"] == {"type": "string",
                                                "enum": ["pass", "revise", "fail"]}
    assert result.text == "pass"  # the JSON string '"pass"' unwrapped


async def test_ollama_wire_format_regex_and_grammar_not_supported(ollama: OllamaWireServer):
    b = backend(ollama)
    for output in (Regex("[a-z]+"), Grammar('start: "a"', "lark")):
        with pytest.raises(BackendUnavailable, match="cannot constrain"):
            await b.agenerate(request(output))
    assert ollama.requests == []  # refused before sending, never sent unconstrained
    assert b.capabilities().output_kinds == frozenset({"json", "choice"})


async def test_ollama_wire_format_needs_model(ollama: OllamaWireServer):
    b = OllamaBackend(server_config("ollama", ollama.base_url))
    with pytest.raises(ConfigError, match="model"):
        await b.agenerate(request(Intent))


async def test_ollama_wire_format_ndjson_stream(ollama: OllamaWireServer):
    b = backend(ollama)
    chunks = [c async for c in b.stream(request(Intent))]
    assert len(chunks) > 1
    Intent.model_validate_json("".join(chunks))
    assert ollama.requests[-1][1]["stream"] is True and ollama.violations == []


async def test_ollama_wire_format_engine_and_post_enforced_pattern(ollama: OllamaWireServer):
    """llama.cpp grammars do not reliably enforce ``pattern``: structgen records it as
    post-enforced and validation rejects a non-matching answer."""
    schema = {"type": "object", "properties": {"version": {"type": "string",
                                                           "pattern": "^v[0-9]+$"}},
              "required": ["version"], "additionalProperties": False}
    engine = Engine(server_config("ollama", ollama.base_url, model="smollm2:135m"))
    ollama.reply = '{"version":"v12"}'
    result = await engine.arun("version?", schema, backend="ollama")
    assert result.value == {"version": "v12"}
    assert "/properties/version/pattern" in result.post_enforced
    assert "pattern" not in ollama.requests[-1][1]["format"]["properties"]["version"]
    ollama.reply = None  # the stand-in answers from the relaxed schema: "x"
    with pytest.raises(ValidationFailed, match="does not match"):
        await engine.arun("version?", schema, backend="ollama", use_cache=False)
    assert await engine.backend("ollama").health() is True
    await engine.aclose()
