"""The engine: one request through the whole pipeline.

    compile output spec → cache lookup → router (backend + fallback) → validate/repair
    → cache store → metrics → validated value

Keep one :class:`Engine` per process (it owns backends, caches and metrics);
``generate_structured`` uses a default engine built from ``config.toml``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import threading
import time
import typing
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from structgen.backends import Backend, GenerationRequest, GenerationResult
from structgen.backends.base import Finished
from structgen.backends.capabilities import unenforced
from structgen.backends.pool import BackendPool
from structgen.cache import NullCache, ResultCache, open_result_cache
from structgen.config import Config
from structgen.constrain.grammar_cache import default_grammar_cache, text_store
from structgen.errors import CacheError, StructgenError, ValidationFailed
from structgen.metrics import Metrics
from structgen.portal import run_sync
from structgen.repair import Repaired, finalize
from structgen.router import Router
from structgen.schema import CompiledOutput, compile_output
from structgen.schema.layout import choose_layout
from structgen.schema.limits import DEFAULT_LIMITS, Limits
from structgen.schema.support import PostEnforced
from structgen.schema.toolset import TextStore, envelope_output, tool_turn, tool_value
from structgen.streaming import partial_instance, partial_tool_value, partial_value
from structgen.types import (
    SAMPLING_KEYS,
    BackendAttempt,
    Choice,
    Grammar,
    RawToolCall,
    Regex,
    Sampling,
    StructuredResult,
    ToolCall,
    Usage,
    call_envelope,
    normalize_messages,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    """Holds config, backends, caches and metrics. Thread-safe for concurrent async use."""

    def __init__(self, config: Config | None = None, *,
                 backends: dict[str, Backend] | None = None) -> None:
        self.config = config or Config.load()
        # [limits]: carried by every output this engine compiles (validation reads them there)
        self.limits = self.config.limits.parse_limits()
        self.pool = BackendPool(self.config, backends)
        self.cache = _open_cache(self.config)
        self.metrics = Metrics(self.config.metrics)
        self.router = Router(self.config, self.pool, in_flight=self.metrics.in_flight)
        # Cache reads and writes leave the event loop for one thread of their own: a store
        # holds a connection per thread (diskcache: sqlite + its WAL), so one thread keeps
        # that to one connection whatever else the default executor runs.
        self._cache_thread: ThreadPoolExecutor | None = None
        self._cache_thread_lock = threading.Lock()
        # Buffered counters (cache hits/misses, metrics) reach their files when this engine
        # is dropped (an engine made inside a function: a CLI command) or the process exits.
        weakref.finalize(self, _flush_counters, self.cache, self.metrics)

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Any) -> Engine:
        """``Engine.from_config("config.toml")``; overrides are ``section.key=value``."""
        return cls(Config.load(path, overrides=overrides or None))

    def backend(self, name: str) -> Backend:
        return self.pool.get(name)

    # Building a request ------------------------------------------------------------
    def build_request(self, prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                      model: str | None = None, reasoning: bool | None = None,
                      tools: Sequence[Any] | None = None, tool_choice: Any = "auto",
                      parallel: bool = False, **sampling: Any) -> GenerationRequest:
        """The request for ``output``, or for a tool turn (``tools``; ``output`` then
        stays None: the turn's output is the call envelope, see :mod:`structgen.schema.toolset`).
        ``max_calls`` (with ``parallel=True``) bounds a tool turn's calls in its grammar."""
        max_calls = sampling.pop("max_calls", None)
        if tools is None:
            if max_calls is not None:
                raise StructgenError("max_calls bounds the calls of a tool turn: give tools")
            if output is None:
                raise StructgenError("give an output (a Pydantic model, JSON Schema, Regex, "
                                     "Choice or Grammar) or tools=[...]")
            return self._request(prompt_or_messages, _compile_memo(output, self.limits),
                                 model=model, reasoning=reasoning, **sampling)
        if output is not None:
            raise StructgenError("a tool turn's answer is a tool call (or text): give either "
                                 "output or tools, not both")
        turn = tool_turn(tools, tool_choice, parallel, max_calls)
        request = self._request(prompt_or_messages,
                                envelope_output(turn, self.limits, self._toolsets()),
                                model=model, reasoning=reasoning, **sampling)
        request.tools = turn
        return request

    def _toolsets(self) -> TextStore:
        """Where new tool sets' compiled schemas are kept (the grammar cache's tiers)."""
        store: TextStore | None = getattr(self, "_toolset_store", None)
        if store is None:
            store = self._toolset_store = text_store(default_grammar_cache(self.config.cache),
                                                     "toolset")
        return store

    def _request(self, prompt_or_messages: str | Sequence[Any], output: CompiledOutput | None,
                 *, model: str | None, reasoning: bool | None,
                 **sampling: Any) -> GenerationRequest:
        unknown = set(sampling) - SAMPLING_KEYS
        if unknown:
            raise StructgenError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}"
                                 f" (known: {', '.join(sorted(SAMPLING_KEYS))})")
        s = Sampling(**_checked_sampling(sampling))
        if not (0 <= s.temperature < math.inf) or not 0 < s.top_p <= 1 or s.max_tokens < 1:
            raise StructgenError("temperature must be >= 0, top_p in (0, 1], max_tokens >= 1")
        messages = normalize_messages(prompt_or_messages)
        return GenerationRequest(
            messages=messages, output=output, sampling=s,
            # reasoning=None: the router turns it on for reasoning models ([router issue]).
            model=model, reasoning=bool(reasoning), extra={"reasoning_auto": reasoning is None},
            # "auto": the layout of the few-shot assistant turns, else json.dumps'
            whitespace=choose_layout(self.config.local.whitespace, messages))

    # The pipeline --------------------------------------------------------------------
    async def arun(self, prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                   backend: str | None = None, model: str | None = None,
                   reasoning: bool | None = None, use_cache: bool = True,
                   allow_truncated: bool = False, tools: Sequence[Any] | None = None,
                   tool_choice: Any = "auto", parallel: bool = False,
                   **sampling: Any) -> StructuredResult:
        """Run one request and return the value with its provenance.

        An answer cut off at ``max_tokens`` raises ValidationFailed, unless
        ``allow_truncated``: then its value comes back with ``truncated=True``, uncached.
        With ``tools`` the value is a :class:`~structgen.types.ToolCall`, a list of them
        (``parallel=True``) or, only with ``tool_choice="auto"``, the text the model wrote.
        """
        start = time.perf_counter()
        request = self.build_request(prompt_or_messages, output, model=model,
                                     reasoning=reasoning, tools=tools,
                                     tool_choice=tool_choice, parallel=parallel, **sampling)
        key, hit = await self._acache_lookup(request, backend, use_cache, start)
        return _tool_result(request, hit or await self._agenerate_request(
            request, backend, key, start, allow_truncated))

    def _cache_lookup(self, request: GenerationRequest, backend: str | None, use_cache: bool,
                      start: float) -> tuple[str | None, StructuredResult | None]:
        """(cache key or None when not cacheable, the cached result or None)."""
        assert request.output is not None
        if not (use_cache and self.cache.cacheable(request)):
            return None, None
        key = self.cache_key(request, backend)
        # Routed: a fallback's cached answer only while the backends it stood in for are down.
        hit = self.cache.get(key, request.output,
                             down=self.router.known_down if backend is None else None)
        if hit is not None:
            hit.latency_s = time.perf_counter() - start
            self.metrics.record_cache_hit(request, hit)
            self.metrics.record_tool_calls(request, hit.raw_text, valid=True)
        return key, hit

    def cache_key(self, request: GenerationRequest, backend: str | None = None) -> str:
        """The result cache's key for ``request``: routed (no ``backend``) it names the
        models of the chain the router would try, as the router orders it."""
        return self.cache.key(request, [self.router.model_id(name)
                                        for name in self.router.order(backend)])

    async def _acache_lookup(self, request: GenerationRequest, backend: str | None,
                             use_cache: bool, start: float
                             ) -> tuple[str | None, StructuredResult | None]:
        """:meth:`_cache_lookup` in a worker thread: a hit is read and validated again, and
        a large value (or a store that does not answer) must not hold the event loop."""
        if not (use_cache and self.cache.cacheable(request)):
            return None, None
        return await self._in_cache_thread(self._cache_lookup, request, backend, use_cache,
                                           start)

    async def _in_cache_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the cache's own thread (made on first use, again after close)."""
        with self._cache_thread_lock:
            if self._cache_thread is None:
                self._cache_thread = ThreadPoolExecutor(max_workers=1,
                                                        thread_name_prefix="structgen-cache")
            pool = self._cache_thread
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _agenerate_request(self, request: GenerationRequest, backend: str | None,
                                 key: str | None, start: float,
                                 allow_truncated: bool = False) -> StructuredResult:
        """Generate (cache already consulted), validate/repair, store under ``key``."""
        assert request.output is not None
        with self._booked(request, start):
            gen, trail = await self.router.agenerate(request, backend=backend)
            as_envelope(gen, request)
            return await self._settle(gen, request, trail, start, key, allow_truncated)

    @contextlib.contextmanager
    def _booked(self, request: GenerationRequest, start: float) -> Generator[None, None, None]:
        """A call, a stream or a text request that fails is recorded in the metrics (once,
        wherever it failed: routing, the stream, validation) before it is raised."""
        try:
            yield
        except StructgenError as exc:
            self.metrics.record_failure(request, exc, time.perf_counter() - start)
            if isinstance(exc, ValidationFailed):  # a backend that failed made no call
                self.metrics.record_tool_calls(request, exc.raw_text, valid=False)
            raise

    async def _settle(self, gen: GenerationResult, request: GenerationRequest,
                      trail: list[BackendAttempt], start: float, key: str | None,
                      allow_truncated: bool) -> StructuredResult:
        """The last steps of a call and of a stream alike: finalize ``gen`` (validate,
        repair, re-ask), store a whole value under ``key``, record the request."""
        repaired = await self.finalize(gen, request, allow_truncated=allow_truncated)
        result = _structured(gen, repaired, trail, start, key)
        if key is not None and not result.truncated:  # a cut value is never served again
            await self._in_cache_thread(self.cache.put, key, request, result)
        self.metrics.record(request, gen, result)
        self.metrics.record_tool_calls(request, result.raw_text, valid=True)
        return _tool_result(request, result, gen.tool_calls)

    def run(self, prompt_or_messages: str | Sequence[Any], output: Any = None, *,
            backend: str | None = None, model: str | None = None, reasoning: bool | None = None,
            use_cache: bool = True, allow_truncated: bool = False,
            tools: Sequence[Any] | None = None, tool_choice: Any = "auto",
            parallel: bool = False, **sampling: Any) -> StructuredResult:
        """Sync twin of :meth:`arun`."""
        # A cache hit is answered in this thread: a round trip through the event loop
        # would cost more than the hit itself (see benchmarks/results/cache.md).
        start = time.perf_counter()
        request = self.build_request(prompt_or_messages, output, model=model,
                                     reasoning=reasoning, tools=tools,
                                     tool_choice=tool_choice, parallel=parallel, **sampling)
        key, hit = self._cache_lookup(request, backend, use_cache, start)
        return _tool_result(request, hit or run_sync(self._agenerate_request(
            request, backend, key, start, allow_truncated)))

    async def arun_text(self, prompt_or_messages: str | Sequence[Any], *,
                        backend: str | None = None, model: str | None = None,
                        reasoning: bool | None = None, **sampling: Any) -> StructuredResult:
        """Plain text with no output constraint (``value`` is the text).

        The same backends, fallback, deadline and metrics as :meth:`arun`, so the metrics'
        structured share (a backend switch criterion) sees an application's unstructured
        calls too; nothing is validated or cached.
        """
        start = time.perf_counter()
        request = self._request(prompt_or_messages, None, model=model, reasoning=reasoning,
                                **sampling)
        with self._booked(request, start):
            gen, trail = await self.router.agenerate(request, backend=backend)
        result = StructuredResult(
            value=gen.text, raw_text=gen.text, backend=gen.backend, model=gen.model,
            attempts=trail, reasoning_text=gen.reasoning_text,
            latency_s=time.perf_counter() - start, usage=_usage(gen),
            finish_reason=gen.finish_reason)
        self.metrics.record(request, gen, result)
        return result

    def run_text(self, prompt_or_messages: str | Sequence[Any], *, backend: str | None = None,
                 model: str | None = None, reasoning: bool | None = None,
                 **sampling: Any) -> StructuredResult:
        """Sync twin of :meth:`arun_text`."""
        return run_sync(self.arun_text(prompt_or_messages, backend=backend, model=model,
                                       reasoning=reasoning, **sampling))

    async def agenerate(self, *args: Any, **kwargs: Any) -> Any:
        return (await self.arun(*args, **kwargs)).value

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs).value

    async def finalize(self, gen: GenerationResult, request: GenerationRequest, *,
                       allow_truncated: bool = False) -> Repaired:
        """Validate/repair ``gen`` for ``request`` (re-asks go through the router)."""
        return await finalize(gen, request, self.config.repair, self._reask,
                              allow_truncated=allow_truncated)

    async def _reask(self, follow_up: GenerationRequest, answered_by: str) -> GenerationResult:
        # The follow-up goes back to the backend that answered when the pool can serve it
        # by name; otherwise (a name it does not know) it is routed afresh.
        pinned = answered_by if self.pool.knows(answered_by) else None
        again, _trail = await self.router.agenerate(follow_up, backend=pinned)
        as_envelope(again, follow_up)
        return again

    async def astream(self, prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                      backend: str | None = None, model: str | None = None,
                      reasoning: bool | None = None, use_cache: bool = True,
                      allow_truncated: bool = False, final_result: bool = False,
                      tools: Sequence[Any] | None = None, tool_choice: Any = "auto",
                      parallel: bool = False, **sampling: Any) -> AsyncIterator[Any]:
        """Yield partial values as the text streams in, then the final validated value
        (see :mod:`structgen.streaming`; a Pydantic output's partials are instances of its
        partial model).

        Like :meth:`arun`: an answer cut off at ``max_tokens`` raises ValidationFailed
        unless ``allow_truncated``; the final value is cached under the same key (a cut
        one never) and a cache hit is the one item yielded; metrics record the call with
        its time to first token. ``final_result=True`` makes the last item the
        :class:`StructuredResult`. Closing the iterator early closes the backend request.
        A tool turn (``tools``) streams the envelope: partial :class:`ToolCall` items whose
        arguments are partial instances of the tool's model (a list of them with
        ``parallel``, the text so far for a text answer), then the final value.
        """
        start = time.perf_counter()
        request = self.build_request(prompt_or_messages, output, model=model,
                                     reasoning=reasoning, tools=tools,
                                     tool_choice=tool_choice, parallel=parallel, **sampling)
        assert request.output is not None
        key, hit = await self._acache_lookup(request, backend, use_cache, start)
        if hit is not None:
            hit = _tool_result(request, hit)
            yield hit if final_result else hit.value
            return
        with self._booked(request, start):
            async with contextlib.aclosing(self._routed_stream(
                    request, backend, key, start, allow_truncated, final_result)) as items:
                async for item in items:
                    yield item

    async def _routed_stream(self, request: GenerationRequest, backend: str | None,
                             key: str | None, start: float, allow_truncated: bool,
                             final_result: bool) -> AsyncGenerator[Any, None]:
        """:meth:`astream` past the cache: the partial values, then the final one."""
        assert request.output is not None
        opened = await self.router.open_stream(request, backend)
        ttft = time.perf_counter() - start
        as_partial = (partial_tool_value(request.tools) if request.tools is not None
                      else _partial_builder(request.output))
        text = ""
        end = Finished("", "stop")  # the last chunk that said why it ended (none yet)
        last: Any = None
        parsed = 0  # the length of the text last parsed
        chunks = [opened.first]
        try:
            while True:
                for chunk in chunks:
                    text += chunk
                    if isinstance(chunk, Finished):  # every backend ends with its reason
                        end = chunk
                chunks = []
                # Each parse reads the whole text: past 256 characters it waits until the
                # text grew by 1/256, so a long answer in small chunks costs linear time
                # (18 kB in 7-character chunks: 2,600 parses before)
                if len(text) - parsed >= len(text) >> 8:
                    parsed = len(text)
                    current = as_partial(text)
                    if current is not None and current != last:
                        last = current
                        yield current
                try:
                    chunks.append(await anext(opened.chunks))
                except StopAsyncIteration:
                    break
        finally:
            # the consumer stopped early (break, aclose) or the stream failed: end the
            # backend's request now, not whenever the generator is collected
            await opened.chunks.aclose()  # type: ignore[attr-defined]
        # Same bookkeeping as a non-streamed call: what the backend's engine did not enforce,
        # as the backend reported it (or as its capabilities say, when it did not), the token
        # counts and model it reported at the end, and the thinking kept out of the answer.
        name = opened.backend
        gen = opened.finished(GenerationResult(
            text=text, backend=name, model=end.model or request.model or "",
            finish_reason=end.finish_reason, prompt_tokens=end.prompt_tokens or 0,
            completion_tokens=end.completion_tokens or 0,
            latency_s=time.perf_counter() - start, ttft_s=ttft,
            post_enforced=end.post_enforced if end.post_enforced is not None
            else unenforced(request.output, self.backend(name).capabilities())))
        result = await self._settle(gen, request, opened.trail, start, key, allow_truncated)
        yield result if final_result else result.value

    def stream(self, prompt_or_messages: str | Sequence[Any], output: Any = None,
               **kwargs: Any) -> Generator[Any, None, None]:
        """Sync twin of :meth:`astream` (the same keywords). Leaving the loop early closes
        the backend request."""
        items = self.astream(prompt_or_messages, output, **kwargs)
        try:
            while (item := run_sync(_next_or_end(items))) is not _END:
                yield item
        finally:
            run_sync(items.aclose())  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.pool.aclose()
        with self._cache_thread_lock:
            pool, self._cache_thread = self._cache_thread, None
        if pool is not None:  # its last read or write ends before the store is closed
            await asyncio.to_thread(pool.shutdown)
        self.cache.close()

    def close(self) -> None:
        run_sync(self.aclose())


