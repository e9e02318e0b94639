"""The backend pool: one instance per backend name, created on first use.

The engine owns the pool; the router and the repair loop receive it (or a callable built
on it), never the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from structgen.backends import BACKENDS, Backend, create_backend

if TYPE_CHECKING:
    from structgen.config import Config


class BackendPool:
    """Backends by name: those handed in (``Engine(backends=...)``) and those created from
    the config on first use."""

    def __init__(self, config: Config, given: dict[str, Backend] | None = None) -> None:
        self.config = config
        self._given = frozenset(given or {})
        self._backends: dict[str, Backend] = dict(given or {})

    def get(self, name: str) -> Backend:
        """The backend ``name``; ConfigError for a name neither given nor registered."""
        if name not in self._backends:
            self._backends[name] = create_backend(name, self.config)
        return self._backends[name]

    def given(self, name: str) -> bool:
        """Was ``name`` handed in? (It counts as configured whatever its config section.)"""
        return name in self._given

    def knows(self, name: str) -> bool:
        """Can :meth:`get` serve ``name`` (a registered or a handed-in backend)?"""
        return name in BACKENDS or name in self._backends

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self), return_exceptions=True)
