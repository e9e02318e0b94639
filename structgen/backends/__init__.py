"""Backends: one file each, one protocol (:class:`~structgen.backends.base.Backend`).

``create_backend(name, config)`` imports the backend's module lazily, so using the vLLM
client never imports torch and using the embedded backend never imports httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structgen.backends.base import (
    Backend,
    BackendBase,
    Capabilities,
    GenerationRequest,
    GenerationResult,
)
from structgen.registry import BACKENDS, lookup

if TYPE_CHECKING:
    from structgen.config import Config

def create_backend(name: str, config: Config) -> Backend:
    """Instantiate backend ``name`` (a registered one, :data:`BACKENDS`) from the config."""
    cls = lookup(BACKENDS, name, "backend")
    backend: Backend = cls(config)
    return backend


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendBase",
    "Capabilities",
    "GenerationRequest",
    "GenerationResult",
    "create_backend",
]
