"""llama.cpp on busy cores: how OpenMP threads wait at their barriers, and what structgen's
choice gives end to end.

    .venv/bin/python benchmarks/contention.py            # writes results/contention.md

The embedded backend runs next to other work (a test run, an IDE, other agents). llama.cpp's
CPU kernels run on OpenMP threads that meet at a barrier after every operation; OpenMP's
default is to spin there (300,000 rounds), so a thread whose partner was preempted burns its
time slice; passive waiting sleeps at once, and wakes hundreds of times a step. structgen sets
a short spin (``GOMP_SPINCOUNT=200``, structgen/__init__.py) and learns each call's thread
count from the calls (``ThreadChooser``). Two parts, each cell a fresh process (the policy is
read when libgomp loads), with 0, 1 and 2 busy processes (a pure Python loop each) beside it:

1. llama.cpp alone, same GGUF (SmolLM2-135M Q4_1), 2 threads: prefill (300 tokens) and
   decode (64 tokens) speed under each waiting policy;
2. structgen end to end: 12 warm requests of the quality benchmark (intent, extraction and
   reflection tasks, compact worked examples, greedy), the configuration before (passive
   waiting, decode steps on 1 thread), now, and OpenMP's own spin with learned counts.

One run; figures are ratios within it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line, results_dir  # noqa: E402

RESULTS = results_dir()
POLICIES: dict[str, dict[str, str]] = {
    "spin (OpenMP default)": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short spin (structgen: GOMP_SPINCOUNT=200)": {"GOMP_SPINCOUNT": "200"},
}
# (environment, [local] settings) of the end-to-end cells
CONFIGS: dict[str, tuple[dict[str, str], dict[str, int]]] = {
    "before: passive, steps on 1 thread": ({"OMP_WAIT_POLICY": "PASSIVE"},
                                           {"decode_threads": 1}),
    "now: short spin, learned counts": ({}, {}),
    "OpenMP's own spin, learned counts": ({"GOMP_SPINCOUNT": "300000"}, {}),
}
BUSY = (0, 1, 2)
PROMPT, DECODE = 300, 64

CELL = """
import json, time
import llama_cpp as lc
from structgen.backends.local.models import resolve_gguf
lc.llama_backend_init()
model = lc.llama_model_load_from_file(str(resolve_gguf(None)).encode(),
                                      lc.llama_model_default_params())
cp = lc.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, 512, 512, 1
cp.n_threads = cp.n_threads_batch = 2
ctx = lc.llama_init_from_model(model, cp)
b = lc.llama_batch_init(512, 0, 1)
def decode(tokens, pos0):
    for k, t in enumerate(tokens):
        b.token[k], b.pos[k], b.n_seq_id[k] = t, pos0 + k, 1
        b.seq_id[k][0], b.logits[k] = 0, k == len(tokens) - 1
    b.n_tokens = len(tokens)
    assert lc.llama_decode(ctx, b) == 0
toks = [(i * 7919) % 40000 + 100 for i in range(PROMPT_N)]
decode(toks[:16], 0)
lc.llama_memory_seq_rm(lc.llama_get_memory(ctx), 0, -1, -1)
t = time.perf_counter(); decode(toks, 0); prefill = time.perf_counter() - t
t = time.perf_counter()
for i in range(DECODE_N):
    decode([toks[i]], PROMPT_N + i)
print(json.dumps({"prefill_tok_s": PROMPT_N / prefill,
                  "decode_tok_s": DECODE_N / (time.perf_counter() - t)}))
""".replace("PROMPT_N", str(PROMPT)).replace("DECODE_N", str(DECODE))

END_TO_END = """
import hashlib, json, sys, time
sys.path.insert(0, "benchmarks")
import structgen
from quality import MAX_TOKENS, MODELS, TASKS, Structgen, messages
tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
picked, kinds = [], {}
for t in tasks:
    if t["task"] in ("intent", "extract", "reflection") and kinds.get(t["task"], 0) < 4:
        kinds[t["task"]] = kinds.get(t["task"], 0) + 1
        picked.append(t)
