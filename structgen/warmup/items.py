"""The warmup file and one machine's run of it: items, report lines, the local executor.

See :mod:`structgen.warmup` for the file format and guarantees.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from structgen.backends import BACKENDS
from structgen.errors import CacheError, ConfigError, SchemaError, StructgenError, WarmupLineError
from structgen.schema.specs import load_spec
from structgen.types import SAMPLING_KEYS

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest
    from structgen.config import Config
    from structgen.engine import Engine

Status = Literal["done", "cached", "duplicate", "failed", "invalid"]
LINE_KEYS = frozenset({"id", "prompt", "messages", "schema", "model", "backend", "reasoning"}
                      ) | SAMPLING_KEYS


@dataclass
class WarmupItem:
    """One parsed input line. ``error`` is set (and the rest may be empty) for bad lines."""

    line: int
    id: str
    prompt: Any = None
    schema: Any = None
    schema_name: str = ""
    schema_spec: Any = None  # as written on the line (a ``module:Class`` name is re-imported
    # by a Ray worker; inline and ``.json`` schemas travel as the loaded JSON)
    model: str | None = None
    backend: str | None = None
    reasoning: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    request: GenerationRequest | None = None
    key: str | None = None
    error: StructgenError | None = None


@dataclass
class ReportLine:
    """One line of the JSONL report."""

    id: str
    line: int
    status: Status
    key: str | None = None
    backend: str | None = None
    model: str | None = None
    latency_s: float | None = None
    repaired: bool = False
    error: str | None = None
    error_type: str | None = None


@dataclass
class WarmupSummary:
    total: int
    counts: dict[str, int]
    elapsed_s: float
    report: Path | None
    # the report lines of requests that did not make it into the cache (invalid, failed)
    problems: list[ReportLine] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.counts.get("failed") or self.counts.get("invalid"))

    def rate(self) -> float:
        """Generated requests per second of wall-clock time."""
        return self.counts.get("done", 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0


# Parsing ---------------------------------------------------------------------------------
def read_items(path: Path, engine: Engine, *, backend: str | None = None,
               model: str | None = None, allow_modules: Sequence[str] = ()
               ) -> list[WarmupItem]:
    """Parse ``path`` into items, each with its built request and cache key (or an error).

    ``backend``/``model`` are defaults for lines that do not name their own;
    ``allow_modules`` are the packages whose models a line may name (``pkg:Class``).
    """
    allowed = tuple(allow_modules)
    for name in allowed:
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"not a module name: {name!r}", "warmup.allow_modules")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read warmup file {path}: {exc}") from None
    items: list[WarmupItem] = []
    spec_cache: dict[str, Any] = {}
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        item = parse_item(n, text, engine.config, base=path.parent, spec_cache=spec_cache,
                          backend=backend, model=model, allow_modules=allowed)
        if item.error is not None:
            items.append(item)
            continue
        try:
            item.request = engine.build_request(
                item.prompt, item.schema, model=item.model, reasoning=item.reasoning,
                **item.sampling)
            if not engine.cache.cacheable(item.request):
                raise WarmupLineError(
                    "not cacheable: temperature > 0 needs a seed (or [cache] cache_sampled)")
            item.key = engine.cache_key(item.request, item.backend)
        except StructgenError as exc:
            item.error = exc
        except Exception as exc:  # a bad value deep in a spec (e.g. a TypeError)
            item.error = WarmupLineError(f"{type(exc).__name__}: {exc}")
        items.append(item)
    return items


def parse_item(n: int, text: str, config: Config, *, base: Path,
               spec_cache: dict[str, Any] | None = None, backend: str | None = None,
               model: str | None = None, allow_modules: Sequence[str] = ()) -> WarmupItem:
    """Line ``n`` of the compact format (a warmup file's line; also a line of
    ``structgen batch``): its fields and loaded schema, or its ``error``. Builds no request.
    ``base`` is where ``.json`` schema files may be; ``spec_cache`` shares loaded specs
    between the lines of one file."""
    item = WarmupItem(line=n, id=f"line-{n}")
    try:
        _parse_line(item, text, base, {} if spec_cache is None else spec_cache, backend,
                    model, tuple(allow_modules))
        _check_model(item.model, model, config)
    except StructgenError as exc:
        item.error = exc
    except Exception as exc:  # a bad value deep in a spec (e.g. a TypeError)
        item.error = WarmupLineError(f"{type(exc).__name__}: {exc}")
    return item


def _parse_line(item: WarmupItem, text: str, base: Path, spec_cache: dict[str, Any],
                backend: str | None, model: str | None, allowed: tuple[str, ...]) -> None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WarmupLineError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise WarmupLineError("a line must be a JSON object")
    if "id" in obj:
        if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise WarmupLineError("id must be a string or an integer")
        item.id = str(obj["id"])
    unknown = set(obj) - LINE_KEYS
    if unknown:
        raise WarmupLineError(f"unknown field(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(LINE_KEYS))})")
    if ("prompt" in obj) == ("messages" in obj):
        raise WarmupLineError('give exactly one of "prompt" or "messages"')
    item.prompt = obj.get("prompt", obj.get("messages"))
    if "schema" not in obj:
        raise WarmupLineError('missing "schema"')
    item.schema_spec = obj["schema"]
    item.schema, item.schema_name = _load_schema(obj["schema"], base, spec_cache, allowed)
    for name in ("model", "backend"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise WarmupLineError(f"{name} must be a string")
    item.model = obj.get("model") or model
    item.backend = obj.get("backend") or backend
    if item.backend is not None and item.backend not in BACKENDS:
        raise WarmupLineError(f"unknown backend {item.backend!r} "
                              f"(known: {', '.join(BACKENDS)})")
    item.reasoning = bool(obj.get("reasoning", False))
    item.sampling = {k: obj[k] for k in SAMPLING_KEYS if k in obj}


def _check_model(line_model: str | None, default: str | None, config: Config) -> None:
    """A line may name only a model the configuration (or the command line) names: a
    warmup file is data, and a model reference is a path to load, a hub id to download,
    or a server-side model to spend capacity on."""
    if line_model is None or line_model == default:
        return
    configured = {m for m in (config.local.model, config.vllm.model, config.sglang.model,
                              config.ollama.model) if m}
    if line_model not in configured:
        shown = line_model if len(line_model) <= 80 else line_model[:77] + "..."
        raise WarmupLineError(
            f"model {shown!r} is not a configured model (configured: "
            f"{', '.join(sorted(configured)) or 'none: each backend uses its default'}); "
            "a warmup line may name only those, or the --model given on the command line")


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def _load_schema(spec: Any, base: Path, spec_cache: dict[str, Any],
                 allowed: tuple[str, ...]) -> tuple[Any, str]:
    if isinstance(spec, dict):
        return spec, str(spec.get("title") or "inline")
    if not isinstance(spec, str) or not spec:
        raise WarmupLineError("schema must be a spec string or an inline JSON Schema object")
    if spec not in spec_cache:
        if spec.endswith(".json") and ":" not in spec:
            spec_cache[spec] = _read_json_schema(spec, base)
        else:
            spec_cache[spec] = _import_model(spec, allowed)
    loaded = spec_cache[spec]
    return loaded, getattr(loaded, "__name__", None) or spec


def _read_json_schema(spec: str, base: Path) -> Any:
    """A ``.json`` schema file in the warmup file's directory tree (data, never code)."""
    root = os.path.realpath(base)
    full = os.path.realpath(os.path.join(root, spec))
    if os.path.isabs(spec) or os.path.commonpath([root, full]) != root:
        raise WarmupLineError(f"schema file {spec!r} is outside the warmup file's directory "
                              f"{base}: put it beside the warmup file or inline the schema")
    try:
        text = Path(full).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"schema file not found: {spec} (in {base})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file {spec}: {exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, too deep
        raise SchemaError(f"{spec} is not valid JSON: {exc}") from None


