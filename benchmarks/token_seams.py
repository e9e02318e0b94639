"""Token boundaries: do structgen's answers reach the model as its tokenizer would write
them? (issue 25: "check token-boundary effects at the prompt/answer seam, inside strings,
fast-forward of forced keys, budget-aware closing")

    nice -n 10 .venv/bin/python benchmarks/token_seams.py

For every answer of the quality benchmark's 47 labelled tasks (SmolLM2-135M Q4_1, greedy,
the default `whitespace = "auto"`), the token ids the decoder fed are compared with the
tokenizer's own encoding of the answer's text (the "canonical" ids: what the model saw in
training). Where they differ, the first difference is traced to its origin (the decoder's
``stats["token_origins"]``: the model's choice, a token the grammar forced, a guard's
replacement, budget closing), and for the model's choices whether the grammar allowed the
canonical token there (if it did not, the constraint bent the model's tokenization: the
distortion this looks for). Also: whether the grammar accepts the whole canonical
encoding of each answer, and whether the prompt's last token would merge with the
answer's first characters (the seam). llama.cpp + GBNF (no forced tokens; the model picks
every token under the grammar) is the peer. Writes results/token_seams.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line, results_dir  # noqa: E402
from embedded import library_versions  # noqa: E402
from quality import MAX_TOKENS, MODELS, TASKS, Llama, Structgen, messages  # noqa: E402

from structgen.tools import seams  # noqa: E402

ENGINES = {"sg": "llguidance", "sgx": "xgrammar"}
EXAMPLES = ("none", "compact", "spaced-turns")
ORIGIN_NAMES = {"m": "model", "f": "forced", "g": "guard", "c": "closing", "t": "think cut"}


def audit(rt: Any, ids: list[int], origins: str, text: str, fresh: Any,
          last_prompt_id: int | None) -> dict[str, Any]:
    """One answer against the tokenizer's encoding of its text (``rt``: the embedded
    runtime, whose tokenizer the decoder uses). ``fresh``: a matcher of the answer's
    grammar at its start (None for a peer without one)."""
    canon = rt.tok.encode(text)
    spans = seams.audit(rt.token_bytes, ids, canon, origins, fresh)
    row: dict[str, Any] = {
        "tokens": len(ids), "canonical_tokens": len(canon), "canonical": ids == canon,
        "origins": Counter(origins),
        "spans": [{"at": d.start, "origin": d.origin, "allowed": d.allowed,
                   "fed": [b.decode("utf-8", "replace") for b in d.fed],
                   "canonical": [b.decode("utf-8", "replace") for b in d.canonical]}
                  for d in spans]}
    if fresh is not None:
        whole = fresh.fork()
        row["grammar_takes_canonical"] = bool(whole.consume_all(canon) and whole.is_accepting())
    if last_prompt_id is not None and text:
        seam_text = rt.text([last_prompt_id]) + text[:16]
        row["seam_merges"] = rt.tok.encode(seam_text)[:1] != [last_prompt_id]
    return row


def structgen_rows(engine: str, examples: str, tasks: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    from structgen.backends.local.decoder import Decoder

    runner = Structgen(engine)
    rt = runner.backend.runtime(None)
    decoder = Decoder(rt, runner.backend.cfg, threading.Event())
    rows = []
    for task in tasks:
        msgs = messages(task, examples)
        req = runner.engine.build_request(msgs, MODELS[task["task"]],
                                          max_tokens=MAX_TOKENS[task["task"]])
        gen = runner.backend.generate(req)
        fresh = rt.engine(engine).matcher(req.output, decoder._options(req))
        prompt = rt.prompt_ids(req)
        row = audit(rt, gen.stats["token_ids"], gen.stats["token_origins"], gen.text, fresh,
                    prompt[-1] if prompt else None)
        rows.append({"id": task["id"], "task": task["task"], "layout": req.whitespace,
                     "text": gen.text, **row})
    return rows


def gbnf_rows(examples: str, tasks: list[dict[str, Any]], rt: Any
              ) -> list[dict[str, Any]]:
    runner = Llama("c")
    llm = runner.column.llm
    fed: list[list[int]] = []
    evaluate = runner.column.llm.eval

    def recording_eval(tokens: Any) -> None:
        fed.append(list(tokens))
        evaluate(tokens)

    setattr(llm, "eval", recording_eval)  # noqa: B010 - a per-instance hook
    rows = []
    for task in tasks:
        fed.clear()
        llm.reset()  # every prompt from its start: the first eval is the whole prompt
        text, _, stats = runner.run(messages(task, examples), MODELS[task["task"]], "",
                                    MAX_TOKENS[task["task"]])
        if stats.get("error"):
            continue
        # after the prompt, llama-cpp-python feeds each sampled token but the last one (an
        # end of text, or the budget's last token, which is then decoded without a pass)
        ids = [t for chunk in fed[1:] for t in chunk]
        got, target = b"".join(rt.token_bytes[t] for t in ids), text.encode()
        if not target.startswith(got):
            continue  # the text is not what was fed (not seen here; left out if it were)
        if got != target:
            ids += rt.tok.encode(target[len(got):].decode("utf-8", "replace"))
        row = audit(rt, ids, "m" * len(ids), text, None, fed[0][-1] if fed else None)
        rows.append({"id": task["id"], "task": task["task"], "layout": "gbnf", "text": text,
                     **row})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    origins: Counter[str] = Counter()
    spans: Counter[str] = Counter()
    for r in rows:
        origins.update(r["origins"])
        spans.update(d["origin"] for d in r["spans"])
    model_spans = [d for r in rows for d in r["spans"] if d["origin"] == "m"]
    return {
        "answers": len(rows), "tokens": sum(r["tokens"] for r in rows),
        "origins": dict(origins), "non_canonical": sum(not r["canonical"] for r in rows),
        "spans": dict(spans),
        "model_choice_canonical_refused": sum(d["allowed"] is False for d in model_spans),
        "grammar_refuses_canonical": sum(r.get("grammar_takes_canonical") is False
                                         for r in rows),
        "seam_merges": sum(bool(r.get("seam_merges")) for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default=",".join(EXAMPLES))
    ap.add_argument("--engines", default="sg,sgx,gbnf")
    ap.add_argument("--per-kind", type=int, default=0, help="the first N tasks of each kind "
                    "(0: all 47)")
    ap.add_argument("--name", default="token_seams")
    args = ap.parse_args()
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    if args.per_kind:
        tasks = [t for i, t in enumerate(tasks)
                 if sum(u["task"] == t["task"] for u in tasks[:i]) < args.per_kind]
    t0 = time.perf_counter()
    columns: dict[str, list[dict[str, Any]]] = {}
    rt: Any = None  # the embedded runtime's tokenizer reads the GBNF answers too
    for examples in args.examples.split(","):
        for system in args.engines.split(","):
            if system == "gbnf":
                continue
            columns[f"{system}/{examples}"] = structgen_rows(ENGINES[system], examples, tasks)
            print(system, examples, summary(columns[f"{system}/{examples}"]), flush=True)
        if "gbnf" in args.engines.split(","):
            if rt is None:
                rt = Structgen("llguidance").backend.runtime(None)
            columns[f"gbnf/{examples}"] = gbnf_rows(examples, tasks, rt)
            print("gbnf", examples, summary(columns[f"gbnf/{examples}"]), flush=True)
    sums = {c: summary(rows) for c, rows in columns.items()}
    lines = [
        "# Token boundaries: structgen's answers against the tokenizer's own encoding",
        "",
        f"Written by `benchmarks/token_seams.py` ({len(tasks)} labelled tasks of "
        "`benchmarks/data/quality_tasks.jsonl`, each answer's fed token ids compared with the "
        "tokenizer's encoding of its text). SmolLM2-135M-Instruct Q4_1, greedy, the default "
        "layout (`whitespace = \"auto\"`); `sg` llguidance, `sgx` XGrammar, `gbnf` "
        "llama-cpp-python with a GBNF grammar (its tokens as fed to `eval`). Examples as "
        "`quality.py` names them.",
        "",
        f"Machine: {machine_line()}. Libraries: {library_versions()}. Counts only: the "
        "machine's load does not change them.",
        "",
        "Columns: *non-canonical*: answers whose ids differ from the tokenizer's; *spans "
        "split otherwise, by origin*: every stretch of an answer's bytes the two encodings "
        "split differently (between boundaries they share), named by the origin of the fed "
        "token that starts it (model = the model's own choice, forced = a token the grammar "
        "forced and the decoder fed, guard = a guard's replacement, closing = budget "
        "closing); *canonical refused*: of the spans a model's choice starts, those where the "
        "grammar did not allow the tokenizer's token (the constraint bending the model's "
        "tokenization); *grammar refuses the canonical "
        "encoding*: answers whose own canonical ids the grammar would not take; *seam "
        "merges*: answers whose first characters would merge with the prompt's last token.",
        "",
        "| column | answers | tokens (model / forced / guard / closing) | non-canonical | "
        "spans split otherwise, by origin | canonical refused | grammar refuses the canonical encoding | "
        "seam merges |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for column, s in sums.items():
        o = s["origins"]
        where = ", ".join(f"{ORIGIN_NAMES.get(k, k)} {v}" for k, v in
                          sorted(s["spans"].items())) or "-"
        refused = "-" if column.startswith("gbnf") else str(s["model_choice_canonical_refused"])
        grammar = "-" if column.startswith("gbnf") else str(s["grammar_refuses_canonical"])
        lines.append(
            f"| `{column}` | {s['answers']} | {s['tokens']} ({o.get('m', 0)} / {o.get('f', 0)}"
            f" / {o.get('g', 0)} / {o.get('c', 0)}) | {s['non_canonical']} | {where} | "
            f"{refused} | {grammar} | {s['seam_merges']} |")
    lines += ["", "## The spans (fed tokens, then the tokenizer's), by column", ""]
    for column, rows in columns.items():
        seen: Counter[str] = Counter()
        for r in rows:
            for d in r["spans"]:
                allowed = "" if d["allowed"] is None else \
                    ("" if d["allowed"] else ", the tokenizer's token refused")
                seen[f"{ORIGIN_NAMES.get(d['origin'], d['origin'])}: {d['fed']} vs "
                     f"{d['canonical']}{allowed}"] += 1
        if seen:
            lines.append(f"- `{column}`: " + "; ".join(
                f"{key}" + (f" ({n}x)" if n > 1 else "") for key, n in seen.most_common(12)))
    lines += ["", f"Run time: {time.perf_counter() - t0:.0f} s.", ""]
    out = results_dir()
    (out / f"{args.name}.md").write_text("\n".join(lines))
    default = sums.get("sg/none") or next(iter(sums.values()))
    headline = {"default: answers": default["answers"],
                "default: non-canonical answers": default["non_canonical"],
                "default: spans a forced token starts": default["spans"].get("f", 0),
                "default: spans where the tokenizer's token was refused":
                    default["model_choice_canonical_refused"],
                "default: seam merges": default["seam_merges"]}
    (out / f"{args.name}.json").write_text(json.dumps(
        {"name": args.name, "result": f"{args.name}.md", "headline": headline,
         "machine": machine_line(), "summary": sums,
         "rows": {c: [{k: (dict(v) if isinstance(v, Counter) else v) for k, v in r.items()}
                      for r in rows] for c, rows in columns.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
