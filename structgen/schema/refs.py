"""References inside one document, rewritten as JSON pointers from its root.

Real schemas give their parts their own ``$id`` and refer to them relatively
(``{"$id": "http://x/a.json", ..., "$ref": "b.json#/definitions/c"}`` where ``b.json`` is a
subschema of the same document), or by anchor. Grammar engines resolve ``#/...`` pointers
and little else, and structgen's own checks only accept references inside the schema.
:func:`localize_refs` resolves every ``$ref`` against the base URI in force where it
stands (RFC 3986, as JSON Schema says), finds the target among the document's own resources
and anchors, and writes it as ``#/pointer/from/the/root``; the nested ``$id``s are then
dropped (each would otherwise change what a ``#/...`` inside it means). A reference to
anything outside the document is left as it is (and refused later: structgen never
fetches).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urldefrag, urljoin

from structgen.schema.check import _children, _escape, copy_schema

# a base for documents without a root $id: relative references resolve against it
_ROOT = "https://structgen.invalid/root.json"


_DYNAMIC = frozenset({"$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor"})


def _needs_work(schema: dict[str, Any]) -> bool:
    nodes = _nodes(schema)
    if any(not _DYNAMIC.isdisjoint(node) for node in nodes):
        return False  # dynamic scope follows the resources ($id) a value passes through
    for node in nodes:
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        if node is not schema and isinstance(node.get("$id"), str):
            return True
    return False


def _nodes(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(child for _, _, child in _children(node))
    return out


def localize_refs(schema: Any) -> Any:
    """``schema`` with every reference into itself written as a root pointer (a copy when
    anything changed, else ``schema`` itself)."""
    if not isinstance(schema, dict) or not _needs_work(schema):
        return schema
    original, schema = schema, copy_schema(schema)
    resources: dict[str, str] = {}  # absolute URI (no fragment) -> pointer
    anchors: dict[str, str] = {}  # absolute URI#anchor -> pointer
    refs: list[tuple[dict[str, Any], str]] = []  # (node, base its $ref resolves against)
    resources[_ROOT] = ""
    stack: list[tuple[dict[str, Any], str, str]] = [(schema, "", _ROOT)]
    while stack:
        node, pointer, base = stack.pop()
        own = node.get("$id")
        if isinstance(own, str):
            base = urldefrag(_join(base, own))[0]
            resources.setdefault(base, pointer)
        anchor = node.get("$anchor")
        if isinstance(anchor, str):
            anchors.setdefault(f"{base}#{anchor}", pointer)
        if isinstance(node.get("$ref"), str):
            refs.append((node, base))
        for key, member, child in _children(node):
            if member is None:
                here = f"{pointer}/{key}"
            else:
                name = member if isinstance(member, int) else _escape(member)
                here = f"{pointer}/{key}/{name}"
            stack.append((child, here, base))
    resolved: list[tuple[dict[str, Any], str]] = []
    for node, base in refs:
        url, fragment = urldefrag(_join(base, node["$ref"]))
        if url not in resources:
            return original  # leaves the document: refused later, reported as written
        if fragment == "" or fragment.startswith("/"):
            resolved.append((node, "#" + _quote(resources[url]) + fragment))
        elif f"{url}#{fragment}" in anchors:
            resolved.append((node, "#" + _quote(anchors[f"{url}#{fragment}"])))
        else:
            return original
    for node, pointer in resolved:
        node["$ref"] = pointer
    for node in _nodes(schema):
        if node is not schema:
            node.pop("$id", None)
    return schema


def _quote(pointer: str) -> str:
    return quote(pointer, safe="/~!$&'()*+,;=:@")  # a fragment is percent-encoded


def _join(base: str, ref: str) -> str:
    # urljoin knows relative references only for hierarchical schemes, not urn:
    return base + ref if ref.startswith("#") else urljoin(base, ref)
