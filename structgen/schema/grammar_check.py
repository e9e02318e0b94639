"""Check a finished text against a Lark grammar, independent of any model tokenizer.

llguidance needs a tokenizer; a byte-level one (token i = byte i, plus an EOS) lets us
feed the text byte by byte and ask whether the grammar accepts it at the end.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class _ByteTokenizer:
    eos_token_id = 256
    bos_token_id = None
    special_token_ids = [256]
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]

    def __call__(self, s: bytes) -> list[int]:
        return list(s)


@lru_cache(maxsize=1)
def byte_tokenizer() -> Any:
    import llguidance

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))


def grammar_accepts(lark: str, text: str) -> tuple[bool, str]:
    """(accepted, reason) for ``text`` under the Lark grammar ``lark``."""
    import llguidance

    # log_level=0: a rejected byte is the answer we asked for, not something to print on
    # stderr (at the default level llguidance writes "Warning: ... stopping" there).
    matcher = llguidance.LLMatcher(byte_tokenizer(), llguidance.grammar_from("lark", lark),
                                   log_level=0)
    if matcher.is_error():
        return False, f"grammar error: {matcher.get_error()}"
    data = text.encode("utf-8")
    for i, b in enumerate(data):
        if not matcher.consume_token(b):
            return False, f"grammar rejects the text at byte {i} ({data[max(0, i - 20):i + 1]!r})"
    if not matcher.is_accepting():
        return False, "text is an incomplete sentence of the grammar"
    return True, ""
