"""Answers cut off at max_tokens: every server backend reports its finish reason, and a
value made from a cut answer is never returned as whole nor cached.

Against the local stand-in servers (tests/servers/wire.py) answering ``finish="length"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.backends.vllm import VLLMBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ValidationFailed
from tests.backends.helpers import request, server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer, VLLMWireServer, WireServer

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}},
          "required": ["summary"]}
CUT = '{"summary": "Adds a verbose fl'  # syntax repair closes it: valid, and wrong
WHOLE = '{"summary": "Adds a verbose flag"}'
BACKENDS = {"vllm": VLLMBackend, "sglang": SGLangBackend, "ollama": OllamaBackend}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, WireServer]]:
    with VLLMWireServer() as v, SGLangWireServer() as s, OllamaWireServer() as o:
        yield {"vllm": v, "sglang": s, "ollama": o}


@pytest.fixture
def server(servers: dict[str, WireServer], request: pytest.FixtureRequest
           ) -> Iterator[WireServer]:
    srv = servers[request.param]
    srv.reset()
    yield srv
    srv.reset()


def _engine(name: str, server: WireServer, tmp_path: Path) -> Engine:
    data: dict[str, Any] = server_config(name, server.base_url, model="m").model_dump()
    data["cache"] = {"backend": "disk", "dir": str(tmp_path / "cache")}
    return Engine(Config.from_dict(data))


@pytest.mark.parametrize("server", list(BACKENDS), indirect=True)
@pytest.mark.parametrize("finish", ["length", "stop"])
async def test_every_backend_reports_its_finish_reason(server: WireServer, finish: str):
    server.finish = finish
    b = BACKENDS[server.flavor](server_config(server.flavor, server.base_url, model="m"))
    result = await b.agenerate(request(SCHEMA))
    assert result.finish_reason == finish
    await b.aclose()


@pytest.mark.parametrize("server", list(BACKENDS), indirect=True)
async def test_cut_answer_raises_and_is_not_cached(server: WireServer, tmp_path: Path):
    engine = _engine(server.flavor, server, tmp_path)
    server.finish, server.reply = "length", CUT
    with pytest.raises(ValidationFailed, match="truncated") as info:
        await engine.arun("Summarize the change", SCHEMA)
    assert info.value.errors[0].keyword == "truncated"
    assert engine.cache.stats()["entries"] == 0
    await engine.aclose()


@pytest.mark.parametrize("server", list(BACKENDS), indirect=True)
async def test_cut_answer_allowed_is_marked_and_not_cached(server: WireServer,
                                                           tmp_path: Path):
    engine = _engine(server.flavor, server, tmp_path)
    server.finish, server.reply = "length", CUT
    result = await engine.arun("Summarize the change", SCHEMA, allow_truncated=True)
    assert result.truncated and result.value == {"summary": "Adds a verbose fl"}
    assert result.cache_key is None and engine.cache.stats()["entries"] == 0
    # the next identical request goes to the server again and gets the whole answer
    server.finish, server.reply = "stop", WHOLE
    again = await engine.arun("Summarize the change", SCHEMA, allow_truncated=True)
    assert not again.cached and not again.truncated
    assert again.value == json.loads(WHOLE)
    assert engine.cache.stats()["entries"] == 1
    await engine.aclose()


@pytest.mark.parametrize("server", list(BACKENDS), indirect=True)
async def test_complete_object_at_the_limit_is_whole(server: WireServer, tmp_path: Path):
    """The closing brace was generated: the object is complete even though the token
    budget ran out just then."""
    engine = _engine(server.flavor, server, tmp_path)
    server.finish, server.reply = "length", WHOLE
    result = await engine.arun("Summarize the change", SCHEMA)
    assert not result.truncated and result.value == json.loads(WHOLE)
    await engine.aclose()


KIND = {"type": "object", "properties": {"kind": {"enum": ["edit_code", "debug"]},
                                         "summary": {"type": "string"}},
        "required": ["kind", "summary"]}


@pytest.mark.parametrize("server", ["sglang"], indirect=True)
async def test_an_answer_that_cannot_fit_says_so_and_is_not_reasked(server: WireServer):
    """Cut at max_tokens before it was valid: the error says it was cut, at which budget,
    and how long the shortest valid answer is; no re-ask goes into the same budget
    (issue 29)."""
    data: dict[str, Any] = server_config("sglang", server.base_url, model="m").model_dump()
    data["repair"] = {"max_retries": 2}
    engine = Engine(Config.from_dict(data))
    server.finish, server.reply = "length", '{"kind": "edit_co'
    with pytest.raises(ValidationFailed) as info:
        await engine.arun("Classify", KIND, max_tokens=5)
    message = str(info.value)
    assert "cut off at max_tokens=5" in message, message
    assert 'the shortest valid answer is 29 characters ({"kind":"debug","summary":""})' \
        in message, message
    assert info.value.errors[0].keyword == "truncated"
    assert len(server.requests) == 1  # the one request, no re-ask
    await engine.aclose()
