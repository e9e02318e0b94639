"""Server backends get the ECMA-262 pattern in portable form, and the ECMA validator
post-enforces it (issue 15), against the LOCAL stand-in servers (tests/servers/wire.py).

A real server's engine (XGrammar, llguidance, llama.cpp's GBNF) may read ``\\d`` as any
Unicode digit; structgen sends ``[0-9]`` and still rejects whatever a server returns that
ECMA-262 does not accept."""

from __future__ import annotations

import json

import pytest

from structgen.engine import Engine
from structgen.errors import ValidationFailed
from structgen.types import Regex
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer

ARABIC_DATE = "\u0662\u0660\u0662\u0664-\u0660\u0665-\u0660\u0661"
DIGITS = {"type": "object", "properties": {"n": {"type": "string", "pattern": r"^\d+$"}},
          "required": ["n"], "additionalProperties": False}


async def test_sglang_gets_portable_regex_and_unicode_digits_are_rejected(
        sglang: SGLangWireServer) -> None:
    engine = Engine(server_config("sglang", sglang.base_url))
    sglang.reply = ARABIC_DATE
    with pytest.raises(ValidationFailed):
        await engine.arun("A date:", Regex(r"\d{4}-\d{2}-\d{2}"), backend="sglang")
    assert sglang.requests[-1][1]["sampling_params"]["regex"] == "[0-9]{4}-[0-9]{2}-[0-9]{2}"
    sglang.reply = "2024-05-01"
    ok = await engine.arun("A date:", Regex(r"\d{4}-\d{2}-\d{2}"), backend="sglang")
    assert ok.value == "2024-05-01"
    assert sglang.violations == []
    await engine.aclose()


async def test_sglang_gets_portable_schema_patterns(sglang: SGLangWireServer) -> None:
    engine = Engine(server_config("sglang", sglang.base_url))
    sglang.reply = json.dumps({"n": "\u0663"})
    with pytest.raises(ValidationFailed):
        await engine.arun("n", DIGITS, backend="sglang")
    sent = json.loads(sglang.requests[-1][1]["sampling_params"]["json_schema"])
    assert sent["properties"]["n"]["pattern"] == "^[0-9]+$"
    await engine.aclose()


async def test_ollama_gets_portable_schema_patterns(ollama: OllamaWireServer) -> None:
    engine = Engine(server_config("ollama", ollama.base_url, model="m"))
    ollama.reply = json.dumps({"n": "12\n"})  # Python's $ would take the final newline
    schema = {**DIGITS, "properties": {"n": {"type": "string", "pattern": r"^\d+$"}}}
    with pytest.raises(ValidationFailed):
        await engine.arun("n", schema, backend="ollama")
    # llama.cpp's schema-to-GBNF takes no pattern here: it is left out and post-enforced
    assert "pattern" not in ollama.requests[-1][1]["format"]["properties"]["n"]
    ollama.reply = json.dumps({"n": "12"})
    ok = await engine.arun("n", schema, backend="ollama")
    assert ok.value == {"n": "12"}
    assert "/properties/n/pattern" in ok.post_enforced
    assert ollama.violations == []
    await engine.aclose()
