"""What each grammar engine enforces: one table per engine, one function to loosen a schema.

Every path that hands a JSON Schema to a grammar engine (the embedded decoder's engines in
``constrain/``, the servers' engines behind ``backends/``) reads the engine's row here,
calls :func:`loosen`, gives the engine the loosened schema and reports what was taken out
as :class:`PostEnforced` entries; validation then checks the full schema, so a constraint
is never dropped silently. The result carries them as ``post_enforced``.

The rows are documented in ``docs/capabilities.md``; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


@dataclass(frozen=True)
class Quirk:
    """A constraint an engine accepts but is known not to hold in some cases."""

    keyword: str
    applies: Callable[[dict[str, Any]], bool]
    why: str


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


# XGrammar compiles a node with anyOf / oneOf / allOf / $ref from that keyword alone: every
# keyword beside it is ignored. Measured (xgrammar 0.2.9): {"type": "string", "anyOf":
# [{"maxLength": 3}, {"minLength": 10}]} admits 1; {"required": ["r"], "anyOf": [...]} admits
# {} (MaskBench o6376); {"type": "object", "anyOf": [{"required": [...]}, ...]} admits ":"
# (o19057). Where it is exact, the keywords beside go into every branch (A and (B or C) =
# (A and B) or (A and C)); elsewhere they are reported as post-enforced.
_COMBINATORS = ("anyOf", "oneOf", "allOf", "$ref")
# keywords whose meaning depends on others of the same node: merged only when one side has
# none of its group (or both have the same ones, equal)
_GROUPS = (frozenset({"properties", "patternProperties", "additionalProperties",
                      "unevaluatedProperties"}),
           frozenset({"items", "prefixItems", "unevaluatedItems"}),
           frozenset({"contains", "minContains", "maxContains"}),
           frozenset({"if", "then", "else"}))


# a bound on both sides holds as the tighter of the two
_TIGHTER: dict[str, Any] = {
    **dict.fromkeys(("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties",
                     "minContains"), max),
    **dict.fromkeys(("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties",
                     "maxContains"), min)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _no_op(key: str, value: Any) -> bool:
    return key == "additionalProperties" and value in (True, {})


def _beside(node: dict[str, Any], combinator: str) -> dict[str, Any]:
    """The keywords beside ``combinator`` that constrain (annotations and no-ops left out)."""
    return {k: v for k, v in node.items()
            if k != combinator and k not in ANNOTATIONS and not _no_op(k, v)}


def _merged(beside: dict[str, Any], branch: Any) -> Any:
    """``beside`` and ``branch`` as one schema (their conjunction), or None when one dict
    cannot say it exactly."""
    if branch is True or branch == {}:
        return dict(beside)
    if branch is False:
        return False
    if not isinstance(branch, dict) or any(c in branch or c in beside for c in _COMBINATORS):
        return None
    own = {k: v for k, v in branch.items() if not _no_op(k, v)}
    for group in _GROUPS:
        mine, theirs = group & own.keys(), group & beside.keys()
        if mine and theirs and (mine != theirs or any(own[k] != beside[k] for k in mine)):
            return None
    out = dict(own)
    for key, value in beside.items():
        if key not in out or out[key] == value:
            out[key] = value
        elif key == "required" and isinstance(value, list) and isinstance(out[key], list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key in _TIGHTER and _is_number(value) and _is_number(out[key]):
            out[key] = _TIGHTER[key](out[key], value)  # both bounds hold: the tighter one
        elif key == "type":
            mine_t, theirs_t = declared_types({"type": out[key]}), declared_types(beside)
            if mine_t is None or theirs_t is None or not mine_t & theirs_t:
                return None
            both = sorted(mine_t & theirs_t)
            out[key] = both[0] if len(both) == 1 else both
        else:
            return None
    return out


def _distribute(pointer: str, node: dict[str, Any], dropped: list[PostEnforced]) -> None:
    """Put the keywords beside a node's anyOf/oneOf/allOf into its branches where exact;
    report the rest (``node`` is changed in place)."""
    combinator = next((c for c in _COMBINATORS if c in node), None)
    if combinator is None:
        return
    beside = _beside(node, combinator)
    if not beside:
        return
    branches = node[combinator]
    merged = None
    if combinator in ("anyOf", "oneOf") and isinstance(branches, list) and branches:
        merged = [_merged(beside, b) for b in branches]
    elif combinator == "allOf" and isinstance(branches, list) and len(branches) == 1:
        merged = [_merged(beside, branches[0])]
    if merged is not None and all(m is not None for m in merged):
        for key in beside:
            node.pop(key, None)
        node.pop("additionalProperties", None)  # a no-op here (_beside)
        node[combinator] = merged
        return
    dropped.extend(PostEnforced(pointer, key, f"xgrammar ignores keywords beside {combinator}")
                   for key in beside)


def _combined(node: dict[str, Any]) -> bool:
    """Whether the node has keywords beside an anyOf/oneOf/allOf/$ref."""
    return any(c in node and bool(_beside(node, c)) for c in _COMBINATORS)


def siblings_into_branches(schema: dict[str, Any]
                           ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
    """``schema`` for XGrammar (embedded, or behind vLLM/SGLang): the keywords beside each
    anyOf/oneOf/allOf/$ref moved into its branches where exact (a copy; ``schema`` itself
    when nothing moves), and the entries for those left beside, which XGrammar ignores."""
    if not any(_combined(n) for _, n in walk(schema)):
        return schema, ()
    out = copy_schema(schema)
    dropped: list[PostEnforced] = []
    for pointer, node in walk(out):
        _distribute(pointer, node, dropped)
    return out, tuple(dict.fromkeys(dropped))


def _undeclared_required(node: dict[str, Any]) -> list[str]:
    """The names ``required`` lists that ``properties`` does not declare."""
    required, props = node.get("required"), node.get("properties", {})
    if not isinstance(required, list) or not isinstance(props, dict):
        return []
    return [n for n in required if isinstance(n, str) and n not in props]


def required_into_properties(schema: dict[str, Any]
                             ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
    """``schema`` for XGrammar (embedded, or behind vLLM/SGLang): a name ``required`` lists
    but ``properties`` does not declare is declared, with the schema an undeclared member
    has there (``additionalProperties``' schema, else ``{}``), which is exact; XGrammar
    ignores it otherwise (measured: MaskBench Github_trivial o2058 wrote an object without
    it). Where that is not exact (``patternProperties`` may apply, ``additionalProperties``
    is false, the node is not object-only) the entry is reported. A copy; ``schema`` itself
    when nothing changes."""
    if not any(_undeclared_required(n) for _, n in walk(schema)):
        return schema, ()
    out = copy_schema(schema)
    dropped: list[PostEnforced] = []
    for pointer, node in [(p, n) for p, n in walk(out) if _undeclared_required(n)]:
        extra = node.get("additionalProperties", True)
        object_only = declared_types(node) == {"object"} or "properties" in node
        if "patternProperties" in node or extra is False or not isinstance(extra, dict | bool) \
                or not object_only:
            dropped.append(PostEnforced(pointer, "required", "xgrammar ignores a required "
                                        "member that properties does not declare"))
            continue
        props = node.setdefault("properties", {})
        for name in _undeclared_required(node):
            props[name] = {} if extra is True else copy_schema(extra)
    return out, tuple(dropped)


def min_properties_with_open_keys(node: dict[str, Any]) -> bool:
    """A grammar engine cannot keep member names unique where they are open
    (``patternProperties``, or ``additionalProperties`` not false): a repeated name counts
    once when parsed, so ``minProperties`` may not hold (measured: MaskBench Handwritten
    dep5, llguidance and xgrammar both wrote ``{"d":…,"a":…,"a":…}`` under
    ``minProperties: 3``)."""
    return "minProperties" in node and (
        "patternProperties" in node or node.get("additionalProperties", True) is not False)


def repeated_open_keys(schema: Any) -> tuple[PostEnforced, ...]:
    """The ``minProperties`` a grammar keeps but cannot hold (see
    :func:`min_properties_with_open_keys`): reported, validation holds them."""
    return tuple(PostEnforced(pointer, "minProperties", "a repeated open member name "
                              "counts once") for pointer, node in walk(schema)
                 if min_properties_with_open_keys(node))