def _flush_counters(cache: Any, metrics: Metrics) -> None:
    with contextlib.suppress(Exception):  # exiting or collected: nothing left to report to
        if hasattr(cache, "flush"):
            cache.flush()
        metrics.flush()


def _open_cache(config: Config) -> ResultCache | NullCache:
    """The result cache, or none when its store cannot be opened (a read-only or full
    disk, a damaged cache.db, Redis down): a cache failure never fails a request."""
    try:
        return open_result_cache(config.cache)
    except CacheError as exc:
        log.warning("result cache disabled: %s", exc)
        return NullCache()


def _usage(gen: GenerationResult) -> Usage:
    return Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                 ttft_s=gen.ttft_s, server_time_s=gen.server_time_s, http_s=gen.http_s)


def _structured(gen: GenerationResult, repaired: Repaired, trail: list[BackendAttempt],
                start: float, key: str | None) -> StructuredResult:
    """The result of a generated (streamed or not) and finalized answer; a cut one gets no
    cache key (it is never stored)."""
    return StructuredResult(
        value=repaired.value, raw_text=repaired.text, backend=gen.backend, model=gen.model,
        repaired=repaired.repaired, repairs=repaired.repairs, attempts=trail,
        post_enforced=[str(e) for e in repaired.post_enforced],
        reasoning_text=gen.reasoning_text, latency_s=time.perf_counter() - start,
        cache_key=None if repaired.truncated else key, usage=_usage(gen),
        truncated=repaired.truncated, finish_reason=gen.finish_reason)


