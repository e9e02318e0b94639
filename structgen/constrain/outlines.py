"""Outlines engine (outlines-core): the output is turned into a regular expression and an
index of allowed tokens per automaton state. No context-free grammars, no fast-forward."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from structgen.constrain.base import (
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    json_separators,
    json_whitespace_regex,
)
from structgen.errors import SchemaError
from structgen.schema.support import OUTLINES

if TYPE_CHECKING:
    import torch

    from structgen.constrain.base import TokenizerData
    from structgen.schema import CompiledOutput


# A whitespace pattern outlines-core writes verbatim around every "," and ":" and inside
# every bracket; no schema pattern holds it, so the layout can be put in afterwards.
_MARK = "(?:\\x00SGWS\\x00)?"


def json_regex(schema_json: str, options: ConstraintOptions) -> str:
    """outlines-core's regex for a JSON Schema under ``options``' layout. outlines-core takes
    one whitespace pattern for every gap between JSON tokens, so a layout with fixed
    separators (``, `` and ``: ``, none elsewhere) is written in place of a marker pattern."""
    from outlines_core.json_schema import build_regex_from_schema

    separators = json_separators(options)
    if separators is None or separators == (",", ":"):
        return str(build_regex_from_schema(schema_json, json_whitespace_regex(options)))
    regex = str(build_regex_from_schema(schema_json, _MARK))
    for sep, text in zip(",:", separators, strict=True):  # no regex metacharacter in text
        # the marker stands on both sides of an object's separators, after an array's
        regex = regex.replace(f"{_MARK}{sep}{_MARK}", text).replace(f"{sep}{_MARK}", text)
    return regex.replace(_MARK, "")


class OutlinesMatcher(Matcher):
    __slots__ = ("closers", "eos", "guide", "history", "index", "words")
    # a fork replays the tokens taken so far on a new guide: the regex automaton moves in
    # constant time per token, and closing forks only near the end of the budget
    supports_closing = True

    def __init__(self, index: Any, eos: int, words: int,
                 closers: tuple[list[int], list[int], frozenset[int]]) -> None:
        from outlines_core import Guide

        self.index = index
        self.guide = Guide(index)
        self.eos = eos
        self.words = words
        self.closers = closers
        self.history: list[int] = []

    def fork(self) -> OutlinesMatcher:
        out = OutlinesMatcher(self.index, self.eos, self.words, self.closers)
        out.post_enforced = self.post_enforced
        out.consume_all(self.history)
        return out

    def accepts(self, token: int) -> bool:
        return bool(self.guide.accepts_tokens([token]))

    def first_allowed(self) -> int | None:
        allowed = [t for t in self.guide.get_tokens() if t != self.eos]
        return min(allowed) if allowed else None

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        self.guide.write_mask_into(v.data_ptr(), v.numel(), 4)

    def consume(self, token: int) -> bool:
        if not self.guide.accepts_tokens([token]):
            return False
        self.guide.advance(token, return_tokens=False)
        self.history.append(token)
        return True

    def is_finished(self) -> bool:
        # outlines-core's is_finished means "in a final state"; finished here means that
        # nothing but end-of-sequence may follow
        return bool(self.guide.is_finished()) and self.guide.get_tokens() == [self.eos]

    def is_accepting(self) -> bool:
        return bool(self.guide.is_finished())


class OutlinesConstraint(GrammarConstraint, support=OUTLINES, package="outlines_core",
                         kinds=frozenset({"json", "regex", "choice"})):
    notes = ("outlines: regular languages only (no recursive schemas, no grammars); index "
             "construction can take seconds for large schemas",)
    # outlines-core's regex for an any-JSON schema ({}) lets its alternatives out of their
    # group (outlines-core 0.2.14: '"arguments":true' ends a call, then anything), so a
    # head that frames several calls would not hold: those turns compile the whole envelope
    frames_calls = False

    def __init__(self, tok: TokenizerData, **cache: Any) -> None:
        from outlines_core import Vocabulary

        super().__init__(tok, **cache)
        eos = tok.eos_token_ids[0]
        groups: dict[bytes, list[int]] = {}
        for i, b in enumerate(tok.token_bytes()):
            if b and i not in tok.eos_token_ids:
                groups.setdefault(b, []).append(i)
        self.eos = eos
        self.vocabulary = Vocabulary(eos, groups)

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        from outlines_core import Index

        try:
            if output.kind == "json":
                regex = json_regex(json.dumps(output.to_json_schema()), options)
            elif output.kind == "regex":
                regex = output.pattern or ""
            elif output.kind == "choice":
                regex = "(" + "|".join(re.escape(c) for c in output.choices or ()) + ")"
            else:
                raise SchemaError("the outlines engine cannot enforce context-free grammars; "
                                  "use engine='llguidance'")
            if options.open_end:  # any text after it
                regex = f"(?:{regex})[\\s\\S]*"
            return Index(regex, self.vocabulary)
        except SchemaError:
            raise
        except Exception as exc:
            raise SchemaError(f"outlines-core cannot compile this {output.kind} output: "
                              f"{exc}") from None

    def new_matcher(self, compiled: Any) -> Matcher:
        return OutlinesMatcher(compiled, self.eos, self.tok.vocab_size, self.closers)
