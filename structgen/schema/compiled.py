"""Turn whatever the caller passed as ``output`` into one :class:`CompiledOutput`.

A CompiledOutput is the single description of the constraint that flows down the
pipeline: backends read the target form they enforce (JSON Schema, regex, Lark, EBNF),
validation reads the schema or the pattern, caches read ``hash``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel

from structgen.errors import SchemaError
from structgen.schema.canonical import (
    ENCODER,
    canonical_json,
    json_copy,
    schema_identity,
    sha256_hex,
)
from structgen.schema.check import check_schema
from structgen.schema.drafts import upgrade_schema
from structgen.schema.ecma_regex import compile_ecma, translate
from structgen.schema.limits import DEFAULT_LIMITS, Limits
from structgen.schema.pydantic_schema import close_objects, model_json_schema
from structgen.schema.refs import localize_refs
from structgen.schema.targets import grammar_to_lark, to_ebnf, to_lark, to_regex
from structgen.types import Choice, Grammar, JsonSchema, OutputKind, Regex

# 2: schema identity = sorted JSON + properties orders; 3: patterns in portable ECMA form
COMPILER_VERSION = "3"


@dataclass(frozen=True, eq=False)
class CompiledOutput:
    kind: OutputKind
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    grammar: str | None = None  # Lark text (llguidance dialect) for kind == "grammar"
    grammar_source: str | None = None  # the text as the caller gave it
    grammar_syntax: str | None = None  # "lark" | "ebnf" as the caller gave it
    model: type[BaseModel] | None = None
    name: str = "output"
    # what parsing and validating this output's text may cost ([limits] in config.toml)
    limits: Limits = DEFAULT_LIMITS
    # the schema as written when structgen rewrote it for grammars (an older draft upgraded
    # to 2020-12, references through nested $ids made root pointers): ``json_schema`` is
    # the rewrite, values are judged by this one, under the draft it declares
    written_schema: dict[str, Any] | None = None
    # a tool turn's single call, one grammar per tool (schema/toolset.py): grammar engines
    # compile the call's head and then the named tool's grammar alone, not the whole envelope
    calls: CallTable | None = None

    @property
    def validation_schema(self) -> dict[str, Any] | None:
        """The schema values are validated against (the declared draft's, else 2020-12)."""
        return self.written_schema if self.written_schema is not None else self.json_schema

    @cached_property
    def hash(self) -> str:
        """Canonical hash of the constraint (model class identity is not part of it)."""
        # canonical text, not the dict: canonical_json would lose the ``properties`` order
        text = None if self.json_schema is None else schema_identity(self.json_schema)
        if self.written_schema is not None:  # two drafts may upgrade to one 2020-12 form
            text = f"{text}\x00{schema_identity(self.written_schema)}"
        return self._hash_with(text)

    @cached_property
    def engine_hash(self) -> str:
        """Hash of exactly what a grammar engine reads (the schema as ordered, the pattern,
        the choices, the grammar): the grammar cache's key. Equal keys compile to the same
        grammar, and a cold compile does not pay for :attr:`hash`'s canonical form."""
        if self.kind == "json":
            return sha256_hex(f"{COMPILER_VERSION}\x00json\x00{self.json_text}")
        return self.hash

    @cached_property
    def json_text(self) -> str:
        """Compact JSON of ``json_schema`` as it is ordered (what grammar engines read)."""
        return json.dumps(self.to_json_schema(), separators=(",", ":"), ensure_ascii=False)

    def _hash_with(self, schema_text: str | None) -> str:
        body: dict[str, Any] = {"v": COMPILER_VERSION, "kind": self.kind}
        if schema_text is not None:
            body["schema"] = schema_text
        if self.pattern is not None:
            body["pattern"] = self.pattern
        if self.choices is not None:
            body["choices"] = list(self.choices)
        if self.grammar is not None:
            body["grammar"] = self.grammar
        return sha256_hex(canonical_json(body))

    # Target forms -----------------------------------------------------------------
    def to_json_schema(self) -> dict[str, Any]:
        if self.json_schema is None:
            raise SchemaError(f"a {self.kind} output has no JSON Schema form")
        return self.json_schema

    def to_regex(self) -> str:
        return to_regex(self)

    def to_lark(self) -> str:
        return to_lark(self)

    def to_ebnf(self) -> str:
        return to_ebnf(self)


@dataclass(frozen=True, eq=False)
class CallTable:
    """The calls of a tool turn as one small grammar per tool. ``head`` is the answer with
    every call's arguments a placeholder: ``{"name": <one of the names>, "arguments": <any
    JSON>}``, alone (``frame="single"``: a matcher leaves the head once the name is
    written), as the items of an array (``"array"``: ``parallel``, ``max_calls`` its
    ``maxItems``) or after each ``<tool_call>`` trigger of an ``"auto"`` turn's grammar
    (``"trigger"``); in the last two the head holds the count and the frame, and each
    call's own grammar runs beside it. ``call(name)`` is that tool's whole call
    (``{"name": N, "arguments": <its schema>}``), made on first use and kept per tool, so a
    tool set pays for the tools its answers call, and a set that differs from a known one
    by one tool compiles that tool alone. ``layout``: the JSON layout the head writes calls
    in when it fixes one (the trigger grammar's compact calls), else the request's."""

    head: CompiledOutput
    call: Callable[[str], CompiledOutput]
    frame: Literal["single", "array", "trigger"] = "single"
    layout: str | None = None


def compile_output(output: Any, *, name: str | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> CompiledOutput:
    """Compile a Pydantic model class, a JSON Schema dict, Regex, Choice or Grammar.

    ``limits`` bound the schema (its depth) and, carried on the result, the parsing and
    validation of every text generated for it.
    """
    if isinstance(output, CompiledOutput):
        return output
    if isinstance(output, type) and issubclass(output, BaseModel):
        schema = model_json_schema(output)
        # Pydantic asserts the formats it emits (ipvanyaddress, ...) when it validates the
        # output, so an unknown format is an annotation here, not a promise we cannot keep
        nodes = check_schema(schema, unknown_formats="ignore")
        portable_patterns(nodes)
        return CompiledOutput(kind="json", json_schema=schema, model=output,
                              name=name or output.__name__, limits=limits)
    if isinstance(output, JsonSchema):
        if not isinstance(output.schema, dict):
            raise SchemaError("a JSON Schema must be an object, got "
                              f"{type(output.schema).__name__}")
        closed = output.closed_objects
        output, name = output.schema, name or output.name
    else:
        closed = False
    if isinstance(output, dict):
        # Older drafts (04/06/07/2019-09) are rewritten to their 2020-12 meaning first.
        # ... and references into the document through nested $ids become root pointers
        rewritten = localize_refs(upgrade_schema(output))
        schema, text = json_copy(rewritten, limits.max_schema_depth)
        if closed:
            schema, text = json_copy(close_objects(schema), limits.max_schema_depth)
        if portable_patterns(check_schema(schema)):
            text = ENCODER.encode(schema)
        return json_output(schema, text, name=name or str(output.get("title") or "output"),
                           limits=limits,
                           written_schema=as_written(output, rewritten, closed=closed,
                                                     max_depth=limits.max_schema_depth))
    if isinstance(output, Regex):
        if not isinstance(output.pattern, str) or not output.pattern:
            raise SchemaError("Regex pattern must be a non-empty string")
        compile_ecma(output.pattern)  # SchemaError if it is no ECMA-262 pattern
        return CompiledOutput(kind="regex", pattern=translate(output.pattern),
                              name=name or "regex", limits=limits)
    if isinstance(output, Choice):
        if not output.choices or not all(isinstance(c, str) and c for c in output.choices):
            raise SchemaError("Choice needs at least one non-empty string")
        if len(set(output.choices)) != len(output.choices):
            raise SchemaError("Choice has duplicate options")
        return CompiledOutput(kind="choice", choices=tuple(output.choices),
                              name=name or "choice", limits=limits)
    if isinstance(output, Grammar):
        lark, syntax = grammar_to_lark(output.text, output.syntax)
        return CompiledOutput(kind="grammar", grammar=lark, grammar_source=output.text,
                              grammar_syntax=syntax, name=name or "grammar", limits=limits)
    if isinstance(output, str):
        try:
            parsed = json.loads(output)
        except json.JSONDecodeError:
            raise SchemaError(
                "a str output spec must be a JSON Schema document; use Regex(...), "
                "Choice([...]) or Grammar(...) for other constraints"
            ) from None
        return compile_output(parsed, name=name, limits=limits)
    raise SchemaError(
        f"unsupported output spec of type {type(output).__name__}: pass a Pydantic model "
        "class, a JSON Schema dict, Regex, Choice or Grammar"
    )


def portable_patterns(nodes: list[dict[str, Any]]) -> bool:
    """Rewrite, in place, every ``pattern`` and ``patternProperties`` key of the subschemas
    ``nodes`` into portable ECMA-262 (schema/ecma_regex.py): same meaning, but no grammar
    engine or server can read ``\\d`` as a Unicode digit. True when anything changed."""
    changed = False
    for node in nodes:
        pattern = node.get("pattern")
        if isinstance(pattern, str) and (new := translate(pattern)) != pattern:
            node["pattern"] = new
            changed = True
        props = node.get("patternProperties")
        if isinstance(props, dict) and any(translate(k) != k for k in props):
            node["patternProperties"] = {translate(k): v for k, v in props.items()}
            changed = True
    return changed


def as_written(schema: dict[str, Any], rewritten: Any, *, closed: bool = False,
               max_depth: int = DEFAULT_LIMITS.max_schema_depth) -> dict[str, Any] | None:
    """A copy of ``schema`` when ``rewritten`` (its upgrade / localized references) is not
    the same object: values are then judged by the schema as written. ``closed``: objects
    were closed on purpose, the rewrite is the one to validate against."""
    return None if closed or rewritten is schema else json_copy(schema, max_depth)[0]


def json_output(schema: dict[str, Any], text: str, **fields: Any) -> CompiledOutput:
    """A json CompiledOutput for ``schema`` with its compact ``text`` (from
    :func:`json_copy`) filled in, so the cold compile encodes the schema once."""
    output = CompiledOutput(kind="json", json_schema=schema, **fields)
    output.__dict__["json_text"] = text  # the cached_property's slot
    return output
