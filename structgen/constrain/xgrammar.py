"""XGrammar engine: compiled grammars with a persistent token-mask cache; jump-forward via
its jump-forward string (re-tokenized, accepted only when the tokens reproduce it exactly)."""

from __future__ import annotations

import copy
import importlib.metadata
import json
from typing import TYPE_CHECKING, Any

from structgen.constrain.base import (
    STRUCTURE_KEYWORDS,
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    closing_candidates,
)
from structgen.constrain.grammar_cache import Codec, xgrammar_codec
from structgen.errors import SchemaError
from structgen.schema.check import declared_types, json_type
from structgen.schema.relax import disjoint_one_of_to_any_of, drop_keywords, subschemas

if TYPE_CHECKING:
    import torch

    from structgen.schema import CompiledOutput


# Keywords XGrammar's JSON converter accepts but does not (or not exactly) enforce; they are
# dropped from the grammar and enforced by validation (see XGrammarConstraint.prepare_schema).
XGRAMMAR_UNENFORCED = frozenset({
    "oneOf", "not", "if", "then", "else", "dependencies", "dependentSchemas",
    "dependentRequired", "multipleOf", "uniqueItems", "contains", "minContains", "maxContains",
    "unevaluatedProperties", "unevaluatedItems"})


def _enum_outside_type(node: dict[str, Any]) -> set[str] | None:
    """The node's types when its ``enum`` lists a value of another type, else None."""
    types, enum = declared_types(node), node.get("enum")
    if types is None or not isinstance(enum, list):
        return None
    return types if any(json_type(v) not in types for v in enum) else None


def _multi_all_of(node: dict[str, Any]) -> bool:
    return isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1


class XGrammarMatcher(Matcher):
    __slots__ = ("closers", "encode", "m", "token_bytes")
    supports_closing = True  # xgrammar's matcher forks and rolls back

    def __init__(self, m: Any, encode: Any, token_bytes: list[bytes],
                 closers: tuple[list[int], list[int], frozenset[int]]) -> None:
        self.m = m
        self.encode = encode
        self.token_bytes = token_bytes
        self.closers = closers

    def fork(self) -> XGrammarMatcher:
        out = XGrammarMatcher(self.m.fork(), self.encode, self.token_bytes, self.closers)
        out.relaxed = self.relaxed
        return out

    def accepts(self, token: int) -> bool:
        if not self.m.accept_token(token):
            return False
        self.m.rollback(1)
        return True

    def first_allowed(self) -> int | None:
        import torch
        import xgrammar as xgr

        mask = xgr.allocate_token_bitmask(1, len(self.token_bytes))
        self.m.fill_next_token_bitmask(mask, 0)
        words = torch.nonzero(mask[0]).flatten()
        if not len(words):
            return None
        word = int(words[0])
        bits = int(mask[0, word]) & 0xFFFFFFFF
        return word * 32 + (bits & -bits).bit_length() - 1

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, row)

    def consume(self, token: int) -> bool:
        return bool(self.m.accept_token(token))

    def forced_tokens(self) -> list[int]:
        s = self.m.find_jump_forward_string()
        if not s:
            return []
        ids: list[int] = self.encode(s)
        # A jump-forward string may end inside what would be one token with the text after
        # it; only take it when its tokens spell exactly that string.
        if b"".join(self.token_bytes[i] for i in ids) != s.encode("utf-8"):
            return []
        for n, t in enumerate(ids):
            if not self.m.accept_token(t):
                if n:
                    self.m.rollback(n)
                return []
        return ids

    def is_finished(self) -> bool:
        return bool(self.m.is_terminated())

    def is_accepting(self) -> bool:
        return bool(self.m.is_completed())


