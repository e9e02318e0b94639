"""The capability matrix: what each server backend can constrain, and with which engine.

Each row names the grammar engine behind the backend; what that engine enforces is its row
in :mod:`structgen.schema.support` (one table per engine, shared with the embedded
decoder). Before a request is sent, :func:`loosen_for` loosens the compiled schema for the
row (so a server neither rejects the request nor silently loosens it behind our back) and
returns the :class:`~structgen.schema.support.PostEnforced` entries taken out, plus the
quirks that stay in the grammar but are known not to hold. Validation then checks the full
schema, repair fixes what it can, and the result's ``post_enforced`` lists every one of
them: a constraint is never dropped silently.

Each server backend declares its rows in its own file (``capability_rows``, one per
grammar engine it can be configured with; ``tool_calling_rows``, one per API it can be
configured to speak); :func:`matrix` and :func:`tool_calling_matrix` gather them from the
registry, and ``docs/capabilities.md``'s tables are checked against them
(tests/backends/test_capabilities.py, tests/backends/test_tools_wire_format.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from structgen.backends.base import Capabilities
from structgen.registry import BACKENDS, lookup
from structgen.schema import CompiledOutput
from structgen.schema.bounds import bound_integers
from structgen.schema.check import walk
from structgen.schema.support import (
    LLGUIDANCE,
    WHOLE_OUTPUT,
    XGRAMMAR,
    EngineSupport,
    PostEnforced,
    Quirk,
    length_beside_pattern,
    loosen,
    min_properties_with_open_keys,
    required_into_properties,
    siblings_into_branches,
)
from structgen.types import ALL_KINDS, OutputKind

PostEntries = tuple[PostEnforced, ...]  # what a backend leaves to validation for a request

# The servers' XGrammar integration refuses (vLLM's has_xgrammar_unsupported_json_features)
# or skips what the embedded XGrammar takes: a gate in front of the engine, not the engine.
SERVER_XGRAMMAR = XGRAMMAR.plus("xgrammar (server)", dict.fromkeys(
    ("format", "patternProperties", "minProperties", "maxProperties", "propertyNames"),
    "the server's xgrammar integration refuses it"))
# vLLM "auto" picks xgrammar and falls back to guidance per request: the weaker of the two
# for every keyword, so nothing goes unrecorded.
VLLM_AUTO = SERVER_XGRAMMAR.plus("auto", LLGUIDANCE.unenforced)


def _string_with_max_length(sub: dict[str, Any]) -> bool:
    return "maxLength" in sub and sub.get("type") in ("string", None)


XGRAMMAR_QUIRKS = (
    # XGrammar counts characters, but lets raw control characters (e.g. \x00-\x1f) into
    # strings; strict JSON parsing (json.loads) rejects them, so the text must be checked.
    Quirk("maxLength", _string_with_max_length,
          "xgrammar can emit raw control characters inside bounded strings"),
    # vLLM tracking issue mlc-ai/xgrammar#966: pattern/format + length bounds unsupported.
    Quirk("minLength", length_beside_pattern, "xgrammar: length bounds with pattern/format"),
)

# llguidance cannot keep open member names unique: minProperties may count a repeat once
LLGUIDANCE_QUIRKS = (
    Quirk("minProperties", min_properties_with_open_keys, "a repeated open member name "
          "counts once"),
)


def server_row(support: EngineSupport, *notes: str, kinds: frozenset[OutputKind] = ALL_KINDS,
               batching: bool = True) -> Capabilities:
    """A server backend's row of the matrix for the grammar engine behind ``support``; the
    engine's known quirks come with it (and XGrammar's keywords beside an anyOf go into
    its branches)."""
    xgrammar = support in (SERVER_XGRAMMAR, VLLM_AUTO)
    quirks = XGRAMMAR_QUIRKS if xgrammar else LLGUIDANCE_QUIRKS if support == LLGUIDANCE else ()
    return Capabilities(output_kinds=kinds, support=support, reasoning=True, batching=batching,
                        notes=notes, quirks=quirks, into_branches=xgrammar)


def capabilities_for(backend: str, engine: str | None = None) -> Capabilities:
    """The row of the matrix for ``backend`` (``"vllm"``, ...) and its grammar engine, as
    the backend's class declares it (``capability_rows``)."""
    rows: dict[str | None, Capabilities] = lookup(BACKENDS, backend, "backend").capability_rows
    return rows[engine]


