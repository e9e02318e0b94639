"""Fixtures for the cache tests: a real redis-server on 127.0.0.1, and every result-cache
test run against both stores (diskcache and Redis) through one parametrized fixture."""

from __future__ import annotations

import os
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


class RedisServer:
    """A throwaway redis-server (no persistence) on 127.0.0.1, started with extra args."""

    def __init__(self, workdir: Path, *extra: str, tls: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:  # as tests/conftest.py's missing(): a failure unless make test-fast
            message = "redis-server is missing (run `make redis-server`)"
            if os.environ.get("STRUCTGEN_ALLOW_MISSING_SERVICES") == "1":
                pytest.skip(message)
            pytest.fail(message, pytrace=False)
        self.port = free_port()
        # with TLS, the TLS port is the only one open
        ports = ("--port", "0", "--tls-port", str(self.port)) if tls else (
            "--port", str(self.port))
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), *ports, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait(self, **client_kwargs: Any) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, **client_kwargs)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.AuthenticationError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory,
              service_missing: Callable[[str, str], NoReturn]) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port; stopped after the session."""
    if shutil.which("redis-server") is None:
        service_missing("redis-server", "run `make redis-server`")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.wait()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


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
def cache(cache_config: CacheConfig) -> Iterator[ResultCache]:
    c = open_result_cache(cache_config)
    assert isinstance(c, ResultCache)
    yield c
    c.close()


def config_dict(cfg: CacheConfig) -> dict[str, Any]:
    return cfg.model_dump(exclude_none=True)
