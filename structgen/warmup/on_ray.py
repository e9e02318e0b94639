"""Warmup on a Ray cluster (``structgen warmup FILE --ray [ADDRESS]``), with Ray Data.

The same warmup file, report and resumability as :func:`structgen.warmup.run_warmup` on
one machine; only where the requests run changes::

    driver: parse + key every line (warmup.read_items) → report bad lines, duplicates and
            items already in the shared cache (nothing is scheduled for them)
         → ray.data.from_items(the rest) → map_batches(_WarmupActor, concurrency=N actors)
         → results stream back → the driver appends one report line per item

Each actor builds one :class:`~structgen.engine.Engine` from the driver's config (server
backends: a thin HTTP client of the fleet's router URL; ``local``: the embedded model,
loaded once per actor) and writes answers straight into the shared Redis result cache.
A disk cache is refused: workers on other machines cannot see it.

Failures: Ray restarts a killed actor and retries its batch (Ray Data's actor pools do by
default); a retried item whose answer already reached the cache is a cache hit, and the
driver writes a report line only for results that came back, so the report has one line
per item and the cache one entry per key. A backend that fails is a ``failed`` line, the
job goes on. Ctrl-C stops the job (the driver disconnects, Ray ends its actors); what
finished is in the cache and the report, and the next run skips it.

The warmup file is data on the driver: workers receive plain JSON (inline schemas, the
driver's loaded ``.json`` schema files) and import ``module:Class`` specs only from the
modules the user allowed, as on one machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ConfigError, ExecutorError, StructgenError
from structgen.warmup.items import (
    ProgressFn,
    ReportLine,
    ReportWriter,
    WarmupItem,
    WarmupLineError,
    WarmupSummary,
    _error_line,
    _load_schema,
    close_run,
    triage,
    warm_one,
)

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    """Where and how a warmup runs on Ray.

    ``address``: an existing cluster (``host:port`` of its head, ``ray://host:port`` for
    Ray Client, or ``auto``); None starts a local Ray instance for this run.
    ``actors``: Ray Data's ``concurrency`` (the number of actors, each one Engine);
    None = one per CPU the cluster has (at least one).
    ``batch_size``: items per ``map_batches`` call; smaller batches stream results back
    sooner and lose less work when an actor dies, larger ones cost less per item.
    ``num_cpus``: CPUs each actor reserves (thin clients of a server fleet need little;
    ``local`` actors run the model and want whole cores).
    """

    address: str | None = None
    actors: int | None = None
    batch_size: int = 16
    num_cpus: float = 1.0
    allow_modules: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0


# The driver ------------------------------------------------------------------------------
def run_on_ray(engine: Engine, items: list[WarmupItem], *, concurrency: int = 4,
               report: Path | None = None, progress: ProgressFn | None = None,
               options: RayOptions | None = None) -> WarmupSummary:
    """Run ``items`` on Ray (``concurrency`` requests in flight per actor); see the module.

    Raises :class:`ConfigError` for a cache the workers cannot share and
    :class:`ExecutorError` when Ray is missing or the cluster cannot be reached.
    ``KeyboardInterrupt`` stops the job; the report and the cache keep what finished.
    """
    opts = options or RayOptions()
    _check_options(engine, opts)
    start = time.perf_counter()
    writer = ReportWriter(report, progress)
    try:
        todo: list[WarmupItem] = []
        for item in triage(items, writer.emit):
            assert item.key is not None
            # Resumability: what a worker (this run's or an earlier one's) stored is never
            # scheduled again.
            if engine.cache.contains(item.key):
                writer.emit(ReportLine(item.id, item.line, "cached", key=item.key))
            else:
                todo.append(item)
        if todo:
            by_key = {item.key: item for item in todo}
            with ray_stream(_WarmupActor, [_task(item) for item in todo],
                            {"config": _worker_config(engine),
                             "allow_modules": list(opts.allow_modules),
                             "concurrency": max(1, concurrency)}, opts) as raws:
                for line in (ReportLine(**json.loads(raw)) for raw in raws):
                    if line.key not in by_key:
                        # a retried batch that came back twice: its items were reported
                        continue
                    del by_key[line.key]
                    writer.emit(line)
            for item in by_key.values():  # Ray finished without them (should not happen)
                writer.emit(_error_line(item, "failed", ExecutorError(
                    "the Ray job ended without a result for this item")))
    finally:
        close_run(engine, writer)
    return writer.summary(len(items), start)


def _check_options(engine: Engine, opts: RayOptions) -> None:
    backend = engine.config.cache.backend
    if backend != "redis":
        raise ConfigError(
            f'warmup on Ray needs the shared Redis result cache, not "{backend}": workers on '
            'other machines cannot see a disk cache (set [cache] backend = "redis" and url, '
            "or STRUCTGEN_CACHE_BACKEND=redis STRUCTGEN_CACHE_URL=redis://...)",
            "cache.backend")
    if opts.batch_size < 1:
        raise ConfigError("must be at least 1", "ray batch_size")
    if opts.actors is not None and opts.actors < 1:
        raise ConfigError("must be at least 1", "ray actors")
    if not opts.num_cpus > 0:
        raise ConfigError("must be more than 0", "ray num_cpus")


@contextmanager
def ray_stream(actor: type, tasks: list[str], actor_kwargs: dict[str, Any],
               opts: RayOptions) -> Iterator[Iterator[str]]:
    """Run ``tasks`` (JSON strings) on a pool of ``actor(**actor_kwargs)`` with Ray Data and
    give the ``result`` strings as their batches come back (in no particular order; a retried
    batch may come back twice). Shared by warmup and ``structgen batch --ray``.

    Ctrl-C raises KeyboardInterrupt at once, and the job is taken down in order: Ray Data's
    executor first, while Ray is still up, then the connection. (A results iterator left to
    the garbage collector would stop its executor after ``ray.shutdown()``; Ray's core worker
    then ends the whole process with status 1, not the 130 of an interrupted job.)
    """
    with _interruptible(), _ray_session(opts) as ray:
        results = _results(ray, actor, tasks, actor_kwargs, opts)
        try:
            yield results
        finally:
            results.close()


def _results(ray: Any, actor: type, tasks: list[str], actor_kwargs: dict[str, Any],
             opts: RayOptions) -> Generator[str, None, None]:
    import ray.data

    data_log = logging.getLogger("ray.data")
    data_log.setLevel(logging.WARNING)  # not its per-run INFO lines; its warnings, yes
    # we turn Ray Data's bars off on purpose: not a warning for our users
    logging.getLogger("ray.data._internal.progress").addFilter(_no_progress_bar_notice)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own (done / failed / cached / rate)
    ctx.print_on_execution_start = False
    actors = opts.actors or max(1, int(ray.cluster_resources().get("CPU", 1) // opts.num_cpus))
    # One small block per batch: the streaming executor then hands work to every actor and
    # streams results back batch by batch, rather than one actor taking a large block.
    ds = ray.data.from_items([{"task": task} for task in tasks],
                             override_num_blocks=max(1, -(-len(tasks) // opts.batch_size)))
    results = ds.map_batches(
        actor, batch_size=opts.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=opts.num_cpus, batch_format="pyarrow", fn_constructor_kwargs=actor_kwargs)
    batches = iter(results.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # RayError, Ray Data's wrapped errors: the job is over
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ExecutorError(
                    f"the Ray job failed ({type(exc).__name__}: {first[:300]}); what finished "
                    "is in the cache and the report, run again to resume") from exc
            yield from batch.column("result").to_pylist()
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # Ray Data's own finally: its executor shuts down, its actors go


def _no_progress_bar_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def _task(item: WarmupItem) -> str:
    """One item as plain JSON for a worker (no code, no file paths of the driver)."""
    schema = item.schema if isinstance(item.schema, dict) else item.schema_spec
    return json.dumps({"id": item.id, "line": item.line, "key": item.key,
                       "prompt": item.prompt, "schema": schema, "model": item.model,
                       "backend": item.backend, "reasoning": item.reasoning,
                       "sampling": item.sampling}, ensure_ascii=False)


def _worker_config(engine: Engine) -> dict[str, Any]:
    """The driver's resolved config (file + environment), for every actor alike.

    Actors must key answers as the driver does, so they get the driver's values rather than
    reading their own machine's environment. Metrics stay off in actors: a /metrics port or
    a state file per actor would collide on a node.
    """
    data = engine.config.model_dump(mode="json")
    data["metrics"] = {**data["metrics"], "enabled": False, "port": None}
    return data


@contextmanager
def _ray_session(opts: RayOptions) -> Iterator[Any]:
    """``ray`` connected to the cluster (or a local instance), disconnected afterwards."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("warmup on Ray needs Ray: pip install 'structgen[ray]'") from None
    if opts.address not in (None, "auto", "local"):
        _probe(opts.address, opts.connect_timeout_s)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=opts.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = opts.address or "a new local instance"
            raise ExecutorError(f"cannot connect to the Ray cluster at {where}: {exc}") from None
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()  # the job ends: Ray stops its actors (also after Ctrl-C)


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast (and clearly) when nothing listens at ``address``; ray.init would retry."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"not a Ray address: {address!r} (use host:port of the head node, "
                          "ray://host:port or auto)", "--ray")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc} (is "
                            "`ray start --head` running there, and the port open?)") from None


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt at once while the driver waits on Ray.

    Under ``asyncio.run`` the first Ctrl-C only cancels the main task, which happens when
    the blocking wait returns: too late for a job that runs for hours.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# The workers -----------------------------------------------------------------------------
