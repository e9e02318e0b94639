"""ECMA-262 regular expressions (issue 15, issue 11 items 7-8): one dialect for JSON Schema
``pattern``/``patternProperties`` and ``Regex(...)``, in the validator and in what grammar
engines are given."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from structgen.errors import SchemaError
from structgen.schema import compile_output
from structgen.schema.ecma_regex import compile_ecma, translate
from structgen.types import Regex
from structgen.validate import schema_errors, validate_data, validate_text

ARABIC_INDIC_7 = "\u0667"
SEGMENTED_8 = "\U0001FBF8"  # what the embedded default wrote for the README's date


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    (r"^\d$", "7", True),
    (r"^\d$", ARABIC_INDIC_7, False),
    (r"^\d$", SEGMENTED_8, False),
    (r"^\w$", "é", False),
    (r"^\w$", "_", True),
    (r"^\s$", "\u00a0", True),  # ECMA white space includes NBSP and the BOM
    (r"^\s$", "\ufeff", True),
    (r"^\s$", "\u0085", False),  # NEL is white space to Python, not to ECMA
    (r"^abc$", "abc\n", False),  # $ is the end of the input, not "before a final newline"
    (r"^a.c$", "a\nc", False),  # . stops at line terminators...
    (r"^a.c$", "a\u2028c", False),
    (r"^a.c$", "a\u00e9c", True),
    (r"\bcat\b", "a cat!", True),
    (r"\bcat\b", "concatenate", False),
    (r"^\u00e9$", "é", True),
    (r"^\u{1F600}$", "\U0001F600", True),
    (r"^\uD83D\uDE00$", "\U0001F600", True),  # a surrogate pair is one code point
    (r"^\cJ$", "\n", True),
    (r"^[\d-]+$", "1-2", True),
    (r"^[^\d]+$", "٣", True),
    (r"^\p{Letter}+$", "école", True),
    (r"^(?<y>[0-9])\k<y>$", "11", True),  # RE2 cannot: the bounded fallback does
    (r"^(?<y>[0-9])\k<y>$", "12", False),
    (r"x{,3}", "x{,3}", True),  # no quantifier: a literal brace (Annex B)
])
def test_validator_reads_patterns_as_ecma(pattern: str, text: str, matches: bool) -> None:
    assert compile_ecma(pattern).search(text) is matches
    # the same through a schema, and the portable form means the same to the validator
    assert (not schema_errors(text, {"pattern": pattern})) is matches
    assert compile_ecma(translate(pattern)).search(text) is matches


def test_portable_form_spells_shorthands_out() -> None:
    assert translate(r"^\d{4}-\d{2}-\d{2}$") == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
    assert translate(r"\w+") == "[0-9A-Z_a-z]+"
    assert translate(r"a\/b") == "a/b"  # Lark wraps regexes in slashes and escapes them
    for pattern in (r"^\d+$", r"\s", r".", r"[\w.-]+@\S+", r"\p{L}"):
        assert translate(translate(pattern)) == translate(pattern)  # a fixed point


def test_compiled_outputs_carry_the_portable_pattern() -> None:
    regex = compile_output(Regex(r"\d{4}-\d{2}-\d{2}"))
    assert regex.pattern == "[0-9]{4}-[0-9]{2}-[0-9]{2}"
    assert not validate_text(SEGMENTED_8 * 4 + "-" + SEGMENTED_8 * 2 + "-" + SEGMENTED_8 * 2,
                             regex).ok
    assert validate_text("2024-05-01", regex).ok
    schema = compile_output({"type": "object",
                             "properties": {"d": {"type": "string", "pattern": r"^\d+$"}},
                             "patternProperties": {r"^x\d$": {"type": "integer"}}})
    assert schema.json_schema is not None
    assert schema.json_schema["properties"]["d"]["pattern"] == "^[0-9]+$"
    assert list(schema.json_schema["patternProperties"]) == ["^x[0-9]$"]
    assert '"^[0-9]+$"' in schema.json_text  # what engines and servers are sent
    assert not validate_data({"d": ARABIC_INDIC_7}, schema).ok
    # "x" + an Arabic-Indic 7 matches no ECMA pattern here, so its value is not held to "integer"
    assert validate_data({"x" + ARABIC_INDIC_7: "a"}, schema).ok
    assert not validate_data({"x1": "a"}, schema).ok


def test_regex_output_is_not_matched_with_dotall() -> None:
    out = compile_output(Regex(r"a.b"))
    assert validate_text("a-b", out).ok
    assert not validate_text("a\nb", out).ok


@pytest.mark.parametrize("pattern", ["([a-z", "a\\", r"\u12", r"[z-a]", r"\cZ\c"])
def test_malformed_patterns_are_schema_errors(pattern: str) -> None:
    with pytest.raises(SchemaError, match="regular expression"):
        compile_output(Regex(pattern))
    with pytest.raises(SchemaError):
        compile_output({"type": "string", "pattern": pattern})


# The matchers run in the calling thread: its CPU time is what they cost, and unlike the
# wall clock it does not grow while other processes hold the CPU (a loaded CI machine).
def test_catastrophic_pattern_answers_in_linear_time() -> None:
    out = compile_output(Regex(r"(a+)+b"))
    started = time.thread_time()
    outcome = validate_text("a" * 10_000, out)
    assert not outcome.ok
    assert time.thread_time() - started < 0.5
    schema = compile_output({"type": "string", "pattern": r"^(a|aa)+$"})
    started = time.thread_time()
    assert not validate_data("a" * 10_000 + "b", schema).ok
    assert time.thread_time() - started < 0.5


def test_fallback_matcher_is_bounded() -> None:
    # a backreference keeps RE2 out; nested quantifiers make a backtracker exponential
    out = compile_output(Regex(r"(a*)*\1b"))
    assert compile_ecma(r"(a*)*\1b").engine == "regex"
    started = time.thread_time()
    outcome = validate_text("a" * 5_000, out)
    assert not outcome.ok
    assert time.thread_time() - started < 2.0


def _suite_files(optional: Path) -> list[Path]:
    return sorted(optional.rglob("*.json"))


def _agreement(path: Path) -> tuple[int, int, list[str]]:
    agree, total, wrong = 0, 0, []
    for group in json.loads(path.read_text()):
        for case in group["tests"]:
            total += 1
            try:
                verdict: Any = not schema_errors(case["data"], group["schema"])
            except SchemaError:
                verdict = "SchemaError"
            if verdict == case["valid"]:
                agree += 1
            else:
                wrong.append(f"{group['description']}: {case['description']}")
    return agree, total, wrong


# Files of optional/ the validator must agree with completely: the regex dialect, big and
# overflowing numbers. The format files are reported; jsonschema's format checkers decide
# them, and their known gaps (leap seconds, trailing dots, ...) are not regex matters.
MUST_AGREE = ("ecmascript-regex.json", "non-bmp-regex.json", "format/ecmascript-regex.json",
              "format/regex.json", "bignum.json", "float-overflow.json")


def test_suite_optional_folder_agreement(test_suite_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    optional = test_suite_dir / "optional"
    files = _suite_files(optional)
    assert len(files) > 30
    agree_all = total_all = 0
    rows = []
    for path in files:
        agree, total, wrong = _agreement(path)
        name = str(path.relative_to(optional))
        rows.append(f"{name:36} {agree:3}/{total:3}")
        agree_all += agree
        total_all += total
        if name in MUST_AGREE:
            assert agree == total, (name, wrong)
    with capsys.disabled():
        print("\nJSON-Schema-Test-Suite optional/ agreement:\n" + "\n".join(rows)
              + f"\ntotal {agree_all}/{total_all}")
    # measured 832/926 (89.8%); the old validator (Python re, either of two validators)
    # had 822/926, with ecmascript-regex.json at 58/74
    assert agree_all / total_all >= 0.895


def test_unevaluated_properties_read_pattern_properties_as_ecma() -> None:
    # behind a $ref, jsonschema's own helper ran Python re: \p{L} raised re.error
    schema = {"$defs": {"a": {"patternProperties": {r"^\p{L}$": {}, r"^\d$": {}}}},
              "allOf": [{"$ref": "#/$defs/a"}], "unevaluatedProperties": False}
    assert schema_errors({"é": 1, "3": 2}, schema) == []
    assert [e.keyword for e in schema_errors({"\u0663": 1}, schema)] == ["unevaluatedProperties"]


def test_required_suite_files_for_rewritten_keywords_still_agree(test_suite_dir: Path) -> None:
    root = test_suite_dir
    for name in ("unevaluatedProperties.json", "additionalProperties.json",
                 "patternProperties.json", "pattern.json"):
        agree, total, wrong = _agreement(root / name)
        assert agree == total, (name, wrong)


def test_a_malformed_pattern_reports_the_offset_in_the_users_pattern() -> None:
    """The position in an error is where the user's pattern is wrong, not where its
    translation (``\\d`` → ``[0-9]``) is."""
    with pytest.raises(SchemaError) as info:
        compile_output(Regex(r"\d{4}-(\d{2}"))
    message = str(info.value)
    assert "missing )" in message and "at offset 12 of the pattern" in message, message
