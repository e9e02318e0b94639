"""The result cache: forged entries are misses, a store that cannot be opened or that
stops answering never fails (or holds) a request, failed writes leave no files behind, and
a row naming a FIFO is not read (issue 24, B6, B7, B12)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import structgen.cache
from structgen.cache import ENTRY_PREFIX, NullCache, ResultCache, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine

from .test_result_cache import SCHEMA, CountingBackend, put_value


def test_forged_entry_with_a_plain_checksum_is_a_miss(cache: ResultCache,
                                                      app_config: Config) -> None:
    """Whoever can write the store (a shared Redis, the cache directory) could write a
    SHA-256 too: the entry must be signed with this install's secret to be served."""
    key, req = put_value(cache, app_config, "q", SCHEMA, {"id": 1, "tags": []},
                         '{"id":1,"tags":[]}')
    raw = cache.store.get(ENTRY_PREFIX + key)
    assert raw is not None
    body = raw[64:].replace('{\\"id\\":1', '{\\"id\\":666')  # valid for the schema too
    assert body != raw[64:]
    forged = hashlib.sha256(body.encode()).hexdigest() + body
    cache.store.set(ENTRY_PREFIX + key, forged, None)
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]
    assert cache.dropped == 1


def test_entries_are_shared_by_caches_with_the_same_secret(tmp_path: Path) -> None:
    one = CacheConfig(backend="disk", dir=str(tmp_path / "a"), secret="fleet")
    writer = open_result_cache(one)
    assert isinstance(writer, ResultCache)
    key, req = put_value(writer, Config(cache=one), "q", SCHEMA, {"id": 1, "tags": []},
                         '{"id":1,"tags":[]}')
    raw = writer.store.get(ENTRY_PREFIX + key)
    writer.close()
    for secret, hit in (("fleet", True), ("other", False), (None, False)):
        cfg = CacheConfig(backend="disk", dir=str(tmp_path / f"b-{secret}"), secret=secret)
        reader = open_result_cache(cfg)
        assert isinstance(reader, ResultCache)
        reader.store.set(ENTRY_PREFIX + key, raw, None)  # type: ignore[arg-type]
        assert (reader.get(key, req.output) is not None) == hit  # type: ignore[arg-type]
        reader.close()
    assert "fleet" not in repr(one)


def test_unopenable_cache_degrades_to_none(tmp_path: Path, caplog: Any) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for cfg in (CacheConfig(backend="disk", dir=str(garbage)),
                CacheConfig(backend="disk", dir=str(not_a_dir / "results")),
                CacheConfig(backend="redis", url=f"redis://127.0.0.1:{_closed_port()}/0")):
        engine = Engine(Config(cache=cfg), backends={"local": CountingBackend('{"id":1,"tags":[]}')})
        assert isinstance(engine.cache, NullCache)
        assert engine.run("q", SCHEMA, backend="local").value == {"id": 1, "tags": []}
        engine.close()
    assert "result cache disabled" in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _FrozenStore:
    """A store that hangs for ``delay`` on every call (a frozen Redis behind its timeout)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def _hang(self, *_: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        raise TimeoutError("Timeout reading from socket")

    get = set = delete = incr = _hang

    def close(self) -> None:
        pass


def test_failing_store_is_backed_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The backoff (1 s, then 2 s, ...) runs on the cache's monotonic clock: frozen here, as
    # with a real one 20 calls slower than 3 s in all (a loaded machine) reached the store
    # a third time, which is the backoff working, not failing.
    monkeypatch.setattr(structgen.cache, "time", SimpleNamespace(
        time=time.time, monotonic=lambda: 1000.0))
    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    cache.store.close()
    frozen = _FrozenStore(0.01)
    cache.store = frozen  # type: ignore[assignment]
    engine = Engine(Config(cache=cfg), backends={"local": CountingBackend('{"id":1,"tags":[]}')})
    engine.cache.close()  # type: ignore[union-attr]
    engine.cache = cache
    for _ in range(20):
        assert engine.run("q", SCHEMA, backend="local").value == {"id": 1, "tags": []}
    # the old cache asked the store on every read and write: 40 calls, 5 s each for real
    assert frozen.calls <= 2 and cache.errors == frozen.calls
    engine.close()


def test_redis_operations_time_out_quickly() -> None:
    from structgen.cache import REDIS_TIMEOUT_S

    assert REDIS_TIMEOUT_S <= 1.0  # the old timeout: 5 s per operation, three per request


def test_failed_large_write_leaves_no_value_file(tmp_path: Path) -> None:
    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    big = "x" * 100_000  # past diskcache's 32 KiB: written to a .val file first
    directory = tmp_path / "results"
    with sqlite3.connect(directory / "cache.db") as db:  # every insert now fails
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON Cache "
                   "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(Exception, match="disk full"):
        cache.store.set("k", big, None)
    assert list(directory.rglob("*.val")) == []
    cache.close()


def test_row_naming_a_fifo_is_not_read(tmp_path: Path) -> None:
    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    big = {"id": 1, "tags": ["x" * 100] * 800}
    key, req = put_value(cache, Config(cache=cfg), "q", SCHEMA, big, json.dumps(big))
    with sqlite3.connect(tmp_path / "results" / "cache.db") as db:
        (name,) = db.execute("SELECT filename FROM Cache WHERE key = ?",
                             (ENTRY_PREFIX + key,)).fetchone()
    path = tmp_path / "results" / name
    path.unlink()
    os.mkfifo(path)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(cache.get(key, req.output)),  # type: ignore[arg-type]
                              daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the old code blocked here, opening the FIFO for reading
        with open(path, "wb"):
            pass
        reader.join(5)
        pytest.fail("reading a cache row whose file is a FIFO blocked")
    assert result == [None]
    cache.close()


def test_warmup_still_fails_when_its_cache_cannot_be_opened(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from structgen.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\ndir = "{blocker / "results"}"\n')
    src = tmp_path / "requests.jsonl"
    src.write_text(json.dumps({"prompt": "x", "schema": SCHEMA}) + "\n")
    run = CliRunner().invoke(app, ["warmup", str(src), "--config", str(config)])
    assert run.exit_code != 0 and "cannot open cache directory" in run.output, run.output
