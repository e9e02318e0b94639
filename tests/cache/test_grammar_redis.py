"""The grammar cache's Redis tier, on a real redis-server: compiled grammars (and a tool
set's compiled schemas) made by one worker are read by another; entries are signed text,
and one that does not verify never reaches the deserializer; a Redis that is down costs a
compile, never a request."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from structgen.config import CacheConfig
from structgen.constrain.grammar_cache import (
    Codec,
    GrammarCache,
    RedisTier,
    default_grammar_cache,
    text_codec,
    text_store,
    xgrammar_codec,
)

pytestmark = pytest.mark.redis

SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]},
                                           "n": {"type": "integer"}},
          "required": ["kind", "n"], "additionalProperties": False}
SECRET = b"s" * 32


@pytest.fixture
def redis_tier(redis_url: str) -> Any:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return lambda: RedisTier(redis_url)


def test_a_worker_reads_another_workers_grammar_from_redis(redis_tier: Any,
                                                           tiny_model_dir: Path) -> None:
    import xgrammar
    from transformers import AutoTokenizer

    info = xgrammar.TokenizerInfo.from_huggingface(
        AutoTokenizer.from_pretrained(tiny_model_dir))
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
    key = (json.dumps(SCHEMA), "tiny", "xgrammar", "test")
    compiles: list[int] = []

    def compile_fn() -> Any:
        compiles.append(1)
        return compiler.compile_json_schema(json.dumps(SCHEMA))

    first = GrammarCache(redis=redis_tier(), secret=SECRET)  # no disk: Redis only
    first.get_or_compile(key, compile_fn, codec=xgrammar_codec(info), store_s=0.0)
    other = GrammarCache(redis=redis_tier(), secret=SECRET)
    grammar = other.get_or_compile(key, compile_fn, codec=xgrammar_codec(info))
    assert compiles == [1] and other.redis_hits == 1 and other.misses == 0
    matcher = xgrammar.GrammarMatcher(grammar)
    assert matcher.accept_string('{"kind":"a","n":1}') and matcher.is_completed()
    assert not xgrammar.GrammarMatcher(grammar).accept_string('{"kind":"c"')


def test_only_entries_signed_with_the_shared_secret_are_loaded(redis_tier: Any) -> None:
    key = ("schema", "tok", "engine", "1")
    compiles: list[str] = []
    loaded: list[str] = []

    def compile_fn() -> str:
        compiles.append("GENUINE")
        return "GENUINE"

    codec = Codec(dumps=lambda s: s, loads=lambda s: loaded.append(s) or s)
    writer = GrammarCache(redis=redis_tier(), secret=SECRET)
    writer.get_or_compile(key, compile_fn, codec=text_codec(), store_s=0.0)
    # another secret (a worker of another fleet, or an attacker who can write to Redis):
    # the entry is a miss, never loaded
    stranger = GrammarCache(redis=redis_tier(), secret=b"t" * 32)
    assert stranger.get_or_compile(key, compile_fn, codec=codec) == "GENUINE"
    assert loaded == [] and stranger.redis_hits == 0 and len(compiles) == 2
    # a forged entry under the right name: dropped, recompiled, replaced
    tier = redis_tier()
    name = writer._name(key)
    tier.set(name, json.dumps({"v": 2, "key": list(key), "mac": "0" * 64,
                               "payload": "FORGED"}))
    reader = GrammarCache(redis=redis_tier(), secret=SECRET)
    assert reader.get_or_compile(key, compile_fn, codec=codec) == "GENUINE"
    assert "FORGED" not in loaded and reader.redis_hits == 0
    assert "FORGED" not in (tier.get(name) or "")
    assert GrammarCache(redis=redis_tier(), secret=SECRET).get_or_compile(
        key, compile_fn, codec=codec) == "GENUINE" and loaded == ["GENUINE"]


def test_a_redis_that_is_down_costs_a_compile_not_a_request() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tier = RedisTier(f"redis://127.0.0.1:{port}/0")
    cache = GrammarCache(redis=tier, secret=SECRET)
    for i in range(3):
        key = (f"schema{i}", "tok", "engine", "1")
        assert cache.get_or_compile(key, lambda: "G", codec=text_codec(), store_s=0.0) == "G"
    # the first failure pauses the tier: later requests do not wait on it again
    assert tier.failures == 1 and cache.misses == 3


def test_a_tool_set_is_checked_once_per_fleet(redis_tier: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that meets a tool set another worker has seen reads the tools' compiled
    schemas from Redis (one entry by the set's hash) instead of checking 200 schemas."""
    from structgen.schema import toolset
    from structgen.schema.toolset import envelope_output, tool_turn
    from tests.backends.helpers import count_schema_checks, maskbench_tools

    specs = [spec for spec, _ in maskbench_tools(200)]
    monkeypatch.setattr(toolset, "_arguments", type(toolset._arguments)())
    monkeypatch.setattr(toolset, "_envelopes", type(toolset._envelopes)())
    first = envelope_output(tool_turn(specs, "required"), store=text_store(
        GrammarCache(redis=redis_tier(), secret=SECRET), "toolset"))
    toolset._arguments.clear()  # another worker: nothing in memory
    toolset._envelopes.clear()
    checked = count_schema_checks(monkeypatch)
    other = GrammarCache(redis=redis_tier(), secret=SECRET)
    again = envelope_output(tool_turn(list(specs), "required"),
                            store=text_store(other, "toolset"))
    assert other.redis_hits == 1
    assert len(checked) == 1 and checked[0] < len(first.json_text) / 5  # the head only
    assert again is not first and again.json_text == first.json_text


def test_the_default_cache_uses_the_result_caches_redis(redis_url: str,
                                                        tmp_path: Path) -> None:
    cache = default_grammar_cache(CacheConfig(backend="redis", url=redis_url,
                                              grammar_dir=str(tmp_path), secret="fleet"))
    assert isinstance(cache.redis, RedisTier)
    assert default_grammar_cache(CacheConfig(grammar_dir=str(tmp_path))).redis is None


def test_without_the_redis_client_the_grammar_cache_goes_on_without_redis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    cache = default_grammar_cache(CacheConfig(backend="redis", url="redis://127.0.0.1:1/0",
                                              grammar_dir=str(tmp_path / "no-client")))
    assert cache.redis is None
    assert cache.get_or_compile(("s", "t", "e", "1"), lambda: "G", codec=text_codec()) == "G"
