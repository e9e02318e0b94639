"""The registry: backends and constraint engines by name, each declared by its own class.

A backend names itself in its class line (``class TinyBackend(BackendBase, name="tiny")``),
a constraint engine by its support row (``class TinyConstraint(GrammarConstraint,
support=TINY, package=...)``); defining the class registers it here, and every list that
names them reads this one: the config's ``provider``, ``fallback`` and ``[local] engine``,
the backend pool, warmup files. A backend's own settings are its class's ``settings`` model:
the config reads them from a section named as the backend. So a new backend or engine is one file.

The built-in ones are named by where they live until their module is imported (on first
use: the vLLM client never imports torch, nor the embedded backend httpx); the order of the
built-in backends is the default ``fallback``. Nothing here imports a backend or engine
module at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

from structgen.errors import ConfigError, did_you_mean

BACKENDS: dict[str, Any] = {
    "vllm": "structgen.backends.vllm:VLLMBackend",
    "sglang": "structgen.backends.sglang:SGLangBackend",
    "ollama": "structgen.backends.ollama:OllamaBackend",
    "local": "structgen.backends.local:LocalBackend",
}
BUILT_IN_BACKENDS = tuple(BACKENDS)

# The config section of a backend declared outside structgen/config.py: its class's
# ``settings`` model, by the backend's name; ``Config`` takes it as ``[<name>]``.
SECTIONS: dict[str, Any] = {}

ENGINES: dict[str, Any] = {
    "llguidance": "structgen.constrain.llguidance:LLGuidanceConstraint",
    "xgrammar": "structgen.constrain.xgrammar:XGrammarConstraint",
    "outlines": "structgen.constrain.outlines:OutlinesConstraint",
}


def lookup(table: dict[str, Any], name: str, what: str, key: str | None = None) -> Any:
    """The class registered as ``name`` in ``table`` (imported on first use); a
    :class:`ConfigError` naming the known ones (and the closest) for any other name."""
    found = table.get(name)
    if found is None:
        raise ConfigError(f"unknown {what} {name!r}{did_you_mean(name, table)} "
                          f"(known: {', '.join(table)})", key)
    if isinstance(found, str):
        module_name, _, cls_name = found.partition(":")
        found = getattr(importlib.import_module(module_name), cls_name)
    return found
