"""Draft tokens from prompt lookup (``[local] draft_tokens``; backends/local/drafts.py).

A draft is checked position by position in the pass that feeds it: each position's token
is chosen as one pass at a time would choose it (mask, guards, greedy or the seeded
sampler), so the answer is the same and only the passes change. The model tests use the
runaway tiny GGUF that always prefers "a": its answer repeats itself, so every n-gram
recurs and the drafts are taken."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from structgen.backends.local.drafts import PromptLookup
from structgen.validate import validate_text

from .test_llamacpp import make

NOTE = {"type": "object", "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["note", "n"], "additionalProperties": False}


def test_prompt_lookup_proposes_what_followed_the_longest_recent_ngram() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7], min_n=2, max_n=3)
    assert lookup.propose(3) == []  # "3 7" has not occurred before
    lookup.extend([1, 2, 3])
    # "1 2 3" occurred at the start: what followed it there (the longest n-gram wins
    # over the more recent "2 3" -> 7)
    assert lookup.propose(3) == [4, 5, 9]
    lookup.extend([8, 2, 3])
    # no "8 2 3" before; the most recent "2 3" before this one was followed by "8 2"
    assert lookup.propose(2) == [8, 2]
    assert lookup.propose(0) == []


def generate(gguf: Any, schema: dict[str, Any], drafts: int, **sampling: Any) -> Any:
    eng, backend = make(gguf, draft_tokens=drafts, max_string_repeat=0,
                        prefix_cache_entries=0)
    request = eng.build_request("Write a note", schema, **sampling)
    try:
        result = backend.generate(request)
    finally:
        backend.shutdown()
    assert validate_text(result.text, request.output).ok, result.text
    return result


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "seed": 7}],
                         ids=["greedy", "seeded"])
def test_drafts_give_the_same_answer_in_fewer_passes(favorite_gguf: Any,
                                                     sampling: dict[str, Any]) -> None:
    plain = generate(favorite_gguf("a"), NOTE, 0, max_tokens=60, **sampling)
    drafted = generate(favorite_gguf("a"), NOTE, 4, max_tokens=60, **sampling)
    assert drafted.text == plain.text
    assert len(json.loads(drafted.text)["note"]) > 20  # the runaway: drafts to take
    assert "draft_tokens" not in plain.stats
    assert drafted.stats["draft_accepted"] > 10
    assert drafted.stats["forward_passes"] < plain.stats["forward_passes"] * 0.6


TRACEBACK = ('pytest fails:\nTraceback (most recent call last):\n'
             '  File "shop/orders.py", line 57, in total\n    price = prices[item.sku]\n'
             "KeyError: 'SKU-1042'")
WHERE = {"type": "object",
         "properties": {"file": {"type": "string"}, "line": {"type": "integer"},
                        "error": {"type": "string"}},
         "required": ["file", "line", "error"], "additionalProperties": False}


def _fake_decoder() -> Any:
    """A decoder over a fake 10-token runtime: enough for unconstrained greedy choices."""
    import threading

    from structgen.backends.local.decoder import Decoder

    d = Decoder.__new__(Decoder)
    d.rt = SimpleNamespace(eos_ids=frozenset({0}), token_bytes=[b"<e>"] + [b"t%d" % i
                                                                       for i in range(1, 10)])
    d.cfg = SimpleNamespace(max_whitespace=4)
    d.closing = threading.Event()
    return d


def _seq(draft: list[int]) -> Any:
    import concurrent.futures

    from structgen.backends.local.runtime import Seq

    request = SimpleNamespace(output=None, deadline=None, reasoning=False,
                              sampling=SimpleNamespace(max_tokens=100, stop=[]))
    s = Seq(request=request, future=concurrent.futures.Future(), start=0.0)  # type: ignore[arg-type]
    s.draft = draft
    return s


def _rows(*best: int) -> Any:
    import torch

    rows = torch.zeros((len(best), 10))
    for i, tok in enumerate(best):
        rows[i, tok] = 1.0
    return rows


@pytest.mark.parametrize(("row_picks", "out", "pending", "unfed"), [
    ((3, 4, 9, 1), [3, 4, 9], [9], 1),  # the third drafted position is not taken
    ((3, 4, 5, 7), [3, 4, 5, 7], [7], 0),  # every draft taken, and the row after them
    ((8, 4, 5, 7), [8], [8], 3),  # the first choice already differs: nothing taken
])
def test_each_position_is_chosen_from_its_own_row(row_picks: tuple[int, ...], out: list[int],
                                                  pending: list[int], unfed: int) -> None:
    """The logits of pass row j decide the token after the j-th drafted one; the tokens
    the drafts guessed wrong are fed next, and their positions dropped."""
    d, s = _fake_decoder(), _seq([3, 4, 5])
    rows = _rows(*row_picks)
    s.draft_logits = rows[1:]
    d._choose([s], rows[:1])
    d._verify([s])
    assert s.out_ids == out
    assert s.pending == pending and s.unfed == unfed and s.draft == []
    assert s.stats["draft_tokens"] == 3 and s.stats["draft_accepted"] == 3 - unfed


@pytest.mark.slow
def test_smollm2_copies_from_the_prompt_with_drafts() -> None:
    """On the real model the drafts are what the answer copies from the request (a path,
    an exception), and they are taken. (Not asserted: the same text as without drafts.
    llama.cpp's CPU kernels give a token's logits differently in a pass of several rows
    than in a pass of one, up to 0.7 apart on SmolLM2 Q4_1, measured; fast-forward's
    passes of several tokens already differ from one token a pass in the same way.)"""
    from structgen.backends.local.backend import LocalBackend
    from structgen.config import Config
    from structgen.engine import Engine

    answers = []
    for drafts in (0, 4):
        cfg = Config()
        cfg.local.threads, cfg.local.draft_tokens, cfg.local.prefix_cache_entries = 1, drafts, 0
        backend = LocalBackend(cfg)
        eng = Engine(cfg, backends={"local": backend})
        request = eng.build_request(
            [{"role": "system", "content": "Answer with JSON: the file, line and exception "
                                           "of the failing frame."},
             {"role": "user", "content": TRACEBACK}], WHERE, max_tokens=48)
        try:
            answers.append(backend.generate(request))
        finally:
            backend.shutdown()
        assert validate_text(answers[-1].text, request.output).ok, answers[-1].text
    plain, drafted = answers
    for r in answers:
        assert json.loads(r.text)["file"] == "shop/orders.py", r.text
    assert drafted.stats["draft_accepted"] >= 3, drafted.stats
    assert drafted.stats["forward_passes"] < plain.stats["forward_passes"]
