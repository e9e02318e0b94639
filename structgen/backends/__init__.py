"""Backends: one file each, one protocol (:class:`~structgen.backends.base.Backend`).

``create_backend(name, config)`` imports the backend's module lazily, so using the vLLM
client never imports torch and using the embedded backend never imports httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from structgen.backends.base import (
    Backend,
    BackendBase,
    Capabilities,
    GenerationRequest,
    GenerationResult,
)
from structgen.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from structgen.config import Config

REGISTRY: dict[str, str] = {
    "local": "structgen.backends.local:LocalBackend",
    "vllm": "structgen.backends.vllm:VLLMBackend",
    "sglang": "structgen.backends.sglang:SGLangBackend",
    "ollama": "structgen.backends.ollama:OllamaBackend",
}


def create_backend(name: str, config: Config) -> Backend:
    """Instantiate backend ``name`` from its config section."""
    try:
        module_name, _, cls_name = REGISTRY[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}{did_you_mean(name, REGISTRY)} "
                          f"(known: {', '.join(REGISTRY)})") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(config)


__all__ = [
    "REGISTRY",
    "Backend",
    "BackendBase",
    "Capabilities",
    "GenerationRequest",
    "GenerationResult",
    "create_backend",
]
