"""Derive the tightest schema a grammar engine can compile, dropping only what it cannot do.

Grammar engines support a subset of JSON Schema (llguidance documents its own; XGrammar and
Outlines have theirs). When an engine refuses a schema, structgen does not give up on
constrained decoding: :func:`loosen_until_it_compiles` removes the keywords the engine names in its
error (or, failing that, the least important keywords still present), recompiling after each
step, down to plain JSON of the schema's type and finally any JSON. The relaxed schema only
ever *loosens* the original, so everything it lets through is checked afterwards by full
validation; the dropped keywords are returned so the caller can report them.

Loosening is not always the same as deleting a keyword: inside ``not`` or an ``if``
condition a looser subschema makes the whole schema *stricter*, and a looser ``oneOf``
branch can make two branches match. Those cases are handled by dropping the whole ``not``
/ ``if`` and turning ``oneOf`` into ``anyOf``.

Example::

    def check(s):                      # None when the engine compiles s, else its message
        m = llguidance.LLMatcher(tok, llguidance.grammar_from("json_schema", json.dumps(s)))
        return m.get_error() if m.is_error() else None

    schema, dropped = loosen_until_it_compiles(schema, check)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from structgen.errors import SchemaError
from structgen.schema.check import (
    SUBSCHEMA_MAPS,
    SUBSCHEMA_SINGLE,
    copy_schema,
    subschema_nodes,
)

CompileCheck = Callable[[Any], str | None]
"""Returns ``None`` when the engine compiles the schema, else the engine's error message."""

# Groups dropped together, from the least to the most informative for the grammar.
LADDER: tuple[tuple[str, ...], ...] = (
    ("oneOf",),  # special: oneOf -> anyOf (exclusivity left to validation)
    ("format",),
    ("pattern",),
    ("dependencies", "dependentSchemas", "dependentRequired"),
    ("not",),
    ("if", "then", "else"),
    ("minProperties", "maxProperties"),
    ("propertyNames",),
    ("uniqueItems",),
    ("contains", "minContains", "maxContains"),
    ("unevaluatedProperties", "unevaluatedItems"),
    ("multipleOf",),
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
    ("patternProperties",),
    ("$dynamicRef", "$recursiveRef"),
    ("enum", "const"),
    ("additionalProperties",),
    ("allOf",),
    ("anyOf",),
    ("$ref",),
    ("required",),
)
KEYWORDS = frozenset(k for group in LADDER for k in group)
# Dropping the key also drops these at the same node (else the node gets stricter).
COUPLED = {
    "patternProperties": ("additionalProperties", "unevaluatedProperties"),
    "properties": ("additionalProperties", "unevaluatedProperties"),
    "prefixItems": ("items", "unevaluatedItems"),
    "if": ("then", "else"),
}
# Where _relax descends (not/if are handled whole; draft-7 dependencies go as a keyword).
_MAP_KEYS = tuple(sorted(SUBSCHEMA_MAPS - {"dependencies"}))
_ONE_KEYS = tuple(sorted(SUBSCHEMA_SINGLE - {"not", "if"}))


def loosen_until_it_compiles(schema: Any, compile_check: CompileCheck, *,
                     max_steps: int = 40) -> tuple[Any, tuple[str, ...]]:
    """(schema the engine compiles, keywords relaxed to get there; empty if none).

    ``compile_check(schema)`` returns ``None`` when the engine compiles ``schema`` and the
    engine's error message otherwise. Raises :class:`SchemaError` when not even the
    any-JSON schema ``{}`` compiles.
    """
    error = compile_check(schema)
    if error is None:
        return schema, ()
    relaxed: list[str] = []
    current = copy_schema(schema)
    tried: set[tuple[str, ...]] = set()
    for _ in range(max_steps):
        group = _next_group(current, error or "", tried)
        if group is None:
            break
        tried.add(group)
        candidate = copy_schema(current)
        if not apply_relaxation(candidate, group):
            continue
        current = candidate
        relaxed.extend(k for k in group if k not in relaxed)
        error = compile_check(current)
        if error is None:
            return current, tuple(relaxed)
    for fallback, label in last_resorts(schema):
        if compile_check(fallback) is None:
            return fallback, (*relaxed, label)
    raise SchemaError(f"the grammar engine cannot compile even an any-JSON grammar: {error}")


