"""Where the default's time goes per request: structgen's spaced (the default) and compact
layouts against llama.cpp + GBNF, on the quality benchmark's tasks and prompts.

    nice -n 10 .venv/bin/python benchmarks/layout_speed.py --per-kind 3

Per request: prompt tokens prefilled (the rest came from the prefix cache), time to the
first token (prefill, grammar set-up, first step), answer tokens, forward passes (forced
tokens are fed together, so passes < tokens), and the time per forward pass after the
first token. llama.cpp's own split comes from its performance counters (prompt eval and
eval milliseconds). The three systems run interleaved request by request, each on its
own model instance (SmolLM2-135M Q4_1, 2 threads, greedy), so a shared machine's load
falls on them alike. Writes results/layout_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line  # noqa: E402
from embedded import library_versions  # noqa: E402
from quality import MAX_TOKENS, MODELS, TASKS, Llama, Structgen, messages  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("sg-spaced", "sg-compact", "gbnf")
# more systems to choose from (--systems): the layout with draft tokens from prompt lookup
# ([local] draft_tokens = 4; off by default)
OPTIONAL = ("sg-spaced-draft", "sg-compact-draft")


def structgen_row(runner: Structgen, msgs: list[dict[str, str]], model: type, layout: str,
                  max_tokens: int) -> dict[str, Any]:
    request = runner.engine.build_request(msgs, model, max_tokens=max_tokens)
    request.whitespace = layout
    t0 = time.perf_counter()
    gen = runner.backend.generate(request)
    wall = time.perf_counter() - t0
    s = gen.stats
    ttft = gen.ttft_s or 0.0
    passes = int(s.get("forward_passes", 0))
    return {"wall_s": wall, "ttft_s": ttft, "tokens": gen.completion_tokens,
            "prefill_tokens": int(s.get("prefill_tokens", 0)),
            "cached_tokens": int(s.get("prefix_cache_hit_tokens", 0)),
            "passes": passes, "ff_tokens": int(s.get("ff_tokens", 0)),
            "draft_tokens": int(s.get("draft_tokens", 0)),
            "draft_accepted": int(s.get("draft_accepted", 0)),
            "decode_s": max(0.0, wall - ttft), "text": gen.text}


def gbnf_row(runner: Llama, msgs: list[dict[str, str]], model: type, max_tokens: int
             ) -> dict[str, Any] | None:
    import llama_cpp

    ctx = runner.column.llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    t0 = time.perf_counter()
    text, tokens, stats = runner.run(msgs, model, "", max_tokens)
    wall = time.perf_counter() - t0
    if stats.get("error"):
        return None  # llama.cpp cannot parse this schema's GBNF: nothing to time
    perf = llama_cpp.llama_perf_context(ctx)
    prompt_s, eval_s = perf.t_p_eval_ms / 1000, perf.t_eval_ms / 1000
    return {"wall_s": wall, "ttft_s": prompt_s, "tokens": tokens,
            "prefill_tokens": int(perf.n_p_eval), "cached_tokens": 0,
            "passes": int(perf.n_eval), "ff_tokens": 0, "decode_s": max(0.0, wall - prompt_s),
            "eval_s": eval_s, "text": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=3, help="the first N tasks of each kind")
    ap.add_argument("--examples", default="none", help="as quality.py's columns name them")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated, of {', '.join(SYSTEMS + OPTIONAL)}")
    ap.add_argument("--name", default="layout_speed", help="results/NAME.md and .json")
    args = ap.parse_args()
    systems = tuple(args.systems.split(","))
    unknown = set(systems) - set(SYSTEMS + OPTIONAL)
    if unknown or "gbnf" not in systems:
        ap.error(f"--systems: unknown {sorted(unknown)} (gbnf is the baseline, always in)")
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    tasks = [t for i, t in enumerate(tasks)
             if sum(u["task"] == t["task"] for u in tasks[:i]) < args.per_kind]
    runners = {system: Llama("c") if system == "gbnf" else
               Structgen("llguidance", local={"draft_tokens": 4} if system.endswith("-draft")
                         else None)
               for system in systems}
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for task in tasks:
        msgs = messages(task, args.examples)
        model, budget = MODELS[task["task"]], MAX_TOKENS[task["task"]]
        for system in systems:
            runner = runners[system]
            layout = system.removeprefix("sg-").removesuffix("-draft")
            row = (gbnf_row(runner, msgs, model, budget) if system == "gbnf" else
                   structgen_row(runner, msgs, model, layout, budget))
            if row is not None:
                rows.append({"id": task["id"], "task": task["task"], "system": system, **row})
        print(task["id"], flush=True)
    # the first request of each kind pays the system prompt's prefill in every system;
    # the warm ones are the steady state of an agent that sends one kind of request
    first = {next(t["id"] for t in tasks if t["task"] == k) for k in {t["task"] for t in tasks}}
    both = {r["id"] for r in rows if r["system"] == "gbnf"}
    warm = [r for r in rows if r["id"] not in first and r["id"] in both]

    def mean(system: str, key: str) -> float:
        xs = [r[key] for r in warm if r["system"] == system]
        return statistics.fmean(xs) if xs else 0.0

    n = len({r["id"] for r in warm})
    lines = [
        "# Where the default's time goes: spaced vs compact vs llama.cpp + GBNF",
        "",
        f"Written by `benchmarks/layout_speed.py` (the first {args.per_kind} tasks of each "
        f"kind of `benchmarks/data/quality_tasks.jsonl`, examples: {args.examples}); "
        "SmolLM2-135M-Instruct Q4_1, greedy, 2 threads, the three systems interleaved "
        "request by request, each on its own model instance.",
        "",
        f"Machine: {machine_line()}. Libraries: {library_versions()}.",
        ("**Measured under load** (a 2-core machine shared with other jobs; " if
         max(load_start, os.getloadavg()[0]) > 2.0 else "Quiet machine (this benchmark "
         "alone on the 2 cores; ")
        + f"1-minute load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end): the ratios between systems hold better "
        "than the seconds.",
        "",
        f"Means over the {n} warm requests all three answered (the first of each task kind, "
        "which pays its system prompt's prefill, and the schemas whose GBNF llama.cpp "
        "cannot parse, left out):",
        "",
        "| system | s/request | prefill tokens | time to 1st token s | answer tokens | "
        "forward passes | draft tokens fed / taken | decode s | ms per pass after the 1st "
        "token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        passes, decode = mean(system, "passes"), mean(system, "decode_s")
        drafts = (f"{mean(system, 'draft_tokens'):.1f} / {mean(system, 'draft_accepted'):.1f}"
                  if system != "gbnf" else "-")
        lines.append(
            f"| `{system}` | {mean(system, 'wall_s'):.2f} | {mean(system, 'prefill_tokens'):.0f}"
            f" | {mean(system, 'ttft_s'):.2f} | {mean(system, 'tokens'):.0f} | {passes:.0f} | "
            f"{drafts} | {decode:.2f} | {1000 * decode / max(1.0, passes):.1f} |")
    base = mean("gbnf", "wall_s")
    if base:
        lines += ["", "Against llama.cpp + GBNF on these requests (s/request): " + ", ".join(
            f"`{system}` {mean(system, 'wall_s') / base:.2f}x" for system in systems
            if system != "gbnf") + "."]
    for system in systems:
        if system.endswith("-draft") and system.removesuffix("-draft") in systems:
            plain = system.removesuffix("-draft")
            texts = {(r["id"], r["system"]): r["text"] for r in rows}
            ids = {r["id"] for r in rows if r["system"] == system}
            same = sum(texts.get((i, plain)) == texts[(i, system)] for i in ids)
            lines.append(f"`{system}` and `{plain}` wrote the same answer on {same} of "
                         f"{len(ids)} requests (greedy).")
    lines += ["", "## Per task kind (warm requests): s/request, answer tokens", "",
              "| task | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for kind in dict.fromkeys(t["task"] for t in tasks):
        cells = []
        for system in systems:
            xs = [r for r in warm if r["system"] == system and r["task"] == kind]
            cells.append(f"{statistics.fmean(r['wall_s'] for r in xs):.2f} s, "
                         f"{statistics.fmean(r['tokens'] for r in xs):.0f} tok" if xs else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
