"""`structgen batch` against the same requests one at a time through ``Engine.run`` and
through llama-cpp-python with a GBNF grammar.

    nice -n 10 .venv/bin/python benchmarks/batch.py [--requests 1000] [--round 100]
        [--concurrency N] [--max-batch 8] [--batching static|continuous] [--systems abcd]
        [--peer-requests N]

Workload: an OpenAI batch file of ``--requests`` distinct requests of one ``--workload``:
``triage`` (ticket triage: a category enum, a priority 1-5 and a boolean, at most 48 tokens;
most of an answer is forced keys, which one request at a time already feeds in one llama.cpp
call) or ``extract`` (a contact's name, email, company and topic copied out of a short note,
at most 64 tokens; most of an answer is sampled tokens, which batching shares). Greedy, on the
embedded backend with its default model (SmolLM2-135M-Instruct). Each system gets a fresh
result cache (no answer is served from another's run) and a warm engine (the model loaded and
one request answered before the clock starts):

(a) one at a time: ``Engine.run`` per request, in file order;
(b) ``structgen batch``'s job (``read_job`` + ``run_job``: ``--concurrency`` requests in
    flight, the embedded backend batching them, one synced output line each);
(c) the same job again into a new output file: every answer from the result cache;
(d) llama-cpp-python, the same GGUF weights and messages, one request after another:
    ``create_chat_completion(grammar=LlamaGrammar.from_json_schema(schema))`` (greedy, the
    same max_tokens), as a user without structgen would loop over the file.

The systems take turns: each round of ``--round`` requests runs on every system, in an order
that rotates from round to round, so a shared machine's changing load falls on all of them
alike; the results files are rewritten after every round (a run stopped early keeps the rounds
it finished). Valid = an answer line whose content validates against the schema
(``jsonschema``). Writes results/NAME.md and results/NAME.json (``--name``, default batch).
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
from _common import machine_line, results_dir  # noqa: E402

from structgen.batch.job import read_job, run_job  # noqa: E402
from structgen.config import Config  # noqa: E402
from structgen.engine import Engine  # noqa: E402
from structgen.errors import StructgenError  # noqa: E402

THREADS = 2  # llama-cpp-python's threads (the machine's cores)
SUBJECTS = ["the login page", "invoices", "the export button", "dark mode", "the API",
            "password reset", "the mobile app", "search results"]
PROBLEMS = ["crashes on open", "is too slow", "shows the wrong total", "needs a CSV option",
            "was charged twice", "how do I enable it?"]
FIRST = ["Ana", "Bram", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
LAST = ["Lopez", "Novak", "Okafor", "Schmidt", "Tanaka", "Varga", "Weiss"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Labs"]


def note(i: int) -> str:
    """The i-th contact note of the extract workload (every one distinct)."""
    first, last = FIRST[i % len(FIRST)], LAST[i % len(LAST)]
    company = COMPANIES[i % len(COMPANIES)]
    email = f"{first.lower()}.{last.lower()}@{company.lower().replace(' ', '')}.com"
    return (f"Note {i}: {first} {last} from {company} ({email}) writes that "
            f"{SUBJECTS[i % len(SUBJECTS)]} {PROBLEMS[i % 5]}.")


class Workload:
    """One kind of request: its schema, its token budget and its i-th request's messages."""

    def __init__(self, name: str, schema: dict[str, Any], max_tokens: int,
                 system: str, user: Any) -> None:
        self.name, self.schema, self.max_tokens = name, schema, max_tokens
        self.system, self.user = system, user

    def lines(self, n: int) -> list[dict[str, Any]]:
        return [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"messages": [{"role": "system", "content": self.system},
                                       {"role": "user", "content": self.user(i)}],
                          "response_format": {"type": "json_schema", "json_schema": {
                              "name": self.name, "schema": self.schema}},
                          "max_tokens": self.max_tokens, "temperature": 0}}
                for i in range(n)]


WORKLOADS = {
    # a label from a small enum, a number and a boolean: most of the answer is forced keys
    "triage": Workload(
        "triage",
        {"type": "object", "properties": {
            "category": {"enum": ["bug", "feature", "question", "billing"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "needs_reply": {"type": "boolean"}},
         "required": ["category", "priority", "needs_reply"], "additionalProperties": False},
        48, "Triage the support ticket as JSON.",
        lambda i: f"Ticket {i}: {SUBJECTS[i % len(SUBJECTS)]} "
                  f"{PROBLEMS[i % len(PROBLEMS)]}"),
    # fields copied out of a short text: most of the answer is the model's own tokens
    "extract": Workload(
        "contact",
        {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 40},
            "email": {"type": "string", "maxLength": 60},
            "company": {"type": "string", "maxLength": 40},
            "topic": {"type": "string", "maxLength": 60}},
         "required": ["name", "email", "company", "topic"], "additionalProperties": False},
        64, "Extract the sender's name, email, company and topic from the note as JSON.",
        note),
}
WORK = WORKLOADS["triage"]  # set by --workload
SCHEMA = WORK.schema
MAX_TOKENS = WORK.max_tokens


