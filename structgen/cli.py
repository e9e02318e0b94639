"""The ``structgen`` command line (typer). Subcommands stay thin: they call the engine."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from structgen.advice import recommend
from structgen.batch import BatchSummary
from structgen.batch.job import MAX_LINE_BYTES, read_job, run_job
from structgen.batch.on_ray import run_job_on_ray
from structgen.cache import ResultCache, open_result_cache
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ConfigError, StructgenError
from structgen.metrics import default_state_file, describe, load_state
from structgen.schema import compile_output
from structgen.schema.specs import load_spec
from structgen.tools import conformance as cf
from structgen.types import BackendAttempt, Choice, Grammar, Regex
from structgen.validate import dump_value
from structgen.warmup import RayOptions, plan, read_items, run_warmup

try:  # the serve extra (starlette, uvicorn); every other command works without it
    from structgen.server.app import run as serve_forever
except ImportError:  # pragma: no cover - an install without the extra
    serve_forever = None  # type: ignore[assignment]

_T = TypeVar("_T")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Structured output for LLMs with grammar-constrained decoding.")


_option_type: Any = getattr(typer.core.TyperOption, "display_type_rich", None)


def _flag_type(self: Any, ctx: Any) -> str | None:
    # typer 0.29's rich help labels every flag, --help included, "<bool>" as if it took a
    # value: a flag has no value type to show
    if getattr(self, "is_flag", False) and self.metavar is None:
        return None
    return _option_type(self, ctx)


if _option_type is not None:
    setattr(typer.core.TyperOption, "display_type_rich", _flag_type)  # noqa: B010


def _fail(exc: StructgenError) -> NoReturn:
    typer.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _resumable(kept: str) -> Iterator[None]:
    """A resumable command's stops: a structgen error exits 2 (:func:`_fail`); Ctrl-C says
    where what finished is (``kept``) and exits 130."""
    try:
        yield
    except StructgenError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        typer.secho(f"interrupted: {kept}; run the same command again to resume",
                    fg="yellow", err=True)
        raise typer.Exit(130) from None


# options several commands take, declared once (typer's reusable ``Annotated`` aliases)
_ConfigPath = Annotated[Path | None, typer.Option("--config", "-c")]
_AllowModules = Annotated[list[str], typer.Option(
    "--allow-module", help="a package whose models lines may name as module:Class "
                           r"(repeatable; adds to \[warmup] allow_modules)")]
# the Ray executor's options (warmup and batch)
_UseRay = Annotated[bool, typer.Option("--ray", help="run on a Ray cluster (Ray Data actors; "
                                                    "needs the Redis result cache)")]
_RayAddress = Annotated[str | None, typer.Argument(
    help="with --ray: the cluster (head host:port, ray://host:port or auto); default: a "
         "local Ray instance")]
_RayActors = Annotated[int | None, typer.Option(
    "--ray-actors", min=1, help="Ray actors, each one Engine (default: one per cluster CPU "
                                "/ --ray-cpus)")]
_RayBatchSize = Annotated[int, typer.Option("--batch-size", min=1,
                                           help="lines per Ray batch")]
_RayCpus = Annotated[float, typer.Option("--ray-cpus", min=0.01, help="CPUs per Ray actor")]

_SCHEMA_HELP = ("the output: path/to/file.py:Class or module:Class (a Pydantic model; the "
                "current directory is searched first), a .json JSON Schema file, or "
                "regex:PATTERN, choice:a,b,c, grammar:FILE")


@app.command()
def compile(
    schema: str = typer.Option(..., "--schema", "-s", help=_SCHEMA_HELP),
    to: str = typer.Option("json-schema", "--to", help="json-schema | lark | ebnf | regex"),
) -> None:
    """Print the compiled form of an output spec."""
    try:
        with _log_to_stderr(False):
            spec = load_spec(schema)
        compiled = compile_output(spec)
        if to == "json-schema":
            typer.echo(json.dumps(compiled.to_json_schema(), indent=2, ensure_ascii=False))
        elif to == "lark":
            typer.echo(compiled.to_lark())
        elif to == "ebnf":
            typer.echo(compiled.to_ebnf())
        elif to == "regex":
            typer.echo(compiled.to_regex())
        else:
            raise typer.BadParameter("--to must be json-schema, lark, ebnf or regex")
    except StructgenError as exc:
        _fail(exc)


@app.command()
def generate(
    schema: str | None = typer.Option(None, "--schema", "-s", help=_SCHEMA_HELP),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    regex: str | None = typer.Option(None, "--regex", help="answer matches this regular "
                                     "expression (printed as is, not as JSON)"),
    choice: str | None = typer.Option(None, "--choice", help="answer is one of these "
                                      "comma-separated strings (printed as is)"),
    grammar: Path | None = typer.Option(None, "--grammar", help="answer follows this Lark or "
                                        "GBNF/EBNF grammar file (printed as is)"),
    system: str | None = typer.Option(None, "--system", help="optional system message"),
    backend: str | None = typer.Option(None, "--backend", "-b"),
    model: str | None = typer.Option(None, "--model", "-m"),
    config: _ConfigPath = None,
    max_tokens: int = typer.Option(512, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int | None = typer.Option(None, "--seed"),
    verbose: bool = typer.Option(False, "--verbose", "-v", show_default=False,
                                 help="also print provenance and the backends tried"),
) -> None:
    """Generate one validated value: a JSON object for --schema, the text itself for
    --regex, --choice and --grammar."""
    with _log_to_stderr(verbose):
        try:
            output = _output_option(schema, regex, choice, grammar)
            engine = Engine.from_config(config)
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            result = engine.run(messages, output, backend=backend, model=model,
                                max_tokens=max_tokens, temperature=temperature, seed=seed)
        except StructgenError as exc:
            if verbose and getattr(exc, "trail", None):
                _print_trail(exc.trail)  # type: ignore[attr-defined]
            _fail(exc)
            return
    if isinstance(output, Regex | Choice | Grammar):
        typer.echo(result.value)
    else:
        typer.echo(json.dumps(dump_value(result.value), indent=2, ensure_ascii=False))
    if verbose:
        typer.secho(f"backend={result.backend} model={result.model} cached={result.cached} "
                    f"repaired={result.repaired} latency={result.latency_s:.2f}s "
                    f"usage={dict(result.usage)}", fg="cyan", err=True)
        _print_trail(result.attempts)


def _output_option(schema: str | None, regex: str | None, choice: str | None,
                   grammar: Path | None) -> Any:
    """The one output spec among --schema, --regex, --choice and --grammar."""
    given = [name for name, v in (("--schema", schema), ("--regex", regex),
                                  ("--choice", choice), ("--grammar", grammar)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --schema, --regex, --choice, --grammar"
                          + (f" (got {', '.join(given)})" if given else ""), "generate")
    if regex is not None:
        return Regex(regex)
    if choice is not None:
        return load_spec("choice:" + choice)
    if grammar is not None:
        return load_spec(f"grammar:{grammar}")
    assert schema is not None
    return load_spec(schema)


def _print_trail(trail: list[BackendAttempt]) -> None:
    """The backends a request went through, one line each (``-v``)."""
    for a in trail:
        state = ("ok" if a.ok else f"skipped: {a.skipped}" if a.skipped
                 else f"failed: {a.error}")
        took = f" ({a.latency_s:.2f}s)" if a.latency_s is not None else ""
        typer.secho(f"  tried {a.backend}: {state}{took}", fg="cyan", err=True)


class _StderrLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # typer.echo finds the current sys.stderr (a test runner's, when captured)
        typer.echo(self.format(record), err=True)


@contextlib.contextmanager
def _log_to_stderr(verbose: bool) -> Iterator[None]:
    """structgen's log lines on stderr while a command runs: warnings (a fallback) and the
    embedded model's load always, every INFO line with ``-v``."""
    logger = logging.getLogger("structgen")
    # what the embedded model does (a load, a conversion: seconds of silence otherwise)
    # is shown without -v too
    local = logging.getLogger("structgen.backends.local")
    handler = _StderrLog(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    levels = logger.level, local.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    local.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(levels[0])
        local.setLevel(levels[1])


@app.command()
def check(
    path: Path = typer.Argument(..., help="a MaskBench .jsonl[.gz] / Test-Suite .json file, "
                                          "or a folder of them"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="worker processes"),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="time limit per schema"),
    report: Path | None = typer.Option(None, "--report", help="write a markdown report"),
    json_out: Path | None = typer.Option(None, "--json", help="write the figures as JSON"),
    limit: int | None = typer.Option(None, "--limit", help="only the first N schemas per file"),
    draft: str | None = typer.Option(None, "--draft", help="set every schema's $schema to "
                                     "this draft (draft4, draft6, draft7, draft2019-09, "
                                     "draft2020-12), as the Test Suite's folders mean them"),
) -> None:
    """Schema conformance: compile each schema, check its valid/invalid instances."""

    def skipped(file: Path, why: str) -> None:
        typer.secho(f"note: skipping {file}: {why}", fg="yellow", err=True)

    try:
        files = cf.case_files(path)
        cases: list[cf.SchemaCase] = []
        for file in files:
            # schemas without tests are never checked: --limit counts those with tests
            found = (c for c in cf.iter_cases(file, on_skip=skipped) if c.tests)
            cases.extend(itertools.islice(found, limit) if limit else found)
        if draft is not None:
            cases = [cf.with_draft(c, draft) for c in cases]
        todo = len(cases)
        if not cf.tokenizer_cached():
            typer.secho("reading SmolLM2's tokenizer out of its GGUF (first run only, "
                        "10-20 s)...", err=True)
            cf.smollm_tokenizer()
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("checking schemas", total=todo)
            failed = 0

            def advance(res: cf.SchemaResult) -> None:
                nonlocal failed
                failed += res.status != "pass"
                bar.update(task, advance=1, description=f"checking schemas ({failed} failing)")

            results = cf.run_checks(cases, jobs=jobs, timeout_s=timeout_s, on_result=advance)
    except StructgenError as exc:
        _fail(exc)
        return
    summary = cf.summarize(results)
    command = "structgen check " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(cf.render_markdown(summary, results, machine=cf.machine_line(),
                                             command=command), encoding="utf-8")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    t = summary["total"]
    typer.echo(f"{t['passing']}/{t['schemas']} schemas passing ({t['pass_rate']:.1%}), "
               f"{t['compile_errors']} compile errors, {t['timeouts']} timeouts, "
               f"{t['too_strict']} too strict, {t['false_accepts']} false accepts; as JSON "
               f"{t['passing_as_json']}/{t['schemas']} ({t['pass_rate_as_json']:.1%}), "
               f"{t['too_strict_as_json']} too strict")
    if t["false_accepts"]:
        raise typer.Exit(1)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="a smoke run: the steps that load no "
                               "model, on a few schemas (under a minute)"),
    out: Path | None = typer.Option(None, "--out", help="write the result files here "
                                    "(default: a new scratch folder)"),
    write_results: bool = typer.Option(False, "--write-results", help="write into the "
                                       "committed benchmarks/results/ (and its README)"),
) -> None:
    """Run the benchmarks in benchmarks/ and write their result files and README table."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
    if not script.is_file():
        _fail(StructgenError(f"{script} not found (bench runs from a source checkout)"))
        return
    if write_results and out is not None:
        _fail(ConfigError("give --out or --write-results, not both", "--out"))
        return
    if not write_results:
        out = out or Path(tempfile.mkdtemp(prefix="structgen-bench-"))
        typer.secho(f"results go to {out} (--write-results: benchmarks/results/)", err=True)
    args = [*(["--quick"] if quick else []), *(["--out", str(out)] if out else [])]
    raise typer.Exit(subprocess.call([sys.executable, str(script), *args]))


# structgen cache / structgen warmup (the cache issue) ------------------------------------
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and move the result cache.")
app.add_typer(cache_app, name="cache")


def _open_cache(config: Path | None) -> Any:
    cfg = Config.load(config)
    cache = open_result_cache(cfg.cache)
    if not isinstance(cache, ResultCache):
        raise ConfigError('the result cache is off ([cache] backend = "none")', "cache.backend")
    return cache


def _with_cache(config: Path | None, use: Callable[[ResultCache], _T]) -> _T:
    """Open the result cache, ``use`` it, close it; a StructgenError ends the command."""
    try:
        cache = _open_cache(config)
        try:
            return use(cache)
        finally:
            cache.close()
    except StructgenError as exc:
        _fail(exc)


@cache_app.command("stats")
def cache_stats(
    config: _ConfigPath = None,
    as_json: bool = typer.Option(False, "--json", help="print entries, bytes, hits, misses"),
) -> None:
    """Entries, size, and hit/miss counts (all processes) of the result cache."""
    stats = _with_cache(config, lambda cache: cache.stats())
    if as_json:
        typer.echo(json.dumps(stats))
        return
    lookups = stats["hits"] + stats["misses"]
    ratio = f" ({stats['hits'] / lookups:.0%} hits)" if lookups else ""
    typer.echo(f"{stats['backend']} cache at {stats['location']}\n"
               f"entries: {stats['entries']}  bytes: {stats['bytes']}\n"
               f"hits: {stats['hits']}  misses: {stats['misses']}{ratio}")


@cache_app.command("clear")
def cache_clear(config: _ConfigPath = None) -> None:
    """Delete every entry (and the hit/miss counters)."""
    n = _with_cache(config, lambda cache: cache.clear())
    typer.echo(f"cleared {n} entries")


@cache_app.command("export")
def cache_export(
    out: Path | None = typer.Argument(None, help="JSONL file (default: stdout)"),
    config: _ConfigPath = None,
) -> None:
    """Write every valid entry as one JSON object per line."""
    try:
        cache = _open_cache(config)
        stream = out.open("w", encoding="utf-8") if out is not None else sys.stdout
        n = 0
        for entry in cache.export():
            stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
            n += 1
        if out is not None:
            stream.close()
        cache.close()
    except OSError as exc:
        _fail(StructgenError(f"cannot write {out}: {exc}"))
        return
    except StructgenError as exc:
        _fail(exc)
        return
    typer.secho(f"exported {n} entries", err=True)


@cache_app.command("import")
def cache_import(
    src: Path = typer.Argument(..., help="JSONL file written by `structgen cache export`"),
    config: _ConfigPath = None,
) -> None:
    """Load entries from an export; malformed lines are skipped and counted."""
    try:
        cache = _open_cache(config)
        imported = skipped = 0
        with src.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    ok = cache.import_entry(json.loads(line))
                except (ValueError, RecursionError):  # not JSON, too deep, int too long
                    ok = False
                imported += ok
                skipped += not ok
        cache.close()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(StructgenError(f"cannot read {src}: {exc}"))
        return
    except StructgenError as exc:
        _fail(exc)
        return
    typer.echo(f"imported {imported} entries, skipped {skipped} malformed")
    if skipped:
        raise typer.Exit(1)


@app.command()
def warmup(
    file: Path = typer.Argument(..., help="JSONL: one request per line"),
    address: _RayAddress = None,
    config: _ConfigPath = None,
    concurrency: int = typer.Option(4, "--concurrency", "-j", min=1),
    report: Path | None = typer.Option(None, "--report", "-r",
                                       help="JSONL report (default: FILE.report.jsonl)"),
    backend: str | None = typer.Option(None, "--backend", "-b", help="default backend"),
    model: str | None = typer.Option(None, "--model", "-m", help="default model"),
    allow_module: _AllowModules = [],  # noqa: B006 - typer passes a new list
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    ray: _UseRay = False,
    ray_actors: _RayActors = None,
    batch_size: _RayBatchSize = 16,
    ray_cpus: _RayCpus = 1.0,
) -> None:
    """Fill the result cache from a JSONL file of requests (resumable: cached ones are skipped).

    With --ray, the requests run on Ray actors (-j requests in flight per actor) that write
    to the shared Redis cache; the report and resumability are the same.
    """

    report = report or file.with_name(file.stem + ".report.jsonl")
    with _resumable(f"what finished is in the cache and in {report}"):
        if address is not None and not ray:
            raise ConfigError(f"a cluster address ({address}) needs --ray", "--ray")
        engine = Engine.from_config(config)
        if engine.config.cache.backend == "none":
            raise ConfigError('warmup needs a result cache ([cache] backend = "none")',
                              "cache.backend")
        if not isinstance(engine.cache, ResultCache):
            # the engine went on without the cache it could not open; warmup exists to fill
            # it: opening it again raises the CacheError that says why
            engine.cache = open_result_cache(engine.config.cache)
        allowed = [*engine.config.warmup.allow_modules, *allow_module]
        items = read_items(file, engine, backend=backend, model=model, allow_modules=allowed)
        if dry_run:
            _print_plan(plan(engine, items))
            engine.close()
            return
        options = RayOptions(address=address, actors=ray_actors, batch_size=batch_size,
                             num_cpus=ray_cpus, allow_modules=tuple(allowed))
        with _warmup_progress(len(items), progress) as on_progress:
            summary = asyncio.run(run_warmup(
                engine, items, concurrency=concurrency, report=report, progress=on_progress,
                executor="ray" if ray else "local", ray=options))
        engine.close()
    counts = summary.counts
    typer.echo(f"{summary.total} requests in {summary.elapsed_s:.1f}s: "
               + ", ".join(f"{counts.get(k, 0)} {k}" for k in
                           ("done", "cached", "duplicate", "failed", "invalid"))
               + f" ({summary.rate():.2f} generated/s); report: {summary.report}")
    for p in summary.problems:
        typer.secho(f"  {p.status}: line {p.line} ({p.id}): {p.error_type}: {p.error}",
                    fg="red", err=True)
    if not summary.ok:
        raise typer.Exit(1)


def _print_plan(p: dict[str, Any]) -> None:
    console = Console()
    console.print(f"{p['total']} requests: {p['cached']} already cached, {p['to_run']} to run, "
                  f"{p['duplicate']} duplicate, {p['invalid']} invalid")
    if p["groups"]:
        table = Table("backend", "model", "schema", "to run")
        for g in p["groups"]:
            table.add_row(g["backend"], g["model"], g["schema"], str(g["count"]))
        console.print(table)
    for e in p["errors"]:
        # escaped: an error may quote "[warmup] allow_modules", which is no markup
        console.print(f"[red]line {e['line']} ({escape(e['id'])}): {e['error_type']}: "
                      f"{escape(e['error'])}")


class _warmup_progress:
    """A rich progress bar (done, failed, cached, rate, ETA) as a context manager."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled

    def __enter__(self) -> Any:
        if not self.enabled:
            return None

        self.progress = Progress(
            TextColumn("warmup"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[green]{task.fields[done]} done[/] [cyan]{task.fields[cached]} cached"
                       "[/] [red]{task.fields[failed]} failed[/] [red]{task.fields[invalid]} "
                       "invalid[/]"),
            TextColumn("{task.fields[rate]:.2f}/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(stderr=True))
        self.progress.__enter__()
        self.task = self.progress.add_task("warmup", total=self.total, done=0, cached=0,
                                           failed=0, invalid=0, rate=0.0)
        started = time.perf_counter()

        def update(counts: Any) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            self.progress.update(
                self.task, completed=sum(counts.values()), done=counts.get("done", 0),
                cached=counts.get("cached", 0) + counts.get("duplicate", 0),
                failed=counts.get("failed", 0), invalid=counts.get("invalid", 0),
                rate=counts.get("done", 0) / elapsed)

        return update

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="print the numbers as JSON"),
    config: _ConfigPath = None,
    state_file: Path | None = typer.Option(None, "--state-file",
                                           help="default: metrics.state_file from config"),
) -> None:
    """Print the recorded metrics and whether to move to vLLM or SGLang."""
    try:
        if state_file is None:
            configured = Config.load(config).metrics.state_file
            state_file = Path(configured).expanduser() if configured else default_state_file()
    except StructgenError as exc:
        _fail(exc)
        return
    summary = describe(load_state(state_file))
    summary["recommendation"] = recommend(summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    rec = summary["recommendation"]

    def num(v: float | None, fmt: str = ".3f", unit: str = "") -> str:
        return "-" if v is None else f"{v:{fmt}}{unit}"

    def counts(group: dict[str, int]) -> str:
        return ", ".join(f"{k} {n}" for k, n in group.items())

    failed = summary["failures_by_error"]
    loads = summary["model_loads"]
    lines = [
        f"state file         {state_file} (updated {summary['updated_at'] or 'never'})",
        f"calls              {summary['calls']} ({summary['requests']} ok, "
        f"{summary['failures']} failed{': ' + counts(failed) if failed else ''})",
        f"by backend         {counts(summary['by_backend']) or '-'}",
        f"by output kind     {counts(summary['by_kind']) or '-'}",
        f"latency p50 / p99  {num(summary['latency_p50_s'], unit=' s')} / "
        f"{num(summary['latency_p99_s'], unit=' s')}",
        f"TTFT p50           {num(summary['ttft_p50_s'], unit=' s')}",
        f"tokens/s p50       {num(summary['tokens_per_s_p50'], '.1f')}",
        f"model loads        {loads}"
        + (f" (p50 {num(summary['model_load_p50_s'], '.2f', ' s')}, not in the latency)"
           if loads else ""),
        f"valid first try    {num(summary['first_try_valid_rate'], '.0%')}",
        f"repair rate        {num(summary['repair_rate'], '.0%')} "
        + " ".join(f"{k}={v['fixed']}/{v['tried']}" for k, v in summary["repairs"].items()),
        f"retries            {summary['retries']}",
        f"fallbacks          {summary['fallbacks']}"
        + (f" (passed over: {counts(summary['fallbacks_from'])})"
           if summary["fallbacks_from"] else ""),
        f"cache hits         {summary['cache_hits']} "
        f"({num(summary['cache_hit_rate'], '.0%')})",
        f"structured share   {num(summary['structured_share'], '.0%')}",
        f"multi-turn share   {num(summary['multi_turn_share'], '.0%')}",
        f"in-flight peak     {summary['inflight_peak']}",
    ]
    typer.echo("\n".join(lines))
    typer.secho(f"recommendation: {rec['advice']}: {'; '.join(rec['reasons'])} "
                f"({rec['numbers']})", bold=True)


@app.command()
def serve(
    host: str | None = typer.Option(None, "--host", help="default [server] host, 127.0.0.1"),
    port: int | None = typer.Option(None, "--port", help="default [server] port, 8000"),
    config: _ConfigPath = None,
) -> None:
    """Serve the engine over HTTP: OpenAI- and Ollama-compatible (docs/serving.md)."""
    if serve_forever is None:
        _fail(ConfigError("structgen serve needs the serve extra: pip install "
                          "'structgen[serve]' (starlette, uvicorn)"))
    try:
        serve_forever(Config.load(config), host=host, port=port)
    except StructgenError as exc:
        _fail(exc)

# structgen batch (issue 32) ------------------------------------------------------------------
@app.command()
def batch(
    file: Path = typer.Argument(..., help="OpenAI batch file (JSONL, /v1/chat/completions)"),
    address: _RayAddress = None,
    output: Path = typer.Option(..., "--output", "-o",
                                help="results JSONL (appended to: a re-run resumes); with "
                                     "--shards, a directory"),
    config: _ConfigPath = None,
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-j", min=1,
        help="requests in flight at once (default: two [local] max_batch batches, >= 8)"),
    shards: bool = typer.Option(
        False, "--shards", help="with --ray: the actors write the answers themselves, a "
                                "shard per Ray batch, into the directory -o (shared by "
                                "every node); cat DIR/part-*.jsonl is the output"),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="the model to answer with (a line's body.model "
                                          "is ignored)"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="progress bar on stderr (default: when it is "
                                              "a terminal)"),
    max_line_bytes: int = typer.Option(MAX_LINE_BYTES, "--max-line-bytes", min=1024,
                                       help="a longer input line is an error line"),
    line_format: str = typer.Option(
        "auto", "--format", help="input lines: openai (batch API), compact (warmup's "
                                 "lines) or auto (each line's own)"),
    allow_module: _AllowModules = [],  # noqa: B006 - typer passes a new list
    ray: _UseRay = False,
    ray_actors: _RayActors = None,
    batch_size: _RayBatchSize = 16,
    ray_cpus: _RayCpus = 1.0,
) -> None:
    """Answer an OpenAI batch file (as for OpenAI's Batch API or vLLM's run_batch) into
    OpenAI result lines, exactly once per custom_id: an interrupted run resumes where it
    stopped when run again. See structgen/batch/job.py for the formats.

    With --ray, the lines run on Ray actors (-j requests in flight per actor) that use the
    shared Redis cache; the output and resumability are the same. With --shards as well,
    -o is a directory and the actors write the answers there, a shard per Ray batch, for
    jobs too large to pass through this process (structgen/batch/shards.py)."""
    with _resumable(f"the answered lines are in {output}"):
        if address is not None and not ray:
            raise ConfigError(f"a cluster address ({address}) needs --ray", "--ray")
        if shards and not ray:
            raise ConfigError("--shards is for --ray jobs (one machine writes one file)",
                              "--shards")
        engine = Engine.from_config(config)
        allowed = (*engine.config.warmup.allow_modules, *allow_module)
        lines = read_job(file, max_line_bytes=max_line_bytes, model=model,
                         line_format=line_format, config=engine.config, allow_modules=allowed)
        with _batch_progress(progress) as on_progress:
            if ray:
                summary = run_job_on_ray(
                    engine, lines, output, concurrency=concurrency, on_progress=on_progress,
                    model=model, shards=shards, options=RayOptions(
                        address=address, actors=ray_actors, batch_size=batch_size,
                        num_cpus=ray_cpus, allow_modules=allowed))
            else:
                summary = asyncio.run(run_job(engine, lines, output, concurrency=concurrency,
                                              on_progress=on_progress))
        engine.close()
    typer.echo(summary.describe())
    if summary.failed:
        raise typer.Exit(1)


class _batch_progress:
    """A rich progress bar (valid, failed, cache hits, rate, ETA) on stderr."""

    def __init__(self, enabled: bool | None) -> None:
        self.console = Console(stderr=True, force_terminal=True if enabled else None)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.bar: Progress | None = None

    def __enter__(self) -> Callable[[BatchSummary], None] | None:
        if not self.enabled:
            return None
        self.bar = Progress(
            TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[green]{task.fields[valid]} valid[/] [red]{task.fields[failed]} "
                       "failed[/] [cyan]{task.fields[hits]} cached[/]"),
            TextColumn("{task.fields[rate]:.2f} req/s"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        self.bar.__enter__()
        task = self.bar.add_task("batch", total=None, valid=0, failed=0, hits=0, rate=0.0)

        def update(s: BatchSummary) -> None:
            assert self.bar is not None
            self.bar.update(task, total=s.total, completed=s.done, valid=s.valid,
                            failed=s.failed, hits=s.cache_hits, rate=s.rate())

        return update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
