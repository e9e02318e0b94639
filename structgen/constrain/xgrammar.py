"""XGrammar engine: compiled grammars with a persistent token-mask cache; jump-forward via
its jump-forward string (re-tokenized, accepted only when the tokens reproduce it exactly)."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from structgen.constrain.base import (
    Compiled,
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    json_separators,
)
from structgen.constrain.grammar_cache import Codec, xgrammar_codec
from structgen.constrain.matcher import lowest_allowed
from structgen.errors import SchemaError
from structgen.schema.check import declared_types, json_type, walk
from structgen.schema.relax import disjoint_one_of_to_any_of
from structgen.schema.support import (
    XGRAMMAR,
    PostEnforced,
    length_beside_pattern,
    loosen,
    repeated_open_keys,
    required_into_properties,
    siblings_into_branches,
)
from structgen.validate import schema_errors

if TYPE_CHECKING:
    import torch

    from structgen.schema import CompiledOutput


ANY_TEXT = r"[\s\S]*"  # what may follow an open-ended output (ConstraintOptions.open_end)


def _enum_outside_type(node: dict[str, Any]) -> set[str] | None:
    """The node's types when its ``enum`` lists a value of another type, else None."""
    types, enum = declared_types(node), node.get("enum")
    if types is None or not isinstance(enum, list):
        return None
    return types if any(json_type(v) not in types for v in enum) else None


# assertions on a value that XGrammar drops beside an enum (checked on the enum's values)
# number and string keywords XGrammar reads only beside a "type"
_UNTYPED_IGNORED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                    "minLength", "maxLength", "pattern", "format")
_ENUM_SIBLINGS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                  "minLength", "maxLength", "pattern")


def _enum_beside_bounds(node: dict[str, Any]) -> bool:
    return isinstance(node.get("enum"), list) and any(k in node for k in _ENUM_SIBLINGS)


def _format_beside_pattern(node: dict[str, Any]) -> bool:
    """XGrammar compiles a string with both from the format alone (measured: MaskBench
    Github_easy o44051, ``format: uri`` beside ``pattern: ^(https|file)://``, wrote
    ``"dede…:"``)."""
    return "format" in node and "pattern" in node


def _multi_all_of(node: dict[str, Any]) -> bool:
    return isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1


def longer_tokens(token_bytes: list[bytes]) -> dict[int, tuple[int, ...]]:
    """Each token whose bytes begin other, longer tokens -> those tokens (``' ['`` ->
    ``' [{'``, ``' ["'``, ...)."""
    ids: dict[bytes, int] = {}
    for i, b in enumerate(token_bytes):
        ids.setdefault(b, i)
    out: dict[int, list[int]] = {}
    for i, b in enumerate(token_bytes):
        for k in range(1, len(b)):
            j = ids.get(b[:k])
            if j is not None:
                out.setdefault(j, []).append(i)
    return {j: tuple(v) for j, v in out.items()}


