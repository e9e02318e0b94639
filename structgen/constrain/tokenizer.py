"""The tokenizer as each constraint engine sees it (XGrammar's ``tokenizer_info.py``: one
noun, one module): :class:`TokenizerData`, built once per loaded model, with llguidance's
and XGrammar's views of it, the raw bytes of every token and the identity the grammar
cache keys on."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class TokenizerData:
    """What engines need to know about a tokenizer, computed once per loaded model."""

    hf_tokenizer: Any
    vocab_size: int  # the model's logits width (may exceed len(tokenizer))
    eos_token_ids: tuple[int, ...]

    def ll_tokenizer(self) -> Any:
        """llguidance's view of the tokenizer (built once, ~1 s for a 50k vocabulary)."""
        cached = getattr(self, "_ll", None)
        if cached is None:
            import llguidance

            backend = copy.copy(self.hf_tokenizer.backend_tokenizer)
            backend.no_padding()
            backend.no_truncation()
            cached = llguidance.LLTokenizer(backend.to_str(), n_vocab=self.vocab_size,
                                            eos_token=list(self.eos_token_ids))
            self._ll = cached
        return cached

    def token_bytes(self) -> list[bytes]:
        """Raw bytes of every token id (b"" for special and unused ids)."""
        cached = getattr(self, "_bytes", None)
        if cached is None:
            ll = self.ll_tokenizer()
            cached = [b"" if ll.is_special_token(i) else ll.decode_bytes([i])
                      for i in range(self.vocab_size)]
            self._bytes = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self.hf_tokenizer.encode(text, add_special_tokens=False))

    def xgr_tokenizer_info(self) -> Any:
        """XGrammar's view of the tokenizer."""
        import xgrammar as xgr

        return xgr.TokenizerInfo.from_huggingface(
            self.hf_tokenizer, vocab_size=self.vocab_size,
            stop_token_ids=list(self.eos_token_ids))

    @property
    def hash(self) -> str:
        """Identity of the tokenizer for the grammar cache key."""
        cached = getattr(self, "_hash", None)
        if cached is None:
            h = hashlib.sha256(self.hf_tokenizer.backend_tokenizer.to_str().encode())
            h.update(json.dumps([self.vocab_size, list(self.eos_token_ids)]).encode())
            cached = h.hexdigest()[:24]
            self._hash = cached
        return cached
