"""Small shared helpers for the backend tests."""

from __future__ import annotations

from typing import Any

from structgen.backends.base import GenerationRequest
from structgen.config import Config
from structgen.schema import compile_output
from structgen.types import Sampling, normalize_messages

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar",
                 "guided_decoding_backend", "guided_whitespace_pattern", "guided_json_object")


def server_config(backend: str, base_url: str, *, retries: int = 0, **section: Any) -> Config:
    """A config that routes only to ``backend`` at ``base_url`` (no cache, no re-ask)."""
    return Config.from_dict({
        backend: {"base_url": base_url, "retries": retries, "read_timeout_s": 10, **section},
        "llm_backend": {"provider": backend, "fallback": [backend], "timeout_s": 30},
        "cache": {"backend": "none"}, "metrics": {"enabled": False},
        "repair": {"max_retries": 0}})


def request(output: Any, prompt: str = "Fix the failing test in app.py", *,
            max_tokens: int = 64, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=normalize_messages(prompt), output=compile_output(output),
                             sampling=Sampling(max_tokens=max_tokens), **kw)


def walk_keys(obj: Any) -> set[str]:
    """Every key at any depth of a JSON body."""
    if isinstance(obj, dict):
        out = set(obj)
        for v in obj.values():
            out |= walk_keys(v)
        return out
    if isinstance(obj, list):
        out = set()
        for v in obj:
            out |= walk_keys(v)
        return out
    return set()
