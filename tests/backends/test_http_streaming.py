"""Streaming: the partial values stream_structured yields from a JSON prefix, and the
engine's astream over a wire-format server (partial dicts, then the validated object)."""

from __future__ import annotations

import json

import pytest

from schemas.intent import Intent
from structgen.engine import Engine
from structgen.errors import ValidationFailed
from structgen.streaming import partial_value
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer


def test_partial_value_grows_with_the_prefix():
    text = json.dumps({"kind": "edit_code", "targets": ["a.py", "b.py"], "confidence": 0.75})
    seen = [partial_value(text[:i]) for i in range(len(text) + 1)]
    assert seen[0] is None and seen[-1] == json.loads(text)
    assert partial_value('{"kind": "edi') == {"kind": "edi"}
    assert partial_value('{"targets": ["a.py", "b') == {"targets": ["a.py", "b"]}
    # an unfinished number is held back: "0.7" may still become "0.75"
    assert "confidence" not in (partial_value('{"kind": "x", "confidence": 0.7') or {})


async def test_astream_yields_partials_then_validated(ollama: OllamaWireServer):
    engine = Engine(server_config("ollama", ollama.base_url, model="m"))
    ollama.reply = json.dumps({"kind": "debug", "targets": ["app.py"], "confidence": 0.5,
                               "rationale": "The test fails."})
    items = [i async for i in engine.astream("Why does app.py fail?", Intent,
                                             backend="ollama")]
    partials, final = items[:-1], items[-1]
    assert isinstance(final, Intent) and final.kind.value == "debug"
    assert partials and all(isinstance(p, dict) for p in partials)
    assert partials[-1]["rationale"] == "The test fails."
    ollama.reply = '{"kind": "nonsense"}'
    with pytest.raises(ValidationFailed):
        [i async for i in engine.astream("?", Intent, backend="ollama")]
    await engine.aclose()
