"""The small interface every constraint engine implements (one file per engine).

A :class:`GrammarConstraint` is built once per tokenizer; it compiles a
:class:`~structgen.schema.CompiledOutput` (through the shared grammar cache) into a fresh
:class:`Matcher` per request. The decode loop only ever talks to a Matcher: fill the
allowed-token bitmask, consume the chosen token, ask for forced (fast-forward) tokens.

Bitmasks are the format the three libraries share: an int32 tensor, one bit per token,
bit set = allowed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from structgen.constrain.calls import CallMatcher, crossing_tokens
from structgen.constrain.closing import closing_candidates
from structgen.constrain.grammar_cache import default_grammar_cache
from structgen.constrain.matcher import Matcher
from structgen.constrain.tokenizer import TokenizerData
from structgen.errors import ConfigError, GrammarCompileTimeout, SchemaError
from structgen.registry import ENGINES, lookup
from structgen.schema.layout import JSON_SEPARATORS, LAYOUTS
from structgen.schema.relax import last_resorts, loosen_until_it_compiles
from structgen.schema.support import (
    WHOLE_OUTPUT,
    EngineSupport,
    PostEnforced,
    located,
    loosen,
)
from structgen.types import ALL_KINDS, OutputKind

if TYPE_CHECKING:

    from structgen.constrain.grammar_cache import Codec, GrammarCache
    from structgen.schema import CompiledOutput

# Part of every grammar-cache key (memory and disk): bump it when prepare_schema or the
# relaxation rules change which grammar a schema gets, so no stale grammar is reused.
PREPARE_VERSION = 6


@dataclass(frozen=True)
class ConstraintOptions:
    """How a JSON output is laid out and what the grammar wraps around it.

    ``whitespace``, the layout: ``"compact"`` (no whitespace between JSON tokens),
    ``"spaced"`` (exactly ``json.dumps``' default: one space after ``,`` and ``:``, none
    elsewhere) or ``"any"`` (at most ``max_whitespace`` whitespace characters between
    tokens); see :data:`structgen.schema.layout.JSON_SEPARATORS`. ``reasoning``: free text in
    ``<think>...</think>`` before the answer (engines that cannot express it raise).
    ``open_end``: any text may follow the output (one tool call inside a sequence of calls,
    :mod:`structgen.constrain.calls`: what follows is the sequence's grammar's to judge).
    """

    whitespace: str = "compact"
    max_whitespace: int = 4
    reasoning: bool = False
    open_end: bool = False

    def key(self) -> str:
        key = f"ws={self.whitespace}:{self.max_whitespace}:think={int(self.reasoning)}"
        return f"{key}:open" if self.open_end else key


Compiled = tuple[Any, tuple[PostEnforced, ...]]  # an engine's grammar, what it leaves out


class GrammarConstraint(ABC):
    """A constraint engine bound to one tokenizer.

    An engine declares itself in its class line: its row in :mod:`structgen.schema.support`
    (which names it), the distribution its version is read from, whether it forces tokens
    (fast-forward) and can constrain reasoning output, and the output kinds it takes::

        class XGrammarConstraint(GrammarConstraint, support=XGRAMMAR, package="xgrammar",
                                 fast_forward=True): ...

    Defining the class registers it under its name (:mod:`structgen.registry`):
    ``[local] engine`` accepts it and the embedded backend uses it, nothing else to edit.
    """

    name: str = "base"
    version: str = "0"  # the engine library's version: part of the grammar-cache key
    supports_fast_forward: bool = False
    supports_reasoning: bool = False
    # the output kinds it constrains (the embedded backend's capabilities)
    output_kinds: frozenset[OutputKind] = ALL_KINDS
    notes: tuple[str, ...] = ()
    # its row in schema/support.py: what it leaves to validation
    support: EngineSupport
    # True when the engine itself keeps raw control characters out of JSON strings; the
    # decode loop masks them for engines that do not (XGrammar lets them into strings with
    # maxLength, Outlines' string regex is similar)
    forbids_json_control_chars: bool = False
    # True when the engine bounds its own compile work (and fails instead of running on):
    # its compiles then run inline, without the worker thread that enforces the deadline
    bounded_compile: bool = False
    # True when several calls (parallel, "auto") may compile one grammar per tool
    # (output.calls, constrain/calls.py): their head judges the text around the calls, so
    # its any-JSON placeholder must compile as such (a single call leaves its head at the
    # name, before the placeholder)
    frames_calls: bool = True

    def __init_subclass__(cls, *, support: EngineSupport, package: str,
                          fast_forward: bool = False, reasoning: bool = False,
                          kinds: frozenset[OutputKind] = ALL_KINDS, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.support, cls.name = support, support.engine
        cls.version = importlib.metadata.version(package)
        cls.supports_fast_forward, cls.supports_reasoning = fast_forward, reasoning
        cls.output_kinds = kinds
        ENGINES[cls.name] = cls

    def __init__(self, tok: TokenizerData, *, grammar_cache: GrammarCache | None = None,
                 compile_timeout_s: float | None = None) -> None:
        self.tok = tok
        self.grammar_cache = grammar_cache
        self.compile_timeout_s = compile_timeout_s
        # the tokens budget-aware closing tries (every engine's matchers share them)
        self.closers = closing_candidates(tok.token_bytes())
        # the tokens a tool call's head masks out (constrain/calls.py)
        self.crossing = crossing_tokens(tok.token_bytes())

    def matcher(self, output: CompiledOutput, options: ConstraintOptions) -> Matcher:
        """A fresh matcher for ``output``; the compiled grammar is cached across requests
        (in memory, and on disk for engines with a serialized form, so a restarted process
        does not compile again). A JSON grammar that does not compile within
        ``compile_timeout_s`` is recorded and replaced by plain JSON of the schema's type
        (reported as a ``compile-timeout`` entry; validation enforces the schema). Engines
        with ``bounded_compile`` compile inline: they stop themselves and raise instead."""
        if options.reasoning and not self.supports_reasoning:
            raise SchemaError(f"the {self.name} engine cannot constrain reasoning output; "
                              "use engine='llguidance'")
        calls = output.calls
        if calls is not None and not options.reasoning and (calls.frame == "single"
                                                            or self.frames_calls):
            # one grammar per tool: the names now, the called tool's schema once named
            # (beside the head, open-ended, when the head frames several calls)
            own = replace(options, whitespace=calls.layout or options.whitespace,
                          open_end=calls.frame != "single")
            return CallMatcher(self.matcher(calls.head, options),
                               lambda name: self.matcher(calls.call(name), own),
                               self.tok.token_bytes(), self.crossing, frame=calls.frame,
                               encode=self.tok.encode)
        cache = self.grammar_cache or default_grammar_cache()
        key = (f"{output.engine_hash}:{options.key()}", self.tok.hash, self.name,
               f"{self.version}+prepare{PREPARE_VERSION}")
        try:
            compiled, post = cache.get_or_compile(
                key, lambda: self._compile_or_relax(output, options),
                timeout_s=None if self.bounded_compile else self.compile_timeout_s,
                codec=self.codec())
        except GrammarCompileTimeout:
            if output.kind != "json" or output.json_schema is None:
                raise
            compiled, post = cache.get_or_compile(
                (f"{key[0]}:compile-timeout", *key[1:]),
                lambda: self._looser(output, options), codec=self.codec())
        matcher = self.new_matcher(compiled)
        matcher.post_enforced = post
        return matcher

    def _looser(self, output: CompiledOutput, options: ConstraintOptions) -> Compiled:
        for schema, label in last_resorts(output.json_schema):
            try:
                return (self.compile(replace(output, json_schema=schema), options),
                        (PostEnforced("", WHOLE_OUTPUT, f"compile-timeout: {label}"),))
            except SchemaError:
                continue
        raise SchemaError(f"the {self.name} engine cannot compile even an any-JSON grammar")

    def codec(self) -> Codec[Compiled] | None:
        """How a compiled grammar (with its post-enforced entries) goes to disk; None = memory
        only (an engine whose compiled form cannot be serialized)."""
        return None

    def _compile_or_relax(self, output: CompiledOutput, options: ConstraintOptions) -> Compiled:
        """Compile ``output``; a JSON schema the engine refuses is loosened keyword by keyword
        (:func:`structgen.schema.relax.loosen_until_it_compiles`) until it compiles. The grammar then
        lets through a superset of valid outputs and validation enforces the dropped keywords.
        """
        prepared: tuple[PostEnforced, ...] = ()
        if output.kind == "json" and output.json_schema is not None:
            schema, prepared = self.prepare_schema(output)
            if schema is not output.json_schema:
                output = replace(output, json_schema=schema)
        try:
            return self.compile(output, options), prepared
        except SchemaError as exc:
            if output.kind != "json" or output.json_schema is None:
                raise
            first_error = str(exc)

        compiled: dict[str, Any] = {}

        def check(schema: Any) -> str | None:
            try:
                compiled["value"] = self.compile(replace(output, json_schema=schema), options)
            except SchemaError as err:
                return str(err)
            return None

        schema, relaxed = loosen_until_it_compiles(output.json_schema, check)
        if "value" not in compiled:  # loosen_until_it_compiles returned a schema it never checked
            raise SchemaError(first_error)
        if schema is output.json_schema:
            return compiled["value"], prepared
        why = f"{self.name} refused to compile it: {first_error[:200]}"
        refused = [*located(output.json_schema, relaxed, why),
                   *(PostEnforced("", WHOLE_OUTPUT, f"{label}: {why}")
                     for label in relaxed if label in ("type-only", "any-json"))]
        return compiled["value"], tuple(dict.fromkeys((*prepared, *refused)))

    def prepare_schema(self, output: CompiledOutput
                       ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
        """The schema to give this engine for a json ``output`` (its ``json_schema`` itself
        when nothing changes) and what was taken out of it beforehand: the engine's row in
        :mod:`structgen.schema.support`, so the grammar is honest and what was dropped is
        reported (then validated)."""
        return loosen(output.to_json_schema(), self.support)

    @abstractmethod
    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> Any:
        """Compile ``output`` into this engine's reusable form (raises SchemaError)."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> Matcher:
        """A fresh matcher from a compiled grammar."""


