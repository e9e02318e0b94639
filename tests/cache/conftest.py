"""Fixtures for the cache tests: a real redis-server on 127.0.0.1, and every result-cache
test run against both stores (diskcache and Redis) through one parametrized fixture."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from structgen.cache import ResultCache, open_result_cache
from structgen.config import CacheConfig, Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory,
              service_missing: Callable[[str, str], NoReturn]) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port; stopped after the session."""
    exe = shutil.which("redis-server")
    if exe is None:
        service_missing("redis-server", "run `make redis-server`")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def cache_config(request: pytest.FixtureRequest, tmp_path: Path) -> CacheConfig:
    """A fresh, empty cache config for each store kind."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return CacheConfig(backend="redis", url=url)
    return CacheConfig(backend="disk", dir=str(tmp_path / "results"))


@pytest.fixture
def app_config(cache_config: CacheConfig) -> Config:
    return Config(cache=cache_config)


@pytest.fixture
def cache(cache_config: CacheConfig, app_config: Config) -> Iterator[ResultCache]:
    c = open_result_cache(cache_config, app_config)
    assert isinstance(c, ResultCache)
    yield c
    c.close()


def config_dict(cfg: CacheConfig) -> dict[str, Any]:
    return cfg.model_dump(exclude_none=True)