def drop_keywords(schema: Any, keywords: frozenset[str]) -> tuple[Any, tuple[str, ...]]:
    """A loosened copy of ``schema`` without ``keywords`` (each dropped with its ladder group,
    ``oneOf`` turned into ``anyOf``), and the keywords actually dropped.

    For engines that compile a keyword without enforcing it (or enforce it wrongly): the
    grammar is built from what the engine really does, and validation is told to enforce
    the rest, instead of trusting a grammar that silently lets invalid output through.
    """
    present = keywords_present(schema)
    groups = [group for group in LADDER if set(group) & keywords & present]
    if not groups:
        return schema, ()
    current = copy_schema(schema)
    # one pass for every group: dropping them one by one gives the same schema, but walks
    # (and copies the not/if branches of) a large schema once per group
    if not apply_relaxation(current, tuple(k for group in groups for k in group)):
        return schema, ()
    return current, tuple(k for group in groups for k in group if k in present)


def disjoint_one_of_to_any_of(schema: Any) -> Any:
    """``schema`` with every ``oneOf`` whose branches are told apart by a required ``const``
    tag (a discriminated union) written as ``anyOf``: for such branches at most one can
    match, so the two mean the same and nothing is loosened. Returns a copy if anything
    changed, else ``schema`` itself."""
    def tag_values(branch: Any) -> dict[str, Any]:
        if isinstance(branch, dict) and isinstance(branch.get("$ref"), str):
            ref = branch["$ref"]
            for prefix in ("#/$defs/", "#/definitions/"):
                if ref.startswith(prefix) and isinstance(schema, dict):
                    branch = schema.get(prefix[2:-1], {}).get(ref.removeprefix(prefix))
        if not isinstance(branch, dict):
            return {}
        props, required = branch.get("properties") or {}, branch.get("required") or []
        return {name: props[name]["const"] for name in required
                if isinstance(props.get(name), dict) and "const" in props[name]}

    def disjoint(branches: list[Any]) -> bool:
        tags = [tag_values(b) for b in branches]
        shared = set.intersection(*(set(t) for t in tags)) if tags else set()
        return any(len({repr(t[name]) for t in tags}) == len(tags) for name in shared)

    def exact(node: dict[str, Any]) -> bool:
        branches = node.get("oneOf")
        return isinstance(branches, list) and len(branches) > 1 and "anyOf" not in node \
            and disjoint(branches)

    if not any(exact(n) for n in subschemas(schema)):
        return schema
    schema = copy_schema(schema)  # tag_values reads $defs from this copy from now on
    for node in subschemas(schema):
        if exact(node):
            _replace_key(node, "oneOf", "anyOf", node["oneOf"])  # same member order
    return schema


# Every subschema of a schema (itself first) at the known subschema positions.
subschemas = subschema_nodes


