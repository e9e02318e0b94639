"""Draft tokens from the sequence's own context (prompt lookup), checked in the next pass.

A structured answer copies much of its text from the prompt: a file path from the request,
a name or an amount from the document, a phrase of the schema's description. When the last
few tokens of the answer occurred earlier in the context, the tokens that followed them
there are a cheap guess at what comes next (prompt lookup decoding; llama.cpp's
``llama-lookup``, vLLM's ``ngram`` speculative method). The decoder feeds such a guess
after the sequence's pending tokens in the same ``llama_decode`` call and reads the logits
of every position: each position's token is then chosen exactly as it would have been one
pass at a time (grammar mask, guards, greedy or the sequence's seeded sampler), and as long
as the chosen tokens are the guessed ones, the next position's logits are already there.
The choices are the ones decoding without drafts makes from the same logits; what changes
is the number of passes (and, as with fast-forward, llama.cpp's CPU kernels give a row's
logits slightly differently in a pass of several rows, so a greedy near-tie may break the
other way: ``docs/embedded.md``).

:class:`PromptLookup` indexes the context's n-grams as tokens arrive, so a guess costs a
few dictionary lookups, never a scan of the prompt.
"""

from __future__ import annotations


class PromptLookup:
    """The n-grams (``min_n`` .. ``max_n`` tokens) of a growing token list, each mapped to
    the position after its most recent occurrence."""

    def __init__(self, prompt: list[int], *, min_n: int = 2, max_n: int = 4) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.ids: list[int] = []
        self.seen: dict[tuple[int, ...], int] = {}
        self.extend(prompt)

    def extend(self, tokens: list[int]) -> None:
        """Append ``tokens``; an n-gram is indexed once a token follows it."""
        ids, seen = self.ids, self.seen
        for tok in tokens:
            end = len(ids)  # the n-grams ending before ``tok`` now have a continuation
            for n in range(self.min_n, self.max_n + 1):
                if end >= n:
                    seen[tuple(ids[end - n:end])] = end
            ids.append(tok)

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest recent n-gram equal to the context's
        end; ``[]`` when no n-gram of ``min_n`` tokens or more recurs."""
        ids = self.ids
        if k <= 0:
            return []
        for n in range(min(self.max_n, len(ids)), self.min_n - 1, -1):
            at = self.seen.get(tuple(ids[len(ids) - n:]))
            if at is not None:
                return ids[at:at + k]
        return []
