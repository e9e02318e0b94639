"""Streaming, on the same pipeline as ``Engine.arun``.

Answers cut off at ``max_tokens`` raise ValidationFailed (``allow_truncated=False``, the
default), or give the value marked ``truncated=True``, never cached; a whole answer is
cached under run's key and a hit streams as one final item; metrics record the call with
its time to first token. Pydantic outputs stream instances of their partial model
(``stream_structured`` / ``astream_structured``), and closing the iterator early closes
the backend request: the stand-in server sees the client hang up, the embedded decoder
stops decoding the sequence.

On the embedded backend (tiny model, real decode loop) and on the local stand-in servers
(tests/servers/wire.py) answering ``finish="length"`` for every server backend and endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, field_validator

from structgen import astream_structured, partial_model, stream_structured
from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine, StructuredResult
from structgen.errors import ValidationFailed
from structgen.streaming import partial_instance
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
    data["metrics"] = {"enabled": True, "state_file": str(tmp_path / "metrics.json")}
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
    assert final.finish_reason == "length"
    ran = await engine.arun("Summarize the change", SCHEMA, allow_truncated=True)
    assert ran.truncated and ran.finish_reason == "length"
    # the bare value too, for a caller that did not ask for the result
    assert (await _stream(engine, SCHEMA, allow_truncated=True))[-1] == final.value

    assert engine.cache.stats()["entries"] == 0  # a cut value is never cached

    server.finish, server.reply = "stop", WHOLE
    whole = (await _stream(engine, SCHEMA, final_result=True))[-1]
    assert not whole.truncated and whole.value == {"summary": "Adds a verbose flag"}
    assert whole.finish_reason == "stop"
    assert whole.cache_key is not None and engine.cache.stats()["entries"] == 1
    summary = engine.metrics.summary()
    assert summary["requests"] == 4 and summary["by_backend"] == {name: 4}
    assert summary["ttft_p50_s"] is not None and summary["ttft_p50_s"] > 0
    # the same key as run's: run is answered from the stream's entry, and a stream from it
    # is one final item; the server sees neither
    sent = len(server.requests)
    assert (await engine.arun("Summarize the change", SCHEMA)).cache_key == whole.cache_key
    assert await _stream(engine, SCHEMA) == [whole.value]
    assert len(server.requests) == sent and engine.metrics.summary()["cache_hits"] == 2
    await engine.aclose()


async def test_complete_object_at_the_limit_streams_whole(servers: dict[str, WireServer],
                                                          tmp_path: Path):
    """The closing brace arrived: complete, even though the budget ran out just then."""
    engine = _engine("vllm", {}, servers["vllm"], tmp_path)
    servers["vllm"].finish, servers["vllm"].reply = "length", WHOLE
    final = (await _stream(engine, SCHEMA, final_result=True))[-1]
    assert not final.truncated and final.value == {"summary": "Adds a verbose flag"}
    assert final.finish_reason == "length"  # what the server said, though the value is whole
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
    assert engine.metrics.summary()["ttft_p50_s"] > 0  # the embedded backend's TTFT too

    # a whole answer is cached; the next stream is the one final item, with no decoding
    short = Regex(r"[a-z]{1,3}")
    whole = (await _stream(engine, short, backend="local", max_tokens=8, temperature=0.0,
                           final_result=True))[-1]
    assert not whole.truncated and engine.cache.stats()["entries"] == 1
    passes = engine.backend("local").forward_passes  # type: ignore[attr-defined]
    assert await _stream(engine, short, backend="local", max_tokens=8,
                         temperature=0.0) == [whole.value]
    assert engine.backend("local").forward_passes == passes  # type: ignore[attr-defined]
    await engine.aclose()


# Partial model instances ------------------------------------------------------------------
class Change(BaseModel):
    path: str
    lines: list[int]


class Plan(BaseModel):
    """What to change."""

    title: str
    changes: list[Change]
    owner: Change | None = None

    @field_validator("title")
    @classmethod
    def _titled(cls, v: str) -> str:
        # fails on every partial title: it must never run on one
        if not v.endswith("."):
            raise ValueError("a title ends with a period")
        return v


# the stand-in servers send a reply in ~3 pieces: the first one ends inside the title
PLAN = ('{"title": "Add a verbose flag to the command line and document it in the README.", '
        '"changes": [{"path": "cli.py", "lines": [3, 14]}, '
        '{"path": "README.md", "lines": [7]}]}')


def test_partial_model_is_all_optional_and_nested():
    partial = partial_model(Plan)
    assert partial.__name__ == "PartialPlan" and partial_model(Plan) is partial
    assert partial().model_dump() == {"title": None, "changes": None, "owner": None}
    # nested models are partial too, inside lists and optionals
    changes = partial.model_fields["changes"].annotation
    assert get_args(get_args(changes)[0]) == (partial_model(Change),)
    assert partial_model(Change) in get_args(partial.model_fields["owner"].annotation)
    assert partial_model(Change)().model_dump() == {"path": None, "lines": None}


def test_partial_instances_skip_validators():
    """A title still being written fails Plan's validator; its partial instance is built."""
    item = partial_instance(Plan, {"title": "Add a ver", "changes": [{"path": "cl"}]})
    assert isinstance(item, partial_model(Plan)) and item.title == "Add a ver"
    assert item.changes == [partial_model(Change)(path="cl")]
    assert partial_instance(Plan, None) is None


