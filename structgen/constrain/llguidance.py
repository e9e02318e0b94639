"""llguidance engine (the default): widest JSON Schema coverage, ~1 ms compiles, forced-token
fast-forward, and Lark grammars (so reasoning + JSON is one grammar)."""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

from structgen.constrain.base import (
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    json_separators,
    json_whitespace_regex,
)
from structgen.errors import SchemaError
from structgen.schema.layout import guidance_options
from structgen.schema.support import LLGUIDANCE, PostEnforced, loosen, repeated_open_keys

if TYPE_CHECKING:
    import torch

    from structgen.schema import CompiledOutput


# JSON text that must appear for prepare_for_llguidance to have anything to do: a schema
# without any of it (most of them) costs one regex scan of its JSON text.
_SCAN = re.compile('"(?:' + "|".join(re.escape(k) for k in sorted(
    {*LLGUIDANCE.unenforced, "format"})) + ')":')


def prepare_for_llguidance(schema: Any, text: str | None = None
                           ) -> tuple[Any, tuple[PostEnforced, ...]]:
    """(``schema`` without what llguidance cannot compile (its row in
    :mod:`structgen.schema.support`), the entries taken out). Only loosens (validation
    enforces what was taken out); returns ``schema`` itself when there is nothing to take
    out. ``text``: its JSON, when the caller has it."""
    if text is None:
        text = json.dumps(schema, ensure_ascii=False)
    out, taken = (schema, ()) if _SCAN.search(text) is None else loosen(schema, LLGUIDANCE)
    if '"minProperties"' in text:  # kept in the grammar, reported
        taken = (*taken, *repeated_open_keys(out))
    return out, taken


def json_options(options: ConstraintOptions) -> dict[str, Any]:
    """llguidance JSON compile options ("x-guidance") for a layout."""
    json_separators(options)  # an unknown layout is a ConfigError
    fixed = guidance_options(options.whitespace)
    if fixed is not None:
        return fixed
    return {"whitespace_flexible": True, "whitespace_pattern": json_whitespace_regex(options)}


@functools.lru_cache(maxsize=64)
def _options_json(options: ConstraintOptions) -> str:
    return json.dumps(json_options(options))


def _with_options(schema: dict[str, Any], options: ConstraintOptions) -> dict[str, Any]:
    # a shallow copy: only the top-level "x-guidance" member changes
    return {**schema, "x-guidance": {**schema.get("x-guidance", {}), **json_options(options)}}


def build_grammar(output: CompiledOutput, options: ConstraintOptions) -> str:
    """The llguidance grammar for ``output``. A JSON output without reasoning goes in as a
    JSON Schema grammar: wrapping it in Lark (``start: %json {...}``) compiles the same
    language in about twice the time (1.4 vs 0.76 ms p50 on MaskBench schemas, measured
    with SmolLM2's tokenizer). Everything else is one Lark grammar (:func:`build_lark`)."""
    import llguidance

    if output.kind == "json" and not options.reasoning and not options.open_end:
        schema = output.to_json_schema()
        text = output.json_text
        if "x-guidance" in schema or not text.startswith("{") or text == "{}":
            text = json.dumps(_with_options(schema, options), ensure_ascii=False)
        else:  # the options go in front of the members: no re-encoding of the schema
            text = f'{{"x-guidance":{_options_json(options)},{text[1:]}'
        return f'{{"grammars":[{{"json_schema":{text}}}]}}'
    return llguidance.LLMatcher.grammar_from_lark(build_lark(output, options))


def build_lark(output: CompiledOutput, options: ConstraintOptions) -> str:
    """The whole constraint as one Lark grammar (llguidance dialect)."""
    if output.kind == "json":
        body = "%json " + json.dumps(_with_options(output.to_json_schema(), options))
    elif output.kind == "regex":
        body = "/" + (output.pattern or "").replace("/", "\\/") + "/"
    elif output.kind == "choice":
        body = " | ".join(json.dumps(c) for c in output.choices or ())
    else:
        if options.open_end:
            raise SchemaError("an open-ended output is a JSON Schema, a regex or a choice")
        if not options.reasoning:
            return output.grammar or ""
        # rename the user's start rule so it can follow the thinking block
        body = "user_start"
        return (_reasoning_prefix(body) + "\n" +
                _rename_start(output.grammar or ""))
    if options.open_end:  # any text after it (a lexeme of its own, after the value)
        return f"start: answer ANY_TEXT\nANY_TEXT: /(?s:.*)/\nanswer: {body}\n"
    if not options.reasoning:
        return f"start: {body}\n"
    return _reasoning_prefix("answer") + f"\nanswer: {body}\n"


