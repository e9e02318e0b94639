"""Metrics: counters move with real requests, the state file merges, ``structgen stats``."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.cli import app
from structgen.config import Config, MetricsConfig
from structgen.engine import Engine
from structgen.errors import BackendUnavailable, ValidationFailed
from structgen.metrics import Metrics, load_state, percentile
from structgen.schema import compile_output
from structgen.types import StructuredResult

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


class Canned(BackendBase):
    """A real Backend answering the next canned text (after an optional delay)."""

    name = "local"

    def __init__(self, *texts: str, delay_s: float = 0.0) -> None:
        self.texts = list(texts)
        self.delay_s = delay_s

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(self.delay_s)
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return GenerationResult(text=text, backend="local", completion_tokens=10,
                                latency_s=0.5, ttft_s=0.1)

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        yield (await self.agenerate(request)).text

    async def health(self) -> bool:
        return True


def engine_with(tmp_path: Path, backend: Canned, **metrics: Any) -> Engine:
    cfg = Config.from_dict({
        "llm_backend": {"provider": "local", "fallback": ["local"]},
        "cache": {"backend": "disk", "dir": str(tmp_path / "cache")},
        "repair": {"max_retries": 0},
        "metrics": {"state_file": str(tmp_path / "metrics.json"), **metrics}})
    return Engine(cfg, backends={"local": backend})


async def test_counters_move_with_requests(tmp_path: Path) -> None:
    backend = Canned('{"ok": true}', '{"ok": "true"}', '{"ok": 3}', '{"ok": false}')
    engine = engine_with(tmp_path, backend)
    await engine.arun("first", SCHEMA)  # valid first try
    coerced = await engine.arun("second", SCHEMA)  # "true" → true
    # what coercion changed reaches the result (it used to be computed, then dropped)
    assert [(r.stage, r.changes) for r in coerced.repairs] == [
        ("coerce", ("/ok: 'true' → True (boolean)",))]
    try:
        await engine.arun("third", SCHEMA)  # 3 is not a boolean: fails
    except ValidationFailed:
        pass
    else:
        raise AssertionError("expected ValidationFailed")
    multi = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}]
    await engine.arun(multi, SCHEMA)
    hit = await engine.arun("first", SCHEMA)
    assert hit.cached

    reg = engine.metrics.registry
    assert reg.get_sample_value("structgen_requests_total",
                                {"backend": "local", "kind": "json"}) == 3
    assert reg.get_sample_value("structgen_first_try_valid_total") == 2
    assert reg.get_sample_value("structgen_repairs_total", {"stage": "coerce",
                                                            "fixed": "true"}) == 1
    assert reg.get_sample_value("structgen_cache_hits_total") == 1
    assert reg.get_sample_value("structgen_failures_total", {"error": "ValidationFailed"}) == 1
    assert reg.get_sample_value("structgen_multi_turn_calls_total") == 1
    assert reg.get_sample_value("structgen_structured_calls_total") == 4
    assert reg.get_sample_value("structgen_request_latency_seconds_count",
                                {"backend": "local"}) == 3

    s = engine.metrics.summary()
    assert (s["calls"], s["requests"], s["failures"], s["cache_hits"]) == (4, 3, 1, 1)
    assert s["first_try_valid_rate"] == 2 / 4
    assert s["repairs"]["coerce"]["fixed"] == 1
    assert s["multi_turn_share"] == 1 / 4 and s["structured_share"] == 1.0
    assert s["ttft_p50_s"] == 0.1 and s["tokens_per_s_p50"] == 20.0
    assert s["by_backend"] == {"local": 3} and s["by_kind"] == {"json": 3}
    await engine.aclose()


def test_structured_share_counts_plain_text_calls(tmp_path: Path) -> None:
    """Plain-text calls (Engine.run_text) count as unstructured calls: the share is a real
    mix, and the validity rates stay over the structured calls only."""
    backend = Canned('{"ok": true}', '{"ok": "yes"}', "The diff adds a --verbose flag.",
                     '{"ok": false}', "Looks good to me.")
    engine = engine_with(tmp_path, backend)
    assert engine.run("is it ok?", SCHEMA).value == {"ok": True}
    try:
        engine.run("and now?", SCHEMA)  # "yes" is not a boolean coerce knows
    except ValidationFailed:
        pass
    else:
        raise AssertionError("expected ValidationFailed")
    text = engine.run_text("Summarise the diff in one line.", max_tokens=32)
    assert text.value == text.raw_text == "The diff adds a --verbose flag."
    assert text.backend == "local" and not text.cached
    assert engine.run("and this one?", SCHEMA).value == {"ok": False}
    multi = [{"role": "user", "content": "Review it."}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "In one sentence."}]
    assert engine.run_text(multi).value == "Looks good to me."

    reg = engine.metrics.registry
    assert reg.get_sample_value("structgen_structured_calls_total") == 3
    assert reg.get_sample_value("structgen_requests_total",
                                {"backend": "local", "kind": "none"}) == 2
    assert reg.get_sample_value("structgen_requests_total",
                                {"backend": "local", "kind": "json"}) == 2
    assert reg.get_sample_value("structgen_first_try_valid_total") == 2
    s = engine.metrics.summary()
    assert (s["calls"], s["requests"], s["failures"]) == (5, 4, 1)
    assert s["structured_share"] == 3 / 5 and s["multi_turn_share"] == 1 / 5
    assert s["first_try_valid_rate"] == 2 / 3  # the text calls are not judged
    assert s["by_kind"] == {"json": 2, "none": 2}
    engine.close()
    engine.metrics.flush()
    out = _stats(tmp_path / "metrics.json")
    assert "structured 60% (limit 30%)" in out and "multi-turn 20% (limit 50%)" in out


async def test_in_flight_peak_and_fallback_count(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, Canned('{"ok": true}', delay_s=0.2))
    await asyncio.gather(*(engine.arun(f"q{i}", SCHEMA, use_cache=False) for i in range(5)))
    assert engine.metrics.summary()["inflight_peak"] == 5
    assert engine.metrics.registry.get_sample_value("structgen_in_flight") == 0
    assert engine.metrics.summary()["fallbacks"] == 0
    await engine.aclose()


def _record(metrics: Metrics, n: int, *, multi: bool, latency: float) -> None:
    messages = ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}] if multi
                else [{"role": "user", "content": "a"}])
    request = GenerationRequest(messages, compile_output(SCHEMA))  # type: ignore[arg-type]
    for _ in range(n):
        gen = GenerationResult('{"ok": true}', "ollama", latency_s=latency)
        result = StructuredResult(value={"ok": True}, raw_text=gen.text, backend="ollama",
                                  latency_s=latency)
        metrics.record(request, gen, result)


def test_state_file_merges_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    for _ in range(2):  # two "processes" writing the same file
        m = Metrics(MetricsConfig(state_file=str(path)))
        _record(m, 3, multi=False, latency=0.5)
        m.flush()
        m.flush()  # nothing new: must not double count
    state = load_state(path)
    assert state["counts"]["requests"] == 6 and state["by_backend"] == {"ollama": 6}
    assert len(state["samples"]["latency_s"]) == 6
    assert not list(tmp_path.glob("*.tmp"))  # atomic replace left no temp file


def test_disabled_metrics_record_nothing(tmp_path: Path) -> None:
    m = Metrics(MetricsConfig(enabled=False, state_file=str(tmp_path / "m.json")))
    _record(m, 2, multi=True, latency=1.0)
    m.flush()
    assert m.summary()["calls"] == 0 and not (tmp_path / "m.json").exists()


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([], 50) is None


def _stats(path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["stats", "--state-file", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_recommends_sglang_for_multi_turn_structured(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    m = Metrics(MetricsConfig(state_file=str(path)))
    _record(m, 30, multi=True, latency=0.4)
    _record(m, 5, multi=False, latency=0.4)
    m.flush()
    out = _stats(path)
    assert "recommendation: consider SGLang" in out
    assert "multi-turn 86% (limit 50%)" in out and "structured 100%" in out
    data = json.loads(_stats(path, "--json"))
    assert data["recommendation"]["advice"] == "consider SGLang"
    assert data["calls"] == 35 and data["recommendation"]["criteria"]["multi_turn_share"]["over"]


def test_stats_recommends_vllm_for_slow_single_turn(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    m = Metrics(MetricsConfig(state_file=str(path)))
    _record(m, 25, multi=False, latency=6.0)
    m.flush()
    out = _stats(path)
    assert "recommendation: consider vLLM" in out and "P99 6.00 s (limit 5 s)" in out


def test_stats_stays_on_ollama(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    m = Metrics(MetricsConfig(state_file=str(path)))
    _record(m, 25, multi=False, latency=0.3)
    m.flush()
    assert "recommendation: stay on Ollama: no switch criterion" in _stats(path)
    # Too few calls to judge, even when the criteria would say otherwise.
    few = tmp_path / "few.json"
    m2 = Metrics(MetricsConfig(state_file=str(few)))
    _record(m2, 3, multi=True, latency=9.0)
    m2.flush()
    assert "recommendation: none yet: 3 call(s) recorded; 20 are needed to judge" in _stats(few)


def test_stats_without_data_gives_no_advice_and_no_made_up_rates(tmp_path: Path) -> None:
    """No calls: no advice, rates shown as "-" (not 0 %), and tidy lines."""
    out = _stats(tmp_path / "missing.json")
    assert "recommendation: none yet: 0 call(s) recorded" in out
    assert "Ollama" not in out and "vLLM" not in out.split("recommendation")[1]
    assert "calls              0 (0 ok, 0 failed)\n" in out
    assert "valid first try    -\n" in out and "structured share   -\n" in out
    assert "?)" not in out and "(>" not in out
    data = json.loads(_stats(tmp_path / "missing.json", "--json"))
    assert data["first_try_valid_rate"] is None and data["recommendation"]["advice"] == "none yet"


def test_a_model_load_is_kept_out_of_the_latency(tmp_path: Path) -> None:
    """A request that waited for a model load (stats["model_load_s"], set by the embedded
    backend) records its latency without it; the load is its own figure, and a one-off
    load does not make the P99 (nor advise a serving engine)."""
    path = tmp_path / "m.json"
    m = Metrics(MetricsConfig(state_file=str(path)))
    request = GenerationRequest([{"role": "user", "content": "a"}],  # type: ignore[arg-type]
                                compile_output(SCHEMA))
    for i in range(25):
        gen = GenerationResult('{"ok": true}', "local", latency_s=0.2,
                               stats={"model_load_s": 6.5} if i == 0 else {})
        result = StructuredResult(value={"ok": True}, raw_text=gen.text, backend="local",
                                  latency_s=6.7 if i == 0 else 0.2)
        m.record(request, gen, result)
    m.flush()
    data = json.loads(_stats(path, "--json"))
    assert data["latency_p99_s"] == pytest.approx(0.2)
    assert data["model_loads"] == 1 and data["model_load_p50_s"] == 6.5
    assert data["recommendation"]["advice"] == "stay on Ollama"
    assert "model loads        1 (p50 6.50 s, not in the latency)" in _stats(path)


def test_failures_are_listed_after_a_colon(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    m = Metrics(MetricsConfig(state_file=str(path)))
    request = GenerationRequest([{"role": "user", "content": "a"}],  # type: ignore[arg-type]
                                compile_output(SCHEMA))
    m.record_failure(request, BackendUnavailable("down"), 0.1)
    m.flush()
    assert "calls              1 (0 ok, 1 failed: BackendUnavailable 1)\n" in _stats(path)


def test_metrics_http_exposition(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    m = Metrics(MetricsConfig(state_file=str(tmp_path / "m.json"), port=port))
    _record(m, 2, multi=False, latency=0.2)
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'structgen_requests_total{backend="ollama",kind="json"} 2.0' in body