def _import_model(spec: str, allowed: tuple[str, ...]) -> Any:
    """``module:Class`` from a module the user allowed; anything else is refused unrun."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not _MODULE_NAME.fullmatch(target) or not attr.isidentifier():
        raise WarmupLineError(
            f"schema {spec!r} is not allowed in a warmup file: use an inline JSON Schema, a "
            ".json file beside the warmup file, or module:Class from an allowed module "
            "(a warmup file never names a Python file)")
    if not any(target == name or target.startswith(name + ".") for name in allowed):
        top = target.split(".")[0]
        raise WarmupLineError(
            f"module {target!r} is not allowed: pass --allow-module {top} "
            "(or set [warmup] allow_modules) to let warmup files import it")
    return load_spec(spec)


# Running ---------------------------------------------------------------------------------
ProgressFn = Callable[[Counter[str]], None]
Executor = Literal["local", "ray"]


class ReportWriter:
    """Counts report lines and appends them to the JSONL report, one flushed line each.

    Appended: a resumed run must not erase the first run's lines (read the last line per
    id for the latest status). Shared by both executors, so the report is the same.
    """

    def __init__(self, report: Path | None, progress: ProgressFn | None) -> None:
        self.counts: Counter[str] = Counter()
        self.problems: list[ReportLine] = []
        self.progress = progress
        self.report = report
        self.out = report.open("a", encoding="utf-8") if report is not None else None
        if report is not None and self.out is not None and self.out.tell() > 0 and (
                not _ends_with_newline(report)):
            self.out.write("\n")  # a killed run's cut last line stays a line of its own

    def emit(self, line: ReportLine) -> None:
        self.counts[line.status] += 1
        if line.status in ("invalid", "failed"):
            self.problems.append(line)
        if self.out is not None:
            self.out.write(json.dumps(asdict(line), ensure_ascii=False) + "\n")
            self.out.flush()
        if self.progress is not None:
            self.progress(self.counts)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()

    def summary(self, total: int, start: float) -> WarmupSummary:
        return WarmupSummary(total=total, counts=dict(self.counts),
                             elapsed_s=time.perf_counter() - start, report=self.report,
                             problems=sorted(self.problems, key=lambda p: p.line))


def triage(items: list[WarmupItem], emit: Callable[[ReportLine], None]) -> list[WarmupItem]:
    """Report bad lines and duplicates; return the first item of each cache key, in order."""
    seen: set[str] = set()
    todo: list[WarmupItem] = []
    for item in items:
        if item.error is not None or item.key is None:
            emit(_error_line(item, "invalid", item.error))
        elif item.key in seen:
            emit(ReportLine(item.id, item.line, "duplicate", key=item.key))
        else:
            seen.add(item.key)
            todo.append(item)
    return todo


async def warm_one(engine: Engine, item: WarmupItem) -> ReportLine:
    """Run one item through ``engine`` into its cache; the report line says how it went.

    Never raises for a failed request: a backend that fails is a ``failed`` line and the
    other requests go on.
    """
    assert item.key is not None
    t0 = time.perf_counter()
    output = item.request.output if item.request is not None else item.schema
    try:
        result = await engine.arun(item.prompt, output, backend=item.backend,
                                   model=item.model, reasoning=item.reasoning,
                                   **item.sampling)
    except Exception as exc:  # StructgenError, or a bug below: the other requests go on
        return _error_line(item, "failed", exc)
    # The engine never fails a request over a cache write; warmup exists to fill the
    # cache, so an answer that was not stored is a failure here.
    if not result.cached and not engine.cache.contains(item.key):
        why = getattr(engine.cache, "last_write_error", None) or "no entry after put"
        return _error_line(item, "failed", CacheError(
            f"the answer was generated but the result cache did not store it: {why}"))
    return ReportLine(item.id, item.line, "cached" if result.cached else "done", key=item.key,
                      backend=result.backend, model=result.model,
                      latency_s=round(time.perf_counter() - t0, 4), repaired=result.repaired)


async def run_local(engine: Engine, items: list[WarmupItem], *, concurrency: int = 4,
                    report: Path | None = None, progress: ProgressFn | None = None
                    ) -> WarmupSummary:
    """Run every valid, uncached item through ``engine`` (at most ``concurrency`` at once).

    Writes one report line per item as it finishes (flushed, so a killed run leaves a
    readable partial report) and calls ``progress`` with the running counts.
    """
    start = time.perf_counter()
    writer = ReportWriter(report, progress)
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(item: WarmupItem) -> None:
        assert item.key is not None
        if engine.cache.contains(item.key):
            writer.emit(ReportLine(item.id, item.line, "cached", key=item.key))
            return
        async with sem:
            writer.emit(await warm_one(engine, item))

    try:
        await asyncio.gather(*(one(item) for item in triage(items, writer.emit)))
    finally:
        close_run(engine, writer)
    return writer.summary(len(items), start)


def close_run(engine: Engine, writer: ReportWriter) -> None:
    """End a run: the report closed, the result cache's pending writes flushed."""
    writer.close()
    flush = getattr(engine.cache, "flush", None)
    if flush is not None:
        flush()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _error_line(item: WarmupItem, status: Status, exc: BaseException | None) -> ReportLine:
    return ReportLine(item.id, item.line, status, key=item.key, backend=item.backend,
                      error=str(exc) if exc else "invalid line",
                      error_type=type(exc).__name__ if exc else "WarmupLineError")


def plan(engine: Engine, items: list[WarmupItem]) -> dict[str, Any]:
    """What a run would do: counts, and per (backend, model, schema) how many to run."""
    groups: Counter[tuple[str, str, str]] = Counter()
    cached = invalid = duplicate = 0
    seen: set[str] = set()
    for item in items:
        if item.key is None:
            invalid += 1
            continue
        if item.key in seen:
            duplicate += 1
            continue
        seen.add(item.key)
        if engine.cache.contains(item.key):
            cached += 1
            continue
        groups[(item.backend or "auto", item.model or "default", item.schema_name)] += 1
    return {"total": len(items), "cached": cached, "invalid": invalid,
            "duplicate": duplicate, "to_run": sum(groups.values()),
            "groups": [{"backend": b, "model": m, "schema": s, "count": n}
                       for (b, m, s), n in sorted(groups.items())],
            "errors": [{"id": i.id, "line": i.line, "error_type": type(i.error).__name__,
                        "error": str(i.error)} for i in items if i.error is not None]}