def _reasoning_prefix(answer_rule: str) -> str:
    # `stop` makes the free text lazy: it ends at the first "</think>", which is consumed
    return (f'start: "<think>" think "\\n"? {answer_rule}\n'
            'think[stop="</think>"]: /(?s:.*)/\n')


def _rename_start(lark: str) -> str:
    return re.sub(r"(?m)^(\s*)start(\s*[:\[])", r"\1user_start\2", lark)


class LLGuidanceMatcher(Matcher):
    __slots__ = ("closers", "m")
    # closers: (candidates, text characters, string enders), see closing_candidates
    supports_closing = True

    def __init__(self, m: Any,
                 closers: tuple[list[int], list[int], frozenset[int]] | None = None) -> None:
        self.m = m
        self.closers = closers or ([], [], frozenset())

    def fork(self) -> LLGuidanceMatcher:
        out = LLGuidanceMatcher(self.m.deep_copy(), self.closers)
        out.post_enforced = self.post_enforced
        return out

    def accepts(self, token: int) -> bool:
        return bool(self.m.validate_tokens([token]) == 1)

    def first_allowed(self) -> int | None:
        mask = self.m.compute_bitmask()
        byte = next((i for i, bits in enumerate(mask) if bits), None)
        return None if byte is None else byte * 8 + (mask[byte] & -mask[byte]).bit_length() - 1

    def completes_with(self, tokens: list[int]) -> bool:
        m = self.m.deep_copy()
        return (not tokens or bool(m.consume_tokens(tokens))) and bool(m.is_accepting())

    def consume_all(self, tokens: list[int]) -> bool:
        return bool(self.m.consume_tokens(tokens))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        # the row's address, without a view tensor (bitmask[row] was a fifth of the call);
        # int32 words, rows of contiguous words, as the decode loop allocates them
        self.m.unsafe_compute_mask_ptr(bitmask.data_ptr() + row * bitmask.stride(0) * 4,
                                       bitmask.shape[1] * 4)

    def consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def forced_tokens(self) -> list[int]:
        ff: list[int] = self.m.compute_ff_tokens()
        return ff if ff and self.consume_all(ff) else []

    def is_finished(self) -> bool:
        return bool(self.m.is_stopped())

    def is_accepting(self) -> bool:
        return bool(self.m.is_accepting())

    def error(self) -> str | None:
        return self.m.get_error() if self.m.is_error() else None


# llguidance enforces every keyword it compiles; the others fail upfront
class LLGuidanceConstraint(GrammarConstraint, support=LLGUIDANCE, package="llguidance",
                           fast_forward=True, reasoning=True):
    forbids_json_control_chars = True  # its JSON strings follow RFC 8259 (checked in tests)
    # llguidance caps its compile work (lexer fuel, grammar size: ParserLimits) and returns
    # an error past the caps, so no deadline thread is needed: its MaskBench compiles take
    # 0.8 ms p50 and 2.5 ms p99, and a thread hand-off would add a tenth to each
    bounded_compile = True
    notes = ("llguidance: a keyword it does not implement fails its compile instead of "
             "being loosened silently; structgen takes the known ones out beforehand "
             "(prepare_for_llguidance) and any other one after a failed compile "
             "(loosen_until_it_compiles), reports them as post-enforced and validation enforces them",)

    def __init__(self, tok: TokenizerData, **cache: Any) -> None:
        super().__init__(tok, **cache)
        self.ll = tok.ll_tokenizer()

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        import llguidance

        try:
            grammar = build_grammar(output, options)
        except ValueError as exc:  # llguidance refused the JSON Schema while translating it
            raise SchemaError(f"llguidance cannot compile this {output.kind} output: "
                              f"{exc}") from None
        matcher = llguidance.LLMatcher(self.ll, grammar, log_level=0)
        if matcher.is_error():
            raise SchemaError(f"llguidance cannot compile this {output.kind} output: "
                              f"{matcher.get_error()}")
        return matcher

    def prepare_schema(self, output: CompiledOutput
                       ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
        return prepare_for_llguidance(output.to_json_schema(), output.json_text)

    def new_matcher(self, compiled: Any) -> Matcher:
        # deep_copy of a fresh matcher is far cheaper than rebuilding the parser
        return LLGuidanceMatcher(compiled.deep_copy(), self.closers)
