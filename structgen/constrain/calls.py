"""One tool call, one grammar per tool: the matcher of a :class:`~structgen.schema.CallTable`.

A call envelope of 500 tools compiled as one grammar costs every engine every tool's schema
(llguidance ~0.3 ms a tool, XGrammar seconds), though an answer calls one of them. So the
matcher starts on the call's *head*, ``{"name": <one of the names>, "arguments": <any>}``
(a few ms for 500 names), and once the name's closing quote is consumed it switches to
that tool's own call grammar (compiled on first use, cached like any grammar) and replays
the tokens so far into it. From then on it is that tool's matcher.

Exactness: up to the name's closing quote both grammars admit the same tokens (the name,
then the fixed ``","arguments":``), except a token that runs from inside the name past the
whole ``"arguments"`` key into the arguments, where the head's placeholder is looser than
the tool's schema. Such tokens (their bytes contain ``arguments"``; SmolLM2 has none) are
masked out while the head is live, so the head never admits what the tool's grammar
would refuse; a token consumed anyway is checked by the replay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from structgen.constrain.matcher import Matcher

if TYPE_CHECKING:
    import torch

# the call's text up to its name's closing quote, in any layout (compact, spaced, free)
NAME_END = re.compile(rb'\A\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
KEY_END = b'arguments"'  # a head token with this in it would reach into the arguments


def crossing_tokens(token_bytes: list[bytes]) -> frozenset[int]:
    """The tokens masked out while the head is live (see the module docstring)."""
    if KEY_END not in b"\n".join(token_bytes):  # most vocabularies: one scan in C
        return frozenset()
    return frozenset(i for i, b in enumerate(token_bytes) if KEY_END in b)


class CallMatcher(Matcher):
    """The head's matcher until the name is written, then the named tool's."""

    def __init__(self, head: Matcher, resolve: Callable[[str], Matcher],
                 token_bytes: list[bytes], crossing: frozenset[int]) -> None:
        self.head = head
        self.resolve = resolve
        self.token_bytes = token_bytes
        self.crossing = crossing
        self.call: Matcher | None = None
        self.ids: list[int] = []
        self.text = b""
        self.failed: str | None = None
        self.supports_closing = head.supports_closing
        self.closers = head.closers
        self.post_enforced = head.post_enforced

    @property
    def now(self) -> Matcher:
        return self.head if self.call is None else self.call

    def _took(self, tokens: list[int]) -> bool:
        """Record ``tokens`` (taken by the head); switch once the name is complete."""
        self.ids.extend(tokens)
        self.text += b"".join(self.token_bytes[t] for t in tokens)
        found = NAME_END.match(self.text)
        if found is None:
            return True
        call = self.resolve(found.group(1).decode())
        if not call.consume_all(self.ids):  # a crossing token the tool's grammar refuses
            self.failed = f"the call of {found.group(1).decode()} cannot go on this way"
            return False
        self.call = call
        self.post_enforced = tuple(dict.fromkeys((*self.head.post_enforced,
                                                   *call.post_enforced)))
        return True

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.now.fill_bitmask(bitmask, row)
        if self.call is None and self.crossing:
            for token in self.crossing:
                word, bit = divmod(token, 32)
                if word < bitmask.shape[1]:
                    keep = ~(1 << bit) & 0xFFFFFFFF  # int32 words, as signed values
                    bitmask[row, word] &= keep - (1 << 32) if keep >= 1 << 31 else keep

    def consume(self, token: int) -> bool:
        if self.failed is not None:
            return False
        if self.call is not None:
            return self.call.consume(token)
        return self.head.consume(token) and self._took([token])

    def forced_tokens(self) -> list[int]:
        if self.call is not None:
            return self.call.forced_tokens()
        forced = self.head.forced_tokens()
        if not forced or not self._took(forced):
            return []
        return forced if self.call is None else forced + self.call.forced_tokens()

    def is_finished(self) -> bool:
        return self.failed is None and self.now.is_finished()

    def is_accepting(self) -> bool:
        return self.failed is None and self.call is not None and self.call.is_accepting()

    def error(self) -> str | None:
        return self.failed or self.now.error()

    def fork(self) -> CallMatcher:
        out = CallMatcher(self.head if self.call is not None else self.head.fork(),
                          self.resolve, self.token_bytes, self.crossing)
        out.call = None if self.call is None else self.call.fork()
        out.ids, out.text, out.failed = list(self.ids), self.text, self.failed
        out.post_enforced = self.post_enforced
        return out

    def accepts(self, token: int) -> bool:
        if self.call is not None:
            return self.call.accepts(token)
        return token not in self.crossing and self.head.accepts(token)

    def first_allowed(self) -> int | None:
        token = self.now.first_allowed()
        return None if self.call is None and token in self.crossing else token