def _check_partials(items: list[Any]) -> None:
    *partials, final = items
    assert isinstance(final, Plan) and final.changes[1].lines == [7]
    assert len(partials) >= 3
    for item in partials:
        assert isinstance(item, partial_model(Plan))
        for change in item.changes or []:
            assert isinstance(change, partial_model(Change))
    # fields appear as they are written: a title still open, then changes inside the list
    assert any(p.title and not p.title.endswith(".") for p in partials)
    assert any(p.changes and p.changes[0].path == "cli.py" for p in partials)


async def test_astream_structured_yields_partial_instances(servers: dict[str, WireServer],
                                                           tmp_path: Path):
    server = servers["sglang"]
    engine = _engine("sglang", {"api": "native"}, server, tmp_path)
    server.reply = PLAN
    items = [item async for item in astream_structured("Plan it", Plan,
                                                       config=engine.config)]
    _check_partials(items)
    await engine.aclose()


def test_stream_structured_sync(servers: dict[str, WireServer], tmp_path: Path):
    server = servers["ollama"]
    engine = _engine("ollama", {"endpoint": "chat"}, server, tmp_path)
    server.reply = PLAN
    _check_partials(list(stream_structured("Plan it", Plan, config=engine.config)))
    engine.close()


# Cancellation -------------------------------------------------------------------------------
def _wait_for(check: Any, what: str, timeout_s: float = 20.0) -> None:
    """Poll ``check`` (another thread acts on it); a bound, not a speed assertion."""
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not seen within {timeout_s} s: {what}")
        time.sleep(0.05)


async def test_aclose_closes_the_http_stream(servers: dict[str, WireServer], tmp_path: Path):
    server = servers["vllm"]
    engine = _engine("vllm", {}, server, tmp_path)
    server.reply, server.trickle_s = PLAN, 0.005  # one byte per chunk: ~minutes in all
    items = engine.astream("Plan it", Plan)
    first = await anext(items)
    assert isinstance(first, partial_model(Plan))
    await items.aclose()  # type: ignore[attr-defined]
    # Waiting blocks this event loop on purpose: a stream left to the garbage collector
    # would be closed by a task on this loop, which cannot run now; only a stream closed
    # by aclose() itself reaches the server.
    _wait_for(lambda: server.hung_up == 1, "the client hung up")
    assert engine.cache.stats()["entries"] == 0
    await engine.aclose()


def test_breaking_the_sync_loop_closes_the_http_stream(servers: dict[str, WireServer],
                                                       tmp_path: Path):
    server = servers["sglang"]
    engine = _engine("sglang", {"api": "openai"}, server, tmp_path)
    server.reply, server.trickle_s = PLAN, 0.005
    items = engine.stream("Plan it", Plan)
    for _item in items:
        break
    # Hold the async stream the sync one drives, so the garbage collector cannot close it
    # (its finalizer would hang up too, and hide a missing close): only the sync
    # generator's own close of it can reach the server.
    inner = items.gi_frame.f_locals["items"]
    assert inner.ag_frame is not None  # started, not closed
    items.close()  # what dropping the loop's iterator does; explicit, so no GC timing
    _wait_for(lambda: server.hung_up == 1, "the client hung up")
    assert inner.ag_frame is None  # closed, though this test still holds it
    engine.close()


