"""Resources stay flat over many calls: ``generate_structured(config=...)`` reuses one
engine per configuration, and an HTTP pool is not re-opened per event loop.

Measured on this process (/proc/self): open file descriptors, threads, resident memory,
over 20 calls to the local Ollama stand-in server (no model involved).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

from schemas.intent import Intent
from structgen import Engine, generate_structured
from structgen.config import Config
from tests.backends.helpers import server_config
from tests.servers.wire import OllamaWireServer

RSS_SLACK = 10 * 1024 * 1024  # allocator noise; a leaking engine per call costs ~1 MB each


def _resources() -> tuple[int, int, int]:
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return fds, threading.active_count(), rss


def _assert_flat(call: Callable[[int], object], n: int = 20) -> None:
    for i in range(3):  # warm up: the portal loop, the pool's connection, server threads
        call(-1 - i)
    fds, threads, rss = _resources()
    for i in range(n):
        call(i)
    fds2, threads2, rss2 = _resources()
    assert fds2 - fds <= 1, f"file descriptors {fds} -> {fds2} over {n} calls"
    assert threads2 - threads <= 1, f"threads {threads} -> {threads2} over {n} calls"
    assert rss2 - rss < RSS_SLACK, f"RSS {rss} -> {rss2} over {n} calls"


def _config(ollama: OllamaWireServer, tmp_path: Path) -> Config:
    data = server_config("ollama", ollama.base_url, model="m").model_dump()
    data["cache"] = {"backend": "disk", "dir": str(tmp_path / "cache")}  # a real sqlite file
    return Config.from_dict(data)


def test_generate_structured_with_a_config_keeps_resources_flat(ollama: OllamaWireServer,
                                                                  tmp_path: Path) -> None:
    cfg = _config(ollama, tmp_path)
    # a new prompt each time: every call goes to the server (no cache hit)
    _assert_flat(lambda i: generate_structured(f"Fix test {i}", Intent, config=cfg))
    assert len(ollama.requests) == 23


def test_a_changed_config_gets_its_own_engine(ollama: OllamaWireServer,
                                              tmp_path: Path) -> None:
    cfg = _config(ollama, tmp_path)
    generate_structured("Fix app.py", Intent, config=cfg)
    assert ollama.requests[-1][1]["model"] == "m"
    cfg.ollama.model = "other"  # the caller changes its Config: the next call follows it
    generate_structured("Fix app.py", Intent, config=cfg)
    assert ollama.requests[-1][1]["model"] == "other"


def test_one_engine_used_from_many_event_loops_keeps_resources_flat(
        ollama: OllamaWireServer) -> None:
    engine = Engine(server_config("ollama", ollama.base_url, model="m"))
    # each asyncio.run is a new event loop; the HTTP pool must not be re-opened per loop
    _assert_flat(lambda i: asyncio.run(engine.arun(f"Fix test {i}", Intent)))
    engine.close()


def _cache_files_open(cache_dir: Path) -> int:
    """Open descriptors of this process on the disk cache's files (sqlite, WAL, shm)."""
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith(str(cache_dir))
               for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_concurrent_requests_share_one_cache_connection(ollama: OllamaWireServer,
                                                        tmp_path: Path) -> None:
    # diskcache opens a sqlite connection (and its WAL) per thread: cache reads and writes
    # run on one thread of their own, not on whichever default-executor thread is free
    engine = Engine(_config(ollama, tmp_path))
    engine.run("Fix app.py", Intent)
    opened = _cache_files_open(tmp_path / "cache")

    async def many() -> None:
        await asyncio.gather(*(engine.arun(f"Fix test {i}", Intent) for i in range(12)))

    asyncio.run(many())
    assert _cache_files_open(tmp_path / "cache") == opened
    engine.close()
    engine.run("Fix app.py", Intent)  # a closed engine opens its cache thread again
    engine.close()
