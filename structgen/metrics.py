"""Metrics: what the engine did.

Two views of the same events, each event described once (:class:`Event`) and booked into
both by one method (:meth:`Metrics._book`):

* Prometheus counters and histograms in a :class:`~prometheus_client.CollectorRegistry`
  owned by each :class:`Metrics` (optionally served on ``/metrics`` at ``metrics.port``);
* a small JSON summary persisted to ``metrics.state_file`` (default
  ``~/.cache/structgen/metrics.json``), merged atomically across processes, so
  ``structgen stats`` in a later process can print it (with :mod:`structgen.advice`'s
  recommendation).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from structgen.schema.toolset import called_tools

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest, GenerationResult
    from structgen.config import MetricsConfig
    from structgen.types import StructuredResult

STATE_VERSION = 1
MAX_SAMPLES = 2000  # latency/TTFT/throughput samples kept in the state file (the newest)
FLUSH_INTERVAL_S = 1.0

UNSTRUCTURED_KIND = "none"  # the ``kind`` label of a call with no output constraint

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_served_ports: set[int] = set()


def default_state_file() -> Path:
    return Path.home() / ".cache" / "structgen" / "metrics.json"


def empty_state() -> dict[str, Any]:
    """The persisted summary: counters (summed on merge), samples (kept newest), peak (max)."""
    return {"version": STATE_VERSION, "counts": {}, "by_backend": {}, "by_kind": {},
            "repairs_tried": {}, "repairs_fixed": {}, "failures_by_error": {},
            "fallbacks_from": {},
            "samples": {"latency_s": [], "ttft_s": [], "tokens_per_s": [], "model_load_s": []},
            "inflight_peak": 0, "updated_at": None}


def merge_states(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` + ``delta`` (a new dict); counters add, samples append, peaks take the max."""
    out = empty_state()
    for part in (base, delta):
        if part.get("version") != STATE_VERSION:
            continue
        for group in ("counts", "by_backend", "by_kind", "repairs_tried", "repairs_fixed",
                      "failures_by_error", "fallbacks_from"):
            for key, n in part.get(group, {}).items():
                out[group][key] = out[group].get(key, 0) + int(n)
        for key in out["samples"]:
            out["samples"][key].extend(float(x) for x in part.get("samples", {}).get(key, []))
        out["inflight_peak"] = max(out["inflight_peak"], int(part.get("inflight_peak", 0)))
        out["updated_at"] = part.get("updated_at") or out["updated_at"]
    for key in out["samples"]:
        out["samples"][key] = out["samples"][key][-MAX_SAMPLES:]
    return out


class _Counts(pydantic.RootModel[dict[str, pydantic.NonNegativeInt]]):
    pass


class _StateFile(pydantic.BaseModel):
    """What a state file must hold to be merged (the shape :func:`empty_state` writes)."""

    version: Literal[1]
    counts: _Counts = _Counts({})
    by_backend: _Counts = _Counts({})
    by_kind: _Counts = _Counts({})
    repairs_tried: _Counts = _Counts({})
    repairs_fixed: _Counts = _Counts({})
    failures_by_error: _Counts = _Counts({})
    fallbacks_from: _Counts = _Counts({})
    samples: dict[Literal["latency_s", "ttft_s", "tokens_per_s", "model_load_s"],
                  list[pydantic.FiniteFloat]] = {}
    inflight_peak: pydantic.NonNegativeInt = 0
    updated_at: str | None = None


def load_state(path: str | Path | None = None) -> dict[str, Any]:
    """Read a state file (an empty state if it is missing).

    A file that cannot be read as a state (not JSON, another shape, another version) is
    never merged nor overwritten: it is renamed to ``<name>.corrupt-<time>`` and reported
    with a warning, and the returned empty state says where it went (``"set_aside"``).
    Metrics must not fail a request, and must not silently lose what was recorded.
    """
    p = Path(path) if path is not None else default_state_file()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return empty_state()
    except OSError as exc:
        warnings.warn(f"structgen: cannot read metrics state {p}: {exc}", stacklevel=2)
        return empty_state()
    try:
        data = _StateFile.model_validate_json(raw).model_dump()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        return _set_aside(p, f"{where}: {first['msg']}")
    return merge_states(empty_state(), data)


