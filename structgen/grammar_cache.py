"""Compiled-grammar cache: compiled grammars kept in memory (LRU), keyed by
(schema hash, tokenizer hash, engine, engine version).

(First version: memory only. The cache issue adds the disk layer, compile timeouts and
the record of schemas that timed out.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class GrammarCache:
    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._mem: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compile(self, key: tuple[str, str, str, str], compile_fn: Callable[[], T],
                       *, timeout_s: float | None = None) -> T:
        """Return the cached compiled grammar for ``key`` or compile (and keep) it.

        ``key`` = (schema hash, tokenizer hash, engine name, engine version).
        """
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]  # type: ignore[no-any-return]
            self.misses += 1
        value = compile_fn()
        with self._lock:
            self._mem[key] = value
            while len(self._mem) > self.max_entries:
                self._mem.popitem(last=False)
        return value


_default: GrammarCache | None = None


def default_grammar_cache() -> GrammarCache:
    global _default
    if _default is None:
        _default = GrammarCache()
    return _default
