"""Routed requests: a fallback's cached answer is not served once the preferred backend is
back (issue 11, item 11). The backends are real Backend implementations answering canned
text; the router, engine and cache under test are the real ones, on a clock moved by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendUnavailable
from structgen.router import Router

SCHEMA = {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}


class Switchable(BackendBase):
    """Answers ``{"who": <name>}`` while up; refuses (and fails its probe) while down."""

    def __init__(self, name: str, *, up: bool = True) -> None:
        self.name = name
        self.up = up
        self.calls = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if not self.up:
            raise BackendUnavailable("connection refused", self.name)
        return GenerationResult(text=f'{{"who":"{self.name}"}}', backend=self.name,
                                model=f"{self.name}-model")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        yield (await self.agenerate(request)).text

    async def health(self) -> bool:
        return self.up


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine(tmp_path: Path, vllm: Switchable, local: Switchable, clock: Clock,
            **router: object) -> Engine:
    cfg = Config.from_dict({
        "llm_backend": {"provider": "auto", "fallback": ["vllm", "local"]},
        # configured as in production (the instance handed over below serves it)
        "vllm": {"base_url": "http://127.0.0.1:9", "model": "served-model"},
        "cache": {"dir": str(tmp_path / "results")},
        "router": {"health_interval_s": 10, **router},
        "metrics": {"state_file": str(tmp_path / "metrics.json")}})
    engine = Engine(cfg, backends={"vllm": vllm, "local": local})
    engine.router = Router(engine.config, engine.pool, in_flight=engine.metrics.in_flight,
                           clock=clock)
    return engine


def test_fallback_answer_not_served_after_preferred_backend_recovers(tmp_path: Path) -> None:
    vllm, local, clock = Switchable("vllm", up=False), Switchable("local"), Clock()
    engine = _engine(tmp_path, vllm, local, clock)

    first = engine.run("q", SCHEMA)
    assert (first.value, first.backend, first.cached) == ({"who": "local"}, "local", False)
    # vLLM is still known to be down: the fallback's answer is a hit.
    again = engine.run("q", SCHEMA)
    assert again.cached and again.value == {"who": "local"} and local.calls == 1

    vllm.up = True
    clock.now += 11  # the failed probe is stale: vLLM may be back
    recovered = engine.run("q", SCHEMA)
    assert (recovered.value, recovered.backend, recovered.cached) == (
        {"who": "vllm"}, "vllm", False)
    hit = engine.run("q", SCHEMA)
    assert hit.cached and hit.value == {"who": "vllm"} and hit.backend == "vllm"
    assert (vllm.calls, local.calls) == (1, 1)
    engine.close()


def test_open_circuit_keeps_the_fallback_answer_until_cooldown(tmp_path: Path) -> None:
    vllm, local, clock = Switchable("vllm", up=False), Switchable("local"), Clock()
    engine = _engine(tmp_path, vllm, local, clock, breaker_failures=1, breaker_cooldown_s=30)
    engine.config.llm_backend.provider = "vllm"  # no health probes: only the breaker knows
    first = engine.run("q", SCHEMA)
    assert first.backend == "local" and vllm.calls == 1
    assert engine.run("q", SCHEMA).cached  # circuit open: vLLM is known to be down
    vllm.up = True
    clock.now += 31  # half-open: vLLM gets its trial request
    back = engine.run("q", SCHEMA)
    assert back.backend == "vllm" and not back.cached and vllm.calls == 2
    assert engine.run("q", SCHEMA).value == {"who": "vllm"}
    engine.close()


def test_explicit_backend_and_direct_answers_are_plain_hits(tmp_path: Path) -> None:
    vllm, local, clock = Switchable("vllm"), Switchable("local"), Clock()
    engine = _engine(tmp_path, vllm, local, clock)
    assert engine.run("q", SCHEMA).backend == "vllm"
    vllm.up = False
    clock.now += 11
    # vLLM answered itself: nothing was passed over, so its entry stays good.
    assert engine.run("q", SCHEMA).cached
    assert engine.run("q", SCHEMA, backend="local").value == {"who": "local"}
    assert engine.run("q", SCHEMA, backend="local").cached
    assert (vllm.calls, local.calls) == (1, 1)
    engine.close()


def test_backends_given_to_the_engine_key_the_cache_as_the_router_routes(
        tmp_path: Path) -> None:
    # sglang has no base_url, but a backend handed to Engine(backends=...) is configured
    # for the router: its chain is sglang then local, so it must not share the key of an
    # engine whose chain is local alone (a local answer would be served for sglang's).
    cfg = Config.from_dict({
        "llm_backend": {"provider": "auto", "fallback": ["sglang", "local"]},
        "cache": {"dir": str(tmp_path / "results")},
        "metrics": {"state_file": str(tmp_path / "metrics.json")}})
    alone = Engine(cfg, backends={"local": Switchable("local")})
    given = Engine(cfg, backends={"sglang": Switchable("sglang"), "local": Switchable("local")})
    assert alone.run("q", SCHEMA).value == {"who": "local"}
    assert given.router.order() == ["sglang", "local"]
    result = given.run("q", SCHEMA)
    assert (result.value, result.backend, result.cached) == ({"who": "sglang"}, "sglang", False)
    alone.close()
    given.close()
