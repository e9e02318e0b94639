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
:class:`BackendTimeout` is raised and no further backend is tried.

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
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from structgen.backends import Backend, GenerationRequest, GenerationResult
from structgen.backends.pool import BackendPool
from structgen.config import Config
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
        trail: list[BackendAttempt] = []
        auto = backend is None and self.config.llm_backend.provider == "auto"
        last: BackendError | None = None
        with self.in_flight():
            order = self.order(backend)
            for index, name in enumerate(order):
                if _remaining(request.deadline) == 0.0:
                    raise _with_trail(BackendTimeout(
                        f"deadline passed before trying {name}", name), trail)
                entry = BackendAttempt(name)
                try:
                    instance = self.pool.get(name)
                except (StructgenError, ImportError) as exc:
                    if backend is not None and isinstance(exc, ConfigError):
                        raise  # a named backend that does not exist is the caller's mistake
                    # e.g. the embedded backend without the [local] extra installed
                    entry.skipped = f"not available: {exc}"
                    trail.append(entry)
                    continue
                kind = request.output.kind if request.output is not None else None
                if kind is not None and kind not in instance.capabilities().output_kinds:
                    entry.skipped = f"cannot constrain {kind} output"
                    trail.append(entry)
                    continue
                breaker = self.breaker(name)
                if not breaker.allow(last_resort=index == len(order) - 1):
                    entry.skipped = "circuit open"
                    trail.append(entry)
                    continue
                # From here on a half-open breaker has handed this request its one trial
                # slot: whatever ends the attempt (a verdict, cancellation, a bug) gives it
                # back, or the backend would stay skipped forever.
                try:
                    if auto and not await self.healthy(name, instance, request.deadline):
                        breaker.release()
                        entry.skipped = "health probe failed"
                        trail.append(entry)
                        continue
                    result, error = await self._attempt(name, instance, request, entry)
                except BaseException:
                    breaker.release()
                    raise
                trail.append(entry)
                if result is not None:
                    breaker.record_success()
                    self._note_fallback(trail)
                    return result, trail
                assert error is not None
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

    async def open_stream(self, request: GenerationRequest, backend: str | None = None
                          ) -> tuple[str, AsyncIterator[str], str, list[BackendAttempt]]:
        """The first backend whose stream starts: its name, the rest of it, the first chunk
        and the attempt trail (the same entries as :meth:`agenerate`'s).

        Streams go through the same circuit breakers as :meth:`agenerate`: an open breaker
        skips its backend, and how the stream ends (complete, failed, abandoned) is
        recorded on it.
        """
        trail: list[BackendAttempt] = []
        last: BackendError | None = None
        kind = request.output.kind if request.output is not None else None
        order = self.order(backend)
        for index, name in enumerate(order):
            entry = BackendAttempt(name)
            trail.append(entry)
            instance = self.pool.get(name)
            if kind is not None and kind not in instance.capabilities().output_kinds:
                entry.skipped = f"cannot constrain {kind} output"
                continue
            breaker = self.breaker(name)
            if not breaker.allow(last_resort=index == len(order) - 1):
                entry.skipped = "circuit open"
                last = BackendUnavailable("circuit open", name)
                continue
            start = time.perf_counter()
            stream = self._watched(breaker, instance.stream(request))
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                first = ""
            except BackendError as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                entry.latency_s = round(time.perf_counter() - start, 4)
                last = exc
                continue
            # latency here is the time to the first chunk: the stream goes on after it
            entry.ok, entry.latency_s = True, round(time.perf_counter() - start, 4)
            self._note_fallback(trail)
            return name, stream, first, trail
        raise _with_trail(last or BackendUnavailable("no backend available for streaming"),
                          trail)

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

    @staticmethod
    async def _watched(breaker: CircuitBreaker, stream: AsyncIterator[str]
                       ) -> AsyncIterator[str]:
        """``stream``, reporting its outcome to ``breaker``."""
        try:
            async for chunk in stream:
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
            await stream.aclose()  # type: ignore[attr-defined]
        breaker.record_success()

    async def _attempt(self, name: str, backend: Backend, request: GenerationRequest,
                       entry: BackendAttempt) -> tuple[GenerationResult | None,
                                                       BackendError | None]:
        req = self._for_backend(name, request)
        start = time.perf_counter()
        try:
            remaining = _remaining(request.deadline)
            if remaining is None:
                result = await backend.agenerate(req)
            else:
                result = await asyncio.wait_for(backend.agenerate(req), remaining)
        except TimeoutError:
            error: BackendError = BackendTimeout("request deadline exceeded", name)
        except BackendError as exc:
            error = exc
        except StructgenError:
            raise  # the caller's mistake (bad config, schema): no other backend fixes it
        except Exception as exc:
            # A backend must answer or raise BackendError; anything else is its bug, which
            # counts against it like any failure instead of ending the fallback chain.
            error = BackendProtocolError(f"unexpected {type(exc).__name__}: {exc}", name)
            error.__cause__ = exc
        else:
            entry.ok, entry.latency_s = True, round(time.perf_counter() - start, 4)
            entry.reasoning = req.reasoning
            return separate_reasoning(result, req), None
        entry.error = f"{type(error).__name__}: {error}"
        entry.latency_s = round(time.perf_counter() - start, 4)
        return None, error

    def _for_backend(self, name: str, request: GenerationRequest) -> GenerationRequest:
        """Turn on reasoning for a reasoning model when the caller left it to auto."""
        if request.reasoning or not request.extra.get("reasoning_auto"):
            return request
        section = getattr(self.config, name, None)
        model = request.model or getattr(section, "model", None)
        if is_reasoning_model(model):
            return dataclasses.replace(request, reasoning=True)
        return request


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