async def test_aclose_frees_the_embedded_decoder(tiny_model_dir: Path, tmp_path: Path):
    """The pattern takes 1,000 letters (hundreds of the tiny model's tokens, one per
    forward pass); after ``aclose`` the decoder stops within a few."""
    cfg = Config()
    cfg.local.model = str(tiny_model_dir)
    cfg.local.fast_forward = False
    cfg.cache.backend, cfg.cache.dir = "disk", str(tmp_path / "cache")
    local = LocalBackend(cfg)
    engine = Engine(cfg, backends={"local": local})
    spec = Regex(r"[a-z]{1000}")
    kw: dict[str, Any] = {"backend": "local", "max_tokens": 2000, "temperature": 1.0,
                          "seed": 1}
    items = engine.astream("Write", spec, **kw)
    assert await anext(items)
    # counted from here: the decoder runs on while this loop handles the first item, as
    # many passes as the machine's load lets it (no bound on those)
    at_close = local.forward_passes
    await items.aclose()  # type: ignore[attr-defined]
    passes: list[int] = []

    def settled() -> bool:  # the worker stopped decoding: the count holds still
        passes.append(local.forward_passes)
        return len(passes) > 10 and passes[-1] == passes[-11]

    await asyncio.to_thread(_wait_for, settled, "the decoder went idle", 120.0)
    assert passes[-1] - at_close < 100, (at_close, passes[-1])
    # the worker is free again: the next request is served
    again = await engine.arun("Write", Regex(r"[a-z]{1,3}"), backend="local", max_tokens=8,
                              use_cache=False)
    assert again.value
    await engine.aclose()


# The same bookkeeping as run --------------------------------------------------------------
LOOSE = {"type": "object", "required": ["tags", "n"],
         "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                 "uniqueItems": True, "maxItems": 4},
                        "n": {"type": "integer", "multipleOf": 3}}}


@pytest.mark.parametrize(("name", "section"), PATHS, ids=[f"{b}-{next(iter(s.values()))}"
                                                          for b, s in PATHS])
async def test_stream_reports_what_run_reports(servers: dict[str, WireServer], name: str,
                                               section: dict[str, Any], tmp_path: Path):
    """``post_enforced`` (what the backend's engine left to validation) and the attempt
    trail are the same for the same request, streamed or not."""
    server = servers[name]
    engine = _engine(name, section, server, tmp_path)
    server.reply = '{"tags": ["a", "b"], "n": 3}'
    ran = await engine.arun("Tag it", LOOSE, use_cache=False)
    streamed = (await _stream(engine, LOOSE, use_cache=False, final_result=True))[-1]
    assert streamed.value == ran.value
    assert streamed.post_enforced == ran.post_enforced
    assert "/properties/tags/uniqueItems" in ran.post_enforced  # no server enforces it
    assert streamed.backend == ran.backend == name
    # the same attempt trail: one entry, the backend that answered
    assert [(e.backend, e.ok) for e in streamed.attempts] == \
        [(e.backend, e.ok) for e in ran.attempts] == [(name, True)]
    await engine.aclose()


async def test_embedded_stream_reports_what_run_reports(tiny_model_dir: Path):
    """llguidance leaves ``uniqueItems`` to validation for this schema: run and stream
    both say so."""
    cfg = Config()
    cfg.local.model = str(tiny_model_dir)
    cfg.cache.backend = "none"
    engine = Engine(cfg, backends={"local": LocalBackend(cfg)})
    schema = {"type": "object", "required": ["tags"],
              "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                      "uniqueItems": True, "maxItems": 1}}}
    kw: dict[str, Any] = {"backend": "local", "temperature": 0.0, "max_tokens": 40,
                          "allow_truncated": True}
    ran = await engine.arun("Tag it", schema, **kw)
    streamed = (await _stream(engine, schema, final_result=True, **kw))[-1]
    assert "/properties/tags/uniqueItems" in ran.post_enforced
    assert streamed.post_enforced == ran.post_enforced
    await engine.aclose()


@pytest.mark.parametrize(("text", "value"), [
    ('{"kind": "', {}),
    ('{"kind": "ed', {"kind": "ed"}),
    ('{"kind": "", "n": ', {"kind": ""}),
    ('{"a": "x\\"', {"a": 'x"'}),
    ('"', None),
])
def test_a_string_with_nothing_in_it_yet_is_no_value(text: str, value: Any) -> None:
    """The first partial of ``{"kind": "`` has no kind (None), not kind='' (issue 29)."""
    from structgen.streaming import partial_value

    assert partial_value(text) == value
