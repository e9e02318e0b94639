"""generate_batch / agenerate_batch on the tiny model: input order, per-item errors, bounded
concurrency, progress and the result cache."""

from __future__ import annotations

import asyncio

from structgen import (
    StructgenError,
    agenerate_batch,
    generate_batch,
)
from structgen.batch import BatchRequest, BatchSummary, run_requests
from structgen.config import Config
from structgen.engine import Engine
from structgen.types import Regex

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
