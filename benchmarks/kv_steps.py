"""What a decode step costs in each KV cache layout: llama.cpp's unified cache (every row of
a step attends over every cell in use) against a KV stream per sequence, for rows whose
sequences share one prompt and rows whose prompts differ.

    .venv/bin/python benchmarks/kv_steps.py

SmolLM2-135M Q4_1 (the bundled GGUF), 2 threads, flash attention off (structgen's
settings), 4 sequences of 650 prompt tokens each; a step feeds each listed sequence the
given number of tokens; median of 15 steps, the step's cells removed after each. Writes
results/kv_steps.md and .json. The end-to-end effect is `concurrency.py --systems a,b,d,e`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _common import machine_line, results_dir  # noqa: E402

import structgen  # noqa: E402,F401 (its OpenMP spin, before llama.cpp loads)

PROMPT = 650
SEQS = 4
STEPS: list[tuple[str, list[tuple[int, int]]]] = [
    ("1 row", [(0, 1)]),
    ("4 rows, 1 token each", [(s, 1) for s in range(SEQS)]),
    ("4 rows, 4 tokens each", [(s, 4) for s in range(SEQS)]),
    ("4 rows, 1/5/1/3 tokens", [(0, 1), (1, 5), (2, 1), (3, 3)]),
]


def run(lc: Any, model: Any, unified: bool, shared: bool) -> list[float]:
    cp = lc.llama_context_default_params()
    cp.n_ctx = 8192
    cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = 2
    cp.n_seq_max = SEQS
    cp.kv_unified = unified
    cp.no_perf = True
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lc.llama_init_from_model(model, cp)
    mem = lc.llama_get_memory(ctx)
    batch = lc.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:
        for k, (s, tok, pos, out) in enumerate(items):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, pos, 1
            batch.seq_id[k][0], batch.logits[k] = s, out
        batch.n_tokens = len(items)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        for s in range(SEQS):
            if shared and s > 0:  # the cells of sequence 0's prompt gain this id
                lc.llama_memory_seq_cp(mem, 0, s, -1, -1)
                continue
            toks = [(7 * s + 31 * i) % 40000 + 50 for i in range(PROMPT)]
            for a in range(0, PROMPT, 256):
                decode([(s, toks[i], i, i == PROMPT - 1)
                        for i in range(a, min(PROMPT, a + 256))])
        medians = []
        for _, counts in STEPS:
            times = []
            for _ in range(15):
                items = [(s, 500 + j, PROMPT + j, j == n - 1) for s, n in counts
                         for j in range(n)]
                t0 = time.perf_counter()
                decode(items)
                times.append(time.perf_counter() - t0)
                for s, _ in counts:
                    lc.llama_memory_seq_rm(mem, s, PROMPT, -1)
            medians.append(1000 * statistics.median(times))
        return medians
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def main() -> None:
    import llama_cpp as lc

    from structgen.backends.local.models import smollm2_gguf_path

    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(smollm2_gguf_path()).encode(),
                                          lc.llama_model_default_params())
    columns = {
        "unified, one shared prompt": run(lc, model, True, True),
        "unified, 4 different prompts": run(lc, model, True, False),
        "a stream per sequence, 4 different prompts": run(lc, model, False, False),
    }
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = ["# Decode step cost per KV cache layout", "",
             f"Written by `benchmarks/kv_steps.py`. Machine: {machine_line()}. Load average "
             f"before: {load}.", "",
             f"SmolLM2-135M Q4_1, 2 threads, flash attention off; {SEQS} sequences of "
             f"{PROMPT} prompt tokens; median ms of 15 steps (the step's cells removed "
             "after each).", "",
             "| step | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for i, (name, _) in enumerate(STEPS):
        lines.append(f"| {name} | " + " | ".join(f"{col[i]:.1f}" for col in columns.values())
                     + " |")
    lines.append("")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv_steps.md").write_text("\n".join(lines))
    (out / "kv_steps.json").write_text(json.dumps(
        {"prompt_tokens": PROMPT, "sequences": SEQS, "steps": [name for name, _ in STEPS],
         "median_ms": columns, "machine": machine_line(), "load": load}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
