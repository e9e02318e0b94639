"""Grammar compile time and per-token mask time: structgen vs raw llguidance, XGrammar and
Outlines-core, on the same MaskBench schemas and SmolLM2's tokenizer, in one run.

    .venv/bin/python benchmarks/compile_mask.py            # 300 schemas
    .venv/bin/python benchmarks/compile_mask.py --quick    # 30 schemas

For each engine, a worker process compiles each schema (deadline ``--timeout-s``: a schema
past it is killed and counted as a timeout, so nothing hangs), then walks the first valid
instance of the schema token by token, timing the allowed-token mask before each token.

structgen cold = structgen's compile path (draft upgrade, schema checks, relaxation of
keywords the engine lacks, llguidance grammar) with an empty grammar cache; warm = the same
request answered from :mod:`structgen.constrain.grammar_cache` (lookup + a fresh matcher copy).

Writes results/compile_mask.md, .png and .json (headline figures for run_all.py).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import results_dir  # noqa: E402

RESULTS = results_dir()
# the full MaskBench dev splits where STRUCTGEN_MASKBENCH_DIR points (the results files
# were measured on them), else the repository's sample (tests/data/maskbench)
MASKBENCH = Path(os.environ.get("STRUCTGEN_MASKBENCH_DIR",
                               ROOT / "tests" / "data" / "maskbench"))
ENGINES = ("structgen", "llguidance", "llguidance-defaults", "xgrammar", "outlines-core")
WARM_REPEAT = 50
MASK_REPEAT = 3  # best of 3 per token: the same state, so this only removes scheduler noise


def pick_schemas(n: int) -> list[dict[str, Any]]:
    """``n`` schemas with a valid instance, spread evenly over every split (deterministic)."""
    from structgen.tools.conformance import iter_cases

    per_split: dict[str, list[dict[str, Any]]] = {}
    for file in sorted(MASKBENCH.glob("*.jsonl.gz")):
        for case in iter_cases(file):
            valid = [t.data for t in case.tests if t.valid]
            if valid and isinstance(case.schema, dict):
                per_split.setdefault(case.split, []).append(
                    {"id": case.id, "schema": case.schema, "instance": valid[0]})
    picked: list[dict[str, Any]] = []
    share = max(1, n // len(per_split))
    for rows in per_split.values():
        stride = max(1, len(rows) // share)
        picked.extend(rows[::stride][:share])
    return picked[:n]


# Engines (run inside worker processes) -----------------------------------------------------
class Engine:
    def compile(self, schema: dict[str, Any]) -> Any:
        raise NotImplementedError

    def masks(self, grammar: Any, tokens: list[int]) -> list[float]:
        raise NotImplementedError

    def warm(self, schema: dict[str, Any]) -> float | None:
        return None


class LLGuidance(Engine):
    """Raw llguidance. ``layout``: JSON compile options (``x-guidance``) or None for the
    library's defaults (flexible whitespace)."""

    def __init__(self, tokenizer: Any, layout: dict[str, Any] | None = None) -> None:
        import llguidance
        import llguidance.numpy
        import numpy as np

        self.llg, self.tok, self.layout = llguidance, tokenizer, layout
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
        self.fill = llguidance.numpy.fill_next_token_bitmask
        self.np = np

    def compile(self, schema: dict[str, Any]) -> Any:
        if self.layout is None:
            grammar = self.llg.grammar_from("json_schema", json.dumps(schema))
        else:
            grammar = self.llg.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                  overrides=self.layout)
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def masks(self, grammar: Any, tokens: list[int]) -> list[float]:
        m = grammar.deep_copy()
        out = []
        for t in tokens:
            best = math.inf
            for _ in range(MASK_REPEAT):
                t0 = time.perf_counter()
                self.fill(m, self.bitmask, 0)
                best = min(best, time.perf_counter() - t0)
            out.append(best)
            if not m.consume_token(t):
                break
        return out