class XGrammarMatcher(Matcher):
    __slots__ = ("closers", "encode", "longer", "m", "token_bytes")
    supports_closing = True  # xgrammar's matcher forks and rolls back

    def __init__(self, m: Any, encode: Any, token_bytes: list[bytes],
                 closers: tuple[list[int], list[int], frozenset[int]],
                 longer: dict[int, tuple[int, ...]] | None = None) -> None:
        self.m = m
        self.encode = encode
        self.token_bytes = token_bytes
        self.closers = closers
        self.longer = longer or {}

    def fork(self) -> XGrammarMatcher:
        out = XGrammarMatcher(self.m.fork(), self.encode, self.token_bytes, self.closers,
                              self.longer)
        out.post_enforced = self.post_enforced
        return out

    def accepts(self, token: int) -> bool:
        if not self.m.accept_token(token):
            return False
        self.m.rollback(1)
        return True

    def _next_mask(self) -> torch.Tensor:
        """The tokens allowed next, as one bitmask row (32 tokens a word)."""
        import xgrammar as xgr

        mask = xgr.allocate_token_bitmask(1, len(self.token_bytes))
        self.m.fill_next_token_bitmask(mask, 0)
        return mask[0]

    def first_allowed(self) -> int | None:
        return lowest_allowed(self._next_mask())

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, row)

    def consume(self, token: int) -> bool:
        return bool(self.m.accept_token(token))

    def forced_tokens(self) -> list[int]:
        # a trailing space (the spaced layout's ": " and ", ") is left to the model: BPE
        # vocabularies write it with what follows (' "', ' 1'), and a forced lone space
        # costs a token every member (measured: answers cut at tight budgets)
        s = self.m.find_jump_forward_string().rstrip(" ")
        if not s:
            return []
        ids: list[int] = self.encode(s)
        # A jump-forward string may end inside what would be one token with the text after
        # it; only take it when its tokens spell exactly that string.
        if b"".join(self.token_bytes[i] for i in ids) != s.encode("utf-8"):
            return []
        *head, last = ids
        if not self.consume_all(head):
            return []
        # Nor is its last token forced when a longer token the grammar allows there begins
        # with it (' [' where ' [{' may come): fed alone, it splits the text where the
        # tokenizer would not (benchmarks/token_seams.py); the model writes it instead.
        if self._allows_any(self.longer.get(last, ())):
            return head
        if not self.m.accept_token(last):
            if head:
                self.m.rollback(len(head))
            return []
        return ids

    def _allows_any(self, tokens: tuple[int, ...]) -> bool:
        if not tokens:
            return False
        words = self._next_mask().tolist()
        return any((words[t // 32] >> (t % 32)) & 1 for t in tokens)

    def consume_all(self, tokens: list[int]) -> bool:
        """All of ``tokens`` or none: a rejected token rolls back the ones before it."""
        for n, t in enumerate(tokens):
            if not self.m.accept_token(t):
                if n:
                    self.m.rollback(n)
                return False
        return True

    def is_finished(self) -> bool:
        # xgrammar terminates only once it has taken a stop token; an answer after which
        # the grammar allows nothing else is finished too. Else one complete exactly at
        # max_tokens read as cut (MaskBench BFCL_parallel_multiple_167, spaced layout)
        return bool(self.m.is_terminated()) or (bool(self.m.is_completed())
                                                and self._only_stop_allowed())

    def _only_stop_allowed(self) -> bool:
        words = [int(w) & 0xFFFFFFFF for w in self._next_mask().tolist()]
        for stop in self.m.stop_token_ids:
            if stop // 32 < len(words):
                words[stop // 32] &= ~(1 << (stop % 32))
        return not any(words)

    def is_accepting(self) -> bool:
        return bool(self.m.is_completed())


class XGrammarConstraint(GrammarConstraint, support=XGRAMMAR, package="xgrammar",
                         fast_forward=True):
    notes = ("xgrammar: Lark grammars are not accepted (pass Grammar(..., syntax='ebnf') or "
             "use engine='llguidance'); reasoning needs llguidance",)

    def __init__(self, tok: TokenizerData, **cache: Any) -> None:
        import xgrammar as xgr

        super().__init__(tok, **cache)
        self.info = tok.xgr_tokenizer_info()
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self._token_bytes = tok.token_bytes()
        self._encode = tok.encode
        self._longer: dict[int, tuple[int, ...]] | None = None  # (longer_tokens, on first use)

    def prepare_schema(self, output: CompiledOutput
                       ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
        """Take out what XGrammar compiles but does not enforce (its row in
        :mod:`structgen.schema.support`; measured on MaskBench), and what it gets wrong in
        combination: it emits ``":"`` for an object whose ``allOf`` has several branches and
        ``null`` for a string ``enum`` listing null. The result records them as
        post-enforced."""
        schema = output.to_json_schema()
        out, taken = loosen(disjoint_one_of_to_any_of(schema), XGRAMMAR)
        # kept in the grammar, reported: validation holds them
        dropped = [*taken, *(PostEnforced(pointer, keyword, "xgrammar does not hold a length "
                                          "bound beside a pattern or format")
                             for pointer, node in walk(out) if length_beside_pattern(node)
                             for keyword in ("minLength", "maxLength") if keyword in node)]
        if any(_multi_all_of(n) for _, n in walk(out)):
            if out is schema:
                out = copy.deepcopy(schema)
            for pointer, node in walk(out):
                if _multi_all_of(node):
                    del node["allOf"]  # loosens; validation enforces every branch
                    dropped.append(PostEnforced(pointer, "allOf", "xgrammar loses the object "
                                                "type with several allOf branches"))
        # keywords beside anyOf/oneOf/allOf/$ref: into the branches, or reported
        out, beside = siblings_into_branches(out)
        dropped.extend(beside)
        out, undeclared = required_into_properties(out)
        dropped.extend(undeclared)
        dropped.extend(repeated_open_keys(out))
        # a number or string keyword on a schema without "type" is ignored (measured:
        # {"maximum": 35} takes 99, {"minLength": 3} takes "a"; MaskBench Handwritten
        # allOfPProp7 wrote 3111111111111111111 for a maximum of 35)
        seen = {(p.pointer, p.keyword) for p in dropped}
        dropped.extend(PostEnforced(pointer, keyword, "xgrammar ignores it on a schema "
                                    "without a type")
                       for pointer, node in walk(out) if "type" not in node
                       and not {"enum", "const"} & node.keys()
                       for keyword in _UNTYPED_IGNORED
                       if keyword in node and (pointer, keyword) not in seen)
        if any(_format_beside_pattern(n) for _, n in walk(out)):
            if out is schema:
                out = copy.deepcopy(schema)
            for pointer, node in walk(out):
                if _format_beside_pattern(node):
                    del node["format"]  # loosens: the grammar then holds the pattern
                    dropped.append(PostEnforced(pointer, "format", "xgrammar drops a pattern "
                                                "beside a format"))
        if not any(_enum_outside_type(n) or _enum_beside_bounds(n) for _, n in walk(out)):
            return out, tuple(dropped)
        if out is schema:
            out = copy.deepcopy(schema)
        for _, node in walk(out):
            types = _enum_outside_type(node)
            if types:
                # exact, not loosened: an enum value of another type is never valid here
                node["enum"] = [v for v in node["enum"] if json_type(v) in types]
            if _enum_beside_bounds(node):
                # exact too: xgrammar compiles the enum alone (measured: MaskBench
                # Handwritten key1, enum 1-10 beside minimum 7, wrote 3)
                bounds = {k: node[k] for k in _ENUM_SIBLINGS if k in node}
                node["enum"] = [v for v in node["enum"] if not schema_errors(v, bounds)]
        return out, tuple(dropped)

    def codec(self) -> Codec[Compiled]:
        """XGrammar's own JSON serialization of the compiled grammar (its tokenizer metadata
        is checked on load), with the entries it leaves to validation."""
        grammar = xgrammar_codec(self.info)

        def dumps(value: Compiled) -> str:
            return json.dumps({"grammar": grammar.dumps(value[0]),
                               "post_enforced": [[e.pointer, e.keyword, e.reason]
                                                 for e in value[1]]})

        def loads(text: str) -> Compiled:
            entry = json.loads(text)
            return grammar.loads(entry["grammar"]), tuple(
                PostEnforced(str(p), str(k), str(r)) for p, k, r in entry["post_enforced"])

        return Codec(dumps=dumps, loads=loads)

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        import xgrammar as xgr

        c = self.compiler
        try:
            if output.kind == "json":
                separators = json_separators(options)
                fixed = separators is not None
                layout: dict[str, Any] = {
                    "any_whitespace": not fixed, "separators": separators,
                    "max_whitespace_cnt": None if fixed else max(options.max_whitespace, 1)}
                if options.open_end:  # any text after the value
                    return c.compile_grammar(xgr.Grammar.concat(
                        xgr.Grammar.from_json_schema(json.dumps(output.to_json_schema()),
                                                     **layout),
                        xgr.Grammar.from_regex(ANY_TEXT)))
                return c.compile_json_schema(json.dumps(output.to_json_schema()), **layout)
            if options.open_end:
                raise SchemaError("an open-ended output is a JSON Schema here")
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

        if self._longer is None:
            self._longer = longer_tokens(self._token_bytes)
        return XGrammarMatcher(xgr.GrammarMatcher(compiled), self._encode, self._token_bytes,
                               self.closers, self._longer)
