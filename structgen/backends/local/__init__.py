"""The embedded CPU backend (the default): structgen's own constrained decode loop on a
llama.cpp (GGUF) or transformers model runtime, in-process."""

from structgen.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