_END = object()


def as_envelope(gen: GenerationResult, request: GenerationRequest) -> None:
    """A native tool answer (``gen.tool_calls``) becomes the canonical envelope text, which
    is what validation, repair and the cache read (see :func:`structgen.types.call_envelope`)."""
    turn = request.tools
    if turn is not None and gen.tool_calls is not None:
        # a server that cannot bound its calls (vLLM's native tool calling): more calls
        # than the turn allows are cut here, and the result says so
        limit = turn.max_calls if turn.parallel else 1
        if limit is not None and len(gen.tool_calls) > limit:
            gen.post_enforced = (*gen.post_enforced, PostEnforced(
                "", "tool_calls", f"{gen.backend} returned {len(gen.tool_calls)} calls; "
                f"the first {limit} kept"))
            gen.tool_calls = gen.tool_calls[:limit]
        gen.text = call_envelope(gen.tool_calls, gen.text, parallel=turn.parallel)


def _tool_result(request: GenerationRequest, result: StructuredResult,
                 native: list[RawToolCall] | None = None) -> StructuredResult:
    """For a tool turn: the validated envelope as the caller's ToolCall / list / text, with
    the ids a server gave its calls (``native``; needed to send the tools' results back)
    when the calls are still the ones it returned (not re-asked)."""
    if request.tools is None or isinstance(result.value, ToolCall | list | str):
        return result
    value = tool_value(result.value)
    calls = value if isinstance(value, list) else [value] if isinstance(value, ToolCall) else []
    if native and [c.name for c in native] == [c.name for c in calls] \
            and all(r.stage != "reask" for r in result.repairs):
        calls = [dataclasses.replace(c, id=n.id) for c, n in zip(calls, native, strict=True)]
        value = calls if isinstance(value, list) else calls[0]
    result.value = value
    return result


