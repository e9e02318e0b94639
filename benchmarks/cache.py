"""Cache benchmark → benchmarks/results/cache.md.

1. Result-cache hit latency through ``Engine.run`` (p50, p99) vs a miss on the embedded backend.
2. Compiled-grammar cache: cold compile vs warm from disk (new process) vs warm in memory.
3. Warmup throughput (``run_warmup``, bounded concurrency) vs the backend's own throughput on
   the same requests (``asyncio.gather`` of ``backend.agenerate``, same concurrency, no cache).

    .venv/bin/python benchmarks/cache.py [--model smollm|tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line, pct, results_dir  # noqa: E402

from schemas.intent import Intent  # noqa: E402
from structgen.config import Config  # noqa: E402
from structgen.engine import Engine  # noqa: E402

SMALL = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                          "note": {"type": "string", "maxLength": 24}},
         "required": ["kind", "note"], "additionalProperties": False}


def bench_hits(engine: Engine, n: int = 3000) -> dict[str, Any]:
    from structgen.tools.demo import (
        SYSTEM_PROMPT,  # the intent agent's prompt, as `make demo` runs it
    )

    def chat(user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    prompt = chat("Add a --verbose flag to the CLI in structgen/cli.py")
    t0 = time.perf_counter()
    engine.run(prompt, Intent, max_tokens=256)
    miss_s = time.perf_counter() - t0
    misses = [miss_s]
    for user in ("Run the tests in tests/cache", "Explain what the grammar cache is for"):
        t0 = time.perf_counter()  # more misses: other requests, cache bypassed
        engine.run(chat(user), Intent, max_tokens=256, use_cache=False)
        misses.append(time.perf_counter() - t0)
    hits = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = engine.run(prompt, Intent, max_tokens=256)
        hits.append(time.perf_counter() - t0)
        assert r.cached
    return {"hit_p50_us": pct(hits, 50) * 1e6, "hit_p99_us": pct(hits, 99) * 1e6,
            "miss_s": statistics.median(misses), "n_hits": n, "n_miss": len(misses)}


def bench_grammar(model_dir: Path) -> dict[str, Any]:
    import xgrammar
    from transformers import AutoTokenizer

    from structgen.constrain.grammar_cache import GrammarCache, tokenizer_hash, xgrammar_codec
    from structgen.schema import compile_output

    tok = AutoTokenizer.from_pretrained(model_dir)
    info = xgrammar.TokenizerInfo.from_huggingface(tok)
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
    compiled = compile_output(Intent)
    schema = json.dumps(compiled.json_schema)
    key = (compiled.hash, tokenizer_hash(tok), "xgrammar", importlib.metadata.version("xgrammar"))
    out: dict[str, list[float]] = {"cold": [], "disk": [], "memory": []}
    for _ in range(5):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            GrammarCache(directory=d).get_or_compile(
                key, lambda: compiler.compile_json_schema(schema), codec=xgrammar_codec(info))
            out["cold"].append(time.perf_counter() - t0)
            fresh = GrammarCache(directory=d)  # a restarted process
            t0 = time.perf_counter()
            fresh.get_or_compile(key, lambda: compiler.compile_json_schema(schema),
                                 codec=xgrammar_codec(info))
            out["disk"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fresh.get_or_compile(key, lambda: compiler.compile_json_schema(schema),
                                 codec=xgrammar_codec(info))
            out["memory"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in out.items()}


async def bench_warmup(engine: Engine, n: int, concurrency: int) -> dict[str, Any]:
    from structgen.warmup import read_items, run_warmup

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "w.jsonl"
        src.write_text("".join(json.dumps({"id": i, "prompt": f"warm request {i}",
                                           "schema": SMALL, "max_tokens": 48}) + "\n"
                               for i in range(n)))
        items = read_items(src, engine)
        t0 = time.perf_counter()
        summary = await run_warmup(engine, items, concurrency=concurrency)
        warm_s = time.perf_counter() - t0
        assert summary.counts.get("done") == n, summary.counts
        backend = engine.backend("local")
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            req = engine.build_request(f"warm request {i} (raw)", SMALL, max_tokens=48)
            async with sem:
                await backend.agenerate(req)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        raw_s = time.perf_counter() - t0
    return {"n": n, "concurrency": concurrency, "warmup_rps": n / warm_s,
            "backend_rps": n / raw_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm", "tiny"], default="smollm")
    ap.add_argument("--warmup-n", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="structgen-bench-"))
    if args.model == "tiny":
        from structgen.tools.testing import build_tiny_model

        model_dir = build_tiny_model(tmp / "tiny")
    else:
        from structgen.backends.local.models import default_model_dir

        model_dir = default_model_dir()
    cfg = Config.from_dict({"llm_backend": {"provider": "local", "timeout_s": 600},
                            "local": {"model": str(model_dir)},
                            "cache": {"dir": str(tmp / "cache"),
                                      "grammar_dir": str(tmp / "grammars")}})
    engine = Engine(cfg)
    hits = bench_hits(engine)
    grammar = bench_grammar(model_dir)
    engine.cache.clear()
    warm = asyncio.run(bench_warmup(engine, args.warmup_n, 8))
    engine.close()

    name = "SmolLM2-135M-Instruct" if args.model == "smollm" else "tiny random 2-layer Llama"
    md = f"""# Cache benchmark

