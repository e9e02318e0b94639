"""Router: which backend serves a request, and fallback when one fails.

(First version: explicit backend, configured provider, or the first configured backend in
the fallback order; the next backend on BackendError. Health probes and circuit breakers
come with the router issue.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from structgen.backends import GenerationRequest, GenerationResult
from structgen.errors import BackendError, BackendUnavailable

if TYPE_CHECKING:
    from structgen.engine import Engine


class Router:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def order(self, backend: str | None = None) -> list[str]:
        cfg = self.engine.config
        if backend is not None:
            return [backend]
        if cfg.llm_backend.provider != "auto":
            first = cfg.llm_backend.provider
            rest = [b for b in cfg.llm_backend.fallback if b != first]
            return [first, *[b for b in rest if self._configured(b)]]
        return [b for b in cfg.llm_backend.fallback if self._configured(b)] or ["local"]

    def _configured(self, name: str) -> bool:
        if name == "local":
            return True
        return bool(getattr(self.engine.config, name).base_url)

    async def agenerate(self, request: GenerationRequest, *, backend: str | None = None
                        ) -> tuple[GenerationResult, list[dict[str, Any]]]:
        trail: list[dict[str, Any]] = []
        last: BackendError | None = None
        for name in self.order(backend):
            try:
                result = await self.engine.backend(name).agenerate(request)
            except BackendError as exc:
                trail.append({"backend": name, "ok": False, "error": str(exc)})
                last = exc
                continue
            trail.append({"backend": name, "ok": True})
            return result, trail
        raise last or BackendUnavailable("no backend available")
