"""The capability matrix: what each server backend (and grammar engine) enforces.

Before a request is sent, :func:`relax_for` computes which parts of the compiled schema
the chosen backend will NOT enforce while decoding. Those keywords are removed from the
schema that goes over the wire (so a server neither rejects the request nor silently
loosens it behind our back) and are reported by :func:`unenforced` as
``"<json pointer>/<keyword>"`` strings. Validation then checks the full schema, repair
fixes what it can, and the result's ``post_enforced`` lists every one of them: a
constraint is never dropped silently.

The table is documented in ``docs/capabilities.md``; keep the two in step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from structgen.backends.base import Capabilities
from structgen.schema import CompiledOutput
from structgen.types import OutputKind

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
    "unevaluatedItems",
})

# llguidance (vLLM `guidance`, SGLang `llguidance`): see llguidance docs/json_schema.md.
# It refuses (rather than loosens) what it cannot do, so we strip those keywords first.
LLGUIDANCE_KEYWORDS = ALL_KEYWORDS - {
    "uniqueItems", "contains", "minContains", "maxContains", "not", "if", "then", "else",
    "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems",
    "propertyNames", "multipleOf",
}

# XGrammar (vLLM `xgrammar`, SGLang default): vLLM's own has_xgrammar_unsupported_json_
# features() lists multipleOf, uniqueItems/contains and unsupported formats; the rest
# below are not compiled into its grammar at all.
XGRAMMAR_KEYWORDS = ALL_KEYWORDS - {
    "multipleOf", "uniqueItems", "contains", "minContains", "maxContains", "not", "if",
    "then", "else", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
    "unevaluatedItems", "propertyNames", "patternProperties", "minProperties",
    "maxProperties", "format",
}

# Outlines (outlines-core regex from schema): structure, enums, lengths, numeric types.
OUTLINES_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "required", "items", "prefixItems", "anyOf",
    "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern", "format", "minItems",
    "maxItems",
})

# Ollama (llama.cpp json-schema-to-grammar): conservative on purpose. Bounds, patterns and
# formats are only partly supported there, so structgen post-enforces them.
OLLAMA_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "minItems",
    "maxItems",
})

ALL_KINDS: frozenset[OutputKind] = frozenset({"json", "regex", "choice", "grammar"})


@dataclass(frozen=True)
class Quirk:
    """A constraint an engine accepts but is known not to hold in some cases."""

    keyword: str
    applies: Callable[[dict[str, Any]], bool]
    why: str


def _string_with_max_length(sub: dict[str, Any]) -> bool:
    return "maxLength" in sub and sub.get("type") in ("string", None)


def _pattern_with_length(sub: dict[str, Any]) -> bool:
    return ("pattern" in sub or "format" in sub) and ("minLength" in sub or "maxLength" in sub)


XGRAMMAR_QUIRKS = (
    # XGrammar counts characters, but lets raw control characters (e.g. \x00-\x1f) into
    # strings; strict JSON parsing (json.loads) rejects them, so the text must be checked.
    Quirk("maxLength", _string_with_max_length,
          "xgrammar can emit raw control characters inside bounded strings"),
    # vLLM tracking issue mlc-ai/xgrammar#966: pattern/format + length bounds unsupported.
    Quirk("minLength", _pattern_with_length, "xgrammar: length bounds with pattern/format"),
)

CAPABILITIES: dict[str, Capabilities] = {
    "vllm/guidance": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=LLGUIDANCE_KEYWORDS, reasoning=True,
        batching=True, notes=("grammar outputs are sent as Lark (llguidance dialect)",)),
    "vllm/xgrammar": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=XGRAMMAR_KEYWORDS, reasoning=True,
        batching=True, notes=("grammar outputs are sent as GBNF/EBNF",
                              "raw control characters possible in bounded strings")),
    "vllm/outlines": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=OUTLINES_KEYWORDS, reasoning=True,
        batching=True, notes=("grammar outputs are sent as Lark",)),
    # "auto": vLLM picks xgrammar and falls back to guidance per request; we assume the
    # weaker of the two for every keyword (the intersection), so nothing goes unrecorded.
    "vllm/auto": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=XGRAMMAR_KEYWORDS & LLGUIDANCE_KEYWORDS,
        reasoning=True, batching=True, notes=("grammar outputs are sent as GBNF/EBNF",)),
    "sglang/xgrammar": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=XGRAMMAR_KEYWORDS, reasoning=True,
        batching=True, notes=("choice is sent as a regex", "grammar is sent as EBNF")),
    "sglang/llguidance": Capabilities(
        output_kinds=ALL_KINDS, json_keywords=LLGUIDANCE_KEYWORDS, reasoning=True,
        batching=True, notes=("choice is sent as a regex", "grammar is sent as EBNF")),
    "sglang/outlines": Capabilities(
        output_kinds=frozenset({"json", "regex", "choice"}), json_keywords=OUTLINES_KEYWORDS,
        reasoning=True, batching=True, notes=("no grammar (EBNF) support",)),
    "ollama": Capabilities(
        output_kinds=frozenset({"json", "choice"}), json_keywords=OLLAMA_KEYWORDS,
        reasoning=True, batching=False,
        notes=("`format` takes a JSON Schema only: no regex or grammar outputs",
               "choice is sent as a JSON string enum and unwrapped")),
}

QUIRKS: dict[str, tuple[Quirk, ...]] = {
    "vllm/xgrammar": XGRAMMAR_QUIRKS,
    "vllm/auto": XGRAMMAR_QUIRKS,
    "sglang/xgrammar": XGRAMMAR_QUIRKS,
}


def capabilities_for(backend: str, engine: str | None = None) -> Capabilities:
    """The row of the matrix for ``backend`` (``"vllm"``, ...) and its grammar engine."""
    key = backend if engine is None else f"{backend}/{engine}"
    return CAPABILITIES[key]


def _quirks(caps: Capabilities) -> tuple[Quirk, ...]:
    for key, row in CAPABILITIES.items():
        if row is caps:
            return QUIRKS.get(key, ())
    return ()


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


# Keywords whose value is a schema / a map of schemas / a list of schemas.
_SUB_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
            "propertyNames", "unevaluatedItems", "unevaluatedProperties")
_SUB_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUB_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")


def _subschemas(pointer: str, sub: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield pointer, sub
    for key in _SUB_ONE:
        if isinstance(sub.get(key), dict):
            yield from _subschemas(f"{pointer}/{key}", sub[key])
    for key in _SUB_MAP:
        if isinstance(sub.get(key), dict):
            for name, child in sub[key].items():
                if isinstance(child, dict):
                    yield from _subschemas(f"{pointer}/{key}/{_escape(name)}", child)
    for key in _SUB_LIST:
        if isinstance(sub.get(key), list):
            for i, child in enumerate(sub[key]):
                if isinstance(child, dict):
                    yield from _subschemas(f"{pointer}/{key}/{i}", child)


def _dropped_keywords(sub: dict[str, Any], caps: Capabilities) -> list[str]:
    if caps.json_keywords is None:
        return []
    return sorted(k for k in sub if k not in ANNOTATIONS and k not in caps.json_keywords
                  and k in ALL_KEYWORDS)


def unenforced(compiled: CompiledOutput, caps: Capabilities) -> list[str]:
    """``"<pointer>/<keyword>"`` for every constraint the backend will not enforce.

    ``"/"`` alone means the whole output (its kind is not supported at all).
    """
    if compiled.kind not in caps.output_kinds:
        return ["/"]
    if compiled.kind != "json" or compiled.json_schema is None:
        return []
    out: list[str] = []
    quirks = _quirks(caps)
    for pointer, sub in _subschemas("", compiled.json_schema):
        out.extend(f"{pointer}/{k}" for k in _dropped_keywords(sub, caps))
        out.extend(f"{pointer}/{q.keyword}" for q in quirks if q.applies(sub))
    return sorted(set(out))


def relax_schema(schema: dict[str, Any], caps: Capabilities) -> dict[str, Any]:
    """A copy of ``schema`` without the keywords ``caps`` cannot enforce (sent on the wire).

    Quirky keywords stay (the engine still narrows the output with them); only keywords
    outside the engine's set are removed, so the server never refuses the request.
    """
    relaxed = copy.deepcopy(schema)
    if caps.json_keywords is None:
        return relaxed
    for _pointer, sub in list(_subschemas("", relaxed)):
        for keyword in _dropped_keywords(sub, caps):
            del sub[keyword]
    return relaxed


def relax_for(compiled: CompiledOutput, caps: Capabilities
              ) -> tuple[dict[str, Any] | None, list[str]]:
    """The schema to send (None for non-JSON outputs) and the post-enforced pointers."""
    dropped = unenforced(compiled, caps)
    if compiled.kind != "json" or compiled.json_schema is None:
        return None, dropped
    return relax_schema(compiled.json_schema, caps), dropped


# Tool calling --------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCalling:
    """How a server backend handles a tool turn (``GenerationRequest.tools``).

    ``native``: the ``tool_choice`` values sent as the server's own tool calling
    (``"auto"``, ``"required"``, ``"named"`` for one tool by name); the answer comes back in
    ``GenerationResult.tool_calls``. ``constrained``: those of them whose arguments the
    server decodes under the tools' schemas (guided decoding); under the others the server
    lets the model write any arguments and structgen validates and repairs them after
    (reported as ``tools/<name>/arguments`` in ``post_enforced``). A choice outside
    ``native`` is sent as plain JSON output constrained to the call envelope's schema
    (``GenerationRequest.output``): the answer text is then the envelope itself.
    """

    native: frozenset[str]
    constrained: frozenset[str]
    notes: tuple[str, ...] = ()


_FORCED = frozenset({"required", "named"})

# vLLM forces a named choice with its structured-output engine on the tool's own schema.
# Its "required" schema leaves each call object open ({"name", "parameters"} without
# additionalProperties: false): a weak model adds keys until max_tokens, and a cut answer
# comes back with empty content, nothing left to repair (tests/backends/test_vllm_tools.py).
# "auto" needs --enable-auto-tool-choice and leaves the arguments free. Both go as the
# envelope's JSON schema (closed, every call checked), the tools still shown to the template.
# SGLang's chat endpoint does all three choices natively (its --tool-call-parser); only
# required/named are constrained. Its native /generate takes no tools at all. Ollama has
# no tool_choice: its `tools` are only "auto" and never constrained, so required/named go
# as `format` = the envelope schema, which llama.cpp's grammar does enforce.
TOOL_CALLING: dict[str, ToolCalling] = {
    "vllm": ToolCalling(native=frozenset({"named"}), constrained=frozenset({"named"}), notes=(
        "required/auto: the envelope JSON schema in structured_outputs, tool_choice=none",)),
    "sglang/openai": ToolCalling(native=_FORCED | {"auto"}, constrained=_FORCED, notes=(
        "auto needs --tool-call-parser; its arguments are validated after",)),
    "sglang/native": ToolCalling(native=frozenset(), constrained=frozenset(), notes=(
        "/generate has no tools: every choice is the envelope JSON schema",)),
    "ollama": ToolCalling(native=frozenset({"auto"}), constrained=frozenset(), notes=(
        "no tool_choice: required/named are `format` = the envelope JSON schema",
        "auto: native tools, arguments validated after",)),
}


def tool_choice_kind(choice: str) -> str:
    """``"auto"``, ``"required"``, or ``"named"`` for a tool's name (a TOOL_CALLING key)."""
    return choice if choice in ("auto", "required") else "named"