Machine: {machine_line()}
Model: {name} on the embedded backend (CPU, float32). Produced by `benchmarks/cache.py --model {args.model}`.

## Result-cache hit vs miss (`Engine.run`, Intent schema, diskcache store)

| path | p50 | p99 | samples |
|---|---|---|---|
| hit | {hits['hit_p50_us']:.0f} µs | {hits['hit_p99_us']:.0f} µs | {hits['n_hits']} |
| miss (generate + validate) | {hits['miss_s'] * 1e3:.0f} ms (median) | | {hits['n_miss']} |

Target hit p50 ≤ 200 µs: **{'met' if hits['hit_p50_us'] <= 200 else 'NOT met'}**.
A hit is {hits['miss_s'] / (hits['hit_p50_us'] / 1e6):,.0f}x faster than a miss. The hit path: build
request (memoized `compile_output`) → SHA-256 key → one SQLite read → checksum → jsonschema-rs +
Pydantic re-validation; no event-loop round trip (answered in the calling thread).

## Compiled-grammar cache (xgrammar, Intent schema, this model's tokenizer; median of 5)

| | time | vs cold |
|---|---|---|
| cold compile | {grammar['cold'] * 1e3:.2f} ms | 1x |
| warm from disk (new process) | {grammar['disk'] * 1e3:.2f} ms | {grammar['cold'] / grammar['disk']:.1f}x faster |
| warm in memory | {grammar['memory'] * 1e6:.1f} µs | {grammar['cold'] / grammar['memory']:,.0f}x faster |

## Warmup throughput ({warm['n']} requests, small schema, max_tokens 48, concurrency {warm['concurrency']})

| | requests/s |
|---|---|
| `structgen warmup` (run_warmup: key, cache check, generate, validate, store, report) | {warm['warmup_rps']:.2f} |
| the backend's own (`agenerate` x {warm['n']}, same concurrency, no cache/validation) | {warm['backend_rps']:.2f} |

Warmup runs at {warm['warmup_rps'] / warm['backend_rps']:.0%} of the backend's own throughput.
"""
    out = results_dir() / "cache.md"
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps({
        "name": "cache", "result": out.name, "machine": machine_line(), "headline": {
            "result-cache hit p50 (target ≤ 200 µs)": f"{hits['hit_p50_us']:.0f} µs",
            "hit vs miss (embedded, SmolLM2)" if args.model == "smollm" else "hit vs miss":
                f"{hits['miss_s'] / (hits['hit_p50_us'] / 1e6):,.0f}x faster",
            "compiled grammar from disk vs cold compile (xgrammar)":
                f"{grammar['cold'] / grammar['disk']:.1f}x faster",
            "warmup / backend throughput": f"{warm['warmup_rps'] / warm['backend_rps']:.0%}",
        }}, indent=1, ensure_ascii=False) + "\n")
    print(md)


if __name__ == "__main__":
    main()