def lines(n: int) -> list[dict[str, Any]]:
    return WORK.lines(n)


def engine(cache_dir: Path, args: argparse.Namespace | None = None) -> Engine:
    cfg = Config.load()
    cfg.llm_backend.provider = "local"
    cfg.llm_backend.timeout_s = 900  # a loaded machine is slow, not failing
    if args is not None:
        cfg.local.max_batch = args.max_batch
        cfg.local.batching = args.batching
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


class OneAtATime:
    """(a): ``Engine.run`` per line, in file order."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.eng = engine(tmp / "cache-a", args)

    def run(self, src: Path, _out: Path) -> dict[str, Any]:
        items = [x for x in read_job(src) if x.request is not None]
        ok = 0
        t0 = time.perf_counter()
        for item in items:
            assert item.request is not None
            try:
                result = self.eng.run(item.request.prompt, item.request.output,
                                      **item.request.options)
                ok += valid(json.dumps(result.value))
            except StructgenError:
                pass
        return {"requests": len(items), "elapsed_s": time.perf_counter() - t0, "valid": ok}


class BatchJob:
    """(b) and (c): ``structgen batch``'s job (``read_job`` + ``run_job``) on one engine;
    (c) runs what (b) ran again, into a new output."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.eng = engine(tmp / "cache-b", args)
        self.concurrency = args.concurrency

    def run(self, src: Path, out: Path) -> dict[str, Any]:
        job = read_job(src)
        t0 = time.perf_counter()
        summary = asyncio.run(run_job(self.eng, job, out, concurrency=self.concurrency))
        elapsed = time.perf_counter() - t0
        answers = [json.loads(x) for x in out.read_text().splitlines()]
        ok = sum(valid(a["response"]["body"]["choices"][0]["message"]["content"])
                 for a in answers if a["response"])
        return {"requests": len(job), "elapsed_s": elapsed, "valid": ok,
                "cache_hits": summary.cache_hits, "repaired": summary.repaired,
                "completion_tokens": summary.completion_tokens}


class LlamaCppLoop:
    """(d): llama-cpp-python over the same lines, one at a time, GBNF from the schema."""

    def __init__(self, _tmp: Path, _args: argparse.Namespace) -> None:
        from llama_cpp import Llama

        from structgen.backends.local.models import smollm2_gguf_path

        self.llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=2048, n_threads=THREADS,
                         n_threads_batch=THREADS, verbose=False)
        self.grammars: dict[str, Any] = {}  # one grammar per schema, as a careful user would
        self.answer(lines(1)[0]["body"])  # warm, as the other systems are

    def answer(self, body: dict[str, Any]) -> Any:
        from llama_cpp import LlamaGrammar

        schema = json.dumps(body["response_format"]["json_schema"]["schema"])
        if schema not in self.grammars:
            self.grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
        return self.llm.create_chat_completion(
            body["messages"], grammar=self.grammars[schema], temperature=0.0,
            max_tokens=body["max_tokens"])

    def run(self, src: Path, _out: Path) -> dict[str, Any]:
        bodies = [json.loads(x)["body"] for x in src.read_text().splitlines()]
        ok = tokens = 0
        t0 = time.perf_counter()
        for body in bodies:
            resp = self.answer(body)
            ok += valid(resp["choices"][0]["message"]["content"])
            tokens += int(resp["usage"]["completion_tokens"])
        return {"requests": len(bodies), "elapsed_s": time.perf_counter() - t0, "valid": ok,
                "completion_tokens": tokens}