async def _next_or_end(items: AsyncIterator[Any]) -> Any:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _END


def _partial_builder(output: CompiledOutput) -> Callable[[str], Any]:
    """The text so far → the partial item to yield (``None``: nothing new to show)."""
    if output.kind != "json":
        return lambda text: text
    model = output.model
    if model is None:
        return partial_value
    return lambda text: partial_instance(model, partial_value(text))


# Each sampling parameter checked against Sampling's own annotation, strictly: "10" is not
# a max_tokens (it would fail deep in a backend, or be sent as text).
_SAMPLING_TYPES = {name: pydantic.TypeAdapter(hint)
                   for name, hint in typing.get_type_hints(Sampling).items()}


def _checked_sampling(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with their types checked; ``stop="END"`` means one stop string, and no
    stop string may be empty."""
    out = dict(values)
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]  # list("END") would be three stop strings
    problems = []
    for name, value in out.items():
        try:
            out[name] = _SAMPLING_TYPES[name].validate_python(value, strict=True)
        except pydantic.ValidationError as exc:
            problems.append(f"{name}={value!r}: {exc.errors()[0]['msg']}")
    if not problems and "" in out.get("stop", ()):
        # it matches before the first token: every answer would be empty (OpenAI refuses it)
        problems.append(f"stop={values['stop']!r}: an empty stop string would end every "
                        "answer at once")
    if problems:
        raise StructgenError(f"invalid sampling parameter(s): {'; '.join(problems)}")
    return out


# [cache issue] compile_output memo: compiling a Pydantic model (schema generation + checks)
# costs milliseconds, which would dominate a ~100 µs cache hit. Model classes are keyed by
# identity (weakly, so dynamically created classes can be collected); Regex/Choice/Grammar
# are frozen dataclasses keyed by value. Dict schemas are not memoized (mutable).
# The limits are part of the key: engines with different [limits] compile differently.
_compiled_classes: weakref.WeakKeyDictionary[type, dict[Limits, CompiledOutput]] = \
    weakref.WeakKeyDictionary()
_compiled_specs: dict[tuple[Any, Limits], CompiledOutput] = {}


def _compile_memo(output: Any, limits: Limits = DEFAULT_LIMITS) -> CompiledOutput:
    if isinstance(output, type):
        per_limits = _compiled_classes.setdefault(output, {})
        compiled = per_limits.get(limits)
        if compiled is None:
            compiled = per_limits[limits] = compile_output(output, limits=limits)
        return compiled
    if isinstance(output, Regex | Choice | Grammar):
        compiled = _compiled_specs.get((output, limits))
        if compiled is None:
            if len(_compiled_specs) > 1024:
                _compiled_specs.clear()
            compiled = _compiled_specs[output, limits] = compile_output(output, limits=limits)
        return compiled
    return compile_output(output, limits=limits)


_default: Engine | None = None
# Engines built for generate_structured(config=...), one per distinct configuration (its
# canonical JSON): a new Engine per call would reload the model and open new pools and
# caches each time. Bounded; an engine pushed out, and every engine at exit, is closed.
_MAX_CONFIG_ENGINES = 8
_config_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()


def default_engine() -> Engine:
    global _default
    if _default is None:
        _default = Engine()
    return _default


def engine_for(config: Config | str | Path | None) -> Engine:
    """The shared engine of ``config`` (a Config or a config file; None: the default one),
    as ``generate_structured(config=...)`` uses it: built once per distinct configuration."""
    if config is None:
        return default_engine()
    cfg = config if isinstance(config, Config) else Config.load(config)
    key = cfg.model_dump_json()
    with _engines_lock:
        engine = _config_engines.get(key)
        if engine is not None:
            _config_engines.move_to_end(key)
            return engine
        # a copy: the caller may change its Config later, which must not change this engine
        engine = _config_engines[key] = Engine(cfg.model_copy(deep=True))
        evicted = (_config_engines.popitem(last=False)[1]
                   if len(_config_engines) > _MAX_CONFIG_ENGINES else None)
    if evicted is not None:
        evicted.close()
    return engine


_engine_for = engine_for  # the name the one-call functions below use

@atexit.register
def _close_config_engines() -> None:
    with _engines_lock:
        engines = list(_config_engines.values())
        _config_engines.clear()
    for engine in engines:
        with contextlib.suppress(Exception):  # exiting: nothing left to report it to
            engine.close()


class CallOptions(typing.TypedDict, total=False):
    """The keywords of the public entry points besides ``config``: routing, tools and
    sampling (what :meth:`Engine.run` takes; a misspelt one is a type error)."""

    backend: str | None
    model: str | None
    reasoning: bool | None
    use_cache: bool
    allow_truncated: bool
    tools: Sequence[Any] | None
    tool_choice: Any
    parallel: bool
    max_calls: int | None
    temperature: float
    top_p: float
    seed: int | None
    max_tokens: int
    stop: list[str]


def generate_structured(prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                        config: Config | str | Path | None = None,
                        **options: typing.Unpack[CallOptions]) -> Any:
    """Generate a validated object.

    >>> intent = generate_structured("Fix the failing test in app.py", Intent)  # doctest: +SKIP

    ``output`` is a Pydantic model class (returns an instance), a JSON Schema dict (returns
    the parsed data), ``Regex``/``Choice``/``Grammar`` (returns the string). Raises
    :class:`~structgen.errors.ValidationFailed` rather than return an invalid value, and
    for an answer cut off at ``max_tokens`` unless ``allow_truncated``. One engine serves
    each distinct ``config`` for the life of the process. The other keywords are
    :class:`CallOptions` (``backend``, ``model``, ``max_tokens``, ``temperature``, ...).

    A tool turn: leave ``output`` out and pass ``tools`` (Pydantic model classes, typed
    functions, ``ToolSpec``) and ``tool_choice`` (``"auto"``, ``"required"`` or one of the
    tools). The value is a :class:`~structgen.types.ToolCall` whose ``arguments`` is a
    validated instance of the tool's model, a list of them with ``parallel=True``, or,
    only with ``"auto"``, the text the model answered with.

    >>> call = generate_structured("Run the tests", tools=[RunTests, ReadFile],
    ...                            tool_choice="required")  # doctest: +SKIP
    """
    return _engine_for(config).generate(prompt_or_messages, output, **options)


async def agenerate_structured(prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                               config: Config | str | Path | None = None,
                               **options: typing.Unpack[CallOptions]) -> Any:
    """Async twin of :func:`generate_structured`."""
    return await _engine_for(config).agenerate(prompt_or_messages, output, **options)


def stream_structured(prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                      config: Config | str | Path | None = None,
                      **options: typing.Unpack[CallOptions]) -> Generator[Any, None, None]:
    """Stream :func:`generate_structured`'s answer: partial values, then the final one.

    >>> for intent in stream_structured("Fix app.py", Intent):  # doctest: +SKIP
    ...     print(intent)  # PartialIntent(kind='edit_code', files=None, ...) ... Intent(...)

    For a Pydantic model the partial values are instances of its partial model (every
    field optional, nested models too, no validators run); the last item is the validated
    model instance. JSON Schema outputs stream partial dicts, the other kinds the text so
    far. Leaving the loop early closes the backend request.
    """
    return _engine_for(config).stream(prompt_or_messages, output, **options)


def astream_structured(prompt_or_messages: str | Sequence[Any], output: Any = None, *,
                       config: Config | str | Path | None = None,
                       **options: typing.Unpack[CallOptions]) -> AsyncIterator[Any]:
    """Async twin of :func:`stream_structured` (``aclose()`` closes the backend request)."""
    return _engine_for(config).astream(prompt_or_messages, output, **options)
