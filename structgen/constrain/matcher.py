"""Per-request grammar state: the one interface the decode loop talks to (every engine's
matcher, and :class:`~structgen.constrain.calls.CallMatcher` over them)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from structgen.constrain.closing import walk_to_accept

if TYPE_CHECKING:
    import torch

    from structgen.schema.support import PostEnforced


def lowest_allowed(row: torch.Tensor) -> int | None:
    """The lowest token id whose bit is set in one bitmask row (int32 words), if any."""
    import torch

    words = torch.nonzero(row).flatten()
    if not len(words):
        return None
    word = int(words[0])
    bits = int(row[word]) & 0xFFFFFFFF
    return word * 32 + (bits & -bits).bit_length() - 1


class Matcher(ABC):
    """Per-request grammar state."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]``."""

    @abstractmethod
    def consume(self, token: int) -> bool:
        """Advance by one token; False when the grammar rejects it."""

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next, already consumed by the matcher ([] = none)."""
        return []

    @abstractmethod
    def is_finished(self) -> bool:
        """True when the grammar admits no further token (only end-of-sequence)."""

    @abstractmethod
    def is_accepting(self) -> bool:
        """True when the text so far is a complete sentence of the grammar."""

    def error(self) -> str | None:
        return None

    # Budget-aware closing: every engine here can copy its state (``fork``), test a token
    # without taking it (``accepts``) and name an allowed token (``first_allowed``); the
    # walk to a complete answer (closing.walk_to_accept) needs nothing else.
    supports_closing: bool = False
    # (candidates, text characters, string enders): see closing_candidates
    closers: tuple[list[int], list[int], frozenset[int]] = ([], [], frozenset())

    def fork(self) -> Matcher:
        """An independent copy of this matcher's state (engines with ``supports_closing``)."""
        raise NotImplementedError

    def accepts(self, token: int) -> bool:
        """True when the grammar takes ``token`` now (the matcher does not move)."""
        return self.fork().consume(token)

    def first_allowed(self) -> int | None:
        """The lowest token id the grammar allows now (None: none is)."""
        raise NotImplementedError

    def closing_path(self, limit: int) -> list[int] | None:
        """A short token path from the current state to a complete sentence, found by
        walking the grammar (at most ``limit`` tokens; None when none is found). The
        matcher itself does not move."""
        return walk_to_accept(self.fork(), limit) if self.supports_closing else None

    def completes_with(self, tokens: list[int]) -> bool:
        """True when ``tokens`` take the current state to a complete sentence (checked on a
        copy; the matcher itself does not move)."""
        m = self.fork()
        return all(m.consume(t) for t in tokens) and m.is_accepting()

    def consume_all(self, tokens: list[int]) -> bool:
        return all(self.consume(t) for t in tokens)

    # what was taken out of the schema so the engine enforces all it is given (validation
    # enforces the rest after decoding); set by GrammarConstraint.matcher
    post_enforced: tuple[PostEnforced, ...] = ()
