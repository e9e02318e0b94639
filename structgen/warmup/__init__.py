"""Offline cache warmup: run a JSONL file of requests into the result cache.

Each input line is one request (the format, with a worked example: docs/warmup.md)::

    {"id": "q1", "prompt": "...", "schema": "schemas.intent:Intent"}
    {"messages": [{"role": "user", "content": "..."}], "schema": {"type": "object", ...},
     "model": "...", "backend": "local", "temperature": 0, "max_tokens": 128}

``schema`` is an inline JSON Schema object, a ``.json`` schema file in the JSONL file's
directory (or below it), or ``module:Class`` from a module the user allowed
(``--allow-module PKG`` or ``[warmup] allow_modules``; ``PKG`` allows its submodules too).
A warmup file is data: it never names a ``.py`` file, a module nobody allowed or a file
outside its directory; such a line is an ``invalid`` report line, and nothing is imported.

Requests run with bounded concurrency on one engine (concurrent requests are batched by the
embedded backend and sent as concurrent HTTP requests to servers). Every finished request is
in the cache before the next report line is written, so the run is resumable: after a crash
or Ctrl-C, running it again skips what is cached. Duplicate requests (same cache key) run
once. Bad lines become ``invalid`` report lines, never a crash. A request whose answer
could not be stored (the cache refused the write) is ``failed``, so the run exits non-zero.
The report is appended to, never truncated: a resumed run keeps the first run's lines.

``run_warmup(..., executor="ray")`` (``structgen warmup FILE --ray``) runs the same items on
a Ray cluster into the shared Redis cache, with the same report: see
:mod:`structgen.warmup.on_ray` and docs/scale-out.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from structgen.errors import ConfigError
from structgen.warmup.items import (
    LINE_KEYS,
    Executor,
    ProgressFn,
    WarmupItem,
    WarmupLineError,
    WarmupSummary,
    plan,
    read_items,
    run_local,
)
from structgen.warmup.on_ray import RayOptions, run_on_ray

if TYPE_CHECKING:
    from structgen.engine import Engine

__all__ = [
    "LINE_KEYS",
    "Executor",
    "ProgressFn",
    "RayOptions",
    "WarmupItem",
    "WarmupLineError",
    "WarmupSummary",
    "plan",
    "read_items",
    "run_warmup",
]


async def run_warmup(engine: Engine, items: list[WarmupItem], *, concurrency: int = 4,
                     report: Path | None = None, progress: ProgressFn | None = None,
                     executor: Executor = "local", ray: RayOptions | None = None
                     ) -> WarmupSummary:
    """Run every valid, uncached item through ``engine`` (at most ``concurrency`` at once).

    Writes one report line per item as it finishes (flushed, so a killed run leaves a
    readable partial report) and calls ``progress`` with the running counts.

    ``executor="ray"`` runs the items on a Ray cluster instead (``ray`` says which and how,
    see :mod:`structgen.warmup.on_ray`): same items, report and resumability;
    ``concurrency`` is then the number of requests in flight per Ray actor.
    """
    if executor == "ray":
        return run_on_ray(engine, items, concurrency=concurrency, report=report,
                          progress=progress, options=ray or RayOptions())
    if executor != "local":
        raise ConfigError(f"unknown warmup executor {executor!r} (known: local, ray)")
    return await run_local(engine, items, concurrency=concurrency, report=report,
                           progress=progress)