class Structgen(LLGuidance):
    """structgen's own request path: schema compile (draft upgrade, canonical form, checks),
    then the embedded backend's :class:`LLGuidanceConstraint` exactly as a request uses it
    (grammar-cache key, keyword preparation and relaxation, compile under the backend's
    default compile timeout, a fresh matcher copied from the cached one)."""

    def __init__(self, tokenizer: Any, tok_data: Any) -> None:
        super().__init__(tokenizer)
        from structgen.config import LocalConfig
        from structgen.constrain.base import ConstraintOptions
        from structgen.constrain.grammar_cache import GrammarCache
        from structgen.constrain.llguidance import LLGuidanceConstraint

        self.tok_data = tok_data
        tok_data.ll_tokenizer(), tok_data.hash  # built once per loaded model, not per compile
        self.options = ConstraintOptions()  # the embedded backend's default: compact JSON
        self.timeout_s = LocalConfig().compile_timeout_s
        self.constraint = LLGuidanceConstraint(tok_data, grammar_cache=GrammarCache(),
                                               compile_timeout_s=self.timeout_s)

    def compile(self, schema: dict[str, Any]) -> Any:
        from structgen.tools.conformance import compile_for_check

        self.constraint.grammar_cache.clear()  # type: ignore[union-attr]  # cold: a miss
        output = compile_for_check(schema)
        self.last_output = output
        return self.constraint.matcher(output, self.options).m

    def warm(self, schema: dict[str, Any]) -> float | None:
        times = []
        for _ in range(WARM_REPEAT):
            t0 = time.perf_counter()
            self.constraint.matcher(self.last_output, self.options)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def masks(self, grammar: Any, tokens: list[int]) -> list[float]:
        """Through structgen's Matcher, into a torch bitmask, as the decode loop does."""
        import torch

        from structgen.constrain.llguidance import LLGuidanceMatcher

        m = LLGuidanceMatcher(grammar.deep_copy())
        bitmask = torch.full((1, (self.tok.vocab_size + 31) // 32), -1, dtype=torch.int32)
        out = []
        for t in tokens:
            best = math.inf
            for _ in range(MASK_REPEAT):
                t0 = time.perf_counter()
                m.fill_bitmask(bitmask, 0)
                best = min(best, time.perf_counter() - t0)
            out.append(best)
            if not m.consume(t):
                break
        return out


class XGrammar(Engine):
    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema))

    def masks(self, grammar: Any, tokens: list[int]) -> list[float]:
        m = self.xgr.GrammarMatcher(grammar)
        out = []
        for t in tokens:
            best = math.inf
            for _ in range(MASK_REPEAT):
                t0 = time.perf_counter()
                m.fill_next_token_bitmask(self.bitmask)
                best = min(best, time.perf_counter() - t0)
            out.append(best)
            if not m.accept_token(t):
                break
        return out


class OutlinesCore(Engine):
    def __init__(self, hf_tokenizer: Any) -> None:
        import torch
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema

        eos = hf_tokenizer.eos_token_id
        vocab: dict[str, list[int]] = {}
        for token, tid in hf_tokenizer.get_vocab().items():
            if tid == eos:
                continue
            vocab.setdefault(hf_tokenizer.convert_tokens_to_string([token]), []).append(tid)
        self.vocab = Vocabulary(eos, vocab)
        self.Index, self.Guide, self.regex = Index, Guide, build_regex_from_schema
        self.mask = torch.zeros((len(hf_tokenizer) + 31) // 32, dtype=torch.int32)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.Index(self.regex(json.dumps(schema)), self.vocab)

    def masks(self, grammar: Any, tokens: list[int]) -> list[float]:
        g = self.Guide(grammar)
        out = []
        ptr, numel, size = self.mask.data_ptr(), self.mask.numel(), self.mask.element_size()
        for t in tokens:
            best = math.inf
            for _ in range(MASK_REPEAT):
                t0 = time.perf_counter()
                g.write_mask_into(ptr, numel, size)
                best = min(best, time.perf_counter() - t0)
            out.append(best)
            try:
                g.advance(t)
            except Exception:  # token not allowed: the instance left the grammar
                break
        return out


def make_engine(name: str) -> Engine:
    from structgen.tools.conformance import _tokenizer_json, smollm_tokenizer

    if name == "llguidance":  # the JSON layout structgen compiles by default (compact)
        from structgen.constrain.base import ConstraintOptions
        from structgen.constrain.llguidance import json_options

        return LLGuidance(smollm_tokenizer(), json_options(ConstraintOptions()))
    if name == "llguidance-defaults":
        return LLGuidance(smollm_tokenizer())
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    body = _tokenizer_json()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(body["tokenizer"]),
                                 eos_token="<|im_end|>")
    if name == "structgen":
        from structgen.constrain.base import TokenizerData

        tok = smollm_tokenizer()
        return Structgen(tok, TokenizerData(hf, tok.vocab_size, (body["eos"],)))
    if name == "xgrammar":
        return XGrammar(hf, smollm_tokenizer().vocab_size)
    return OutlinesCore(hf)


