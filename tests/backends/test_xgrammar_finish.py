"""XGrammar in the default (spaced) layout at a tight budget: an answer the grammar lets
nothing follow is finished without a stop token, and what XGrammar ignores on a schema
without a type is reported (found by running the shortest+16 budget test spaced)."""

from __future__ import annotations

from pathlib import Path

from structgen.constrain.base import ConstraintOptions
from structgen.schema import compile_output

from .test_llamacpp import make


def test_complete_answer_is_finished_without_the_stop_token(tiny_gguf: Path) -> None:
    """Before, XGrammar's matcher finished only once it took a stop token, so an answer
    complete at exactly max_tokens came back "length" (MaskBench BFCL_parallel_multiple_167
    in the spaced layout, at the shortest instance + 16 tokens)."""
    _, backend = make(tiny_gguf, engine="xgrammar")
    rt = backend.runtime(None)
    output = compile_output({"type": "object", "properties": {"a": {"type": "integer"}},
                             "required": ["a"], "additionalProperties": False})
    m = rt.engine("xgrammar").matcher(output, ConstraintOptions("spaced"))
    assert m.consume_all(rt.tok.encode('{"a": 12'))
    assert not m.is_finished()  # a digit may still follow
    assert m.consume_all(rt.tok.encode("}"))
    assert m.is_finished()  # nothing but the end may


def test_keywords_ignored_on_an_untyped_schema_are_reported(tiny_gguf: Path) -> None:
    """``{"maximum": 35}`` without a type: XGrammar's grammar takes 99 (MaskBench
    Handwritten allOfPProp7 wrote 3111111111111111111); validation must hold it."""
    _, backend = make(tiny_gguf, engine="xgrammar")
    rt = backend.runtime(None)
    output = compile_output({"type": "object", "properties": {
        "a": {"maximum": 35}, "b": {"minLength": 3}, "c": {"type": "integer", "maximum": 3}}})
    m = rt.engine("xgrammar").matcher(output, ConstraintOptions("spaced"))
    reported = {(p.pointer, p.keyword) for p in m.post_enforced}
    assert {("/properties/a", "maximum"), ("/properties/b", "minLength")} <= reported
    assert ("/properties/c", "maximum") not in reported  # beside a type: enforced
    assert m.consume_all(rt.tok.encode('{"a": 99'))  # the loosening is real
