"""structgen: validated structured output from LLMs with grammar-constrained decoding.

>>> from structgen import generate_structured
>>> from schemas.intent import Intent
>>> intent = generate_structured("Add a --verbose flag to cli.py", Intent)  # doctest: +SKIP
"""

from structgen.config import Config
from structgen.engine import (
    Engine,
    StructuredResult,
    agenerate_structured,
    generate_structured,
)
from structgen.errors import (
    BackendError,
    ConfigError,
    SchemaError,
    StructgenError,
    ValidationFailed,
)
from structgen.schema import CompiledOutput, compile_output
from structgen.types import Choice, Grammar, JsonSchema, Regex

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
    "ValidationFailed",
    "agenerate_structured",
    "compile_output",
    "generate_structured",
]
