"""A Redis URL's password never shows: not in CacheError, not in `structgen cache stats`
(issue 11, item 16). Real redis-servers on 127.0.0.1: one with ``requirepass``, one that
speaks only TLS with a self-signed certificate made here with the openssl CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from structgen.cache import CacheError, ResultCache, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine
from structgen.types import Choice, StructuredResult

from .conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Hunter2-s3cret-pw"
pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = RedisServer(tmp_path_factory.mktemp("redis-pw"), "--requirepass", PASSWORD)
    server.wait(password=PASSWORD)
    yield server.port
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory,
              service_missing: Callable[[str, str], NoReturn]) -> Iterator[tuple[int, Path]]:
    """TLS only (no plain port), with a password; yields (port, CA certificate)."""
    if shutil.which("openssl") is None:
        service_missing("the openssl CLI", "`make redis-server` installs it with redis-server")
    work = tmp_path_factory.mktemp("redis-tls")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = RedisServer(work, "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                         "--requirepass", PASSWORD, tls=True)
    server.wait(password=PASSWORD, ssl=True, ssl_ca_certs=str(cert))
    yield server.port, cert
    server.stop()


def _round_trip(url: str) -> None:
    cfg = CacheConfig(backend="redis", url=url)
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    engine = Engine(Config(cache=CacheConfig(backend="none")))
    req = engine.build_request("q", Choice(["x", "y"]))
    key = cache.key(req)
    cache.put(key, req, StructuredResult(value="y", raw_text="y", backend="vllm"))
    hit = cache.get(key, req.output)  # type: ignore[arg-type]
    assert hit is not None and hit.value == "y"
    assert PASSWORD not in json.dumps(cache.stats())
    cache.close()
    engine.close()


def _cli_stats(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRUCTGEN_CACHE_BACKEND": "redis", "STRUCTGEN_CACHE_URL": url}
    return subprocess.run([sys.executable, "-m", "structgen.cli", "cache", "stats", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_wrong_password_error_does_not_show_it(password_redis: int) -> None:
    wrong = "Wr0ng-pa55word"
    with pytest.raises(CacheError) as info:
        open_result_cache(CacheConfig(backend="redis",
                                      url=f"redis://:{wrong}@127.0.0.1:{password_redis}/0"))
    assert wrong not in str(info.value) and ":***@127.0.0.1" in str(info.value)
    run = _cli_stats(f"redis://:{wrong}@127.0.0.1:{password_redis}/0")
    assert run.returncode == 2 and "CacheError" in run.stderr
    assert wrong not in run.stderr + run.stdout


def test_password_redis_works_and_stats_hide_the_password(password_redis: int) -> None:
    url = f"redis://default:{PASSWORD}@127.0.0.1:{password_redis}/0"
    _round_trip(url)
    for extra in ((), ("--json",)):
        run = _cli_stats(url, *extra)
        assert run.returncode == 0, run.stderr
        assert PASSWORD not in run.stdout + run.stderr
        assert f"default:***@127.0.0.1:{password_redis}" in run.stdout


def test_tls_redis_works_and_errors_hide_the_password(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    _round_trip(url)
    run = _cli_stats(url, "--json")
    assert run.returncode == 0, run.stderr
    assert PASSWORD not in run.stdout and json.loads(run.stdout)["entries"] >= 1
    # the same server without trusting its certificate: a typed error, still no password
    with pytest.raises(CacheError) as info:
        open_result_cache(CacheConfig(backend="redis",
                                      url=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"))
    assert PASSWORD not in str(info.value) and "certificate" in str(info.value).lower()
    # and plain text against the TLS port is refused, not hung
    with pytest.raises(CacheError) as plain:
        open_result_cache(CacheConfig(backend="redis",
                                      url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0"))
    assert PASSWORD not in str(plain.value)
