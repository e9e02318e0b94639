"""llama.cpp on busy cores: OpenMP threads spinning at their barriers vs waiting passively.

    .venv/bin/python benchmarks/contention.py            # writes results/contention.md

The embedded backend runs next to other work (a test run, an IDE, other agents). llama.cpp's
CPU kernels run on OpenMP threads that meet at a barrier after every operation; OpenMP's
default is to spin there, so a thread whose partner was preempted burns its time slice.
structgen sets ``OMP_WAIT_POLICY=PASSIVE`` (structgen/__init__.py). This measures both
policies, same GGUF (SmolLM2-135M Q4_1), 2 threads, with 0, 1 and 2 busy processes (a pure
Python loop each) on the machine: prefill (300 tokens) and decode (64 tokens) speed, each
cell in a fresh process (the policy is read when libgomp loads). One run; figures are
ratios within it.
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
POLICIES = {"spin (OpenMP default)": None, "passive (structgen)": "PASSIVE"}
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


def _burn() -> None:
    while True:
        pass


def cell(policy: str | None, busy: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(busy)]
    for p in burners:
        p.start()
    try:
        out = subprocess.run([sys.executable, "-c", CELL], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600, check=True)
    finally:
        for p in burners:
            p.kill()
            p.join()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    table: dict[str, dict[int, dict[str, float]]] = {}
    for name, policy in POLICIES.items():
        table[name] = {}
        for busy in BUSY:
            table[name][busy] = cell(policy, busy)
            table[name][busy]["loadavg_1min"] = round(os.getloadavg()[0], 1)
            print(name, busy, table[name][busy], flush=True)
            time.sleep(1)
    spin, passive = (table[n] for n in POLICIES)
    lines = [
        "# llama.cpp on busy cores: OpenMP spin vs passive waiting",
        "",
        f"Machine: {machine_line()}. Produced by `benchmarks/contention.py` (one run).",
        "",
        f"SmolLM2-135M-Instruct Q4_1 GGUF, 2 threads; prefill of {PROMPT} tokens, then "
        f"{DECODE} single-token decode steps; each cell a fresh process, with N busy "
        "processes (a pure Python loop each) running beside it at the same priority.",
        "",
        "| busy processes | policy | prefill tok/s | decode tok/s | load average after |",
        "|---|---|---|---|---|",
    ]
    for busy in BUSY:
        for name in POLICIES:
            r = table[name][busy]
            lines.append(f"| {busy} | {name} | {r['prefill_tok_s']:.0f} | "
                         f"{r['decode_tok_s']:.1f} | {r['loadavg_1min']} |")
    lines += ["", "Decode speed, passive over spin: " + ", ".join(
        f"{b} busy {passive[b]['decode_tok_s'] / spin[b]['decode_tok_s']:.2f}x" for b in BUSY)
        + ".", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contention.md").write_text("\n".join(lines))
    (RESULTS / "contention.json").write_text(json.dumps(
        {"name": "contention", "machine": machine_line(),
         "table": {n: {str(b): v for b, v in t.items()} for n, t in table.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
