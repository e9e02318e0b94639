"""Router: which backend serves a request, and what happens when it fails.

Order of candidates:

* an explicit ``backend=`` → only that backend;
* ``provider = "<name>"`` → that backend, then the configured ``fallback`` list;
* ``provider = "auto"`` → the ``fallback`` list (default vllm, sglang, ollama, local),
  keeping only backends that are configured (a server needs a ``base_url``) and, using
  health probes cached for ``router.health_interval_s``, healthy.

A backend that cannot take the request's output kind at all (its
``Capabilities.output_kinds``) is skipped. On :class:`BackendError` the next candidate is
tried; an exception of any other kind from a backend (a bug in it) is recorded as a
:class:`BackendProtocolError` and treated the same way. Each backend has a
:class:`CircuitBreaker`: after ``router.breaker_failures`` consecutive faults it is skipped
for ``router.breaker_cooldown_s``, then one trial request is let through (half-open);
success closes it, a fault opens it again. A fault is the backend's own trouble
(unreachable, a protocol error, a crash); a :class:`BackendTimeout` is not one: a long
generation that runs past its request's deadline says nothing about the backend's health,
and counting it let three long requests lock out a healthy backend (issue 24). The last
candidate of a chain is never refused by its breaker: with nothing left to fall back on,
an open breaker lets the request through as a trial (half-open). The request's
``deadline`` (absolute ``time.monotonic()``) bounds the whole chain: when it passes,
:class:`BackendTimeout` is raised and no further backend is tried; a request without
one gets ``llm_backend.timeout_s`` from the moment it is routed.

Calls and streams go down the same chain (:meth:`Router._first`, one candidate chooser:
deadline, health, breakers, in-flight count, reasoning per backend); only reading the
answer differs, as in httpx's ``send``: a stream's first chunk is its answer to the chain,
the rest must arrive before the deadline, and its breaker hears how it ended.

Every call returns a trail, one :class:`~structgen.types.BackendAttempt` per candidate
considered, e.g. ``[BackendAttempt("vllm", error="BackendUnavailable: ...", latency_s=0.01),
BackendAttempt("local", ok=True, latency_s=0.4)]``; it becomes
``StructuredResult.attempts``. When every candidate fails the raised error carries it as
``error.trail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from structgen.backends import Backend, GenerationRequest, GenerationResult
from structgen.backends.pool import BackendPool
from structgen.config import DEFAULT_LOCAL_MODEL, Config
from structgen.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    StructgenError,
)
from structgen.reasoning import is_reasoning_model, separate_reasoning
from structgen.types import BackendAttempt

log = logging.getLogger(__name__)

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]
_T = TypeVar("_T")


@dataclass
class CircuitBreaker:
    """Per-backend circuit breaker (closed → open → half-open → closed).

    ``clock`` is injectable so tests can move time by hand.
    """

    failures_to_open: int = 3
    cooldown_s: float = 30.0
    clock: Clock = time.monotonic
    consecutive_failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self, *, last_resort: bool = False) -> bool:
        """May a request go to this backend now? Half-open lets exactly one trial through;
        a ``last_resort`` (no other candidate left) always goes through, as a trial."""
        state = self.state
        if state == "closed":
            return True
        if last_resort or (state == "half_open" and not self.trial_in_flight):
            self.trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        was_trial = self.trial_in_flight
        self.trial_in_flight = False
        if was_trial or self.consecutive_failures >= self.failures_to_open:
            self.opened_at = self.clock()

    def release(self) -> None:
        """The trial ended without a verdict (cancelled): let another one through."""
        self.trial_in_flight = False


@dataclass
class _Health:
    healthy: bool
    checked_at: float


class Router:
    """Picks backends from ``pool`` and falls back along the chain ``config`` sets.

    ``in_flight`` is entered around each routed request (the engine passes its metrics'
    concurrency gauge); ``clock`` is injectable so tests can move time by hand.
    """

    def __init__(self, config: Config, pool: BackendPool, *,
                 in_flight: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
                 clock: Clock = time.monotonic) -> None:
        self.config = config
        self.pool = pool
        self.in_flight = in_flight
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self._health: dict[str, _Health] = {}
        # backends a request fell back from, and why: warned about once, until one serves
        self._passed_over: dict[str, str] = {}

    # Candidates --------------------------------------------------------------------
    def order(self, backend: str | None = None) -> list[str]:
        """Backend names to try, in order (before health, capability and breaker checks)."""
        cfg = self.config.llm_backend
        if backend is not None:
            return [backend]
        if cfg.provider != "auto":
            rest = [b for b in cfg.fallback if b != cfg.provider and self._configured(b)]
            return [cfg.provider, *rest]
        return [b for b in cfg.fallback if self._configured(b)] or ["local"]

    def _configured(self, name: str) -> bool:
        # Backends handed to Engine(backends=...) count as configured whatever their section.
        if name == "local" or self.pool.given(name):
            return True
        section = getattr(self.config, name, None)
        return bool(getattr(section, "base_url", None))

    def model_id(self, name: str) -> str:
        """The model backend ``name`` answers with when a request names none, as configured
        (``"vllm:Qwen/Qwen3-8B"``; a server without ``model`` by its address)."""
        section = getattr(self.config, name, None)
        model = getattr(section, "model", None) or getattr(section, "base_url", None)
        if name == "local":
            model = model or DEFAULT_LOCAL_MODEL
        return f"{name}:{model or ''}"

    def breaker(self, name: str) -> CircuitBreaker:
        if name not in self.breakers:
            rc = self.config.router
            self.breakers[name] = CircuitBreaker(rc.breaker_failures, rc.breaker_cooldown_s,
                                                 self.clock)
        return self.breakers[name]

    def known_down(self, name: str) -> bool:
        """Would a routed request pass ``name`` over now, going by what is already known
        (an open circuit, or a failed health probe within ``health_interval_s``)? Probes
        nothing: the result cache asks this on its hit path."""
        breaker = self.breakers.get(name)
        if breaker is not None and breaker.state == "open":
            return True
        health = self._health.get(name)
        return (health is not None and not health.healthy and self.clock() - health.checked_at
                < self.config.router.health_interval_s)

    async def healthy(self, name: str, backend: Backend, deadline: float | None) -> bool:
        """Cached health probe: re-probed once ``router.health_interval_s`` has passed."""
        now = self.clock()
        cached = self._health.get(name)
        if cached is not None and now - cached.checked_at < self.config.router.health_interval_s:
            return cached.healthy
        timeout = _remaining(deadline)
        section = getattr(self.config, name, None)
        # A server gets its connect timeout; the embedded backend's probe loads the model,
        # which may take longer, so only the deadline bounds it.
        probe_limit = getattr(section, "connect_timeout_s", None)
        if probe_limit is not None:
            timeout = probe_limit if timeout is None else min(timeout, probe_limit)
        try:
            ok = bool(await asyncio.wait_for(backend.health(), timeout))
        except (TimeoutError, StructgenError, OSError):
            ok = False
        self._health[name] = _Health(ok, now)
        return ok

    # Dispatch ----------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest, backend: str | None = None
                        ) -> tuple[GenerationResult, list[BackendAttempt]]:
        """Generate with the first backend that works; return the result and the trail."""
        with self.in_flight():
            chosen, result, trail = await self._first(request, backend, _call)
            chosen.breaker.record_success()
        return result, trail

    async def open_stream(self, request: GenerationRequest, backend: str | None = None
                          ) -> RoutedStream:
        """The first backend whose stream starts (see :class:`RoutedStream`).

        The same chain as :meth:`agenerate` (deadline, health, breakers, in-flight count,
        reasoning per backend); only reading the answer differs. How the stream ends
        (complete, failed, abandoned) is recorded on its backend's breaker, each chunk must
        arrive before the request's deadline, and it counts as in flight until it ends.
        """
        held = contextlib.ExitStack()
        held.enter_context(self.in_flight())
        try:
            chosen, (chunks, first), trail = await self._first(request, backend, _start)
        except BaseException:
            held.close()
            raise
        watched = _watched(chosen, first, chunks, request.deadline, held)
        await anext(watched)  # started: closing it now runs its bookkeeping
        return RoutedStream(chosen.name, chosen.request, watched, first, trail)

    async def _first(self, request: GenerationRequest, backend: str | None,
                     attempt: Callable[[Candidate], Awaitable[_T]]
                     ) -> tuple[Candidate, _T, list[BackendAttempt]]:
        """The one candidate chooser of calls and streams: ``attempt`` each candidate in
        turn until one answers; its verdict on success is the caller's to record (a stream
        is judged when it ends). A request without a deadline gets ``timeout_s`` from now."""
        if request.deadline is None:
            request.deadline = time.monotonic() + self.config.llm_backend.timeout_s
        trail: list[BackendAttempt] = []
        auto = backend is None and self.config.llm_backend.provider == "auto"
        kind = request.output.kind if request.output is not None else None
        last: BackendError | None = None
        order = self.order(backend)
        for index, name in enumerate(order):
            if _remaining(request.deadline) == 0.0:
                raise _with_trail(BackendTimeout(
                    f"deadline passed before trying {name}", name), trail)
            entry = BackendAttempt(name)
            trail.append(entry)
            try:
                instance = self.pool.get(name)
            except (StructgenError, ImportError) as exc:
                if backend is not None and isinstance(exc, ConfigError):
                    raise  # a named backend that does not exist is the caller's mistake
                # e.g. the embedded backend without the [local] extra installed
                entry.skipped = f"not available: {exc}"
                continue
            if kind is not None and kind not in instance.capabilities().output_kinds:
                entry.skipped = f"cannot constrain {kind} output"
                continue
            breaker = self.breaker(name)
            if not breaker.allow(last_resort=index == len(order) - 1):
                entry.skipped = "circuit open"
                continue
            # From here on a half-open breaker has handed this request its one trial
            # slot: whatever ends the attempt (a verdict, cancellation, a bug) gives it
            # back, or the backend would stay skipped forever.
            try:
                if auto and not await self.healthy(name, instance, request.deadline):
                    breaker.release()
                    entry.skipped = "health probe failed"
                    continue
                chosen = Candidate(name, instance, self._for_backend(name, request), breaker)
                outcome = await _attempt(chosen, attempt, entry)
            except BaseException:
                breaker.release()
                raise
            if not isinstance(outcome, BackendError):
                self._note_fallback(trail)
                return chosen, outcome, trail
            error = outcome
            _verdict(breaker, error)  # faults count on the breaker, not on health
            last = error
            if isinstance(error, BackendTimeout) and _remaining(request.deadline) == 0.0:
                raise _with_trail(error, trail)
        if last is None:
            reasons = "; ".join(f"{e.backend}: {e.why}" for e in trail)
            raise _with_trail(BackendUnavailable(f"no backend available ({reasons})"), trail)
        if sum(1 for e in trail if e.skipped is None) > 1:
            reasons = "; ".join(f"{e.backend}: {e.why}" for e in trail)
            raise _with_trail(BackendUnavailable(f"every backend failed ({reasons})",
                                                 last.backend), trail) from last
        raise _with_trail(last, trail)

    def _note_fallback(self, trail: list[BackendAttempt]) -> None:
        """Say it when a request was served by other than its first candidate: a warning
        naming the backend passed over, why, and which one answered, once per change of
        that backend's state (not for every request while it stays down), and an INFO line
        when it serves again. A backend skipped because it cannot take the output kind is
        a routing fact, not a state: it is not warned about."""
        served = trail[-1].backend
        for entry in trail[:-1]:
            if entry.skipped is not None and entry.skipped.startswith("cannot constrain"):
                continue
            if entry.backend not in self._passed_over:
                log.warning("structgen: backend %r did not answer (%s); fell back to %r",
                            entry.backend, entry.why, served)
            self._passed_over[entry.backend] = entry.why
        if self._passed_over.pop(served, None) is not None:
            log.info("structgen: backend %r answers again", served)

    def _for_backend(self, name: str, request: GenerationRequest) -> GenerationRequest:
        """Turn on reasoning for a reasoning model when the caller left it to auto."""
        if request.reasoning or not request.extra.get("reasoning_auto"):
            return request
        section = getattr(self.config, name, None)
        model = request.model or getattr(section, "model", None)
        if is_reasoning_model(model):
            return dataclasses.replace(request, reasoning=True)
        return request


@dataclass
class Candidate:
    """A backend that passed the chain's checks, and the request as it gets it (reasoning
    turned on for a reasoning model)."""

    name: str
    backend: Backend
    request: GenerationRequest
    breaker: CircuitBreaker


@dataclass
class RoutedStream:
    """A stream that started: the backend serving it, the request as it got it, its first
    chunk, the rest (``chunks``; close it to end the backend's request) and the trail (the
    same entries as :meth:`Router.agenerate`'s)."""

    backend: str
    request: GenerationRequest
    chunks: AsyncIterator[str]
    first: str
    trail: list[BackendAttempt]

    def finished(self, gen: GenerationResult) -> GenerationResult:
        """``gen``, assembled from the chunks, as a call would have returned it."""
        return separate_reasoning(gen, self.request)


async def _call(chosen: Candidate) -> GenerationResult:
    return separate_reasoning(await chosen.backend.agenerate(chosen.request), chosen.request)


async def _start(chosen: Candidate) -> tuple[AsyncIterator[str], str]:
    """Open ``chosen``'s stream and read its first chunk ("" when it ends at once)."""
    chunks = chosen.backend.stream(chosen.request)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = ""
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return chunks, first


async def _attempt(chosen: Candidate, attempt: Callable[[Candidate], Awaitable[_T]],
                   entry: BackendAttempt) -> _T | BackendError:
    """Run ``attempt`` within the request's deadline: its value, or the error that makes
    the chain go on (written on ``entry`` either way)."""
    start = time.perf_counter()
    try:
        remaining = _remaining(chosen.request.deadline)
        if remaining is None:
            value = await attempt(chosen)
        else:
            value = await asyncio.wait_for(attempt(chosen), remaining)
    except TimeoutError:
        error: BackendError = BackendTimeout("request deadline exceeded", chosen.name)
    except BackendError as exc:
        error = exc
    except StructgenError:
        raise  # the caller's mistake (bad config, schema): no other backend fixes it
    except Exception as exc:
        # A backend must answer or raise BackendError; anything else is its bug, which
        # counts against it like any failure instead of ending the fallback chain.
        error = BackendProtocolError(f"unexpected {type(exc).__name__}: {exc}", chosen.name)
        error.__cause__ = exc
    else:
        # for a stream: the time to its first chunk (it goes on after it)
        entry.ok, entry.latency_s = True, round(time.perf_counter() - start, 4)
        entry.reasoning = chosen.request.reasoning
        return value
    entry.error = f"{type(error).__name__}: {error}"
    entry.latency_s = round(time.perf_counter() - start, 4)
    return error


async def _watched(chosen: Candidate, first: str, chunks: AsyncIterator[str],
                   deadline: float | None, held: contextlib.ExitStack) -> AsyncIterator[str]:
    """``first``, then the rest of ``chunks``, each before ``deadline``; the outcome goes to
    the backend's breaker, and ``held`` (the in-flight count) ends with the stream."""
    breaker = chosen.breaker
    with held:
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout(_remaining(deadline)):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise BackendTimeout("request deadline exceeded", chosen.name) from exc
                yield chunk
        except BackendError as exc:
            _verdict(breaker, exc)
            raise
        except BaseException:  # cancelled, abandoned, or a bug: no verdict on the backend
            breaker.release()
            raise
        finally:
            # closed early (the consumer left the loop): close the backend's stream too,
            # which closes its HTTP response or drops the embedded decoder's sequence
            await chunks.aclose()  # type: ignore[attr-defined]
        breaker.record_success()


def _verdict(breaker: CircuitBreaker, error: BackendError) -> None:
    """Record a failed attempt on ``breaker``: a fault of the backend counts; a deadline
    passed while it generated does not (the request was long, not the backend sick)."""
    if isinstance(error, BackendTimeout):
        breaker.release()
    else:
        breaker.record_failure()


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _with_trail(exc: BackendError, trail: list[BackendAttempt]) -> BackendError:
    exc.trail = list(trail)  # type: ignore[attr-defined]
    return exc