runner = Structgen("llguidance", local=LOCAL)
def once():
    texts, start = [], time.perf_counter()
    for t in picked:
        request = runner.engine.build_request(messages(t, "compact"), MODELS[t["task"]],
                                              max_tokens=MAX_TOKENS[t["task"]])
        texts.append(runner.backend.generate(request).text)
    return time.perf_counter() - start, texts
once()  # prompts into the prefix cache, the thread choice learned
seconds, texts = once()
print(json.dumps({"seconds": seconds, "requests": len(texts),
                  "answers": hashlib.sha256("\\x00".join(texts).encode()).hexdigest()[:12]}))
"""


def _burn() -> None:
    while True:
        pass


def run(code: str, extra_env: dict[str, str], busy: int, timeout_s: float
        ) -> dict[str, object]:
    """One cell; a cell still running after ``timeout_s`` is recorded as such."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra_env)
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(busy)]
    for p in burners:
        p.start()
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout_s, check=True)
        result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        result = {"timeout_s": timeout_s}
    finally:
        for p in burners:
            p.kill()
            p.join()
    result["loadavg_1min"] = round(os.getloadavg()[0], 1)
    return result


def _cell(r: dict[str, object], key: str, fmt: str) -> str:
    return format(r[key], fmt) if key in r else f"> {r['timeout_s']} s"


def main() -> None:
    kernels: dict[str, dict[int, dict[str, object]]] = {n: {} for n in POLICIES}
    ends: dict[str, dict[int, dict[str, object]]] = {n: {} for n in CONFIGS}
    for busy in BUSY:
        for name, env in POLICIES.items():
            kernels[name][busy] = run(CELL, env, busy, 600)
            print(name, busy, kernels[name][busy], flush=True)
            time.sleep(1)
        for name, (env, local) in CONFIGS.items():
            # 12 requests take 8-20 s; OpenMP's own spin beside two busy processes runs
            # for many minutes (seconds a step), and is cut
            ends[name][busy] = run(END_TO_END.replace("LOCAL", repr(local or None)), env,
                                   busy, 180)
            print(name, busy, ends[name][busy], flush=True)
            time.sleep(1)
    lines = [
        "# llama.cpp on busy cores: how OpenMP threads wait, and structgen end to end",
        "",
        f"Machine: {machine_line()}. Produced by `benchmarks/contention.py` (one run); each "
        "cell a fresh process, with N busy processes (a pure Python loop each) running "
        "beside it at the same priority.",
        "",
        f"## llama.cpp alone: SmolLM2-135M-Instruct Q4_1, 2 threads; prefill of {PROMPT} "
        f"tokens, then {DECODE} single-token decode steps",
        "",
        "| busy processes | policy | prefill tok/s | decode tok/s | load average after |",
        "|---|---|---|---|---|",
    ]
    for busy in BUSY:
        for name in POLICIES:
            r = kernels[name][busy]
            lines.append(f"| {busy} | {name} | {_cell(r, 'prefill_tok_s', '.0f')} | "
                         f"{_cell(r, 'decode_tok_s', '.1f')} | {r['loadavg_1min']} |")
    lines += ["", "## structgen end to end: 12 warm requests (quality tasks: 4 intent, 4 "
              "extraction, 4 reflection; compact worked examples; greedy)", "",
              "| busy processes | configuration | seconds | answers (hash) | load average "
              "after |", "|---|---|---|---|---|"]
    for busy in BUSY:
        for name in CONFIGS:
            r = ends[name][busy]
            lines.append(f"| {busy} | {name} | {_cell(r, 'seconds', '.2f')} | "
                         f"`{r.get('answers', '-')}` | {r['loadavg_1min']} |")
    before, now = (ends[n] for n in list(CONFIGS)[:2])
    lines += ["", "End to end, before over now (seconds): " + ", ".join(
        f"{b} busy {float(before[b]['seconds']) / float(now[b]['seconds']):.2f}x"  # type: ignore[arg-type]
        for b in BUSY) + ".", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contention.md").write_text("\n".join(lines))
    (RESULTS / "contention.json").write_text(json.dumps(
        {"name": "contention", "machine": machine_line(), "kernels": {
            n: {str(b): v for b, v in t.items()} for n, t in kernels.items()},
         "end_to_end": {n: {str(b): v for b, v in t.items()} for n, t in ends.items()}},
        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