def engine_class(engine: str) -> type[GrammarConstraint]:
    """The constraint engine named ``engine`` (the one lookup: config, backend, runtime)."""
    cls: type[GrammarConstraint] = lookup(ENGINES, engine, "engine", "local.engine")
    return cls


def create_constraint(engine: str, tok: TokenizerData, *,
                      grammar_cache: GrammarCache | None = None,
                      compile_timeout_s: float | None = None) -> GrammarConstraint:
    """Instantiate constraint engine ``engine`` for a tokenizer."""
    return engine_class(engine)(tok, grammar_cache=grammar_cache,
                                compile_timeout_s=compile_timeout_s)


def json_separators(options: ConstraintOptions) -> tuple[str, str] | None:
    """(item, key) separators the grammar enforces; None for the free ``"any"`` layout."""
    if options.whitespace not in LAYOUTS:
        raise ConfigError(f"unknown JSON layout {options.whitespace!r} "
                          f"(known: {', '.join(LAYOUTS)})", "local.whitespace")
    return JSON_SEPARATORS.get(options.whitespace)


def json_whitespace_regex(options: ConstraintOptions) -> str:
    """Regex for whitespace between JSON tokens under ``options`` (free layout; a layout
    with fixed separators has none besides them)."""
    if json_separators(options) is not None:
        return ""
    return f"[\\x20\\x0A\\x0D\\x09]{{0,{options.max_whitespace}}}"
