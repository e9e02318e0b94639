"""Target forms of a compiled output: Lark (llguidance), EBNF/GBNF (XGrammar, SGLang,
vLLM ``grammar``, llama.cpp), and regex. Uses the libraries' own converters."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from structgen.errors import SchemaError
from structgen.schema.check import walk


class Target(Protocol):
    """What a target writer reads of a compiled output (``CompiledOutput`` has it all);
    a protocol, so this lower module does not import the record it serves."""

    @property
    def kind(self) -> str: ...
    @property
    def json_schema(self) -> dict[str, Any] | None: ...
    @property
    def pattern(self) -> str | None: ...
    @property
    def choices(self) -> tuple[str, ...] | None: ...
    @property
    def grammar(self) -> str | None: ...
    @property
    def grammar_source(self) -> str | None: ...
    @property
    def grammar_syntax(self) -> str | None: ...


def _lark_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def to_lark(c: Target) -> str:
    """Lark grammar in llguidance's dialect (``%json`` embeds a JSON Schema)."""
    if c.kind == "json":
        body = f"start: %json {json.dumps(c.json_schema, ensure_ascii=False)}\n"
    elif c.kind == "regex":
        body = f"start: {_lark_regex(c.pattern or '')}\n"
    elif c.kind == "choice":
        body = "start: " + " | ".join(_lark_string(x) for x in c.choices or ()) + "\n"
    else:
        body = c.grammar or ""
    _validate_lark(body, c.json_schema)
    return body


def _lark_regex(pattern: str) -> str:
    return "/" + pattern.replace("/", "\\/") + "/"


def _validate_lark(text: str, schema: Any = None) -> None:
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.grammar_from("lark", text))
    if is_error:
        message = "; ".join(messages).strip()
        raise SchemaError("grammar does not compile: " + message,
                          _blame(schema, message) if schema is not None else "")


def _blame(schema: Any, message: str) -> str:
    """Best-effort JSON pointer for an llguidance JSON Schema error (it reports none)."""
    m = re.search(r"Unknown format: (\S+)", message)
    if m:
        for pointer, sub in walk(schema):
            if sub.get("format") == m.group(1):
                return f"{pointer}/format"
    return ""


def to_ebnf(c: Target) -> str:
    """GBNF-style EBNF as produced by XGrammar (``root ::= ...``).

    JSON is compact (``,`` and ``:`` with no spaces), the form ``model_dump_json`` writes.
    """
    import xgrammar as xgr

    try:
        if c.kind == "json":
            schema = _discriminated_one_of_as_any_of(c.json_schema)
            g = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False,
                                             separators=(",", ":"))
        elif c.kind == "regex":
            g = xgr.Grammar.from_regex(c.pattern or "")
        elif c.kind == "choice":
            return "root ::= " + " | ".join(json.dumps(x) for x in c.choices or ()) + "\n"
        elif c.grammar_syntax == "ebnf":
            g = xgr.Grammar.from_ebnf(c.grammar_source or "")
        else:
            raise SchemaError("a Lark grammar has no EBNF form here; pass the grammar as EBNF")
    except SchemaError:
        raise
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its message
        raise SchemaError(f"XGrammar cannot convert this {c.kind} output: {exc}") from None
    return str(g)


def _discriminated_one_of_as_any_of(schema: Any) -> Any:
    """Rewrite ``oneOf`` + ``discriminator`` (Pydantic's tagged unions) as ``anyOf``.

    The branches differ in the discriminator's ``const``, so at most one can match and
    ``anyOf`` means the same; XGrammar cannot prove that and warns on stderr otherwise.
    """
    if isinstance(schema, list):
        return [_discriminated_one_of_as_any_of(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _discriminated_one_of_as_any_of(v) for k, v in schema.items()}
    if "discriminator" in out and isinstance(out.get("oneOf"), list) and "anyOf" not in out:
        out["anyOf"] = out.pop("oneOf")
        del out["discriminator"]
    return out


# How deep a recursive schema is unrolled into a regex (outlines-core's own default).
REGEX_RECURSION_DEPTH = 3


def to_regex(c: Target) -> str:
    """A Python-``re``-compatible regex for the output.

    JSON goes through outlines-core (compact JSON, optional single spaces). A recursive
    schema has no exact regex: its recursion is unrolled ``REGEX_RECURSION_DEPTH`` levels
    deep, so the regex accepts a subset (deeper trees are rejected, never wrong shapes).
    A context-free grammar has no regex form and raises :class:`SchemaError`.
    outlines-core does not encode numeric bounds or some ``format`` values in the regex;
    validation enforces those afterwards, as for every target.
    """
    if c.kind == "regex":
        return c.pattern or ""
    if c.kind == "choice":
        return "(" + "|".join(re.escape(x) for x in c.choices or ()) + ")"
    if c.kind == "json":
        from outlines_core.json_schema import build_regex_from_schema

        try:
            pattern: str = build_regex_from_schema(json.dumps(c.json_schema), None,
                                                   REGEX_RECURSION_DEPTH)
        except Exception as exc:  # outlines-core raises ValueError/TypeError
            raise SchemaError(f"this schema has no regular-expression form: {exc}") from None
        return pattern
    raise SchemaError("a context-free grammar has no regular-expression form; "
                      "use --to lark or --to ebnf")


def grammar_to_lark(text: str, syntax: str = "auto") -> tuple[str, str]:
    """(Lark text, detected syntax) for a Lark or EBNF/GBNF grammar; validates it."""
    from llguidance.gbnf_to_lark import gbnf_to_lark, is_lark_syntax

    if not isinstance(text, str) or not text.strip():
        raise SchemaError("Grammar text must be a non-empty string")
    if syntax == "auto":
        syntax = "lark" if is_lark_syntax(text) else "ebnf"
    if syntax == "lark":
        lark = text
    elif syntax == "ebnf":
        try:
            lark = gbnf_to_lark(text)
        except Exception as exc:
            raise SchemaError(f"cannot parse EBNF grammar: {exc}") from None
    else:
        raise SchemaError(f"unknown grammar syntax {syntax!r} (use 'lark' or 'ebnf')")
    _validate_lark(lark)
    return lark, syntax