def _set_aside(path: Path, reason: str) -> dict[str, Any]:
    state = empty_state()
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
                            f"-{os.getpid()}")
    try:
        os.replace(path, target)
    except OSError as exc:
        warnings.warn(f"structgen: metrics state {path} is not valid ({reason}) and could "
                      f"not be set aside: {exc}", stacklevel=3)
        state["set_aside"] = {"path": str(path), "reason": reason, "moved_to": None}
        return state
    warnings.warn(f"structgen: metrics state {path} is not valid ({reason}); set aside "
                  f"as {target}, starting a new one", stacklevel=3)
    state["set_aside"] = {"path": str(path), "reason": reason, "moved_to": str(target)}
    return state


def merge_into_file(path: Path, delta: dict[str, Any]) -> None:
    """Add ``delta`` to the state file under an exclusive lock, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        merged = merge_states(load_state(path), delta)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(merged, fh)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Event:
    """One thing the engine did, described once: the JSON state's counters (``counts``),
    its keyed groups (``groups``: ``by_backend``, ``repairs_tried``, ...) and samples; the
    backend and kind label the Prometheus series of a served request."""

    backend: str | None = None
    kind: str | None = None
    counts: dict[str, int | bool] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    samples: dict[str, float | None] = field(default_factory=dict)


class Metrics:
    """Counters for one engine. Thread-safe; cheap when ``enabled`` is false."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self.state_file = Path(config.state_file).expanduser() if config.state_file \
            else default_state_file()
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._total = empty_state()  # this process, since start
        self._pending = empty_state()  # not yet merged into the state file
        self._inflight = 0
        self._last_flush = time.monotonic()
        r = self.registry
        self.requests = Counter("structgen_requests", "Requests served by a backend",
                                ["backend", "kind"], registry=r)
        self.failures = Counter("structgen_failures", "Requests that raised", ["error"],
                                registry=r)
        self.latency = Histogram("structgen_request_latency_seconds", "End-to-end latency",
                                 ["backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("structgen_time_to_first_token_seconds", "Time to first token",
                              ["backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.throughput = Histogram("structgen_tokens_per_second", "Completion tokens/s",
                                    ["backend"], buckets=(1, 5, 10, 25, 50, 100, 250, 1000),
                                    registry=r)
        self.first_try = Counter("structgen_first_try_valid", "Valid without any repair",
                                 registry=r)
        self.repairs = Counter("structgen_repairs", "Repair stages run, and whether they fixed it",
                               ["stage", "fixed"], registry=r)
        self.retries = Counter("structgen_retries", "Re-asks sent to a model", registry=r)
        self.fallbacks = Counter("structgen_fallbacks",
                                 "Requests served by other than the first candidate", registry=r)
        self.cache_hits = Counter("structgen_cache_hits", "Results served from the cache",
                                  registry=r)
        self.structured = Counter("structgen_structured_calls", "Calls with an output constraint",
                                  registry=r)
        self.multi_turn = Counter("structgen_multi_turn_calls", "Calls with several turns",
                                  registry=r)
        self.tool_calls = Counter("structgen_tool_calls",
                                  "Tool calls answered, per tool, and whether they validated",
                                  ["tool", "valid"], registry=r)
        self.model_load = Histogram("structgen_model_load_seconds",
                                    "Model loads (kept out of the request latency)",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("structgen_in_flight", "Backend calls in flight", registry=r)
        self.inflight_peak = Gauge("structgen_in_flight_peak", "Peak backend calls in flight",
                                   registry=r)
        if self.enabled:
            # A weak reference: engines created and dropped (tests, workers) are not kept alive.
            ref = weakref.ref(self)
            atexit.register(_flush_if_alive, ref)
            if config.port is not None:
                self.serve(config.port, config.host)

    # Recording -----------------------------------------------------------------------
    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a backend call in flight (the router wraps every dispatch in this)."""
        if not self.enabled:
            yield
            return
        with self._lock:
            self._inflight += 1
            self.inflight.set(self._inflight)
            if self._inflight > self._total["inflight_peak"]:
                self._total["inflight_peak"] = self._inflight
                self.inflight_peak.set(self._inflight)
            self._pending["inflight_peak"] = max(self._pending["inflight_peak"], self._inflight)
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self.inflight.set(self._inflight)

    def record(self, request: GenerationRequest, gen: GenerationResult,
               result: StructuredResult) -> None:
        """A request that produced a valid value, or the text of an unconstrained call."""
        if not self.enabled:
            return
        structured = request.output is not None
        kind = request.output.kind if request.output is not None else UNSTRUCTURED_KIND
        stages = [r.stage for r in result.repairs]
        fixed_by = stages[-1] if result.repaired and stages else None
        passed_over = [a.backend for a in result.attempts if not a.ok]
        # A model loaded for this request is recorded on its own (model_load_s): kept in the
        # latency, a one-off load of seconds would be the P99 and advise a serving engine.
        load = gen.stats.get("model_load_s")
        load_s = float(load) if isinstance(load, int | float) else None
        latency = max(0.0, result.latency_s - (load_s or 0.0))
        seconds = gen.latency_s or latency
        tps = gen.completion_tokens / seconds if gen.completion_tokens and seconds > 0 else None
        self._book(Event(
            backend=gen.backend, kind=kind,
            counts={"requests": 1, "first_try_valid": structured and not result.repaired,
                    "repaired": result.repaired, "retries": stages.count("reask"),
                    "fallbacks": bool(passed_over), "model_loads": load_s is not None,
                    "structured": structured, "multi_turn": request.multi_turn},
            groups={"by_backend": [gen.backend], "by_kind": [kind],
                    "fallbacks_from": passed_over, "repairs_tried": stages,
                    "repairs_fixed": [fixed_by] if fixed_by else []},
            samples={"latency_s": latency, "ttft_s": gen.ttft_s, "tokens_per_s": tps,
                     "model_load_s": load_s}))

    def record_tool_calls(self, request: GenerationRequest, envelope: str, *,
                          valid: bool) -> None:
        """The calls of a tool turn's answer (its envelope text), per tool. An invalid
        answer whose tool cannot be read, or that names a tool the request did not offer,
        counts under ``"(unknown)"``: a label is a tool name the caller wrote, never model
        text (each distinct label is a new series); a text answer of an ``"auto"`` turn is
        no call."""
        if not self.enabled or request.tools is None:
            return
        offered = {tool.name for tool in request.tools.tools}
        names = [name if name in offered else "(unknown)" for name in called_tools(envelope)]
        if not valid and not names:
            names = ["(unknown)"]
        for name in names:
            self.tool_calls.labels(tool=name, valid=str(valid).lower()).inc()

    def record_cache_hit(self, request: GenerationRequest, result: StructuredResult) -> None:
        """A request answered from the result cache (no backend call)."""
        if not self.enabled:
            return
        self._book(Event(counts={"cache_hits": 1}))

    def record_failure(self, request: GenerationRequest, exc: Exception, latency: float) -> None:
        """A request that raised (backend failure or ValidationFailed)."""
        if not self.enabled:
            return
        name = type(exc).__name__
        stages = [a.stage for a in getattr(exc, "attempts", [])]
        tried = [s for s in stages if s in ("syntax", "coerce", "reask")]
        self._book(Event(
            counts={"failures": 1, "validation_failures": name == "ValidationFailed",
                    "retries": tried.count("reask"), "structured": request.output is not None,
                    "multi_turn": request.multi_turn},
            groups={"failures_by_error": [name], "repairs_tried": tried},
            samples={"latency_s": latency}))

    def _book(self, event: Event) -> None:
        """Write ``event`` into both views: the Prometheus registry and the JSON state (this
        process's totals and what the next flush merges into the state file)."""
        counts, groups, samples = event.counts, event.groups, event.samples
        if event.backend is not None:  # served by a backend: its labelled series
            self.requests.labels(event.backend, event.kind).inc()
            for key, histogram in (("latency_s", self.latency), ("ttft_s", self.ttft),
                                   ("tokens_per_s", self.throughput)):
                value = samples.get(key)
                if value is not None:
                    histogram.labels(event.backend).observe(value)
        load_s = samples.get("model_load_s")
        if load_s is not None:
            self.model_load.observe(load_s)
        for error in groups.get("failures_by_error", ()):
            self.failures.labels(error).inc()
        fixed = set(groups.get("repairs_fixed", ()))
        for stage in groups.get("repairs_tried", ()):
            self.repairs.labels(stage, str(stage in fixed).lower()).inc()
        for key, counter in (("first_try_valid", self.first_try), ("retries", self.retries),
                             ("fallbacks", self.fallbacks), ("cache_hits", self.cache_hits),
                             ("structured", self.structured), ("multi_turn", self.multi_turn)):
            if counts.get(key):
                counter.inc(int(counts[key]))
        with self._lock:
            for state in (self._total, self._pending):
                for key, by in counts.items():
                    _bump(state["counts"], key, by)
                for group, keys in groups.items():
                    for key in keys:
                        _bump(state[group], key)
                for key, value in samples.items():
                    _sample(state, key, value)
        self._maybe_flush()

    # Reading -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """This process's numbers, in the same shape as :func:`describe`."""
        with self._lock:
            state = json.loads(json.dumps(self._total))
        return describe(state)

    def flush(self) -> None:
        """Merge what was recorded since the last flush into the state file."""
        if not self.enabled:
            return
        with self._lock:
            delta, self._pending = self._pending, empty_state()
            self._last_flush = time.monotonic()
        if not any(delta["counts"].values()) and not delta["inflight_peak"]:
            return
        delta["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            merge_into_file(self.state_file, delta)
        except Exception as exc:  # metrics must never break a request, whatever went wrong
            warnings.warn(f"structgen: cannot write metrics to {self.state_file}: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose this registry on ``http://<host>:<port>/metrics`` (once per port).

        Loopback by default (``[metrics] host``): the numbers describe the traffic, and
        exposing them beyond this machine is the operator's choice, not a default.
        """
        from prometheus_client import start_http_server

        if port in _served_ports:
            return
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            warnings.warn(f"structgen: cannot serve /metrics on port {port}: {exc}",
                          stacklevel=2)
            return
        _served_ports.add(port)


def _flush_if_alive(ref: weakref.ref[Metrics]) -> None:
    metrics = ref()
    if metrics is not None:
        metrics.flush()


def _bump(group: dict[str, int], key: str, by: int | bool = 1) -> None:
    if by:
        group[key] = group.get(key, 0) + int(by)


def _sample(state: dict[str, Any], key: str, value: float | None) -> None:
    if value is not None:
        samples = state["samples"][key]
        samples.append(round(float(value), 6))
        if len(samples) > 2 * MAX_SAMPLES:
            del samples[:-MAX_SAMPLES]


def describe(state: dict[str, Any]) -> dict[str, Any]:
    """The derived numbers ``structgen stats`` prints (:mod:`structgen.advice` judges them)."""
    c = state["counts"]
    calls = c.get("requests", 0) + c.get("failures", 0)
    # validity rates are over structured calls only: plain text is never validated
    judged = (c.get("requests", 0) - state["by_kind"].get(UNSTRUCTURED_KIND, 0)
              + c.get("validation_failures", 0))
    requests = c.get("requests", 0)
    samples = state["samples"]
    tried, fixed = state["repairs_tried"], state["repairs_fixed"]
    out: dict[str, Any] = {
        "calls": calls,
        "requests": requests,
        "failures": c.get("failures", 0),
        "failures_by_error": dict(state["failures_by_error"]),
        "by_backend": dict(state["by_backend"]),
        "by_kind": dict(state["by_kind"]),
        "latency_p50_s": percentile(samples["latency_s"], 50),
        "latency_p99_s": percentile(samples["latency_s"], 99),
        "ttft_p50_s": percentile(samples["ttft_s"], 50),
        "tokens_per_s_p50": percentile(samples["tokens_per_s"], 50),
        # a rate with nothing to count is None ("-"), not 0 %
        "first_try_valid_rate": _ratio(c.get("first_try_valid", 0), judged),
        "repair_rate": _ratio(c.get("repaired", 0), judged),
        "repairs": {stage: {"tried": tried.get(stage, 0), "fixed": fixed.get(stage, 0),
                            "fix_rate": _ratio(fixed.get(stage, 0), tried.get(stage, 0))}
                    for stage in ("syntax", "coerce", "reask")},
        "retries": c.get("retries", 0),
        "fallbacks": c.get("fallbacks", 0),
        "fallbacks_from": dict(state.get("fallbacks_from", {})),
        "model_loads": c.get("model_loads", 0),
        "model_load_p50_s": percentile(samples.get("model_load_s", []), 50),
        "cache_hits": c.get("cache_hits", 0),
        "cache_hit_rate": _ratio(c.get("cache_hits", 0), calls + c.get("cache_hits", 0)),
        "structured_share": _ratio(c.get("structured", 0), calls),
        "multi_turn_share": _ratio(c.get("multi_turn", 0), calls),
        "inflight_peak": state["inflight_peak"],
        "updated_at": state.get("updated_at"),
        "set_aside": state.get("set_aside"),
    }
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
