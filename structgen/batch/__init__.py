"""Many requests in, validated answers out: :func:`generate_batch` / :func:`agenerate_batch`.

>>> from structgen import generate_batch
>>> intents = generate_batch(["Add a --verbose flag", "Fix app.py"], Intent)  # doctest: +SKIP
>>> [x if isinstance(x, StructgenError) else x.kind for x in intents]  # doctest: +SKIP

Every item goes through one :class:`~structgen.engine.Engine` (``Engine.arun``: the result
cache, routing, validation and repair as for one call), at most ``concurrency`` at once, so
the embedded backend batches them and servers see concurrent requests. The results come
back in input order; an item that fails is its typed :class:`StructgenError` in its place,
and the other items go on. The command line's ``structgen batch`` (OpenAI batch files,
resumable) runs its lines through :func:`run_requests` too: see :mod:`structgen.batch.job`.
"""

from __future__ import annotations

import asyncio
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structgen.backends.base import run_sync
from structgen.config import Config
from structgen.engine import CallOptions, Engine, engine_for
from structgen.errors import BatchItemError, StructgenError
from structgen.types import StructuredResult

__all__ = [
    "BatchItemError",
    "BatchRequest",
    "BatchSummary",
    "ProgressFn",
    "agenerate_batch",
    "cache_key",
    "default_concurrency",
    "generate_batch",
    "run_requests",
]


@dataclass
class BatchRequest:
    """One item of a batch: what :meth:`Engine.arun` takes. ``text=True`` asks for plain
    text (``Engine.arun_text``: no output constraint, nothing validated or cached)."""

    prompt: str | Sequence[Any]
    output: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    text: bool = False