def worker(name: str, conn: Any) -> None:
    from structgen.tools.conformance import compact, smollm_tokenizer

    engine = make_engine(name)
    tok = smollm_tokenizer()
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        res: dict[str, Any] = {"id": job["id"]}
        try:
            t0 = time.perf_counter()
            grammar = engine.compile(job["schema"])
            res["compile_s"] = time.perf_counter() - t0
            res["warm_s"] = engine.warm(job["schema"])
            res["mask_s"] = engine.masks(grammar, tok.tokenize_str(compact(job["instance"])))
        except Exception as exc:  # the engine refused the schema: a compile failure
            res["error"] = f"{type(exc).__name__}: {exc}"[:200]
        conn.send(res)


def run_engine(name: str, schemas: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    ctx = mp.get_context("fork")

    def start() -> tuple[Any, Any]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, child), daemon=True)
        proc.start()
        if not parent.poll(300):
            raise RuntimeError(f"{name} worker did not start")
        parent.recv()
        return proc, parent

    proc, conn = start()
    out = []
    for i, job in enumerate(schemas):
        conn.send(job)
        if conn.poll(timeout_s):
            try:
                out.append(conn.recv())
                continue
            except EOFError:
                out.append({"id": job["id"], "error": "worker crashed"})
        else:
            out.append({"id": job["id"], "timeout": True})
        proc.kill()
        proc.join()
        proc, conn = start()
        print(f"  {name}: schema {i} {'timed out' if out[-1].get('timeout') else 'crashed'}",
              file=sys.stderr)
    conn.send(None)
    proc.join(10)
    return out