class EngineActor:
    """One Ray Data actor: one Engine (one model, or one client pool), one event loop; a
    batch's tasks (JSON) in, one result line (JSON) per task back, ``concurrency`` of them
    in flight. Warmup's and batch's actors differ only in :meth:`answer`."""

    def __init__(self, config: dict[str, Any], concurrency: int) -> None:
        self.engine = Engine(Config.from_dict(config))
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()  # the backends' HTTP clients live on it

    def __call__(self, batch: Any) -> dict[str, list[str]]:
        tasks = [json.loads(t) for t in batch.column("task").to_pylist()]
        return {"result": self.loop.run_until_complete(self._run(tasks))}

    async def _run(self, tasks: list[dict[str, Any]]) -> list[str]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(task: dict[str, Any]) -> str:
            async with sem:
                return await self.answer(task)

        return list(await asyncio.gather(*(one(t) for t in tasks)))

    async def answer(self, task: dict[str, Any]) -> str:
        """One task's result line."""
        raise NotImplementedError

    def __del__(self) -> None:
        with suppress(Exception):
            self.engine.close()


class _WarmupActor(EngineActor):
    """Warmup items in, report lines back."""

    def __init__(self, config: dict[str, Any], allow_modules: list[str],
                 concurrency: int) -> None:
        super().__init__(config, concurrency)
        self.allowed = tuple(allow_modules)
        self.specs: dict[str, Any] = {}

    async def answer(self, task: dict[str, Any]) -> str:
        return json.dumps(asdict(await self._one(task)), ensure_ascii=False)

    async def _one(self, task: dict[str, Any]) -> ReportLine:
        item = WarmupItem(line=task["line"], id=task["id"], prompt=task["prompt"],
                          model=task["model"], backend=task["backend"],
                          reasoning=task["reasoning"], sampling=task["sampling"],
                          key=task["key"])
        try:
            # inline or loaded JSON stays data; module:Class only from allowed modules
            item.schema, item.schema_name = _load_schema(task["schema"], Path("."),
                                                         self.specs, self.allowed)
            item.request = self.engine.build_request(
                item.prompt, item.schema, model=item.model, reasoning=item.reasoning,
                **item.sampling)
            key = self.engine.cache_key(item.request, item.backend)
        except StructgenError as exc:
            return _error_line(item, "failed", exc)
        except Exception as exc:
            return _error_line(item, "failed", WarmupLineError(f"{type(exc).__name__}: {exc}"))
        if key != item.key:
            return _error_line(item, "failed", ConfigError(
                "this Ray worker computes a different cache key than the driver: its "
                "structgen version (or installed model) differs from the driver's"))
        return await warm_one(self.engine, item)