class XGrammarConstraint(GrammarConstraint):
    name = "xgrammar"
    version = importlib.metadata.version("xgrammar")
    supports_fast_forward = True
    supports_reasoning = False
    # keywords XGrammar's JSON converter turns into grammar; the rest (e.g. format on some
    # strings, uniqueItems, multipleOf, not, if/then/else, dependent*) is checked by
    # validation after decoding
    json_keywords = STRUCTURE_KEYWORDS | {
        "exclusiveMinimum", "exclusiveMaximum", "patternProperties", "propertyNames",
        "minProperties", "maxProperties", "format"}
    notes = ("xgrammar: Lark grammars are not accepted (pass Grammar(..., syntax='ebnf') or "
             "use engine='llguidance'); reasoning needs llguidance",)

    def __init__(self, tok: TokenizerData, **cache: Any) -> None:
        import xgrammar as xgr

        super().__init__(tok, **cache)
        self.info = tok.xgr_tokenizer_info()
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self._token_bytes = tok.token_bytes()
        self._encode = tok.encode
        self.closers = closing_candidates(self._token_bytes)

    def prepare_schema(self, output: CompiledOutput) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Take out what XGrammar compiles but does not enforce (measured on MaskBench: it
        emits ``":"`` for an object whose ``allOf`` has several branches, ``null`` for a
        string ``enum`` listing null, ignores ``not``/``if``/``multipleOf``, and reads
        ``oneOf`` as ``anyOf``), so the result records them as post-enforced."""
        schema = output.to_json_schema()
        exact = disjoint_one_of_to_any_of(schema)
        out, relaxed = drop_keywords(exact, XGRAMMAR_UNENFORCED)
        dropped = list(relaxed)
        if not any(_enum_outside_type(n) or _multi_all_of(n) for n in subschemas(out)):
            return out, relaxed
        if out is schema:
            out = copy.deepcopy(schema)
        for node in subschemas(out):
            if _multi_all_of(node):
                del node["allOf"]  # loosens; validation enforces every branch
                if "allOf" not in dropped:
                    dropped.append("allOf")
            types = _enum_outside_type(node)
            if types:
                # exact, not loosened: an enum value of another type is never valid here
                node["enum"] = [v for v in node["enum"] if json_type(v) in types]
        return out, tuple(dropped)

    def codec(self) -> Codec[tuple[Any, tuple[str, ...]]]:
        """XGrammar's own JSON serialization of the compiled grammar (its tokenizer metadata
        is checked on load), with the keywords that were relaxed to get it."""
        grammar = xgrammar_codec(self.info)

        def dumps(value: tuple[Any, tuple[str, ...]]) -> str:
            return json.dumps({"grammar": grammar.dumps(value[0]), "relaxed": list(value[1])})

        def loads(text: str) -> tuple[Any, tuple[str, ...]]:
            entry = json.loads(text)
            return grammar.loads(entry["grammar"]), tuple(entry["relaxed"])

        return Codec(dumps=dumps, loads=loads)

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        c = self.compiler
        try:
            if output.kind == "json":
                compact = options.whitespace == "compact"
                return c.compile_json_schema(
                    json.dumps(output.to_json_schema()), any_whitespace=not compact,
                    separators=(",", ":") if compact else None,
                    max_whitespace_cnt=None if compact else max(options.max_whitespace, 1))
            if output.kind == "regex":
                return c.compile_regex(output.pattern or "")
            if output.kind == "choice":
                return c.compile_grammar(
                    "root ::= " + " | ".join(json.dumps(x) for x in output.choices or ()))
            if output.grammar_syntax != "ebnf":
                raise SchemaError("the xgrammar engine takes EBNF grammars only; pass "
                                  "Grammar(text, syntax='ebnf') or use engine='llguidance'")
            return c.compile_grammar(output.grammar_source or "")
        except SchemaError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its message
            raise SchemaError(f"xgrammar cannot compile this {output.kind} output: "
                              f"{exc}") from None

    def new_matcher(self, compiled: Any) -> Matcher:
        import xgrammar as xgr

        return XGrammarMatcher(xgr.GrammarMatcher(compiled), self._encode, self._token_bytes,
                               self.closers)
