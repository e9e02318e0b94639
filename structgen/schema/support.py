"""What each grammar engine enforces: one table per engine, one function to loosen a schema.

Every path that hands a JSON Schema to a grammar engine (the embedded decoder's engines in
``constrain/``, the servers' engines behind ``backends/``) reads the engine's row here,
calls :func:`loosen`, gives the engine the loosened schema and reports what was taken out
as :class:`PostEnforced` entries; validation then checks the full schema, so a constraint
is never dropped silently. The result carries them as ``post_enforced``.

The rows are documented in ``docs/capabilities.md``; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from structgen.schema.check import copy_schema, declared_types, walk
from structgen.schema.relax import COUPLED, drop_keywords, keywords_present


@dataclass(frozen=True)
class PostEnforced:
    """One constraint the grammar did not enforce, left to validation.

    ``pointer``: JSON pointer of the subschema ("" = the root); ``keyword``: the keyword
    (``""``: the whole output beyond what the grammar still says); ``reason``: why.
    Its string form, ``"<pointer>/<keyword>"`` (``"/"`` for the whole output), is what
    ``StructuredResult.post_enforced`` lists.
    """

    pointer: str
    keyword: str
    reason: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.pointer}/{self.keyword}"


WHOLE_OUTPUT = ""  # PostEnforced.keyword for "the grammar does not constrain this output"


@dataclass(frozen=True)
class EngineSupport:
    """One grammar engine's row: the keywords it leaves to validation, with why.

    ``formats``: the string formats it enforces (any other ``format`` on a string node is
    taken out); None: it takes every format (or ``format`` is in ``unenforced``).
    """

    engine: str
    unenforced: Mapping[str, str]
    formats: frozenset[str] | None = None

    def enforces(self, keyword: str) -> bool:
        return keyword not in self.unenforced

    def plus(self, name: str, more: Mapping[str, str]) -> EngineSupport:
        """This row with more keywords left to validation (a server's own gate in front of
        the engine, or the weaker of two engines)."""
        return EngineSupport(name, {**more, **self.unenforced}, self.formats)


# Keywords that only describe (never constrain) an instance: nobody needs to enforce them.
ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$anchor", "$dynamicAnchor", "title", "description",
    "default", "examples", "deprecated", "readOnly", "writeOnly", "discriminator",
    "contentEncoding", "contentMediaType", "$defs", "definitions",
})

# Every assertion/applicator keyword structgen's validator checks.
ALL_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern",
    "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minItems", "maxItems", "uniqueItems", "contains", "minContains", "maxContains",
    "minProperties", "maxProperties", "patternProperties", "propertyNames", "not", "if",
    "then", "else", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
    "unevaluatedItems", "dependencies", "$dynamicRef",
})


def _all(keywords: Iterable[str], reason: str) -> dict[str, str]:
    return dict.fromkeys(keywords, reason)


# llguidance (the embedded default; vLLM ``guidance``, SGLang ``llguidance``): what 1.x
# refuses to compile ("Unimplemented keys: [...]", "Unknown format"), measured keyword by
# keyword; see llguidance's docs/json_schema.md. Taking them out first saves a failed compile.
LLGUIDANCE = EngineSupport(
    "llguidance",
    _all(("not", "if", "then", "else", "dependencies", "dependentSchemas",
          "dependentRequired", "unevaluatedProperties", "unevaluatedItems", "contains",
          "minContains", "maxContains", "uniqueItems", "propertyNames", "$dynamicRef"),
         "llguidance refuses it"),
    formats=frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4",
                       "ipv6", "uuid", "uri"}))

# XGrammar (vLLM ``xgrammar``, SGLang's default): compiles these but does not (or not
# exactly) enforce them, measured on MaskBench (tests/backends/test_local_maskbench.py):
# it reads oneOf as anyOf and ignores not/if/multipleOf/uniqueItems/contains/dependent*.
XGRAMMAR = EngineSupport(
    "xgrammar",
    {**_all(("not", "if", "then", "else", "dependencies", "dependentSchemas",
             "dependentRequired", "multipleOf", "uniqueItems", "contains", "minContains",
             "maxContains", "unevaluatedProperties", "unevaluatedItems"),
            "xgrammar compiles it without enforcing it"),
     "oneOf": "xgrammar reads oneOf as anyOf (exclusivity left to validation)"})

# Outlines (outlines-core: a regular expression from the schema): structure, enums,
# lengths, patterns, formats and inclusive bounds.
OUTLINES = EngineSupport("outlines", _all(ALL_KEYWORDS - {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum",
    "const", "anyOf", "oneOf", "allOf", "$ref", "minItems", "maxItems", "minLength",
    "maxLength", "pattern", "minimum", "maximum", "format"},
    "outlines-core builds no regular expression for it"))

# llama.cpp's json-schema-to-grammar (Ollama's ``format``): conservative on purpose, bounds,
# patterns and formats are only partly supported there.
LLAMACPP = EngineSupport("llama.cpp", _all(ALL_KEYWORDS - {
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "minItems",
    "maxItems"}, "llama.cpp's json-schema-to-grammar supports it only partly"))

ENGINES: dict[str, EngineSupport] = {
    e.engine: e for e in (LLGUIDANCE, XGRAMMAR, OUTLINES, LLAMACPP)}


def length_beside_pattern(node: dict[str, Any]) -> bool:
    """XGrammar compiles ``minLength``/``maxLength`` next to a ``pattern`` or ``format``
    without holding them (mlc-ai/xgrammar#966; measured embedded on MaskBench
    Github_trivial---o10018: an 85-character key under ``maxLength: 12``)."""
    return ("pattern" in node or "format" in node) and ("minLength" in node
                                                        or "maxLength" in node)


def loosen(schema: Any, support: EngineSupport) -> tuple[Any, tuple[PostEnforced, ...]]:
    """(``schema`` without what ``support``'s engine does not enforce, the entries taken
    out). Only loosens, so validation of the full schema enforces the entries; returns
    ``schema`` itself when there is nothing to take out.

    A keyword goes with its group (``if`` with ``then``/``else``) and ``oneOf`` becomes
    ``anyOf`` (:func:`structgen.schema.relax.drop_keywords`); a string ``format`` outside
    ``support.formats`` goes on its own.
    """
    present = keywords_present(schema)
    out, dropped = drop_keywords(schema, frozenset(support.unenforced) & present)
    entries = list(located(schema, dropped, support.unenforced))
    if "oneOf" in present and "oneOf" not in dropped and out is not schema:
        # a loosened branch could overlap another: drop_keywords made such a oneOf anyOf
        kept = {p for p, n in walk(out) if "oneOf" in n}
        entries += [PostEnforced(p, "oneOf", "a loosened branch could overlap another: "
                                 "sent as anyOf") for p, n in walk(schema)
                    if "oneOf" in n and p not in kept]
    if support.formats is not None and "format" in present and "format" not in dropped:
        formats = support.formats
        bad = [(p, n) for p, n in walk(out) if _other_string_format(n, formats)]
        if bad:
            if out is schema:
                out = copy_schema(schema)
                bad = [(p, n) for p, n in walk(out) if _other_string_format(n, formats)]
            for pointer, node in bad:
                entries.append(PostEnforced(pointer, "format", f"{support.engine} does not "
                                            f"know format {node['format']!r}"))
                del node["format"]
    return out, tuple(entries)


def located(schema: Any, keywords: Iterable[str],
            reasons: Mapping[str, str] | str) -> Iterable[PostEnforced]:
    """An entry for every place in ``schema`` that uses one of ``keywords``."""
    wanted = frozenset(keywords)
    if not wanted:
        return
    for pointer, node in walk(schema):
        for keyword in sorted(wanted & node.keys()):
            why = reasons if isinstance(reasons, str) else reasons.get(keyword, "")
            yield PostEnforced(pointer, keyword, why or "dropped with its group")
            for coupled in COUPLED.get(keyword, ()):
                if coupled in node and coupled not in wanted:
                    yield PostEnforced(pointer, coupled, f"taken out with {keyword} (kept "
                                       "alone, it would make the node stricter)")


def _other_string_format(node: dict[str, Any], formats: frozenset[str]) -> bool:
    """A ``format`` outside ``formats`` on a node that may be a string (formats on numbers
    are ignored, as JSON Schema does: ``{"type": "integer", "format": "int32"}``)."""
    fmt = node.get("format")
    if not isinstance(fmt, str) or fmt in formats:
        return False
    types = declared_types(node)
    return types is None or "string" in types


def merged(*groups: Iterable[PostEnforced]) -> list[PostEnforced]:
    """The entries of ``groups`` in order, each once."""
    return list(dict.fromkeys(e for group in groups for e in group))