def matrix(names: Iterable[str] | None = None) -> dict[str, Capabilities]:
    """The capability matrix (``docs/capabilities.md``), built from the registered backends
    that declare rows: ``"vllm/xgrammar"``, ..., ``"ollama"`` for a backend with one row.
    ``names``: only these backends (``registry.BUILT_IN_BACKENDS``: the documented ones)."""
    return _declared("capability_rows", names)


def _declared(rows_attr: str, names: Iterable[str] | None) -> dict[str, Any]:
    """The rows each backend's class declares as ``rows_attr`` (by a config value, or None
    for its one row), keyed ``"<backend>/<value>"`` or ``"<backend>"``."""
    out: dict[str, Any] = {}
    for name in list(BACKENDS if names is None else names):
        rows = getattr(lookup(BACKENDS, name, "backend"), rows_attr, None) or {}
        for value, row in rows.items():
            out[name if value is None else f"{name}/{value}"] = row
    return out


def unenforced(compiled: CompiledOutput, caps: Capabilities) -> tuple[PostEnforced, ...]:
    """Every constraint the backend will not enforce (see :func:`loosen_for`)."""
    return loosen_for(compiled, caps)[1]


def loosen_for(compiled: CompiledOutput, caps: Capabilities
              ) -> tuple[dict[str, Any] | None, tuple[PostEnforced, ...]]:
    """The schema to send (None for non-JSON outputs) and the post-enforced entries.

    An output whose kind the backend cannot constrain is one entry for the whole output
    (``"/"``). Quirky keywords stay in the sent schema (the engine still narrows the output
    with them) and are reported too.
    """
    if compiled.kind not in caps.output_kinds:
        return None, (PostEnforced("", WHOLE_OUTPUT, "the backend cannot constrain "
                                   f"{compiled.kind} outputs"),)
    if compiled.kind != "json" or compiled.json_schema is None:
        return None, ()
    return server_schema(compiled.json_schema, caps)


def server_schema(schema: dict[str, Any], caps: Capabilities
                  ) -> tuple[dict[str, Any], tuple[PostEnforced, ...]]:
    """``schema`` as a server with ``caps`` is sent it (loosened to its engine, integers
    held to int64) and the entries left to validation."""
    entries: tuple[PostEnforced, ...] = ()
    if caps.support is not None:
        schema, entries = loosen(schema, caps.support)
    if caps.into_branches:  # before the int64 bounds, which it would meet
        schema, beside = siblings_into_branches(schema)
        schema, undeclared = required_into_properties(schema)
        entries = (*entries, *beside, *undeclared)
    if caps.support is None or (caps.support.enforces("minimum")
                                and caps.support.enforces("maximum")):
        # int64 bounds where the schema has none: the server's grammar then stops a
        # runaway integer (floats cannot be bounded in JSON Schema)
        schema = bound_integers(schema)
    quirks = [PostEnforced(pointer, q.keyword, q.why) for pointer, sub in walk(schema)
              for q in caps.quirks if q.applies(sub)]
    return schema, tuple(dict.fromkeys((*entries, *quirks)))


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


# the choices that force a call (a named one: one tool by name); a server's own tool calling
# often constrains only these
FORCED_CHOICES = frozenset({"required", "named"})


def tool_calling_matrix(names: Iterable[str] | None = None) -> dict[str, ToolCalling]:
    """How each registered backend that declares ``tool_calling_rows`` answers a tool turn
    (the tool table in ``docs/capabilities.md``): ``"sglang/openai"``, ... by the config
    field the rows are keyed by, ``"<backend>"`` for a backend with one row. ``names``: only
    these backends."""
    return _declared("tool_calling_rows", names)


def tool_choice_kind(choice: str) -> str:
    """``"auto"``, ``"required"``, or ``"named"`` for a tool's name (what
    :class:`ToolCalling` lists)."""
    return choice if choice in ("auto", "required") else "named"
