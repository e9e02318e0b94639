"""Think, then answer, on the embedded backend: the free text before the answer is bounded,
returned apart from the answer, and never parsed as it; a model whose chat template knows no
thinking block is told what the block is for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structgen.backends.base import GenerationRequest
from structgen.backends.local.runtime import chat_messages
from structgen.config import LocalConfig
from structgen.validate import validate_text

from .test_llamacpp import gen, make
from .test_local import LongNames

SMALL = {"type": "object", "properties": {"answer": {"type": "integer"}},
         "required": ["answer"], "additionalProperties": False}


def think_tokens(backend: Any, reasoning_text: str) -> int:
    return len(backend.runtime(None).tok.encode(reasoning_text))


def test_think_block_ends_at_think_tokens(favorite_gguf: Any) -> None:
    """A model that would think forever (it always writes "a") has its think block ended
    with ``</think>`` after ``[local] think_tokens``: the rest of max_tokens is the answer's,
    which validates and is returned apart from the thinking."""
    eng, backend = make(favorite_gguf("a"), think_tokens=12)
    result = eng.run("Classify it", LongNames, reasoning=True, use_cache=False,
                     max_tokens=200)
    assert result.reasoning_text and set(result.reasoning_text) == {"a"}
    assert think_tokens(backend, result.reasoning_text) <= 12
    assert "<think>" not in result.raw_text and "a" * 20 not in result.raw_text[:30]
    r = gen(eng, backend, LongNames, reasoning=True, max_tokens=200)
    assert r.stats["think_cut_tokens"] > 0 and r.finish_reason == "stop", r.text
    assert validate_text(r.text, eng.build_request("x", LongNames).output).ok, r.text


def test_think_block_takes_at_most_half_the_budget_by_default(favorite_gguf: Any) -> None:
    """Without ``think_tokens`` the block ends at half of max_tokens (before, it ran until
    budget closing had only the shortest answer left)."""
    eng, backend = make(favorite_gguf("a"))
    r = gen(eng, backend, SMALL, reasoning=True, max_tokens=120)
    assert r.finish_reason == "stop", r.text
    # (the shortest answer is a few tokens: before, the block took about 110)
    assert 0 < think_tokens(backend, r.reasoning_text or "") <= 60, r.reasoning_text
    assert validate_text(r.text, eng.build_request("x", SMALL).output).ok, r.text


def test_think_prompt_only_for_templates_without_a_think_block() -> None:
    prompt = LocalConfig().think_prompt
    assert "<think>" in prompt and "</think>" in prompt
    request = GenerationRequest(messages=[{"role": "system", "content": "Answer in JSON."},
                                          {"role": "user", "content": "6*7?"}],
                                output=None, reasoning=True)
    plain, _ = chat_messages(request, "{{ messages }}", think_prompt=prompt)
    assert plain[0]["content"] == f"Answer in JSON.\n\n{prompt}" and len(plain) == 2
    thinks, _ = chat_messages(request, "{% if thinking %}<think>\n{% endif %}{{ messages }}",
                              think_prompt=prompt)
    assert thinks == request.messages
    assert chat_messages(request, "{{ messages }}", think_prompt="")[0] == request.messages
    request.reasoning = False
    assert chat_messages(request, "{{ messages }}", think_prompt=prompt)[0] == request.messages
    bare = GenerationRequest(messages=[{"role": "user", "content": "6*7?"}], output=None,
                             reasoning=True)
    assert chat_messages(bare, None, think_prompt=prompt)[0][0] == {"role": "system", "content": prompt}


def test_smollm2_thinks_then_answers(tmp_path: Path) -> None:
    """SmolLM2-135M (no thinking in its template or training) under reasoning=True: free
    text first, bounded, then a valid answer; the thinking is never taken for the answer."""
    from schemas.intent import Intent
    from structgen.backends.local.models import smollm2_gguf_path

    eng, backend = make(smollm2_gguf_path(), threads=2, think_tokens=40)
    result = eng.run([{"role": "system", "content": "Classify the developer's request."},
                      {"role": "user", "content": "Fix the crash in app/server.py on start"}],
                     Intent, reasoning=True, use_cache=False, max_tokens=160)
    assert isinstance(result.value, Intent)
    assert result.reasoning_text and think_tokens(backend, result.reasoning_text) <= 40
    assert result.reasoning_text not in result.raw_text and "<think>" not in result.raw_text
