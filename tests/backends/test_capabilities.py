"""The capability matrix: what each backend's engine will not enforce, and what goes on
the wire instead (the relaxed schema), for real schemas."""

from __future__ import annotations

import pytest

from schemas.intent import Intent
from structgen.backends.capabilities import (
    CAPABILITIES,
    capabilities_for,
    relax_for,
    unenforced,
)
from structgen.schema import compile_output
from structgen.types import Choice, Grammar, Regex

TAGS = {"type": "object", "properties": {
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
             "uniqueItems": True, "minItems": 1},
    "count": {"type": "integer", "multipleOf": 2},
    "when": {"type": "string", "format": "date"},
    "meta": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
             "minProperties": 1}},
    "required": ["tags"], "additionalProperties": False}


def test_every_row_names_its_kinds_and_keywords():
    for key, caps in CAPABILITIES.items():
        assert "json" in caps.output_kinds, key
        assert caps.json_keywords and {"type", "properties", "required"} <= caps.json_keywords


@pytest.mark.parametrize(("row", "expected"), [
    ("vllm/guidance", {"/properties/tags/uniqueItems", "/properties/count/multipleOf",
                       "/properties/meta/propertyNames"}),
    ("vllm/xgrammar", {"/properties/tags/uniqueItems", "/properties/count/multipleOf",
                       "/properties/when/format", "/properties/meta/propertyNames",
                       "/properties/meta/minProperties",
                       "/properties/tags/items/maxLength"}),
    ("ollama", {"/properties/tags/uniqueItems", "/properties/count/multipleOf",
                "/properties/when/format", "/properties/meta/propertyNames",
                "/properties/meta/minProperties"}),
])
def test_unenforced_lists_pointers(row, expected):
    got = set(unenforced(compile_output(TAGS), CAPABILITIES[row]))
    assert expected <= got, expected - got
    assert "/properties/tags/minItems" not in got  # every engine enforces minItems


def test_relaxed_schema_drops_only_unenforced_keywords():
    compiled = compile_output(TAGS)
    sent, post = relax_for(compiled, capabilities_for("vllm", "xgrammar"))
    assert sent is not None
    tags = sent["properties"]["tags"]
    assert "uniqueItems" not in tags and tags["minItems"] == 1
    assert tags["items"]["maxLength"] == 8  # quirky but kept: it still narrows the output
    assert "format" not in sent["properties"]["when"]
    assert compiled.json_schema["properties"]["tags"]["uniqueItems"] is True  # untouched
    assert "/properties/tags/uniqueItems" in post


def test_agent_schema_through_defs():
    post = unenforced(compile_output(Intent), capabilities_for("vllm", "xgrammar"))
    assert "/properties/rationale/maxLength" in post  # control characters quirk
    assert unenforced(compile_output(Intent), capabilities_for("vllm", "guidance")) == []


def test_output_kinds():
    ollama = capabilities_for("ollama")
    assert unenforced(compile_output(Regex("[a-z]+")), ollama) == ["/"]
    assert unenforced(compile_output(Grammar('start: "a"', "lark")), ollama) == ["/"]
    assert unenforced(compile_output(Choice(["a", "b"])), ollama) == []
    outlines = capabilities_for("sglang", "outlines")
    assert unenforced(compile_output(Grammar('start: "a"', "lark")), outlines) == ["/"]
    for row in ("vllm/guidance", "vllm/xgrammar", "sglang/xgrammar"):
        assert unenforced(compile_output(Regex("[a-z]+")), CAPABILITIES[row]) == []


def test_docs_table_matches_matrix():
    """docs/capabilities.md lists every row of the matrix."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs/capabilities.md").read_text()
    for key in CAPABILITIES:
        assert f"`{key}`" in doc, key


@pytest.mark.parametrize("row", sorted(CAPABILITIES))
def test_servers_get_int64_bounds_on_unbounded_integers(row):
    """A server's grammar stops a runaway integer at int64 ([issue 17]); the schema's own
    bounds win, and the compiled schema itself is untouched."""
    sent, _ = relax_for(compile_output(TAGS), CAPABILITIES[row])
    assert sent is not None
    count = sent["properties"]["count"]
    if "minimum" in CAPABILITIES[row].json_keywords:
        assert (count["minimum"], count["maximum"]) == (-(2**63) + 1024, 2**63 - 1024)
    else:
        assert "minimum" not in count and "maximum" not in count
    assert "minimum" not in TAGS["properties"]["count"]
