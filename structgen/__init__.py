"""structgen: validated structured output from LLMs with grammar-constrained decoding.

>>> from structgen import generate_structured
>>> from schemas.intent import Intent
>>> intent = generate_structured("Add a --verbose flag to cli.py", Intent)  # doctest: +SKIP
"""

import os

# The embedded backend's kernels (llama.cpp, torch) run on OpenMP threads that meet at a
# barrier after every operation, hundreds of times per token, and OpenMP's default is to spin
# there. When anything else wants the cores (a test run, an IDE, another agent), a spinning
# thread burns its time slice waiting for one that was preempted. Measured on 2 cores
# (benchmarks/results/contention.md): with 1-2 busy processes passive waiting decodes 1.9x
# faster, at a load of ~9 spinning fell to 0.9-1.7 tok/s against 14-17; on idle cores
# passive costs 24%. libgomp reads this once, when the first OpenMP library loads (torch and
# llama.cpp share one), so it is set here, before either can load; a value the user set
# wins. See docs/embedded.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
