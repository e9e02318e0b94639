"""SGLang wire-format tests against a LOCAL stand-in server (tests/servers/wire.py).

They prove that structgen sends exactly the documented request shape (native /generate
with ``sampling_params.json_schema`` as a JSON string, ``regex``, ``ebnf``,
``require_reasoning``; the OpenAI chat endpoint with ``response_format``) and reads the
documented answers. They do NOT prove anything about a real SGLang server's decoding.
"""

from __future__ import annotations

import json

import pytest

from schemas.intent import Intent
from structgen.backends.sglang import SGLangBackend
from structgen.engine import Engine
from structgen.streaming import partial_model
from structgen.types import Choice, Grammar, Regex
from tests.backends.helpers import request, server_config
from tests.servers.wire import SGLangWireServer


def backend(server: SGLangWireServer, **section: object) -> SGLangBackend:
    return SGLangBackend(server_config("sglang", server.base_url, **section))


async def test_sglang_wire_format_native_json_schema_is_a_string(sglang: SGLangWireServer):
    b = backend(sglang)
    result = await b.agenerate(request(Intent, max_tokens=48))
    path, body = sglang.requests[-1]
    assert sglang.violations == []
    assert path == "/generate"
    sp = body["sampling_params"]
    assert isinstance(sp["json_schema"], str)
    assert json.loads(sp["json_schema"])["properties"]["kind"]["$ref"].startswith("#/")
    assert sp["max_new_tokens"] == 48 and sp["temperature"] == 0.0
    assert "regex" not in sp and "ebnf" not in sp and "require_reasoning" not in body
    assert body["text"] == "Fix the failing test in app.py"
    Intent.model_validate_json(result.text)
    assert result.server_time_s == pytest.approx(0.004)
    assert result.finish_reason == "stop"


async def test_sglang_wire_format_regex_choice_and_ebnf(sglang: SGLangWireServer):
    b = backend(sglang)
    r = await b.agenerate(request(Regex(r"v[0-9]\.[0-9]")))
    assert sglang.requests[-1][1]["sampling_params"]["regex"] == r"v[0-9]\.[0-9]"
    assert r.text == "v0.0"
    r = await b.agenerate(request(Choice(["pass", "revise", "fail"])))
    sent = sglang.requests[-1][1]["sampling_params"]["regex"]
    assert sent == "(pass|revise|fail)"
    await b.agenerate(request(Grammar('root ::= "yes" | "no"', "ebnf")))
    assert "root ::=" in sglang.requests[-1][1]["sampling_params"]["ebnf"]
    assert sglang.violations == []


async def test_sglang_wire_format_reasoning_and_seed(sglang: SGLangWireServer):
    b = backend(sglang)
    req = request({"type": "object", "properties": {"a": {"type": "integer"}},
                   "required": ["a"]}, reasoning=True)
    req.sampling.seed = 7
    req.sampling.stop = ["\n\n"]
    await b.agenerate(req)
    body = sglang.requests[-1][1]
    assert body["require_reasoning"] is True  # top level, not in sampling_params
    assert body["sampling_params"]["sampling_seed"] == 7
    assert body["sampling_params"]["stop"] == ["\n\n"]
    assert sglang.violations == []


async def test_sglang_wire_format_openai_chat_endpoint(sglang: SGLangWireServer):
    sglang.thinking = "The user wants a fix."
    b = backend(sglang, api="openai", model="served-model")
    msgs = [{"role": "system", "content": "You classify requests."},
            {"role": "user", "content": "explain grammars"}]
    from structgen.backends.base import GenerationRequest
    from structgen.schema import compile_output

    result = await b.agenerate(GenerationRequest(messages=msgs, output=compile_output(Intent),
                                                 reasoning=True))
    path, body = sglang.requests[-1]
    assert path == "/v1/chat/completions" and sglang.violations == []
    assert body["messages"] == msgs
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and isinstance(rf["json_schema"]["schema"], dict)
    assert rf["json_schema"]["name"] == "Intent" and rf["json_schema"]["strict"] is True
    assert result.reasoning_text == "The user wants a fix."
    Intent.model_validate_json(result.text)
    await b.agenerate(request(Regex("[a-z]{3}")))
    assert sglang.requests[-1][1]["regex"] == "[a-z]{3}"


async def test_sglang_wire_format_stream_native_and_chat(sglang: SGLangWireServer):
    b = backend(sglang)
    chunks = [c async for c in b.stream(request(Intent))]
    assert len(chunks) > 1
    Intent.model_validate_json("".join(chunks))
    assert sglang.requests[-1][1]["stream"] is True
    b2 = backend(sglang, api="openai")
    chunks = [c async for c in b2.stream(request(Intent))]
    Intent.model_validate_json("".join(chunks))
    assert sglang.violations == []


async def test_sglang_wire_format_engine_end_to_end(sglang: SGLangWireServer):
    engine = Engine(server_config("sglang", sglang.base_url))
    result = await engine.arun("Fix app.py", Intent, backend="sglang", max_tokens=64)
    assert isinstance(result.value, Intent) and result.backend == "sglang"
    items = [item async for item in engine.astream("Fix app.py", Intent, backend="sglang")]
    assert isinstance(items[-1], Intent)
    assert all(isinstance(i, partial_model(Intent)) for i in items[:-1]) and len(items) >= 2
    assert await engine.backend("sglang").health() is True
    await engine.aclose()


async def test_sglang_wire_format_drops_keyword_then_post_enforces(sglang: SGLangWireServer):
    """xgrammar (SGLang's default) has no uniqueItems: structgen removes it from the wire
    schema, records it, and validation rejects a duplicate list the server returns."""
    schema = {"type": "object", "properties": {"tags": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True, "minItems": 2}},
        "required": ["tags"], "additionalProperties": False}
    engine = Engine(server_config("sglang", sglang.base_url))
    sglang.reply = '{"tags":["a","a"]}'
    from structgen.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        await engine.arun("tags", schema, backend="sglang")
    sent = json.loads(sglang.requests[-1][1]["sampling_params"]["json_schema"])
    assert "uniqueItems" not in sent["properties"]["tags"]
    sglang.reply = '{"tags":["a","b"]}'
    ok = await engine.arun("tags", schema, backend="sglang", use_cache=False)
    assert ok.value == {"tags": ["a", "b"]}
    assert "/properties/tags/uniqueItems" in ok.post_enforced
    await engine.aclose()
