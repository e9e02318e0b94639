"""Result cache (first version: diskcache, JSON values; hardened in the cache issue)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structgen.schema.canonical import canonical_json, sha256_hex
from structgen.validate import dump_value, validate_data, validate_text

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest
    from structgen.config import CacheConfig
    from structgen.engine import StructuredResult
    from structgen.schema import CompiledOutput

CACHE_FORMAT_VERSION = 1


class NullCache:
    def cacheable(self, request: GenerationRequest) -> bool:
        return False

    def key(self, request: GenerationRequest, backend: str | None = None) -> str:
        return ""

    def get(self, key: str, output: CompiledOutput) -> StructuredResult | None:
        return None

    def put(self, key: str, request: GenerationRequest, result: StructuredResult) -> None:
        return None

    def close(self) -> None:
        return None


class ResultCache(NullCache):
    def __init__(self, config: CacheConfig) -> None:
        import diskcache

        self.config = config
        directory = Path(config.dir or Path.home() / ".cache" / "structgen" / "results")
        self.store = diskcache.Cache(str(directory))

    def cacheable(self, request: GenerationRequest) -> bool:
        s = request.sampling
        return s.temperature == 0 or s.seed is not None or self.config.cache_sampled

    def key(self, request: GenerationRequest, backend: str | None = None) -> str:
        assert request.output is not None
        body = {"v": CACHE_FORMAT_VERSION, "messages": request.messages,
                "schema": request.output.hash, "kind": request.output.kind,
                "model": request.model, "sampling": request.sampling.to_dict()}
        return sha256_hex(canonical_json(body))

    def get(self, key: str, output: CompiledOutput) -> StructuredResult | None:
        from structgen.engine import StructuredResult

        raw = self.store.get(key)
        if not isinstance(raw, str):
            return None
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            self.store.delete(key)
            return None
        outcome = (validate_data(entry["data"], output) if output.kind == "json"
                   else validate_text(entry["data"], output))
        if not outcome.ok:
            self.store.delete(key)
            return None
        return StructuredResult(value=outcome.value, raw_text=entry["text"],
                                backend=entry["backend"], model=entry.get("model", ""),
                                cached=True, cache_key=key)

    def put(self, key: str, request: GenerationRequest, result: StructuredResult) -> None:
        entry = {"data": dump_value(result.value), "text": result.raw_text,
                 "backend": result.backend, "model": result.model, "created_at": time.time()}
        self.store.set(key, json.dumps(entry), expire=self.config.ttl_s)

    def close(self) -> None:
        self.store.close()


def open_result_cache(config: CacheConfig) -> Any:
    if config.backend == "none":
        return NullCache()
    return ResultCache(config)
