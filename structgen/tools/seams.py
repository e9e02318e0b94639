"""Token-boundary audit: where an answer's token ids differ from the tokenizer's own
encoding of its text, and why.

A model is trained on the tokenizer's (canonical) encoding of text. A grammar engine can
make the decoder feed other splits of the same bytes: a forced run tokenized on its own
(``{`` + ``"kind`` where the tokenizer writes ``{"`` + ``kind``), a token the mask refuses
although the text it starts is allowed, a closing path tokenized apart from what came
before it. The model then reads a text it never saw that way, which costs content (issue
25). :func:`divergences` finds every place the two encodings split the answer's bytes
differently and names the origin of the fed token that starts it (the decoder's
``stats["token_origins"]``: ``m`` the model's choice, ``f`` forced, ``g`` a guard, ``c``
budget closing, ``t`` a think cut); :func:`audit` adds whether the grammar allowed the
tokenizer's token there (if not, the constraint bent the tokenization). Used by
``benchmarks/token_seams.py`` and ``tests/backends/test_token_seams.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class _Forkable(Protocol):
    def fork(self) -> Any: ...


@dataclass(frozen=True)
class Divergence:
    """A span of the answer's bytes the two encodings split differently."""

    start: int  # byte offset where the span starts (a boundary both encodings share)
    fed_index: int  # the fed token that starts it (an index into the answer's ids)
    canonical_index: int  # the tokenizer's token that starts it
    origin: str  # that fed token's origin letter ("?" when unknown)
    fed: tuple[bytes, ...]  # the span's tokens as fed
    canonical: tuple[bytes, ...]  # and as the tokenizer writes them
    allowed: bool | None = None  # the grammar allowed the tokenizer's token there (audit)


def _ends(pieces: Sequence[bytes]) -> list[int]:
    out, at = [], 0
    for p in pieces:
        at += len(p)
        out.append(at)
    return out


def divergences(token_bytes: Sequence[bytes], ids: Sequence[int], canonical: Sequence[int],
                origins: str = "") -> list[Divergence]:
    """Every span between byte boundaries both encodings share where their tokens differ,
    in order. ``token_bytes[i]``: token ``i``'s bytes; ``ids``: the ids fed;
    ``canonical``: the tokenizer's encoding of the same bytes."""
    fed = [token_bytes[i] for i in ids]
    canon = [token_bytes[i] for i in canonical]
    fed_ends, canon_ends = _ends(fed), _ends(canon)
    shared = sorted(set(fed_ends) & set(canon_ends) | {0})
    fed_at = {0: 0, **{e: i + 1 for i, e in enumerate(fed_ends)}}  # boundary -> next token
    canon_at = {0: 0, **{e: i + 1 for i, e in enumerate(canon_ends)}}
    out = []
    for a, b in itertools.pairwise(shared):
        i, j = fed_at[a], canon_at[a]
        fi, cj = fed_at[b], canon_at[b]
        if list(ids[i:fi]) != list(canonical[j:cj]):
            out.append(Divergence(a, i, j, origins[i] if i < len(origins) else "?",
                                  tuple(fed[i:fi]), tuple(canon[j:cj])))
    return out


def audit(token_bytes: Sequence[bytes], ids: Sequence[int], canonical: Sequence[int],
          origins: str, fresh: _Forkable | None) -> list[Divergence]:
    """:func:`divergences`, each marked with whether the grammar (``fresh``: a matcher at
    the answer's start) allowed the tokenizer's token where the span starts."""
    found = divergences(token_bytes, ids, canonical, origins)
    if fresh is None:
        return found
    marked = []
    for d in found:
        ahead = fresh.fork()
        ok = bool(ahead.consume_all(list(ids[:d.fed_index]))
                  and ahead.accepts(canonical[d.canonical_index]))
        marked.append(Divergence(d.start, d.fed_index, d.canonical_index, d.origin, d.fed,
                                 d.canonical, ok))
    return marked
