"""generate_batch / agenerate_batch on the tiny model: input order, per-item errors, bounded
concurrency, progress and the result cache."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from structgen import (
    StructgenError,
    agenerate_batch,
    generate_batch,
)
from structgen.batch import BatchRequest, BatchSummary, run_requests
from structgen.config import Config
from structgen.engine import Engine
from structgen.types import Regex

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                           "n": {"type": "integer", "minimum": 0,
                                                 "maximum": 9}},
          "required": ["kind", "n"], "additionalProperties": False}


def test_results_come_back_in_input_order_bounded(tiny_config: Config) -> None:
    engine = Engine(tiny_config)
    # each item is forced to its own answer, so the order is checked whatever the model does
    requests = [BatchRequest(f"item {i}", Regex(f"item{i}"), {"max_tokens": 16})
                for i in range(10)]
    finished: list[int] = []
    results = asyncio.run(run_requests(engine, requests, concurrency=3,
                                       on_done=lambda i, _r: finished.append(i)))
    assert [r.value for r in results] == [f"item{i}" for i in range(10)]  # type: ignore[union-attr]
    assert sorted(finished) == list(range(10))
    assert engine.metrics.summary()["inflight_peak"] == 3  # bounded, and used
    engine.close()


def test_one_bad_item_never_fails_the_batch(tiny_config: Config) -> None:
    seen: list[BatchSummary] = []
    counts: list[int] = []

    def progress(summary: BatchSummary) -> None:  # the running summary, updated in place
        seen.append(summary)
        counts.append(summary.done)

    items = ["first", [], [{"role": "oracle", "content": "x"}],
             [{"role": "system", "content": "terse"}, {"role": "user", "content": "last"}]]
    out = generate_batch(items, SCHEMA, concurrency=2, on_progress=progress,
                         config=tiny_config, max_tokens=48)
    assert len(out) == 4
    assert isinstance(out[1], StructgenError) and "non-empty" in str(out[1])
    assert isinstance(out[2], StructgenError) and "role" in str(out[2])
    for value in (out[0], out[3]):
        assert isinstance(value, dict) and value["kind"] in "abc" and 0 <= value["n"] <= 9
    assert counts == [1, 2, 3, 4]
    final = seen[-1]
    assert (final.total, final.valid, final.failed, final.cache_hits) == (4, 2, 2, 0)
    assert final.completion_tokens > 0

    # the same batch again is served from the result cache, with the same values
    seen.clear()
    again = asyncio.run(agenerate_batch(items, SCHEMA, concurrency=2, on_progress=seen.append,
                                        config=tiny_config, max_tokens=48))
    assert again[0] == out[0] and again[3] == out[3]
    assert (seen[-1].valid, seen[-1].cache_hits, seen[-1].failed) == (2, 2, 2)


def test_bad_arguments_are_typed_errors(tiny_config: Config) -> None:
    for items, kwargs in (("one prompt", {}), (["x"], {"concurrency": 0})):
        try:
            generate_batch(items, SCHEMA, config=tiny_config, **kwargs)  # type: ignore[arg-type]
        except StructgenError:
            continue
        raise AssertionError(f"no error for {items!r} {kwargs}")


def test_batch_uses_the_engines_public_way_to_its_shared_engine(tiny_config: Config) -> None:
    # generate_batch(config=...) runs on the engine generate_structured(config=...) uses,
    # reached through engine.py's public name, not a private one
    from structgen.engine import engine_for

    for path in (ROOT / "structgen" / "batch").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "structgen.engine":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from structgen.engine"
    engine = engine_for(tiny_config)
    assert engine_for(tiny_config) is engine
    before = engine.metrics.summary()["requests"]
    generate_batch(["one", "two"], Regex("ok"), config=tiny_config, max_tokens=4)
    assert engine.metrics.summary()["requests"] == before + 2


def test_repeated_items_are_generated_once_and_the_repeats_served_from_the_cache(
        tiny_config: Config) -> None:
    engine = Engine(tiny_config)
    # all six in flight at once: without the wait for the first of each, every repeat
    # would miss the cache and be generated beside it
    requests = [BatchRequest(f"item {i % 2}", SCHEMA, {"max_tokens": 48}) for i in range(6)]
    requests.append(BatchRequest("item 0", SCHEMA, {"max_tokens": 48, "use_cache": False}))
    summary = BatchSummary(total=len(requests))
    results = asyncio.run(run_requests(engine, requests, concurrency=7, summary=summary))
    values = [r.value for r in results]  # type: ignore[union-attr]
    assert values[0::2][:3] == [values[0]] * 3 and values[1::2] == [values[1]] * 3
    assert [r.cached for r in results] == [  # type: ignore[union-attr]
        False, False, True, True, True, True, False]
    assert summary.cache_hits == 4
    engine.close()


def test_default_concurrency_keeps_a_second_embedded_batch_waiting(
        tiny_config: Config) -> None:
    tiny_config.local.max_batch = 6
    engine = Engine(tiny_config)
    requests = [BatchRequest(f"item {i}", Regex(f"item{i}"), {"max_tokens": 16})
                for i in range(14)]
    asyncio.run(run_requests(engine, requests))
    # two batches' worth in flight: the next batch is queued while one decodes
    assert engine.metrics.summary()["inflight_peak"] == 12
    engine.close()
