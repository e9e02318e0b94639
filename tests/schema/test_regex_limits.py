"""Patterns RE2 refuses go to the ``regex`` module, which unrolls counted repetitions when
it compiles: ``((a{200}){200}){200}`` grew the process by 2.2 GB, ``{1000}`` thrice past
23 GB. Such a pattern is refused, from every place a pattern comes from (issue 24, B1)."""

from __future__ import annotations

import resource

import pytest

from structgen.errors import SchemaError
from structgen.schema import compile_output
from structgen.schema.ecma_regex import (
    MAX_EXPANDED_ATOMS,
    compile_ecma,
    expanded_atoms,
    is_ecma_pattern,
)
from structgen.types import Regex
from structgen.validate import validate_text

BOMBS = [r"((a{200}){200}){200}", r"((a{1000}){1000}){1000}", r"(((x{100}){100}){100})\1",
         r"(?=(a{999}){999})b", r"((ab|cd){300}){300}", r"(a{1000}){1000}\1"]


@pytest.mark.parametrize("pattern", [
    ("abc", 3), (r"a{3}", 3), (r"(ab){3}", 6), (r"((a{2}){3}){4}", 24), (r"a{2,5}", 5),
    (r"a{2,}", 3), (r"[a-z]{10}\d", 11), (r"(a|bc){2}", 6), (r"a*b+c?", 3), ("x{0}", 1),
    (r"(a{99999999999999999999}){2}", 1 << 62),
])
def test_expanded_size(pattern: tuple[str, int]) -> None:
    text, size = pattern
    assert expanded_atoms(text) == size


@pytest.mark.parametrize("pattern", BOMBS)
def test_bomb_is_refused_before_compiling(pattern: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SchemaError, match="unrolled"):
        compile_ecma(pattern)
    assert not is_ecma_pattern(pattern)
    with pytest.raises(SchemaError):
        compile_output(Regex(pattern))
    with pytest.raises(SchemaError):  # a schema's pattern, at validation
        validate_text('{"s": "a"}', compile_output(
            {"type": "object", "properties": {"s": {"type": "string"}},
             "patternProperties": {pattern: {}}}))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200  # the old code grew by 2,200 MB on the first one


def test_model_answer_with_a_regex_bomb_is_invalid_not_fatal() -> None:
    output = compile_output({"type": "object", "properties": {
        "re": {"type": "string", "format": "regex"}}, "required": ["re"]})
    outcome = validate_text('{"re": "((a{200}){200}){200}"}', output)
    assert not outcome.ok and outcome.errors[0].keyword == "format"
    assert validate_text('{"re": "(a)\\\\1{3}"}', output).ok  # the fallback still works


def test_patterns_only_the_fallback_runs_still_compile() -> None:
    for pattern in (r"(a)\1", r"(?<=x)y", r"(a{10}){10}\1", r"(?!ab)(\w{5}){20}"):
        assert compile_ecma(pattern).engine == "regex"
    assert expanded_atoms(r"(\w{5}){20}") <= MAX_EXPANDED_ATOMS
