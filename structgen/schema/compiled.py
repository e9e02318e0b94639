"""Turn whatever the caller passed as ``output`` into one :class:`CompiledOutput`.

A CompiledOutput is the single description of the constraint that flows down the
pipeline: backends read the target form they enforce (JSON Schema, regex, Lark, EBNF),
validation reads the schema or the pattern, caches read ``hash``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from structgen.errors import SchemaError
from structgen.schema.canonical import canonical_json, schema_json, sha256_hex
from structgen.types import Choice, Grammar, JsonSchema, OutputKind, Regex

COMPILER_VERSION = "1"


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
    relaxed: tuple[str, ...] = field(default=())  # keywords dropped from the grammar

    @cached_property
    def hash(self) -> str:
        """Canonical hash of the constraint (model class identity is not part of it)."""
        body: dict[str, Any] = {"v": COMPILER_VERSION, "kind": self.kind}
        if self.json_schema is not None:
            # canonical text, not the dict: canonical_json would sort ``properties``
            body["schema"] = schema_json(self.json_schema)
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
        from structgen.schema.targets import to_regex

        return to_regex(self)

    def to_lark(self) -> str:
        from structgen.schema.targets import to_lark

        return to_lark(self)

    def to_ebnf(self) -> str:
        from structgen.schema.targets import to_ebnf

        return to_ebnf(self)


def compile_output(output: Any, *, name: str | None = None) -> CompiledOutput:
    """Compile a Pydantic model class, a JSON Schema dict, Regex, Choice or Grammar."""
    from structgen.schema.check import check_schema
    from structgen.schema.pydantic_schema import model_json_schema

    if isinstance(output, CompiledOutput):
        return output
    if isinstance(output, type) and issubclass(output, BaseModel):
        schema = model_json_schema(output)
        # Pydantic asserts the formats it emits (ipvanyaddress, ...) when it validates the
        # output, so an unknown format is an annotation here, not a promise we cannot keep
        check_schema(schema, unknown_formats="ignore")
        return CompiledOutput(kind="json", json_schema=schema, model=output,
                              name=name or output.__name__)
    if isinstance(output, JsonSchema):
        output, name = canonicalize_schema(output.schema), name or output.name
    if isinstance(output, dict):
        from structgen.schema.drafts import upgrade_schema

        # Older drafts (04/06/07/2019-09) are rewritten to their 2020-12 meaning first.
        schema = canonicalize_schema(upgrade_schema(output))
        check_schema(schema)
        return CompiledOutput(kind="json", json_schema=schema,
                              name=name or str(output.get("title") or "output"))
    if isinstance(output, Regex):
        if not isinstance(output.pattern, str) or not output.pattern:
            raise SchemaError("Regex pattern must be a non-empty string")
        try:
            re.compile(output.pattern)
        except re.error as exc:
            raise SchemaError(f"invalid regular expression: {exc}") from None
        return CompiledOutput(kind="regex", pattern=output.pattern, name=name or "regex")
    if isinstance(output, Choice):
        if not output.choices or not all(isinstance(c, str) and c for c in output.choices):
            raise SchemaError("Choice needs at least one non-empty string")
        if len(set(output.choices)) != len(output.choices):
            raise SchemaError("Choice has duplicate options")
        return CompiledOutput(kind="choice", choices=tuple(output.choices),
                              name=name or "choice")
    if isinstance(output, Grammar):
        from structgen.schema.targets import grammar_to_lark

        lark, syntax = grammar_to_lark(output.text, output.syntax)
        return CompiledOutput(kind="grammar", grammar=lark, grammar_source=output.text,
                              grammar_syntax=syntax, name=name or "grammar")
    if isinstance(output, str):
        try:
            parsed = json.loads(output)
        except json.JSONDecodeError:
            raise SchemaError(
                "a str output spec must be a JSON Schema document; use Regex(...), "
                "Choice([...]) or Grammar(...) for other constraints"
            ) from None
        return compile_output(parsed, name=name)
    raise SchemaError(
        f"unsupported output spec of type {type(output).__name__}: pass a Pydantic model "
        "class, a JSON Schema dict, Regex, Choice or Grammar"
    )


def canonicalize_schema(schema: Any) -> dict[str, Any]:
    """A JSON-clean deep copy in canonical form (see :mod:`structgen.schema.canonical`)."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    try:
        canonical: dict[str, Any] = json.loads(schema_json(schema))
        return canonical
    except (TypeError, ValueError) as exc:
        # NaN/inf, sets, non-str keys...: nothing a JSON-speaking backend could receive
        raise SchemaError(f"schema is not JSON-serializable: {exc}") from None
