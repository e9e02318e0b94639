"""llguidance engine (the default): widest JSON Schema coverage, ~1 ms compiles, forced-token
fast-forward, and Lark grammars (so reasoning + JSON is one grammar)."""

from __future__ import annotations

import copy
import importlib.metadata
import json
from typing import TYPE_CHECKING, Any

from structgen.constrain.base import (
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    json_whitespace_regex,
)
from structgen.errors import SchemaError

if TYPE_CHECKING:
    import torch

    from structgen.schema import CompiledOutput


def json_options(options: ConstraintOptions) -> dict[str, Any]:
    """llguidance JSON compile options ("x-guidance") for a whitespace mode."""
    if options.whitespace == "compact":
        return {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    return {"whitespace_flexible": True, "whitespace_pattern": json_whitespace_regex(options)}


def _with_options(schema: dict[str, Any], options: ConstraintOptions) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["x-guidance"] = {**out.get("x-guidance", {}), **json_options(options)}
    return out


def build_lark(output: CompiledOutput, options: ConstraintOptions) -> str:
    """The whole constraint as one Lark grammar (llguidance dialect)."""
    if output.kind == "json":
        body = "%json " + json.dumps(_with_options(output.to_json_schema(), options))
    elif output.kind == "regex":
        body = "/" + (output.pattern or "").replace("/", "\\/") + "/"
    elif output.kind == "choice":
        body = " | ".join(json.dumps(c) for c in output.choices or ())
    else:
        if not options.reasoning:
            return output.grammar or ""
        # rename the user's start rule so it can follow the thinking block
        body = "user_start"
        return (_reasoning_prefix(body) + "\n" +
                _rename_start(output.grammar or ""))
    if not options.reasoning:
        return f"start: {body}\n"
    return _reasoning_prefix("answer") + f"\nanswer: {body}\n"


def _reasoning_prefix(answer_rule: str) -> str:
    # `stop` makes the free text lazy: it ends at the first "</think>", which is consumed
    return (f'start: "<think>" think "\\n"? {answer_rule}\n'
            'think[stop="</think>"]: /(?s:.*)/\n')


def _rename_start(lark: str) -> str:
    import re

    return re.sub(r"(?m)^(\s*)start(\s*[:\[])", r"\1user_start\2", lark)


class LLGuidanceMatcher(Matcher):
    __slots__ = ("m",)

    def __init__(self, m: Any) -> None:
        self.m = m

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        self.m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * 4)

    def consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def forced_tokens(self) -> list[int]:
        ff: list[int] = self.m.compute_ff_tokens()
        if ff and not self.m.consume_tokens(ff):
            return []
        return ff

    def is_finished(self) -> bool:
        return bool(self.m.is_stopped())

    def is_accepting(self) -> bool:
        return bool(self.m.is_accepting())

    def error(self) -> str | None:
        return self.m.get_error() if self.m.is_error() else None


class LLGuidanceConstraint(GrammarConstraint):
    name = "llguidance"
    version = importlib.metadata.version("llguidance")
    supports_fast_forward = True
    supports_reasoning = True
    json_keywords = None  # llguidance enforces every keyword it compiles; others fail upfront
    forbids_json_control_chars = True  # its JSON strings follow RFC 8259 (checked in tests)
    notes = ("llguidance: a keyword it does not implement fails its compile instead of "
             "being loosened silently; structgen then drops that keyword (relax_for_engine), "
             "reports it as relaxed and enforces it by validation",)

    def __init__(self, tok: TokenizerData, **cache: Any) -> None:
        super().__init__(tok, **cache)
        self.ll = tok.ll_tokenizer()

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        import llguidance

        lark = build_lark(output, options)
        matcher = llguidance.LLMatcher(self.ll, llguidance.LLMatcher.grammar_from_lark(lark),
                                       log_level=0)
        if matcher.is_error():
            raise SchemaError(f"llguidance cannot compile this {output.kind} output: "
                              f"{matcher.get_error()}")
        return matcher

    def new_matcher(self, compiled: Any) -> Matcher:
        # deep_copy of a fresh matcher is far cheaper than rebuilding the parser
        return LLGuidanceMatcher(compiled.deep_copy())
