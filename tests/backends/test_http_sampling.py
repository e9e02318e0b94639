"""Sampling parameters reach every server as the caller meant them, or are refused with a
typed error before any request is sent (local stand-in servers, tests/servers/wire.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from structgen.engine import Engine
from structgen.errors import StructgenError
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer, VLLMWireServer, WireServer

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module", params=["vllm", "sglang", "ollama"])
def server(request: pytest.FixtureRequest) -> Iterator[WireServer]:
    cls = {"vllm": VLLMWireServer, "sglang": SGLangWireServer, "ollama": OllamaWireServer}
    with cls[request.param]() as srv:
        yield srv


def _stop_sent(server: WireServer, body: dict) -> object:
    if server.flavor == "sglang":
        return body["sampling_params"]["stop"]
    if server.flavor == "ollama":
        return body["options"]["stop"]
    return body["stop"]


async def test_a_string_stop_is_one_stop_string(server: WireServer) -> None:
    engine = Engine(server_config(server.flavor, server.base_url, model="m"))
    server.reset()
    await engine.arun("q", SCHEMA, stop="END")
    assert _stop_sent(server, server.requests[-1][1]) == ["END"]
    assert server.violations == []
    await engine.aclose()


@pytest.mark.parametrize("bad", [{"max_tokens": "10"}, {"max_tokens": True},
                                 {"temperature": "0.5"}, {"seed": 1.5}, {"stop": [1]},
                                 {"temperature": float("nan")}])
async def test_a_mistyped_parameter_is_a_typed_error(server: WireServer, bad: dict) -> None:
    engine = Engine(server_config(server.flavor, server.base_url, model="m"))
    server.reset()
    with pytest.raises(StructgenError, match=r"sampling parameter|temperature must be"):
        await engine.arun("q", SCHEMA, **bad)
    assert server.requests == []  # refused before anything was sent
    await engine.aclose()
