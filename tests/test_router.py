"""Router: fallback from dead servers, circuit breaker, deadline, health and capabilities.

Dead servers are real: a closed 127.0.0.1 port and a real HTTP server answering 500.
The healthy "next backend" is either the embedded backend on the tiny model or a small
Backend implementation returning canned text (the router is what is under test).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendTimeout, BackendUnavailable
from structgen.router import CircuitBreaker, Router
from structgen.types import BackendAttempt, Regex

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CannedBackend(BackendBase):
    """A real Backend: answers canned text, or fails ``fail_times`` times first."""

    def __init__(self, name: str, text: str = '{"ok": true}', *, fail_times: int = 0,
                 delay_s: float = 0.0, healthy: bool = True,
                 kinds: frozenset[str] = frozenset({"json", "regex", "choice", "grammar"})) -> None:
        self.name = name
        self.text = text
        self.fail_times = fail_times
        self.delay_s = delay_s
        self.healthy = healthy
        self.kinds = kinds
        self.calls = 0
        self.probes = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=self.kinds)  # type: ignore[arg-type]

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise BackendUnavailable("connection refused (canned)", self.name)
        return GenerationResult(text=self.text, backend=self.name)

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        yield (await self.agenerate(request)).text

    async def health(self) -> bool:
        self.probes += 1
        return self.healthy


def config(tmp_path: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {"cache": {"backend": "none"},
                            "metrics": {"state_file": str(tmp_path / "metrics.json")}}
    data.update(sections)
    return Config.from_dict(data)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens


@pytest.fixture
def server_500() -> Iterator[str]:
    """A real HTTP server that answers every request with 500."""

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            body = json.dumps({"error": "internal"}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _fail

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# Circuit breaker ----------------------------------------------------------------------------
def test_breaker_open_half_open_closed() -> None:
    clock = Clock()
    b = CircuitBreaker(failures_to_open=3, cooldown_s=30, clock=clock)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.now += 29.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state == "half_open"
    assert b.allow()  # one trial goes through...
    assert not b.allow()  # ...and only one
    b.record_failure()  # the trial failed: open again for a full cool-down
    assert b.state == "open" and not b.allow()
    clock.now += 30
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.consecutive_failures == 0 and b.allow()


async def test_router_breaker_skips_then_probes_then_closes(tmp_path: Path) -> None:
    flaky = CannedBackend("sglang", fail_times=4)
    good = CannedBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]},
                           router={"breaker_failures": 3, "breaker_cooldown_s": 30,
                                   "health_interval_s": 1e9}),
                    backends={"sglang": flaky, "local": good})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    for _ in range(3):  # three consecutive failures, each served by the fallback
        result = await engine.arun("q", SCHEMA)
        assert result.backend == "local"
        assert result.attempts[0].backend == "sglang" and not result.attempts[0].ok
        assert "BackendUnavailable" in result.attempts[0].error
    assert flaky.calls == 3 and engine.router.breaker("sglang").state == "open"
    result = await engine.arun("q", SCHEMA)
    assert flaky.calls == 3  # open: not called at all
    assert result.attempts[0] == BackendAttempt("sglang", skipped="circuit open")
    clock.now += 30  # half-open: one trial, which fails (fail_times was 4)
    await engine.arun("q", SCHEMA)
    assert flaky.calls == 4 and engine.router.breaker("sglang").state == "open"
    clock.now += 30  # half-open again: the trial succeeds and the breaker closes
    result = await engine.arun("q", SCHEMA)
    assert result.backend == "sglang" and result.attempts == [
        BackendAttempt("sglang", ok=True, latency_s=result.attempts[0].latency_s)]
    assert engine.router.breaker("sglang").state == "closed"
    await engine.aclose()


class TimingOutBackend(CannedBackend):
    """A healthy backend whose generations run past their deadline (a long answer)."""

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        raise BackendTimeout("deadline passed while decoding", self.name)


async def test_deadlines_passed_while_generating_do_not_open_the_breaker(
        tmp_path: Path) -> None:
    """Issue 24: three long generations timed out and opened the breaker of a healthy
    backend; every request after them failed at once. A timeout is no fault of the backend."""
    slow = TimingOutBackend("sglang")
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang", "fallback": ["sglang"]},
                           router={"breaker_failures": 1, "breaker_cooldown_s": 30}),
                    backends={"sglang": slow})
    for _ in range(3):
        with pytest.raises(BackendTimeout):
            await engine.arun("q", SCHEMA, use_cache=False)
    breaker = engine.router.breaker("sglang")
    assert slow.calls == 3 and breaker.state == "closed" and breaker.consecutive_failures == 0
    await engine.aclose()


async def test_the_last_backend_left_is_never_refused_by_its_breaker(tmp_path: Path) -> None:
    """An open breaker skips a backend while another is left to try; the chain's last
    candidate (the in-process backend, say) is let through as a half-open trial instead of
    failing every request for the cool-down."""
    down = CannedBackend("sglang", fail_times=10**6)
    last = CannedBackend("local", fail_times=1)
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang",
                                                  "fallback": ["sglang", "local"]},
                           router={"breaker_failures": 1, "breaker_cooldown_s": 30}),
                    backends={"sglang": down, "local": last})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    with pytest.raises(BackendUnavailable):  # both fail once: both breakers open
        await engine.arun("q", SCHEMA, use_cache=False)
    assert engine.router.breaker("local").state == "open"
    result = await engine.arun("q", SCHEMA, use_cache=False)  # no cool-down has passed
    assert result.backend == "local" and last.calls == 2 and down.calls == 1
    assert result.attempts[0] == BackendAttempt("sglang", skipped="circuit open")
    assert engine.router.breaker("local").state == "closed"  # the trial closed it
    streamed = [item async for item in engine.astream("q", SCHEMA)]
    assert streamed and down.calls == 1
    await engine.aclose()


# Fallback from dead servers -----------------------------------------------------------------
async def test_closed_port_falls_back_to_next_backend(tmp_path: Path) -> None:
    port = closed_port()
    engine = Engine(config(tmp_path, llm_backend={"provider": "vllm",
                                                  "fallback": ["vllm", "local"],
                                                  "timeout_s": 20},
                           vllm={"base_url": f"http://127.0.0.1:{port}", "model": "m",
                                 "retries": 0}),
                    backends={"local": CannedBackend("local")})
    start = time.monotonic()
    result = await engine.arun("q", SCHEMA)
    assert time.monotonic() - start < 20  # inside the request's deadline
    assert result.backend == "local" and result.value == {"ok": True}
    first = result.attempts[0]
    assert first.backend == "vllm" and not first.ok
    assert "BackendUnavailable" in first.error and str(port) in first.error
    assert result.attempts[1].ok
    await engine.aclose()


async def test_server_answering_500_falls_back(tmp_path: Path, server_500: str) -> None:
    engine = Engine(config(tmp_path, llm_backend={"provider": "vllm",
                                                  "fallback": ["vllm", "local"],
                                                  "timeout_s": 20},
                           vllm={"base_url": server_500, "model": "m", "retries": 1}),
                    backends={"local": CannedBackend("local")})
    result = await engine.arun("q", SCHEMA)
    assert result.backend == "local"
    assert result.attempts[0].backend == "vllm" and "500" in result.attempts[0].error
    await engine.aclose()


async def test_auto_skips_server_whose_health_probe_fails(tmp_path: Path,
                                                          server_500: str) -> None:
    port = closed_port()
    local = CannedBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto", "timeout_s": 20},
                           vllm={"base_url": server_500, "model": "m"},
                           sglang={"base_url": f"http://127.0.0.1:{port}", "model": "m"}),
                    backends={"local": local})
    result = await engine.arun("q", SCHEMA)
    assert result.backend == "local"
    assert [(a.backend, a.skipped) for a in result.attempts] == [
        ("vllm", "health probe failed"), ("sglang", "health probe failed"), ("local", None)]
    assert engine.router.order() == ["vllm", "sglang", "local"]  # ollama: no base_url
    await engine.aclose()


@pytest.mark.slow
async def test_dead_vllm_falls_back_to_embedded_tiny_model(tmp_path: Path,
                                                           tiny_model_dir: Path) -> None:
    engine = Engine(config(tmp_path, llm_backend={"provider": "vllm",
                                                  "fallback": ["vllm", "local"],
                                                  "timeout_s": 120},
                           vllm={"base_url": f"http://127.0.0.1:{closed_port()}",
                                 "model": "m", "retries": 0},
                           local={"model": str(tiny_model_dir)}))
    try:
        result = await engine.arun("q", SCHEMA, max_tokens=16)
    finally:
        await engine.aclose()
    assert result.backend == "local" and isinstance(result.value["ok"], bool)
    assert result.attempts[0].backend == "vllm" and not result.attempts[0].ok


# Deadline, health cache, capabilities ---------------------------------------------------------
async def test_deadline_bounds_the_whole_chain(tmp_path: Path) -> None:
    slow = CannedBackend("sglang", delay_s=5)
    nxt = CannedBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang",
                                                  "fallback": ["sglang", "local"],
                                                  "timeout_s": 0.3}),
                    backends={"sglang": slow, "local": nxt})
    with pytest.raises(BackendTimeout) as info:
        await engine.arun("q", SCHEMA)
    assert nxt.calls == 0  # no time left for the next backend
    trail = info.value.trail  # type: ignore[attr-defined]
    assert trail[0].backend == "sglang" and "BackendTimeout" in trail[0].error
    # An already-expired deadline tries nothing.
    request = engine.build_request("q", SCHEMA)
    request.deadline = time.monotonic() - 1
    with pytest.raises(BackendTimeout):
        await engine.router.agenerate(request)
    assert nxt.calls == 0 and slow.calls == 1
    await engine.aclose()


async def test_health_probes_are_cached(tmp_path: Path) -> None:
    sg = CannedBackend("sglang")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]},
                           router={"health_interval_s": 10}),
                    backends={"sglang": sg, "local": CannedBackend("local")})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    for _ in range(3):
        await engine.arun("q", SCHEMA)
    assert sg.probes == 1 and sg.calls == 3
    clock.now += 10
    sg.healthy = False
    result = await engine.arun("q", SCHEMA)
    assert sg.probes == 2 and result.backend == "local"
    assert result.attempts[0].skipped == "health probe failed"
    await engine.aclose()


async def test_backend_that_cannot_take_the_kind_is_skipped(tmp_path: Path) -> None:
    json_only = CannedBackend("sglang", kinds=frozenset({"json"}))
    local = CannedBackend("local", text="123")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]}),
                    backends={"sglang": json_only, "local": local})
    result = await engine.arun("q", Regex(r"\d+"))
    assert result.value == "123" and json_only.calls == 0
    assert result.attempts[0].skipped == "cannot constrain regex output"
    await engine.aclose()


async def test_every_backend_failing_raises_with_trail(tmp_path: Path) -> None:
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang",
                                                  "fallback": ["sglang", "local"]}),
                    backends={"sglang": CannedBackend("sglang", fail_times=9),
                              "local": CannedBackend("local", fail_times=9)})
    with pytest.raises(BackendUnavailable) as info:
        await engine.arun("q", SCHEMA)
    assert "every backend failed" in str(info.value)
    trail = info.value.trail  # type: ignore[attr-defined]
    assert [a.backend for a in trail] == ["sglang", "local"]
    assert engine.metrics.summary()["failures_by_error"] == {"BackendUnavailable": 1}
    await engine.aclose()


async def test_explicit_backend_has_no_fallback(tmp_path: Path) -> None:
    local = CannedBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]}),
                    backends={"sglang": CannedBackend("sglang", fail_times=1), "local": local})
    with pytest.raises(BackendUnavailable):
        await engine.arun("q", SCHEMA, backend="sglang")
    assert local.calls == 0
    await engine.aclose()


async def test_unknown_named_backend_is_a_config_error(tmp_path: Path) -> None:
    from structgen.errors import ConfigError

    engine = Engine(config(tmp_path), backends={"local": CannedBackend("local")})
    with pytest.raises(ConfigError, match="unknown backend"):
        await engine.arun("q", SCHEMA, backend="llamacpp")
    await engine.aclose()


# The half-open trial slot comes back whatever ends the trial ---------------------------------
class BrokenBackend(CannedBackend):
    """A backend with a bug: raises something that is not a BackendError."""

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        raise KeyError("choices")


class SlowProbeBackend(CannedBackend):
    """A backend whose health probe hangs (so a request can be cancelled inside it)."""

    async def health(self) -> bool:
        self.probes += 1
        await asyncio.sleep(60)
        return True


def _half_open(engine: Engine, name: str, clock: Clock) -> None:
    breaker = engine.router.breaker(name)
    for _ in range(breaker.failures_to_open):
        breaker.record_failure()
    assert breaker.state == "open"
    clock.now += breaker.cooldown_s
    assert breaker.state == "half_open"


async def test_non_backend_error_releases_the_trial_and_falls_back(tmp_path: Path) -> None:
    broken = BrokenBackend("sglang")
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang",
                                                  "fallback": ["sglang", "local"]},
                           router={"breaker_failures": 1, "breaker_cooldown_s": 30}),
                    backends={"sglang": broken, "local": CannedBackend("local")})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    _half_open(engine, "sglang", clock)
    result = await engine.arun("q", SCHEMA)  # the trial: the bug counts as a failure
    assert result.backend == "local" and broken.calls == 1
    assert "BackendProtocolError: [sglang] unexpected KeyError" in result.attempts[0].error
    breaker = engine.router.breaker("sglang")
    assert breaker.state == "open" and not breaker.trial_in_flight
    clock.now += 30  # the next cool-down ends: a new trial is let through
    await engine.arun("q", SCHEMA, use_cache=False)
    assert broken.calls == 2
    await engine.aclose()


def _half_open_engine(tmp_path: Path, provider: str, backend: Any) -> Engine:
    """An engine whose only backend, ``backend`` as sglang, has a half-open breaker."""
    engine = Engine(config(tmp_path, llm_backend={"provider": provider, "fallback": ["sglang"]},
                           router={"breaker_failures": 1, "breaker_cooldown_s": 30}),
                    backends={"sglang": backend})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    _half_open(engine, "sglang", clock)
    return engine


async def test_cancelled_trial_releases_the_slot(tmp_path: Path) -> None:
    slow = CannedBackend("sglang", delay_s=60)
    engine = _half_open_engine(tmp_path, "sglang", slow)
    task = asyncio.ensure_future(engine.arun("q", SCHEMA))
    while slow.calls == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.router.breaker("sglang").allow()  # still half-open, slot free again
    await engine.aclose()


async def test_cancelled_health_probe_releases_the_slot(tmp_path: Path) -> None:
    slow = SlowProbeBackend("sglang")
    engine = _half_open_engine(tmp_path, "auto", slow)
    task = asyncio.ensure_future(engine.arun("q", SCHEMA))
    while slow.probes == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    breaker = engine.router.breaker("sglang")
    assert not breaker.trial_in_flight and breaker.allow()
    await engine.aclose()


async def test_fallback_is_warned_once_per_state_change(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A request served by other than its first candidate is logged as a warning naming
    the backend, why and where it fell back: once while the backend stays down, again after
    it came back and went down again."""
    sg = CannedBackend("sglang", healthy=False)
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]},
                           router={"health_interval_s": 10}),
                    backends={"sglang": sg, "local": CannedBackend("local")})
    clock = Clock()
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "structgen.router"]

    with caplog.at_level(logging.INFO, logger="structgen"):
        for _ in range(3):
            assert (await engine.arun("q", SCHEMA)).backend == "local"
        assert warned() == ["structgen: backend 'sglang' did not answer (health probe "
                            "failed); fell back to 'local'"]
        clock.now += 10
        sg.healthy = True
        assert (await engine.arun("q", SCHEMA)).backend == "sglang"
        assert any("'sglang' answers again" in r.getMessage() for r in caplog.records)
        clock.now += 10
        sg.healthy = False
        assert (await engine.arun("q", SCHEMA)).backend == "local"
        assert len(warned()) == 2
    summary = engine.metrics.summary()
    assert summary["fallbacks"] == 4 and summary["fallbacks_from"] == {"sglang": 4}
    await engine.aclose()


