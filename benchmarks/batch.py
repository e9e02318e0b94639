"""`structgen batch` against the same requests one at a time through ``Engine.run``.

    nice -n 10 .venv/bin/python benchmarks/batch.py [--requests 48] [--concurrency 8]

Workload: an OpenAI batch file of ``--requests`` distinct ticket-triage requests (a small JSON
Schema: a category enum, a priority 1-5 and a boolean), greedy, at most 48 tokens each, on the
embedded backend with its default model (SmolLM2-135M-Instruct). Each system gets a fresh
result cache (no answer is served from another's run) and a warm engine (the model loaded and
one request answered before the clock starts):

(a) one at a time: ``Engine.run`` per request, in file order;
(b) ``structgen batch``'s job (``read_job`` + ``run_job``: ``--concurrency`` requests in
    flight, the embedded backend batching them, one synced output line each);
(c) the same job again into a new output file: every answer from the result cache.

Valid = an answer line whose content validates against the schema (``jsonschema``).
Writes results/batch.md and results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402
from _common import machine_line  # noqa: E402

from structgen.batch.job import read_job, run_job  # noqa: E402
from structgen.config import Config  # noqa: E402
from structgen.engine import Engine  # noqa: E402
from structgen.errors import StructgenError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MAX_TOKENS = 48
SCHEMA = {"type": "object", "properties": {
    "category": {"enum": ["bug", "feature", "question", "billing"]},
    "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    "needs_reply": {"type": "boolean"}},
    "required": ["category", "priority", "needs_reply"], "additionalProperties": False}
SUBJECTS = ["the login page", "invoices", "the export button", "dark mode", "the API",
            "password reset", "the mobile app", "search results"]
PROBLEMS = ["crashes on open", "is too slow", "shows the wrong total", "needs a CSV option",
            "was charged twice", "how do I enable it?"]


def lines(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ticket = f"Ticket {i}: {SUBJECTS[i % len(SUBJECTS)]} {PROBLEMS[i % len(PROBLEMS)]}"
        out.append({"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [
                        {"role": "system", "content": "Triage the support ticket as JSON."},
                        {"role": "user", "content": ticket}],
                        "response_format": {"type": "json_schema", "json_schema": {
                            "name": "triage", "schema": SCHEMA}},
                        "max_tokens": MAX_TOKENS, "temperature": 0}})
    return out


def engine(cache_dir: Path) -> Engine:
    cfg = Config.load()
    cfg.llm_backend.provider = "local"
    cfg.cache.dir = str(cache_dir)
    cfg.metrics.state_file = str(cache_dir / "metrics.json")
    eng = Engine(cfg)
    eng.run("Warm up.", SCHEMA, max_tokens=MAX_TOKENS, use_cache=False)
    return eng


def valid(content: Any) -> bool:
    try:
        jsonschema.validate(json.loads(content), SCHEMA)
        return True
    except (ValueError, TypeError, jsonschema.ValidationError):
        return False


def one_at_a_time(src: Path, tmp: Path) -> dict[str, Any]:
    eng = engine(tmp / "cache-a")
    items = [x for x in read_job(src) if x.request is not None]
    ok = 0
    t0 = time.perf_counter()
    for item in items:
        assert item.request is not None
        try:
            result = eng.run(item.request.prompt, item.request.output,
                             **item.request.options)
            ok += valid(json.dumps(result.value))
        except StructgenError:
            pass
    elapsed = time.perf_counter() - t0
    eng.close()
    return {"requests": len(items), "elapsed_s": elapsed, "valid": ok}


def batch_job(src: Path, tmp: Path, out: Path, cache: str, concurrency: int,
              eng: Engine | None = None) -> tuple[dict[str, Any], Engine]:
    eng = eng or engine(tmp / cache)
    job = read_job(src)
    t0 = time.perf_counter()
    summary = asyncio.run(run_job(eng, job, out, concurrency=concurrency))
    elapsed = time.perf_counter() - t0
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    ok = sum(valid(a["response"]["body"]["choices"][0]["message"]["content"])
             for a in answers if a["response"])
    return {"requests": len(job), "elapsed_s": elapsed, "valid": ok,
            "cache_hits": summary.cache_hits, "completion_tokens": summary.completion_tokens,
            "repaired": summary.repaired}, eng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--note", default="measured on a shared 2-core machine under load "
                                      "(other jobs running): compare the rows, not the "
                                      "absolute rates")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="structgen-batch-bench-") as d:
        tmp = Path(d)
        src = tmp / "in.jsonl"
        src.write_text("".join(json.dumps(x) + "\n" for x in lines(args.requests)))
        rows = {"a": one_at_a_time(src, tmp)}
        rows["b"], eng = batch_job(src, tmp, tmp / "out-b.jsonl", "cache-b", args.concurrency)
        rows["c"], _ = batch_job(src, tmp, tmp / "out-c.jsonl", "cache-b", args.concurrency,
                                 eng)
        eng.close()
    for row in rows.values():
        row["rate"] = row["requests"] / row["elapsed_s"]
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    report = {"machine": machine_line(), "note": args.note, "load": load, "requests": args.requests,
              "concurrency": args.concurrency, "max_tokens": MAX_TOKENS, "rows": rows,
              "speedup_batch": rows["b"]["rate"] / rows["a"]["rate"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(report, indent=2) + "\n")
    labels = {"a": "one at a time (Engine.run)",
              "b": f"structgen batch (-j {args.concurrency})",
              "c": "structgen batch again (all from the result cache)"}
    md = [f"# structgen batch vs one at a time ({args.requests} requests, SmolLM2-135M, "
          "embedded)", "", f"{machine_line()}", "", f"**{args.note}; {load}.**", "",
          "| system | requests | time (s) | requests/s | valid |", "|---|---|---|---|---|"]
    for key, row in rows.items():
        md.append(f"| {labels[key]} | {row['requests']} | {row['elapsed_s']:.1f} | "
                  f"{row['rate']:.2f} | {row['valid']}/{row['requests']} |")
    md += ["", f"structgen batch: {report['speedup_batch']:.2f}x the one-at-a-time rate "
           f"(target in issue 32: 3x at 1,000 requests). Greedy, at most {MAX_TOKENS} tokens "
           "per answer; made by `benchmarks/batch.py`.",
           "", "Batching shares a decode step among the requests in flight, which pays "
           "where a step is bound by reading the weights; a likely reason it does not pay "
           "here is that on cores other jobs keep busy the step is bound by arithmetic, "
           "which grows with the sequences in it (not measured apart). Read the batch row as: "
           "no faster than one at a time on this box, and every answer "
           "from the cache on a re-run. Figures on an idle machine are still to be made."]
    (RESULTS / "batch.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