def _next_group(schema: Any, error: str, tried: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The keyword group the error names, else the next ladder group present in the schema."""
    present = keywords_present(schema)
    hinted = [g for g in LADDER if g not in tried and present & set(g)
              and any(_mentions(error, k) for k in g)]
    if hinted:
        return hinted[0]
    for group in LADDER:
        if group not in tried and present & set(group):
            return group
    return None


_HINTS = {
    "format": ("format",),
    "pattern": ("regex", "lookaround", "lookahead", "lookbehind", "backreference",
                "pattern"),
    "minProperties": ("min/maxproperties",),
    "maxProperties": ("min/maxproperties",),
    "oneOf": ("oneof",),
}


def _mentions(error: str, keyword: str) -> bool:
    low = error.lower()
    if f'"{keyword.lower()}"' in low or re.search(rf"\b{re.escape(keyword.lower())}\b", low):
        return True
    return any(h in low for h in _HINTS.get(keyword, ()))


def keywords_present(schema: Any) -> set[str]:
    """Every JSON Schema keyword used anywhere in ``schema`` (known subschema positions)."""
    found: set[str] = set()
    for node in subschema_nodes(schema):
        found.update(node)
    return found


def apply_relaxation(schema: Any, group: tuple[str, ...]) -> bool:
    """Loosen ``schema`` in place by dropping ``group`` everywhere; True if it changed."""
    drop = frozenset(group)
    changed = _relax(schema, drop, to_any_of="oneOf" in drop)
    if changed and isinstance(schema, dict):
        # unevaluated* depends on what the other keywords evaluated; after any change it
        # could become stricter, so it goes too
        _relax(schema, frozenset({"unevaluatedProperties", "unevaluatedItems"}), False)
    return changed


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or "$dynamicRef" in node or any(_has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False


def _relax(node: Any, drop: frozenset[str], to_any_of: bool) -> bool:
    if not isinstance(node, dict):
        return False
    changed = False
    for key in [k for k in node if k in drop and k != "oneOf"]:
        for coupled in (key, *COUPLED.get(key, ())):
            if coupled in node:
                del node[coupled]
                changed = True
    # A looser `not` or `if` makes the schema stricter: drop them whole instead.
    for key in ("not", "if"):
        if key in node and (_relax(copy_schema(node[key]), drop, to_any_of)
                            or _has_ref(node[key])):
            for coupled in (key, *COUPLED.get(key, ())):
                node.pop(coupled, None)
            changed = True
    if "contains" in node and _relax(copy_schema(node["contains"]), drop, to_any_of):
        node.pop("maxContains", None)  # more items may match a looser `contains`
    for key in _MAP_KEYS:
        if isinstance(node.get(key), dict):
            for sub in node[key].values():
                changed |= _relax(sub, drop, to_any_of)
    for key in ("allOf", "anyOf", "prefixItems"):
        if isinstance(node.get(key), list):
            for sub in node[key]:
                changed |= _relax(sub, drop, to_any_of)
    for key in _ONE_KEYS:
        changed |= _relax(node.get(key), drop, to_any_of)
    if isinstance(node.get("items"), list):
        for sub in node["items"]:
            changed |= _relax(sub, drop, to_any_of)
    if isinstance(node.get("oneOf"), list):
        branches = node["oneOf"]
        branch_changed = False
        for sub in branches:
            branch_changed |= _relax(sub, drop, to_any_of)
        if to_any_of or branch_changed or "oneOf" in drop:
            # a looser branch could overlap another one: exclusivity goes to validation
            # in oneOf's place: llguidance merges a node's property lists in the node's own
            # member order, so moving the branches to the end would change the member
            # order the grammar emits (docs/conformance.md, "Member order")
            if "anyOf" not in node:
                _replace_key(node, "oneOf", "anyOf", branches)
            elif "allOf" not in node:
                _replace_key(node, "oneOf", "allOf", [{"anyOf": branches}])
            else:
                del node["oneOf"]
                node["allOf"].append({"anyOf": branches})
            changed = True
        changed |= branch_changed
    return changed


def _replace_key(node: dict[str, Any], old: str, new: str, value: Any) -> None:
    """``node`` with member ``old`` replaced by ``new: value`` at the same position."""
    items = [(new, value) if k == old else (k, v) for k, v in node.items()]
    node.clear()
    node.update(items)


_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def last_resorts(schema: Any) -> list[tuple[dict[str, Any], str]]:
    """The loosest grammars left, tightest first: plain JSON of the root's declared type
    (when it declares one), then any JSON; each with the label it is reported under."""
    typed = type_only(schema)
    return [*([(typed, "type-only")] if typed is not None else []), ({}, "any-json")]


def type_only(schema: Any) -> dict[str, Any] | None:
    """``{"type": ...}`` of the root when it declares one (plain JSON of the right type)."""
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    if isinstance(t, str) and t in _TYPES:
        return {"type": t}
    if isinstance(t, list) and t and all(x in _TYPES for x in t):
        return {"type": list(t)}
    return None
