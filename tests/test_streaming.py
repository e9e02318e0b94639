"""Streamed answers cut off at ``max_tokens`` are treated as in ``Engine.arun``: the final
step raises ValidationFailed (``allow_truncated=False``, the default), or gives the value
marked ``truncated=True``; nothing streamed is cached.

On the embedded backend (tiny model, real decode loop) and on the local stand-in servers
(tests/servers/wire.py) answering ``finish="length"`` for every server backend and endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine, StructuredResult
from structgen.errors import ValidationFailed
from structgen.types import Regex
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer, VLLMWireServer, WireServer

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}},
          "required": ["summary"]}
CUT = '{"summary": "Adds a verbose fl'  # syntax repair closes it: valid, and wrong
WHOLE = '{"summary": "Adds a verbose flag"}'
# (backend, endpoint setting): every server path that streams
PATHS = [("vllm", {"endpoint": "chat"}), ("vllm", {"endpoint": "completions"}),
         ("sglang", {"api": "native"}), ("sglang", {"api": "openai"}),
         ("ollama", {"endpoint": "chat"}), ("ollama", {"endpoint": "generate"})]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, WireServer]]:
    with VLLMWireServer() as v, SGLangWireServer() as s, OllamaWireServer() as o:
        yield {"vllm": v, "sglang": s, "ollama": o}


def _engine(name: str, section: dict[str, Any], server: WireServer, tmp_path: Path) -> Engine:
    server.reset()
    data: dict[str, Any] = server_config(name, server.base_url, model="m",
                                         **section).model_dump()
    data["cache"] = {"backend": "disk", "dir": str(tmp_path / "cache")}
    return Engine(Config.from_dict(data))


async def _stream(engine: Engine, output: Any, **kw: Any) -> list[Any]:
    return [item async for item in engine.astream("Summarize the change", output, **kw)]


@pytest.mark.parametrize(("name", "section"), PATHS, ids=[f"{b}-{next(iter(s.values()))}"
                                                          for b, s in PATHS])
async def test_cut_stream_raises_or_is_marked(servers: dict[str, WireServer], name: str,
                                              section: dict[str, Any], tmp_path: Path):
    server = servers[name]
    engine = _engine(name, section, server, tmp_path)
    server.finish, server.reply = "length", CUT
    with pytest.raises(ValidationFailed, match="truncated") as info:
        await _stream(engine, SCHEMA)
    assert info.value.errors[0].keyword == "truncated"

    items = await _stream(engine, SCHEMA, allow_truncated=True, final_result=True)
    final = items[-1]
    assert isinstance(final, StructuredResult)
    assert final.truncated and final.value == {"summary": "Adds a verbose fl"}
    assert final.backend == name and final.cache_key is None
    # the bare value too, for a caller that did not ask for the result
    assert (await _stream(engine, SCHEMA, allow_truncated=True))[-1] == final.value

    server.finish, server.reply = "stop", WHOLE
    whole = (await _stream(engine, SCHEMA, final_result=True))[-1]
    assert not whole.truncated and whole.value == {"summary": "Adds a verbose flag"}
    assert engine.cache.stats()["entries"] == 0  # a streamed value is never cached
    await engine.aclose()


async def test_complete_object_at_the_limit_streams_whole(servers: dict[str, WireServer],
                                                          tmp_path: Path):
    """The closing brace arrived: complete, even though the budget ran out just then."""
    engine = _engine("vllm", {}, servers["vllm"], tmp_path)
    servers["vllm"].finish, servers["vllm"].reply = "length", WHOLE
    final = (await _stream(engine, SCHEMA, final_result=True))[-1]
    assert not final.truncated and final.value == {"summary": "Adds a verbose flag"}
    await engine.aclose()


async def test_embedded_cut_stream_raises_or_is_marked(tiny_model_dir: Path, tmp_path: Path):
    """The tiny model cut at 3 tokens inside ``[a-z ]{1,200}``: the text matches, yet the
    model would have gone on."""
    cfg = Config()
    cfg.local.model = str(tiny_model_dir)
    cfg.cache.backend, cfg.cache.dir = "disk", str(tmp_path / "cache")
    engine = Engine(cfg, backends={"local": LocalBackend(cfg)})
    spec = Regex(r"[a-z ]{1,200}")
    kw: dict[str, Any] = {"backend": "local", "max_tokens": 3, "temperature": 0.0}
    with pytest.raises(ValidationFailed, match="truncated"):
        await _stream(engine, spec, **kw)
    final = (await _stream(engine, spec, allow_truncated=True, final_result=True, **kw))[-1]
    assert final.truncated and final.backend == "local"
    assert final.value == final.raw_text and 1 <= len(final.value) <= 200
    assert engine.cache.stats()["entries"] == 0
    await engine.aclose()
