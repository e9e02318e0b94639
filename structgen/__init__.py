"""structgen: validated structured output from LLMs with grammar-constrained decoding.

>>> from structgen import generate_structured
>>> from schemas.intent import Intent
>>> intent = generate_structured("Add a --verbose flag to cli.py", Intent)  # doctest: +SKIP
"""

import os

# The embedded backend's kernels (llama.cpp, torch) run on OpenMP threads that meet at a
# barrier after every operation, hundreds of times per token. OpenMP's default is to spin
# there for 300,000 rounds: when anything else wants the cores (a test run, an IDE, another
# agent), a spinning thread burns its time slice waiting for one that was preempted
# (benchmarks/results/contention.md: 2 threads with one busy process beside them fell from
# 88 to 28 decode tok/s; with two, 12 requests did not finish in 180 s). Passive waiting
# (sleeping at once) is robust but wakes threads hundreds of times a step: a one-token step
# took 15.2 ms on 2 threads, no faster than 1 (15.5), against 10.6 spinning. A short spin,
# 200 rounds (a few microseconds), keeps nearly all of the idle speed (11.1 ms) and bounds
# what a preempted partner costs; under load the llama.cpp runtime moves its calls onto
# one thread (backends/local/llamacpp_runtime.py, ThreadChooser): end to end 1.30x faster
# than passive waiting on idle cores, as fast beside one or two busy processes. libgomp
# reads this once, when the first OpenMP library loads (torch and llama.cpp alike), so it
# is set here, before either can load; a policy or spin count the user set wins. See
# docs/embedded.md.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "200")

from structgen.batch import agenerate_batch, generate_batch
from structgen.config import Config
from structgen.engine import (
    Engine,
    StructuredResult,
    agenerate_structured,
    astream_structured,
    generate_structured,
    stream_structured,
)
from structgen.errors import (
    BackendError,
    ConfigError,
    SchemaError,
    StructgenError,
    ToolError,
    ValidationFailed,
)
from structgen.schema import CompiledOutput, compile_output
from structgen.streaming import partial_model
from structgen.types import Choice, Grammar, JsonSchema, Regex, ToolCall

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Choice",
    "CompiledOutput",
    "Config",
    "ConfigError",
    "Engine",
    "Grammar",
    "JsonSchema",
    "Regex",
    "SchemaError",
    "StructgenError",
    "StructuredResult",
    "ToolCall",
    "ToolError",
    "ValidationFailed",
    "agenerate_batch",
    "agenerate_structured",
    "astream_structured",
    "compile_output",
    "generate_batch",
    "generate_structured",
    "partial_model",
    "stream_structured",
]