@dataclass
class BatchSummary:
    """Running counts of a batch (passed to the progress callback after every item, and
    returned at the end by the file job)."""

    total: int
    done: int = 0
    valid: int = 0  # answered, first try or repaired
    repaired: int = 0
    failed: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    def add(self, result: StructuredResult | StructgenError) -> None:
        self.done += 1
        self.elapsed_s = time.perf_counter() - self.started
        if isinstance(result, StructgenError):
            self.failed += 1
            return
        self.count(True, repaired=result.repaired, cached=result.cached,
                   prompt_tokens=result.usage.prompt_tokens,
                   completion_tokens=result.usage.completion_tokens, finished=False)

    def count(self, valid: bool, *, repaired: bool = False, cached: bool = False,
              prompt_tokens: int = 0, completion_tokens: int = 0,
              finished: bool = True) -> None:
        """Count one item from its figures (a result that came back from elsewhere)."""
        if finished:
            self.done += 1
            self.elapsed_s = time.perf_counter() - self.started
        if not valid:
            self.failed += 1
            return
        self.valid += 1
        self.repaired += repaired
        self.cache_hits += cached
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def rate(self) -> float:
        """Items finished per second of wall-clock time."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        return (f"{self.done}/{self.total} in {self.elapsed_s:.1f}s ({self.rate():.2f}/s): "
                f"{self.valid} valid ({self.repaired} repaired), {self.failed} failed, "
                f"{self.cache_hits} cache hits, {self.prompt_tokens} prompt + "
                f"{self.completion_tokens} completion tokens")


ProgressFn = Callable[[BatchSummary], None]
DoneFn = Callable[[int, StructuredResult | StructgenError], None]


async def run_one(engine: Engine, request: BatchRequest) -> StructuredResult | StructgenError:
    """One item through ``engine``: its result, or the error it failed with (never raised)."""
    try:
        if request.text:
            return await engine.arun_text(request.prompt, **request.options)
        return await engine.arun(request.prompt, request.output, **request.options)
    except StructgenError as exc:
        return exc
    except Exception as exc:  # one item's bug must not fail the others; its cause stays
        error = BatchItemError(f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error


async def run_requests(engine: Engine, requests: Sequence[BatchRequest], *,
                       concurrency: int | None = None, on_done: DoneFn | None = None,
                       on_progress: ProgressFn | None = None,
                       summary: BatchSummary | None = None
                       ) -> list[StructuredResult | StructgenError]:
    """Run ``requests`` through ``engine``, at most ``concurrency`` at once (None:
    :func:`default_concurrency`); the results in input order. ``on_done(index, result)`` is
    called as each finishes (before ``on_progress``), so a caller can write it out before
    the next one lands. The counts go into ``summary`` when given (a caller's running
    totals), else a new one.

    Requests with the same result-cache key run once: a repeat waits for the first and is
    then answered from the cache (a cache hit), rather than generated again beside it.
    """
    jobs = default_concurrency(engine) if concurrency is None else concurrency
    if jobs < 1:
        raise StructgenError(f"concurrency must be >= 1, not {jobs}")
    counts = summary if summary is not None else BatchSummary(total=len(requests))
    sem = asyncio.Semaphore(jobs)
    keys = [cache_key(engine, r) for r in requests]
    first: dict[str, asyncio.Event] = {}  # per key, set when its first request has finished
    leads: list[bool] = []
    for key in keys:
        leads.append(key is not None and key not in first)
        if key is not None:
            first.setdefault(key, asyncio.Event())

    async def one(index: int, request: BatchRequest) -> StructuredResult | StructgenError:
        key = keys[index]
        if key is not None and not leads[index]:
            await first[key].wait()  # outside the semaphore: a repeat holds no slot
        try:
            async with sem:
                result = await run_one(engine, request)
        finally:
            if key is not None and leads[index]:
                first[key].set()
        if on_done is not None:
            on_done(index, result)
        counts.add(result)
        if on_progress is not None:
            on_progress(counts)
        return result

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
    finally:
        flush = getattr(engine.cache, "flush", None)  # as warmup's close_run
        if flush is not None:
            flush()


def default_concurrency(engine: Engine) -> int:
    """Requests in flight by default: two embedded batches' worth (``[local] max_batch``),
    at least 8. With exactly one batch's worth, the next batch could only be gathered from
    requests that start after the last one ends; with two, it is waiting when it does."""
    return max(8, 2 * engine.config.local.max_batch)


def cache_key(engine: Engine, request: BatchRequest) -> str | None:
    """The result-cache key ``request`` will be looked up under, or None when it is not
    cached (plain text, ``use_cache=False``, sampled without a seed, or a request that
    will fail: it fails on its own)."""
    options = request.options
    if request.text or options.get("use_cache") is False:
        return None
    build = {k: v for k, v in options.items()
             if k not in ("backend", "use_cache", "allow_truncated")}
    try:
        built = engine.build_request(request.prompt, request.output, **build)
        if not engine.cache.cacheable(built):
            return None
        return engine.cache_key(built, options.get("backend"))
    except Exception:  # the request's own run reports it, typed
        return None


def _requests(items: Sequence[str | Sequence[Any]], output: Any,
              options: dict[str, Any]) -> list[BatchRequest]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise StructgenError("items must be a list of prompts or message lists")
    return [BatchRequest(item, output, dict(options)) for item in items]


async def agenerate_batch(items: Sequence[str | Sequence[Any]], output: Any = None, *,
                          concurrency: int | None = None, on_progress: ProgressFn | None = None,
                          config: Config | str | Path | None = None,
                          **options: typing.Unpack[CallOptions]) -> list[Any]:
    """Async twin of :func:`generate_batch`."""
    engine = engine_for(config)
    results = await run_requests(engine, _requests(items, output, dict(options)),
                                 concurrency=concurrency, on_progress=on_progress)
    return [r if isinstance(r, StructgenError) else r.value for r in results]


def generate_batch(items: Sequence[str | Sequence[Any]], output: Any = None, *,
                   concurrency: int | None = None, on_progress: ProgressFn | None = None,
                   config: Config | str | Path | None = None,
                   **options: typing.Unpack[CallOptions]) -> list[Any]:
    """Generate a validated object for each prompt (or message list) in ``items``.

    >>> out = generate_batch(["Fix app.py", "Add a flag"], Intent, concurrency=4)  # doctest: +SKIP

    ``output`` and the keywords are :func:`~structgen.generate_structured`'s, the same for
    every item. Returns a list in input order: each item's value, or the
    :class:`StructgenError` it failed with (one bad item never fails the batch). At most
    ``concurrency`` items (default: :func:`default_concurrency`) run at once through the
    one engine of ``config`` (the embedded backend batches them; answers go through the
    result cache, so a repeated item and a re-run are served from it). ``on_progress(summary)`` is called after each item with the running
    :class:`BatchSummary`.
    """
    return typing.cast(list[Any], run_sync(agenerate_batch(
        items, output, concurrency=concurrency, on_progress=on_progress, config=config,
        **options)))
