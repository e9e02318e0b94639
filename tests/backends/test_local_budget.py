"""The embedded decoder under long budgets and crowded memory (issue 24): the closing
search's work per step does not grow with ``max_tokens``, one request never fails its
batch for want of KV cells, and the number guard holds an integer whose grammar wants
more digits (``multipleOf``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local import LocalBackend
from structgen.backends.local.decoder import CLOSE_REFRESH, Decoder
from structgen.backends.local.runtime import Seq
from structgen.constrain.base import Matcher
from structgen.engine import Engine
from structgen.errors import BackendError
from structgen.validate import validate_text

from .test_llamacpp import make

# vLLM's sample_json_schema (tests/entrypoints/conftest.py, Apache-2.0): the workload
# issue 24 timed at max_tokens=4096
VLLM_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data"
                          / "vllm_sample_json_schema.json").read_text())


class CountingMatcher(Matcher):
    """A real matcher that counts the grammar operations done on it and on its forks."""

    supports_closing = True

    def __init__(self, inner: Matcher, ops: list[int]) -> None:
        self.inner, self.ops = inner, ops
        self.closers = inner.closers
        self.post_enforced = inner.post_enforced

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        self.inner.fill_bitmask(bitmask, row)

    def consume(self, token: int) -> bool:
        self.ops[0] += 1
        return self.inner.consume(token)

    def consume_all(self, tokens: list[int]) -> bool:
        self.ops[0] += len(tokens)
        return self.inner.consume_all(tokens)

    def accepts(self, token: int) -> bool:
        self.ops[0] += 1
        return self.inner.accepts(token)

    def completes_with(self, tokens: list[int]) -> bool:
        self.ops[0] += 1 + len(tokens)
        return self.inner.completes_with(tokens)

    def fork(self) -> Matcher:
        self.ops[0] += 1
        return CountingMatcher(self.inner.fork(), self.ops)

    def first_allowed(self) -> int | None:
        self.ops[0] += 1
        return self.inner.first_allowed()

    def forced_tokens(self) -> list[int]:
        return self.inner.forced_tokens()

    def is_finished(self) -> bool:
        return self.inner.is_finished()

    def is_accepting(self) -> bool:
        return self.inner.is_accepting()

    def error(self) -> str | None:
        return self.inner.error()


def closing_work(engine: Engine, backend: LocalBackend, schema: Any, prefix: str,
                 max_tokens: int, steps: int = CLOSE_REFRESH + 1) -> int:
    """Grammar operations the budget check does over ``steps`` decode steps of an answer
    that has written ``prefix``, under ``max_tokens``."""
    rt = backend.runtime(None)
    req = engine.build_request("x", schema, max_tokens=max_tokens)
    decoder = Decoder(rt, backend.cfg, threading.Event())
    seq = Seq(req, concurrent.futures.Future(), 0.0)
    decoder.setup(seq)
    assert seq.matcher is not None and seq.cursor is not None
    for tok in rt.tok.encode(prefix):
        assert seq.matcher.consume(tok), prefix
        seq.out_ids.append(tok)
        decoder._track(seq, tok)
    ops = [0]
    real = seq.matcher
    seq.matcher = CountingMatcher(real, ops)
    for _ in range(steps):
        tok = real.first_allowed()
        assert tok is not None
        if decoder._budget_close(seq, tok):
            break
        assert real.consume(tok)
        seq.out_ids.append(tok)
        decoder._track(seq, tok)
    return ops[0]


@pytest.mark.parametrize(("schema", "prefix"), [
    # a string whose pattern ends in a character no closing walk tries: every walk from
    # inside it runs to its limit, which was the budget left
    ({"type": "object", "properties": {"code": {"type": "string", "pattern": "^a+!$"}},
      "required": ["code"]}, '{"code":"a'),
    # the workload, where the answer sat for 97 s: inside "grade"
    (VLLM_SCHEMA, '{"name":"A","age":1,"skills":[],"grade":"'),
], ids=["walk-to-limit", "vllm-grade"])
def test_closing_work_per_step_does_not_grow_with_the_budget(
        tiny_gguf: Path, schema: Any, prefix: str) -> None:
    """Counted in grammar operations, not seconds: the same answer under max_tokens 600,
    1200 and 2400 costs the budget check the same work over its next steps (before the fix
    a walk ran as far as the budget left, each step: 2x and 4x the work). The prefixes are
    written compact, so the grammar is too."""
    eng, backend = make(tiny_gguf, prefix_cache_entries=0, whitespace="compact")
    work = {n: closing_work(eng, backend, schema, prefix, n) for n in (600, 1200, 2400)}
    assert work[1200] <= work[600] and work[2400] <= work[600], work


# KV admission ---------------------------------------------------------------------------------
def _prompt_of(backend: LocalBackend, engine: Engine, tokens: int) -> str:
    """A user message whose chat prompt is ``tokens`` tokens long (the tiny model's)."""
    rt = backend.runtime(None)
    words = ["alpha"] * (tokens // 8)
    while True:
        n = len(rt.prompt_ids(engine.build_request(" ".join(words), SMALL)))
        if n == tokens:
            return " ".join(words)
        if n > tokens:
            words.pop()
        else:
            words.append("a")


# a model that always writes "a" fills the note until budget-aware closing ends it: each
# answer takes its whole max_tokens
SMALL = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"],
         "additionalProperties": False}


def test_a_request_that_fits_alone_never_fails_because_of_its_batch(
        favorite_gguf: Any) -> None:
    """Issue 24 B10: context_size=512, max_batch=4, a short and a 475-token prompt sent
    together both failed "no room left in its KV cache"; either fitted alone. Now the long
    one waits for the next batch, and a prompt the context can never hold fails at once
    with a typed error naming the setting."""
    eng, backend = make(favorite_gguf("a"), context_size=512, max_batch=4,
                        prefix_cache_entries=0)
    long_prompt = _prompt_of(backend, eng, 475)

    async def together() -> list[Any]:
        reqs = [eng.build_request(p, SMALL, max_tokens=30) for p in ("hi", long_prompt)]
        return list(await asyncio.gather(*(backend.agenerate(r) for r in reqs),
                                         return_exceptions=True))

    results = asyncio.run(together())
    for r in results:
        assert not isinstance(r, BaseException), r
        assert r.finish_reason == "stop" and r.completion_tokens == 30
        assert validate_text(r.text, eng.build_request("x", SMALL).output).ok, r.text
    assert results[0].stats["batch_size"] == 1  # the long prompt ran in its own batch
    with pytest.raises(BackendError, match="context_size=512"):  # 2 x 475 tokens
        backend.generate(eng.build_request(f"{long_prompt} {long_prompt}", SMALL))
    backend.shutdown()


# Number guard -------------------------------------------------------------------------------
@pytest.mark.parametrize("favorite", ["9", "3"])
def test_number_guard_holds_an_integer_whose_grammar_wants_more_digits(
        favorite_gguf: Any, favorite: str) -> None:
    """Issue 24 B19: an integer with ``multipleOf: 5`` came back with 22 digits though
    ``max_number_digits`` promises at most 19 for integers: at the 19th digit the grammar
    (last digit 0 or 5) allowed only more digits, and the guard, finding nothing else
    allowed, let them through. The guard now keeps a number able to end within its
    digits."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}},
              "required": ["n"], "additionalProperties": False}
    eng, backend = make(favorite_gguf(favorite))
    r = backend.generate(eng.build_request("x", schema, max_tokens=80))
    assert r.finish_reason == "stop", r.text
    n = json.loads(r.text)["n"]
    assert len(str(abs(n))) <= 19 and n % 5 == 0, r.text