async def test_a_kind_the_backend_cannot_take_is_no_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    json_only = CannedBackend("sglang", kinds=frozenset({"json"}))
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]}),
                    backends={"sglang": json_only, "local": CannedBackend("local", text="1")})
    with caplog.at_level(logging.WARNING, logger="structgen"):
        await engine.arun("q", Regex(r"\d"))
    assert not [r for r in caplog.records if r.name == "structgen.router"]
    await engine.aclose()


# Streams go down the same chain as calls -----------------------------------------------------
class DrippingBackend(CannedBackend):
    """Streams its text one character every ``gap_s`` and keeps the requests it was sent."""

    def __init__(self, name: str, text: str = '{"ok": true}', *, gap_s: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(name, text, **kwargs)
        self.gap_s = gap_s
        self.seen: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.seen.append(request)
        for char in self.text:
            await asyncio.sleep(self.gap_s)
            yield char


async def _streamed(engine: Engine, output: Any = SCHEMA, **kwargs: Any) -> Any:
    items = [item async for item in engine.astream("q", output, final_result=True, **kwargs)]
    return items[-1]


async def test_a_stream_ends_at_the_request_deadline(tmp_path: Path) -> None:
    slow = DrippingBackend("sglang", gap_s=0.1)  # 12 characters: 1.2 s
    engine = Engine(config(tmp_path, llm_backend={"provider": "sglang", "fallback": ["sglang"],
                                                  "timeout_s": 0.3}),
                    backends={"sglang": slow})
    with pytest.raises(BackendTimeout):
        await _streamed(engine)
    # a deadline is the request's length, not the backend's fault
    assert engine.router.breaker("sglang").consecutive_failures == 0
    assert engine.metrics.summary()["failures_by_error"] == {"BackendTimeout": 1}
    await engine.aclose()


async def test_a_stream_skips_a_backend_whose_health_probe_fails(tmp_path: Path) -> None:
    sick = DrippingBackend("sglang", healthy=False)
    local = DrippingBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "auto",
                                                  "fallback": ["sglang", "local"]}),
                    backends={"sglang": sick, "local": local})
    result = await _streamed(engine)
    assert result.backend == "local" and sick.probes == 1 and sick.calls == 0
    assert result.attempts[0].skipped == "health probe failed"
    await engine.aclose()


