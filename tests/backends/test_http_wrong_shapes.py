"""Server answers of the wrong shape: every server backend reports BackendProtocolError
(never a TypeError or RecursionError from deep inside a parser), and the router falls back.

Each shape is sent by the local stand-in servers (tests/servers/wire.py, ``canned``) over
real HTTP on 127.0.0.1, for vLLM, SGLang (native and OpenAI-compatible) and Ollama.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.backends.vllm import VLLMBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendProtocolError
from tests.backends.helpers import request, server_config
from tests.servers.wire import (
    Canned,
    OllamaWireServer,
    SGLangWireServer,
    VLLMWireServer,
    WireServer,
)

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
OK = json.dumps({"ok": True})
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than any JSON parser's recursion limit

# (backend, section overrides) -> {shape name: answer body}
SHAPES: dict[str, dict[str, Any]] = {
    "vllm": {
        "usage is a string": {"model": "m", "usage": "x", "choices": [
            {"message": {"role": "assistant", "content": OK}, "finish_reason": "stop"}]},
        "bare number": 42,
        "chat answer without message": {"model": "m", "choices": [{"finish_reason": "stop"}]},
        "message is null": {"model": "m", "choices": [{"message": None}]},
        "no choices": {"model": "m", "choices": []},
        "metrics with a huge number": {"model": "m", "metrics": {"queue_time_ms": 10**400},
                                       "choices": [{"message": {"content": OK}}]},
    },
    "sglang": {
        "usage is a string": {"text": OK, "meta_info": "x"},
        "token count is a string": {"text": OK, "meta_info": {"completion_tokens": "x"}},
        "bare number": 42,
        "text is a list": {"text": ["a"]},
    },
    "sglang-openai": {
        "usage is a string": {"model": "m", "usage": "x", "choices": [
            {"message": {"role": "assistant", "content": OK}}]},
        "bare number": 42,
        "chat answer without message": {"model": "m", "choices": [{"finish_reason": "stop"}]},
        "message is null": {"model": "m", "choices": [{"message": None}]},
    },
    "ollama": {
        "usage is a string": {"model": "m", "done": True, "eval_count": "x",
                              "message": {"role": "assistant", "content": OK}},
        "bare number": 42,
        "chat answer without message": {"model": "m", "done": True},
        "message is a string": {"model": "m", "done": True, "message": "hi"},
    },
}
CASES = [(flavor, shape) for flavor, shapes in SHAPES.items()
         for shape in [*shapes, "deeply nested JSON"]]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, WireServer]]:
    with VLLMWireServer() as v, SGLangWireServer() as s, OllamaWireServer() as o:
        yield {"vllm": v, "sglang": s, "sglang-openai": s, "ollama": o}


def _backend_config(flavor: str, server: WireServer, **extra: Any) -> Config:
    name = flavor.split("-")[0]
    section: dict[str, Any] = {"model": "m"}
    if flavor == "sglang-openai":
        section["api"] = "openai"
    return server_config(name, server.base_url, **section, **extra)


def _backend(flavor: str, server: WireServer) -> Any:
    cls = {"vllm": VLLMBackend, "sglang": SGLangBackend, "ollama": OllamaBackend}
    return cls[flavor.split("-")[0]](_backend_config(flavor, server))


def _canned(flavor: str, shape: str) -> Canned:
    body = DEEP if shape == "deeply nested JSON" else json.dumps(SHAPES[flavor][shape])
    return Canned(chunks=(body.encode(),), length=True)


@pytest.mark.parametrize(("flavor", "shape"), CASES)
async def test_wrong_shape_is_protocol_error(servers: dict[str, WireServer], flavor: str,
                                             shape: str) -> None:
    server = servers[flavor]
    server.reset()
    server.canned = _canned(flavor, shape)
    b = _backend(flavor, server)
    try:
        with pytest.raises(BackendProtocolError) as info:
            await b.agenerate(request(SCHEMA))
        assert info.value.backend == flavor.split("-")[0]
        assert server.violations == []  # the request itself was well-formed
    finally:
        await b.aclose()
        server.reset()


class Fallback(BackendBase):
    """The next backend in the chain: answers a valid object."""

    name = "local"

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult(text=OK, backend="local")

    async def health(self) -> bool:
        return True


@pytest.mark.parametrize(("flavor", "shape"), CASES)
async def test_router_falls_back_on_a_wrong_shape(servers: dict[str, WireServer],
                                                  flavor: str, shape: str,
                                                  tmp_path: Path) -> None:
    name = flavor.split("-")[0]
    server = servers[flavor]
    server.reset()
    server.canned = _canned(flavor, shape)
    data = _backend_config(flavor, server).model_dump()
    data["llm_backend"]["fallback"] = [name, "local"]
    data["metrics"] = {"enabled": False}
    engine = Engine(Config.from_dict(data), backends={"local": Fallback()})
    try:
        result = await engine.arun("q", SCHEMA)
        assert result.backend == "local" and result.value == {"ok": True}
        assert result.attempts[0].backend == name
        assert result.attempts[0].error.startswith("BackendProtocolError")
    finally:
        await engine.aclose()
        server.reset()


# Streamed events of the wrong shape ----------------------------------------------------------
STREAM_SHAPES: dict[str, list[str]] = {
    "vllm": ["data: 42\n\n", 'data: {"choices": "x"}\n\n', 'data: {"choices": [7]}\n\n',
             f"data: {DEEP}\n\n"],
    "sglang": ["data: 42\n\n", 'data: {"text": 7}\n\n', f"data: {DEEP}\n\n"],
    "sglang-openai": ["data: 42\n\n", 'data: {"choices": [{"delta": "x"}]}\n\n'],
    "ollama": ["42\n", '{"message": null, "done": false}\n', '{"response": "x"}\n',
               f"{DEEP}\n"],
}


@pytest.mark.parametrize(("flavor", "event"),
                         [(f, i) for f, events in STREAM_SHAPES.items()
                          for i in range(len(events))])
async def test_wrong_shape_stream_event_is_protocol_error(servers: dict[str, WireServer],
                                                          flavor: str, event: int) -> None:
    server = servers[flavor]
    server.reset()
    line = STREAM_SHAPES[flavor][event].encode()
    server.canned = Canned(chunks=(line,), content_type="text/event-stream")
    b = _backend(flavor, server)
    try:
        with pytest.raises(BackendProtocolError):
            [c async for c in b.stream(request(SCHEMA))]
    finally:
        await b.aclose()
        server.reset()