LABELS = {"a": "one at a time (Engine.run)",
          "b": "structgen batch",
          "c": "structgen batch again (all from the result cache)",
          "d": "llama-cpp-python loop, GBNF (LlamaGrammar.from_json_schema)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--round", type=int, default=100,
                    help="requests per round: each round runs every system on its slice, "
                         "in a rotating order, so a machine's changing load falls on all")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="structgen batch's -j (default: its own, from [local] max_batch)")
    ap.add_argument("--max-batch", type=int, default=8, help="[local] max_batch")
    ap.add_argument("--batching", choices=["static", "continuous"], default="continuous")
    ap.add_argument("--systems", default="abcd", help="which rows to run (a, b, c, d)")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="triage",
                    help="triage: an enum, a number, a boolean (mostly forced keys); "
                         "extract: four string fields copied from a note")
    ap.add_argument("--peer-requests", type=int, default=None,
                    help="run (d) only on the first N requests (its rounds come first)")
    ap.add_argument("--name", default="batch", help="results file name (NAME.md/.json)")
    ap.add_argument("--note", default="measured on a shared 2-core machine under load "
                                      "(other jobs running): compare the rows, not the "
                                      "absolute rates")
    args = ap.parse_args()
    global WORK, SCHEMA, MAX_TOKENS
    WORK = WORKLOADS[args.workload]
    SCHEMA, MAX_TOKENS = WORK.schema, WORK.max_tokens
    load_before = os.getloadavg()[0]
    totals: dict[str, dict[str, Any]] = {}
    all_lines = lines(args.requests)
    with tempfile.TemporaryDirectory(prefix="structgen-batch-bench-") as d:
        tmp = Path(d)
        systems: dict[str, Any] = {}
        if "a" in args.systems:
            systems["a"] = OneAtATime(tmp, args)
        if "b" in args.systems:
            systems["b"] = BatchJob(tmp, args)
        if "d" in args.systems:
            systems["d"] = LlamaCppLoop(tmp, args)
        order = list(systems)
        for k, start in enumerate(range(0, args.requests, args.round)):
            src = tmp / f"in-{k}.jsonl"
            src.write_text("".join(json.dumps(x) + "\n"
                                   for x in all_lines[start:start + args.round]))
            peer_done = args.peer_requests is not None and start >= args.peer_requests
            turn = [x for x in order if not (x == "d" and peer_done)]
            for key in turn[k % len(turn):] + turn[:k % len(turn)]:
                runs = [(key, key)] + ([("c", "b")] if key == "b" and "c" in args.systems
                                       else [])
                for row, system in runs:
                    got = systems[system].run(src, tmp / f"out-{row}-{k}.jsonl")
                    total = totals.setdefault(row, {})
                    for name, value in got.items():
                        total[name] = total.get(name, 0) + value
                    print(f"round {k} ({row})", got, flush=True)
            write_report(args, totals, start + len(all_lines[start:start + args.round]),
                         load_before)
        for system in systems.values():
            if hasattr(system, "eng"):
                system.eng.close()


def write_report(args: argparse.Namespace, totals: dict[str, dict[str, Any]], done: int,
                 load_before: float) -> None:
    """The results so far (rewritten after every round: a stopped run keeps its rounds)."""
    rows = {k: {**v, "rate": v["requests"] / v["elapsed_s"]} for k, v in totals.items()}
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    speedup = {k: rows[k]["rate"] / rows["a"]["rate"] for k in rows} if "a" in rows else {}
    report = {"machine": machine_line(), "note": args.note, "load": load,
              "requests": done, "requests_planned": args.requests, "round": args.round,
              "concurrency": args.concurrency, "max_batch": args.max_batch,
              "batching": args.batching, "workload": args.workload,
              "max_tokens": MAX_TOKENS, "rows": rows,
              "speedup": speedup}
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    jobs = args.concurrency or f"{max(8, 2 * args.max_batch)} (the default)"
    md = [f"# structgen batch vs one at a time ({done} requests, SmolLM2-135M, embedded)",
          "", f"{machine_line()}", "", f"**{args.note}; {load}.**", "",
          f"structgen: `[local] max_batch = {args.max_batch}`, `batching = "
          f"\"{args.batching}\"`, `-j {jobs}`. Greedy, at most {MAX_TOKENS} tokens per "
          f"answer, distinct `{args.workload}` requests ({WORKLOADS[args.workload].system!r} "
          "and a generated text each), the same messages for every system. The systems take "
          f"turns on slices of {args.round} requests, so the machine's load falls on each "
          "alike; made by `benchmarks/batch.py`.", "",
          "| system | requests | time (s) | requests/s | x one at a time | valid |",
          "|---|---|---|---|---|---|"]
    for key in sorted(rows):
        row = rows[key]
        md.append(f"| ({key}) {LABELS[key]} | {row['requests']} | {row['elapsed_s']:.1f} | "
                  f"{row['rate']:.2f} | {speedup.get(key, float('nan')):.2f} | "
                  f"{row['valid']}/{row['requests']} |")
    if "b" in speedup:
        md += ["", f"structgen batch: {speedup['b']:.2f}x the one-at-a-time rate (target in "
               "issue 32: 3x at 1,000 requests)."]
    if "d" in rows and rows["d"]["requests"] < done:
        md += ["", f"(d) ran on the first {rows['d']['requests']} requests only (its rate is "
               "per request; a full run of it did not fit the time)."]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
