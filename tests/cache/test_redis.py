"""Redis-specific behaviour (the shared suites run against Redis via ``cache_config``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from structgen.cache import ENTRY_PREFIX, CacheError, ResultCache, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine
from structgen.types import Choice, StructuredResult

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis


def _redis_cfg(url: str, **kw: object) -> CacheConfig:
    import redis

    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return CacheConfig(backend="redis", url=url, **kw)  # type: ignore[arg-type]


def test_unreachable_redis_is_a_typed_error() -> None:
    cfg = CacheConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(CacheError, match="cannot reach Redis"):
        open_result_cache(cfg)


def test_two_workers_share_entries_and_ttl_is_set(redis_url: str) -> None:
    cfg = _redis_cfg(redis_url, ttl_s=60)
    a = Engine(Config(cache=cfg))
    b = Engine(Config(cache=cfg))
    req = a.build_request("q", Choice(["x", "y"]))
    key = a.cache_key(req)
    a.cache.put(key, req, StructuredResult(value="y", raw_text="y", backend="vllm", model="m"))
    hit = b.cache.get(key, b.build_request("q", Choice(["x", "y"])).output)
    assert hit is not None and hit.value == "y" and hit.backend == "vllm"
    import redis

    with redis.Redis.from_url(redis_url) as r:
        ttl_ms = r.pttl("structgen:" + ENTRY_PREFIX + key)
        assert 0 < ttl_ms <= 60_000
        assert all(k.startswith(b"structgen:") for k in r.keys("*"))
    a.close()
    b.close()


def test_cli_stats_against_redis(redis_url: str) -> None:
    cfg = _redis_cfg(redis_url)
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    e = Engine(Config(cache=cfg))
    req = e.build_request("q", Choice(["x"]))
    cache.put(cache.key(req), req, StructuredResult(value="x", raw_text="x", backend="l"))
    cache.get(cache.key(req), req.output)  # type: ignore[arg-type]
    cache.close()
    env = {**os.environ, "STRUCTGEN_CACHE_BACKEND": "redis", "STRUCTGEN_CACHE_URL": redis_url}
    out = subprocess.run([sys.executable, "-m", "structgen.cli", "cache", "stats", "--json"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    stats = json.loads(out)
    assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 1, 0)
    assert stats["backend"] == "redis" and stats["bytes"] > 0
    e.close()