async def test_a_stream_is_in_flight_until_it_ends(tmp_path: Path) -> None:
    engine = Engine(config(tmp_path), backends={"local": DrippingBackend("local")})
    items = engine.astream("q", SCHEMA)
    await anext(items)
    assert engine.metrics._inflight == 1
    await items.aclose()  # type: ignore[attr-defined]
    assert engine.metrics._inflight == 0
    await _streamed(engine, use_cache=False)
    assert engine.metrics._inflight == 0 and engine.metrics.summary()["inflight_peak"] == 1
    await engine.aclose()


async def test_a_stream_to_a_reasoning_model_thinks_and_keeps_it_apart(tmp_path: Path) -> None:
    thinker = DrippingBackend("local", '<think>{"ok": false} is wrong</think>{"ok": true}')
    engine = Engine(config(tmp_path), backends={"local": thinker})
    result = await _streamed(engine, model="qwq-32b")
    assert thinker.seen[0].reasoning  # turned on per backend, as for a call
    assert result.value == {"ok": True} and result.reasoning_text == '{"ok": false} is wrong'
    assert result.attempts[0].reasoning
    await engine.aclose()


class NeedsAnExtra(BackendBase, name="needs-an-extra"):
    """A backend whose optional dependency is not installed (as the embedded backend
    without the [local] extra): creating it raises ImportError."""

    def __init__(self, config: Config) -> None:
        import structgen_extra_that_is_not_installed  # type: ignore[import-not-found]  # noqa: F401


async def test_a_stream_skips_a_backend_that_cannot_be_imported(tmp_path: Path) -> None:
    local = DrippingBackend("local")
    engine = Engine(config(tmp_path, llm_backend={"provider": "needs-an-extra",
                                                  "fallback": ["needs-an-extra", "local"]}),
                    backends={"local": local})
    result = await _streamed(engine)
    assert result.backend == "local"
    assert result.attempts[0].skipped.startswith("not available: No module named")
    await engine.aclose()
