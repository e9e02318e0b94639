"""Bring schemas written for older drafts (04, 06, 07, 2019-09) to Draft 2020-12.

Schemas found in the wild declare ``"$schema": "http://json-schema.org/draft-04/schema#"``
and rely on that draft's meaning: ``$ref`` hides its siblings, ``exclusiveMaximum`` is a
boolean, ``items`` may be a list, ``dependencies`` mixes two keywords. structgen compiles
and validates everything as 2020-12, so :func:`upgrade_schema` rewrites those idioms into
their 2020-12 equivalents; the meaning of the schema does not change.
"""

from __future__ import annotations

import re
from typing import Any

from structgen.schema.check import copy_schema

_OLD_DRAFT = re.compile(r"json-schema\.org/(draft-0[3-7]|draft/2019-09)/schema")
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Keywords kept next to a draft <= 7 ``$ref``: they hold the targets other refs point at.
# A sibling ``$id`` goes with the rest: draft 7 ignores it, so it must not change the base
# URI the ``$ref`` is resolved against (Test Suite draft7 ref.json #6).
_REF_KEEP = ("$ref", "definitions", "$defs")
_ANCHOR = re.compile(r"[A-Za-z_][-A-Za-z0-9._]*")  # 2020-12's $anchor syntax
_ITEMS_INDEX = re.compile(r"/items/(\d+)(?=/|$)")


def _replace_key(node: dict[str, Any], old: str, new: str, value: Any = None) -> None:
    """``old`` renamed ``new`` in place (member order is what grammars emit properties in)."""
    items = [(new, node[old] if value is None else value) if k == old else (k, v)
             for k, v in node.items()]
    node.clear()
    node.update(items)


def declared_draft(schema: Any) -> str | None:
    """``"draft-04"`` ... ``"draft/2019-09"`` when the root declares an older draft."""
    if isinstance(schema, dict) and isinstance(schema.get("$schema"), str):
        m = _OLD_DRAFT.search(schema["$schema"])
        if m:
            return m.group(1)
    return None


def upgrade_schema(schema: Any) -> Any:
    """A 2020-12 schema with the same meaning as ``schema``; the input is never changed.

    A schema without an older ``$schema`` declaration is returned as is (the same object:
    copying it would cost every cold compile; callers that edit a schema copy it first).
    Otherwise the result is an upgraded copy.
    """
    draft = declared_draft(schema)
    if draft is None:
        return schema
    schema = copy_schema(schema)
    _upgrade(schema, draft)
    schema["$schema"] = DRAFT_2020_12
    return schema


def _upgrade(node: Any, draft: str) -> None:
    if isinstance(node, list):
        for item in node:
            _upgrade(item, draft)
        return
    if not isinstance(node, dict):
        return
    if draft in ("draft-03", "draft-04") and isinstance(node.get("id"), str):
        _replace_key(node, "id", "$id")  # draft-04 spells $id without the dollar
    if isinstance(node.get("$id"), str) and node["$id"].startswith("#"):
        # draft 6/7 name a location-independent anchor with a fragment-only $id; one that is
        # no plain name ("#/definitions/x", "#a!b") identifies nothing a $ref could use
        name = node["$id"][1:]
        if _ANCHOR.fullmatch(name):
            _replace_key(node, "$id", "$anchor", name)
        else:
            del node["$id"]
    if isinstance(node.get("$ref"), str):
        # pointers through keywords this upgrade renames (items: [...] -> prefixItems)
        node["$ref"] = _ITEMS_INDEX.sub(r"/prefixItems/\1", node["$ref"]).replace(
            "/additionalItems", "/items")
    if "$ref" in node and draft != "draft/2019-09":
        # draft <= 7: every sibling of $ref is ignored
        for key in [k for k in node if k not in _REF_KEEP]:
            del node[key]
    if draft == "draft-04" or draft == "draft-03":
        for bound, excl in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
            flag = node.get(excl)
            if isinstance(flag, bool):
                del node[excl]
                if flag and isinstance(node.get(bound), int | float):
                    node[excl] = node.pop(bound)
    if isinstance(node.get("items"), list):
        node["prefixItems"] = node.pop("items")
        if "additionalItems" in node:
            node["items"] = node.pop("additionalItems")
    else:
        node.pop("additionalItems", None)  # ignored when items is not a list
    deps = node.get("dependencies")
    if isinstance(deps, dict):
        del node["dependencies"]
        required = {k: v for k, v in deps.items() if isinstance(v, list)}
        schemas = {k: v for k, v in deps.items() if isinstance(v, dict | bool)}
        if required:
            node["dependentRequired"] = required
        if schemas:
            node["dependentSchemas"] = schemas
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples", "required"):
            continue  # data, not subschemas
        if key in ("properties", "patternProperties", "definitions", "$defs",
                   "dependentSchemas"):
            if isinstance(value, dict):
                for sub in value.values():
                    _upgrade(sub, draft)
            continue
        if isinstance(value, dict | list):
            _upgrade(value, draft)
