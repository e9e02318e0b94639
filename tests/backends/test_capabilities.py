"""The capability matrix: what each backend's engine will not enforce, and what goes on
the wire instead (the loosened schema), for real schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from schemas.intent import Intent
from structgen.backends.base import Capabilities
from structgen.backends.capabilities import (
    capabilities_for,
    loosen_for,
    matrix,
    unenforced,
)
from structgen.config import Config
from structgen.registry import BACKENDS, BUILT_IN_BACKENDS, lookup
from structgen.schema import compile_output
from structgen.schema.support import ENGINES, PostEnforced
from structgen.types import Choice, Grammar, Regex

TAGS = {"type": "object", "properties": {
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
             "uniqueItems": True, "minItems": 1},
    "count": {"type": "integer", "multipleOf": 2},
    "when": {"type": "string", "format": "date"},
    "meta": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
             "minProperties": 1}},
    "required": ["tags"], "additionalProperties": False}

# the matrix as the built-in backends declare it (each in its own file): the documented rows
CAPABILITIES = matrix(BUILT_IN_BACKENDS)


def test_every_row_reads_its_engine_table():
    for key, caps in CAPABILITIES.items():
        assert "json" in caps.output_kinds, key
        assert caps.support is not None, key
        assert not {"type", "properties", "required"} & caps.support.unenforced.keys(), key
        # a server row is its engine's row, plus at most a gate in front of it
        engine = ENGINES[{"guidance": "llguidance", "auto": "xgrammar"}.get(
            key.partition("/")[2], key.partition("/")[2]) if "/" in key else "llama.cpp"]
        assert engine.unenforced.items() <= caps.support.unenforced.items(), key


@pytest.mark.parametrize(("row", "expected"), [
    # llguidance enforces multipleOf (checked on vLLM's 1.7.6 and the embedded 1.9.1)
    ("vllm/guidance", {"/properties/tags/uniqueItems", "/properties/meta/propertyNames"}),
    ("vllm/xgrammar", {"/properties/tags/uniqueItems", "/properties/count/multipleOf",
                       "/properties/when/format", "/properties/meta/propertyNames",
                       "/properties/meta/minProperties",
                       "/properties/tags/items/maxLength"}),
    ("ollama", {"/properties/tags/uniqueItems", "/properties/count/multipleOf",
                "/properties/when/format", "/properties/meta/propertyNames",
                "/properties/meta/minProperties"}),
])
def test_unenforced_lists_pointers(row, expected):
    entries = unenforced(compile_output(TAGS), CAPABILITIES[row])
    assert all(isinstance(e, PostEnforced) and e.reason for e in entries)
    got = {str(e) for e in entries}
    assert expected <= got, expected - got
    assert "/properties/tags/minItems" not in got  # every engine enforces minItems


def test_relaxed_schema_drops_only_unenforced_keywords():
    compiled = compile_output(TAGS)
    sent, post = loosen_for(compiled, capabilities_for("vllm", "xgrammar"))
    assert sent is not None
    tags = sent["properties"]["tags"]
    assert "uniqueItems" not in tags and tags["minItems"] == 1
    assert tags["items"]["maxLength"] == 8  # quirky but kept: it still narrows the output
    assert "format" not in sent["properties"]["when"]
    assert compiled.json_schema["properties"]["tags"]["uniqueItems"] is True  # untouched
    assert "/properties/tags/uniqueItems" in {str(e) for e in post}


def test_loosening_a_one_of_branch_makes_it_any_of():
    """With ``multipleOf`` deleted from both branches, ``oneOf`` would match no integer at
    all (both branches match every one): the server gets ``anyOf`` instead, and the
    exclusivity is post-enforced."""
    schema = {"type": "object", "properties": {"n": {"oneOf": [
        {"type": "integer", "multipleOf": 2}, {"type": "integer", "multipleOf": 3}]}}}
    sent, post = loosen_for(compile_output(schema), capabilities_for("ollama"))
    assert sent is not None
    assert sent["properties"]["n"] == {"anyOf": [{"type": "integer"}, {"type": "integer"}]}
    assert {"/properties/n/oneOf", "/properties/n/oneOf/0/multipleOf",
            "/properties/n/oneOf/1/multipleOf"} <= {str(e) for e in post}


def test_what_goes_with_a_keyword_is_reported_too():
    """Without its patternProperties, ``additionalProperties: false`` would refuse the
    members they allowed: both go, and both are reported."""
    schema = {"type": "object", "patternProperties": {"^x-": {"type": "string"}},
              "additionalProperties": False}
    sent, post = loosen_for(compile_output(schema), capabilities_for("ollama"))
    assert sent == {"type": "object"}
    assert {str(e) for e in post} == {"/patternProperties", "/additionalProperties"}


def test_agent_schema_through_defs():
    post = unenforced(compile_output(Intent), capabilities_for("vllm", "xgrammar"))
    assert "/properties/rationale/maxLength" in {str(e) for e in post}  # control characters
    assert unenforced(compile_output(Intent), capabilities_for("vllm", "guidance")) == ()


def test_output_kinds():
    ollama = capabilities_for("ollama")
    def strings(output, caps):
        return [str(e) for e in unenforced(compile_output(output), caps)]

    assert strings(Regex("[a-z]+"), ollama) == ["/"]
    assert strings(Grammar('start: "a"', "lark"), ollama) == ["/"]
    assert strings(Choice(["a", "b"]), ollama) == []
    outlines = capabilities_for("sglang", "outlines")
    assert strings(Grammar('start: "a"', "lark"), outlines) == ["/"]
    for row in ("vllm/guidance", "vllm/xgrammar", "sglang/xgrammar"):
        assert strings(Regex("[a-z]+"), CAPABILITIES[row]) == []


DOC = Path(__file__).resolve().parents[2] / "docs" / "capabilities.md"
# the backticked names in a column's header that are not keywords of their own
ALIASES = {"dependent*": ("dependentRequired", "dependentSchemas")}


def doc_table(text: str) -> tuple[list[list[str]], dict[str, list[str]]]:
    """(the keywords of each column after "kinds", row name -> its cells) of the table
    under "What each engine enforces" in docs/capabilities.md."""
    section = text.split("## What each engine enforces", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, rows = split[0], split[2:]
    columns = [[k for name in re.findall(r"`([^`]+)`", cell) for k in ALIASES.get(name, (name,))]
               for cell in header[2:]]
    return columns, {row[0].strip("`"): row[1:] for row in rows}


def expected_symbol(caps: Capabilities, keywords: list[str], quirky: set[str]) -> str:
    assert caps.support is not None
    if not any(caps.support.enforces(k) for k in keywords):
        return "✗"
    return "⚠" if quirky & set(keywords) else "✓"


def test_docs_table_cells_agree_with_the_matrix():
    """docs/capabilities.md has a row per matrix row, and each cell says what the row's
    support table says: its output kinds, and per column ✓ (every keyword enforced, any
    exception named in the cell), ⚠ (a known quirk) or ✗ (none enforced)."""
    columns, rows = doc_table(DOC.read_text())
    assert sorted(rows) == sorted(CAPABILITIES)
    assert len(columns) == 12 and all(columns), columns
    for key, cells in rows.items():
        caps = CAPABILITIES[key]
        assert caps.support is not None
        kinds = {re.sub(r"\(.*", "", word) for word in re.sub(r"\([^)]*\)", "", cells[0]).split()}
        assert kinds == set(caps.output_kinds), (key, kinds)
        if key == "vllm/auto":  # one merged cell: "the weaker of guidance and xgrammar"
            assert "weaker of guidance and xgrammar" in cells[1]
            weaker = {**CAPABILITIES["vllm/guidance"].support.unenforced,  # type: ignore[union-attr]
                      **CAPABILITIES["vllm/xgrammar"].support.unenforced}  # type: ignore[union-attr]
            assert caps.support.unenforced.keys() == weaker.keys()
            continue
        quirky = {q.keyword for q in caps.quirks}
        assert len(cells) == 1 + len(columns), key
        for keywords, cell in zip(columns, cells[1:], strict=True):
            want = expected_symbol(caps, keywords, quirky)
            assert cell.startswith(want), (key, keywords, cell, want)
            exceptions = [k for k in keywords if not caps.support.enforces(k)]
            if want == "✓":
                assert all(f"`{k}`" in cell for k in exceptions), (key, cell, exceptions)
            if want == "✓" and "format" in keywords:
                assert ("known formats" in cell) == (caps.support.formats is not None), key


def test_docs_table_check_can_fail():
    columns, rows = doc_table(DOC.read_text())
    caps = CAPABILITIES["ollama"]
    pattern = next(i for i, c in enumerate(columns) if c == ["pattern"])
    assert rows["ollama"][1 + pattern].startswith("✗")
    assert expected_symbol(caps, ["pattern"], set()) == "✗"
    assert expected_symbol(CAPABILITIES["vllm/guidance"], ["pattern"], set()) == "✓"
    assert expected_symbol(CAPABILITIES["vllm/xgrammar"], ["maxLength"], {"maxLength"}) == "⚠"


@pytest.mark.parametrize("row", sorted(CAPABILITIES))
def test_servers_get_int64_bounds_on_unbounded_integers(row):
    """A server's grammar stops a runaway integer at int64 ([issue 17]); the schema's own
    bounds win, and the compiled schema itself is untouched."""
    sent, _ = loosen_for(compile_output(TAGS), CAPABILITIES[row])
    assert sent is not None
    count = sent["properties"]["count"]
    support = CAPABILITIES[row].support
    if support is None or (support.enforces("minimum") and support.enforces("maximum")):
        assert (count["minimum"], count["maximum"]) == (-(2**63) + 1024, 2**63 - 1024)
    else:
        assert "minimum" not in count and "maximum" not in count
    assert "minimum" not in TAGS["properties"]["count"]


def test_xgrammar_servers_get_the_keywords_beside_an_any_of_in_its_branches() -> None:
    """vLLM's and SGLang's xgrammar ignore keywords beside an anyOf, as the embedded one
    does (tests/backends/test_local.py): what they are sent has them in every branch; beside
    a $ref they are reported. A guidance server is sent the schema as it is."""
    from structgen.backends.capabilities import capabilities_for, server_schema

    schema = {"type": "object", "properties": {"t": {"type": "string"}},
              "anyOf": [{"required": ["t"]}, {"required": ["v"]}],
              "$defs": {"T": {"type": "string"}},
              "required": ["w"]}
    for key in ("vllm/xgrammar", "vllm/auto", "sglang/xgrammar"):
        backend, engine = key.split("/")
        sent, entries = server_schema(schema, capabilities_for(backend, engine))
        assert set(sent) == {"anyOf", "$defs"}, key
        assert [b["required"] for b in sent["anyOf"]] == [["t", "w"], ["v", "w"]]
        # and a required member properties does not declare is declared (xgrammar ignores
        # it otherwise): any value, as additionalProperties allows
        assert [b["properties"] for b in sent["anyOf"]] == [
            {"t": {"type": "string"}, "w": {}}, {"t": {"type": "string"}, "v": {}, "w": {}}]
        assert all(b["type"] == "object" for b in sent["anyOf"])
        assert not [e for e in entries if e.reason.startswith("xgrammar ignores")]
        _, entries = server_schema({"$ref": "#/$defs/T", "minLength": 2,
                                    "$defs": {"T": {"type": "string"}}},
                                   capabilities_for(backend, engine))
        assert ("", "minLength") in {(e.pointer, e.keyword) for e in entries}
    sent, _ = server_schema(schema, capabilities_for("vllm", "guidance"))
    assert sent["anyOf"] == schema["anyOf"] and sent["required"] == ["w"]


def test_a_backend_has_a_row_for_each_engine_its_config_allows() -> None:
    """The config's choice of a server's grammar engine ([vllm] structured_backend, [sglang]
    grammar_backend) and the backend's capability rows name the same engines."""
    for name in BUILT_IN_BACKENDS:
        cls = lookup(BACKENDS, name, "backend")
        if getattr(cls, "engine_field", None):
            field = Config.model_fields[name].annotation.model_fields[cls.engine_field]
            assert set(cls.capability_rows) == set(get_args(field.annotation)), name