# Report --------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    compiles = [r["compile_s"] for r in rows if "compile_s" in r]
    warm = [r["warm_s"] for r in rows if r.get("warm_s") is not None]
    masks = [t for r in rows for t in r.get("mask_s", [])]
    return {
        "schemas": len(rows), "compiled": len(compiles),
        "errors": sum("error" in r for r in rows), "timeouts": sum("timeout" in r for r in rows),
        "compile_p50_ms": pct(compiles, 50) * 1e3, "compile_p90_ms": pct(compiles, 90) * 1e3,
        "compile_p99_ms": pct(compiles, 99) * 1e3,
        "warm_p50_us": pct(warm, 50) * 1e6 if warm else None,
        "mask_tokens": len(masks),
        "mask_p50_us": pct(masks, 50) * 1e6, "mask_p99_us": pct(masks, 99) * 1e6,
    }


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_results(stats: dict[str, dict[str, Any]], n: int, timeout_s: float, machine: str,
                  out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = ("compiled", "errors", "timeouts", "compile_p50_ms", "compile_p90_ms",
            "compile_p99_ms", "compile_p50_common_ms", "warm_p50_us", "mask_tokens",
            "mask_p50_us", "mask_p99_us", "mask_p99_common_us")
    sg, llg = stats["structgen"], stats["llguidance"]
    lines = [
        "# Grammar compile and mask time", "",
        f"Machine: {machine}", "",
        f"{n} MaskBench schemas (spread over every split), SmolLM2-135M tokenizer "
        f"(49,152 tokens), one worker process per engine, per-schema limit {timeout_s:g} s. "
        "Compile = schema → ready matcher; mask = the allowed-token bitmask computed before "
        "each token of the schema's first valid instance (compact JSON; best of "
        f"{MASK_REPEAT} per token), through each engine's own API (structgen: its Matcher's "
        "`fill_bitmask` into a torch bitmask, as its decode loop calls it; llguidance: "
        "`llguidance.numpy.fill_next_token_bitmask`, whose argument checks in Python cost "
        "about 1.5 µs a call; the mask work itself is the same library's). Each compile is timed once, cold, right after the "
        "previous schema's mask walk (as a request meets it). **structgen** cold = its whole "
        "request path: the schema compile (draft upgrade, JSON copy, metaschema and "
        "reference checks), then the embedded backend's `LLGuidanceConstraint` with an empty "
        "grammar cache (cache key, keyword preparation and relaxation, llguidance compile, "
        "matcher copy); warm = the same request answered from the grammar cache (median of "
        f"{WARM_REPEAT}). **llguidance** = the raw library with the JSON layout structgen "
        "compiles by default (compact separators, no free whitespace); "
        "**llguidance-defaults** = the library's own default layout (flexible whitespace). "
        "`compiled` = pass count (no error/timeout). `*_common_*`: over the schemas raw "
        "llguidance compiles (like for like: structgen also runs the ones it had to relax).",
        "",
        "| engine | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
    ]
    for name, s in stats.items():
        lines.append(f"| {name} | " + " | ".join(fmt(s.get(c)) for c in cols) + " |")
    lines += [
        "", "## Against the targets", "",
        f"- structgen cold compile p50: {sg['compile_p50_ms']:.3f} ms (target ≤ 1 ms); on "
        f"the schemas raw llguidance compiles: {sg['compile_p50_common_ms']:.3f} ms vs "
        f"{llg['compile_p50_common_ms']:.3f} ms raw",
        f"- structgen warm (cache hit) p50: {fmt(sg['warm_p50_us'])} µs (target ≤ 50 µs)",
        f"- mask p99 on the schemas raw llguidance compiles: structgen "
        f"{sg['mask_p99_common_us']:.1f} µs vs raw llguidance {llg['mask_p99_common_us']:.1f} µs "
        f"(target: no worse); over all schemas each compiled: {sg['mask_p99_us']:.1f} vs "
        f"{llg['mask_p99_us']:.1f} µs",
        "- compiled OK: " + ", ".join(f"{k} {v['compiled']}/{v['schemas']}"
                                       for k, v in stats.items()),
        "", "![compile and mask time](compile_mask.png)", "",
    ]
    (out / "compile_mask.md").write_text("\n".join(lines), encoding="utf-8")
    headline = {
        "structgen cold compile p50 (ms)": round(sg["compile_p50_ms"], 3),
        "structgen warm compile p50 (µs)": round(sg["warm_p50_us"] or float("nan"), 1),
        "cold compile p50 structgen / llguidance (same schemas)": round(
            sg["compile_p50_common_ms"] / llg["compile_p50_common_ms"], 2),
        "mask p99 structgen / llguidance (same schemas)": round(
            sg["mask_p99_common_us"] / llg["mask_p99_common_us"], 2),
        f"compiled OK {'/'.join(stats)}": "/".join(str(v["compiled"]) for v in stats.values()),
    }
    if "xgrammar" in stats:
        headline["compile p50 xgrammar / structgen"] = round(
            stats["xgrammar"]["compile_p50_ms"] / sg["compile_p50_ms"], 1)
    (out / "compile_mask.json").write_text(json.dumps(
        {"name": "compile_mask", "result": "compile_mask.md", "headline": headline,
         "machine": machine, "stats": stats}, indent=2, ensure_ascii=False) + "\n")
    plot(stats, out / "compile_mask.png", machine)


def plot(stats: dict[str, dict[str, Any]], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.27
    for i, q in enumerate(("compile_p50_ms", "compile_p90_ms", "compile_p99_ms")):
        a.bar([x + (i - 1) * width for x in range(len(names))],
              [stats[nm][q] for nm in names], width, label=q.split("_")[1])
    a.set_yscale("log")
    a.set_xticks(range(len(names)), names)
    a.set_ylabel("ms (log)")
    a.set_title("compile time (cold)")
    a.legend()
    for i, q in enumerate(("mask_p50_us", "mask_p99_us")):
        b.bar([x + (i - 0.5) * 0.4 for x in range(len(names))],
              [stats[nm][q] for nm in names], 0.4, label=q.split("_")[1])
    b.set_yscale("log")
    b.set_xticks(range(len(names)), names)
    b.set_ylabel("µs (log)")
    b.set_title("per-token mask time")
    b.legend()
    fig.suptitle(machine, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="number of schemas")
    ap.add_argument("--quick", action="store_true", help="30 schemas")
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from structgen.tools.conformance import machine_line

    n = 30 if args.quick else args.n
    schemas = pick_schemas(n)
    stats: dict[str, dict[str, Any]] = {}
    all_rows: dict[str, list[dict[str, Any]]] = {}
    for name in args.engines.split(","):
        t0 = time.time()
        rows = run_engine(name, schemas, args.timeout_s)
        stats[name] = summarize(rows)
        print(f"{name}: {json.dumps(stats[name])} ({time.time() - t0:.0f}s)", file=sys.stderr)
        all_rows[name] = rows
    if "structgen" in all_rows and "llguidance" in all_rows:
        # mask time on the schemas both compiled (structgen also runs the relaxed ones)
        ok = {r["id"] for r in all_rows["llguidance"] if "compile_s" in r}
        for name in ("structgen", "llguidance"):
            common = summarize([r for r in all_rows[name] if r["id"] in ok])
            stats[name]["mask_p99_common_us"] = common["mask_p99_us"]
            stats[name]["compile_p50_common_ms"] = common["compile_p50_ms"]
    write_results(stats, len(schemas), args.timeout_s, machine_line(), args.out)
    print((args.out / "compile_mask.md").read_text())


if __name__ == "__main__":
    main()
