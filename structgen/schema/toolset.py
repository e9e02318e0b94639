"""Tools: Pydantic models and typed functions → :class:`ToolSpec`, and a tool turn → the
one output it is compiled to.

A tool turn is structured output with a choice in front of it, so it compiles like any
output (see :mod:`structgen.types`): the *call envelope* ``{"name": N, "arguments": {...}}``,
one ``anyOf`` branch per tool (only the named tool's for a named choice), an array of calls
with ``parallel``, and a ``{"text": "..."}`` branch with ``"auto"``. Two schemas describe it:

- the grammar's (``json_schema``): the ``anyOf`` above, which every engine and server
  enforces, ``name`` a ``const`` that fast-forward writes for free;
- the validator's (``written_schema``): the same language written as ``if name == N then
  arguments follows N's schema``, so a wrong answer's errors are those of the tool the model
  chose (``/arguments/path: ...``), which is what a re-ask shows it; an ``anyOf`` would report
  every other tool's mismatch as well.

The envelope's Pydantic model (``CompiledOutput.model``) is a union discriminated by
``name``: each tool's arguments validate into that tool's model (its validators run), and
:func:`tool_value` turns the validated envelope into the caller's :class:`ToolCall`.

The embedded backend's ``"auto"`` turn is one llguidance Lark grammar (:func:`trigger_grammar`):
free text until the ``<tool_call>`` trigger, then exactly one call's JSON, then
``</tool_call>``; :func:`parse_triggered` reads such an answer back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Union, get_type_hints

import pydantic
from pydantic import BaseModel, ConfigDict, Discriminator, RootModel, Tag

from structgen.errors import SchemaError, ToolError
from structgen.messages import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from structgen.schema.canonical import json_copy
from structgen.schema.compiled import (
    COMPILER_VERSION,
    CallTable,
    CompiledOutput,
    compile_output,
    json_output,
)
from structgen.schema.limits import DEFAULT_LIMITS, Limits
from structgen.schema.pydantic_schema import model_json_schema
from structgen.types import JsonSchema, RawToolCall, ToolCall, ToolSpec, ToolTurn

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TRIGGER_OPEN, TRIGGER_CLOSE = TOOL_CALL_OPEN, TOOL_CALL_CLOSE
CHOICES = ("auto", "required")

# What a tool may be given as: a Pydantic model class, a typed function, a ready ToolSpec
# (e.g. from a raw JSON Schema, see :func:`schema_tool`).
ToolLike = Any


class TextAnswer(BaseModel):
    """The envelope of an ``"auto"`` turn the model answered in words."""

    model_config = ConfigDict(extra="forbid")
    text: str


# Tools ----------------------------------------------------------------------------------
_specs: dict[Any, ToolSpec] = {}  # model class or function -> its spec (see tool_spec)
_specs_lock = threading.Lock()


def tool_spec(tool: ToolLike) -> ToolSpec:
    """A tool as the pipeline carries it.

    A Pydantic model: the name is its ``tool_name`` class attribute, else its
    ``model_config["title"]``, else the class name; the description its docstring. A
    function: its name and docstring, its parameters (each annotated; defaults make them
    optional) become the arguments model. Raises :class:`ToolError`.

    The spec of a class or function is made once per process: an agent that offers the
    same 500 tools on every request pays for their schemas once.
    """
    if isinstance(tool, ToolSpec):
        check_name(tool.name)
        return tool
    try:
        with _specs_lock:
            known = _specs.get(tool)
    except TypeError:  # an unhashable callable: made each time
        known = None
    if known is not None:
        return known
    spec = _new_spec(tool)
    with contextlib.suppress(TypeError), _specs_lock:
        if len(_specs) > 4096:
            _specs.clear()
        _specs[tool] = spec
    return spec


def _new_spec(tool: ToolLike) -> ToolSpec:
    if isinstance(tool, type) and issubclass(tool, BaseModel):
        name = getattr(tool, "tool_name", None) or tool.model_config.get("title") \
            or tool.__name__
        return _from_model(str(name), inspect.cleandoc(tool.__doc__ or ""), tool)
    if callable(tool) and not isinstance(tool, type):
        return _from_function(tool)
    raise ToolError(f"a tool is a Pydantic model class, a typed function or a ToolSpec, "
                    f"not {type(tool).__name__}")


def schema_tool(name: str, parameters: dict[str, Any], description: str = "") -> ToolSpec:
    """A tool from a raw JSON Schema of its arguments (calls carry the validated ``dict``)."""
    check_name(name)
    if not isinstance(parameters, dict):
        raise ToolError("parameters must be a JSON Schema object", name)
    return ToolSpec(name, description, json_copy(parameters)[0], None)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise ToolError("a tool name must match ^[a-zA-Z0-9_-]{1,64}$ (the OpenAI tools "
                        "format, and what the grammar writes as the call's name)",
                        name if isinstance(name, str) else repr(name))


def _from_model(name: str, description: str, model: type[BaseModel]) -> ToolSpec:
    check_name(name)
    try:
        parameters = model_json_schema(model)
    except SchemaError as exc:
        raise ToolError(str(exc), name) from None
    parameters.pop("title", None)
    parameters.pop("description", None)  # it is the tool's description
    return ToolSpec(name, description, parameters, model)


def _from_function(fn: Callable[..., Any]) -> ToolSpec:
    name = getattr(fn, "__name__", type(fn).__name__)
    check_name(name)
    try:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolError(f"its signature cannot be read: {exc}", name) from None
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"*{param.name}/**{param.name} parameters have no schema; "
                            "name every argument", name)
        if param.name not in hints:
            raise ToolError(f"parameter {param.name!r} has no type annotation, so its "
                            "arguments cannot be constrained", name)
        default = ... if param.default is param.empty else param.default
        if default is not ...:
            _check_default(name, param.name, hints[param.name], default)
        fields[param.name] = (hints[param.name], default)
    try:
        model = pydantic.create_model(
            f"{name}_arguments", __config__=ConfigDict(extra="forbid"),
            __doc__=fn.__doc__, **fields)
    except (pydantic.PydanticUserError, TypeError) as exc:
        raise ToolError(f"its parameters do not make a Pydantic model: {exc}", name) from None
    return _from_model(name, inspect.cleandoc(fn.__doc__ or ""), model)


def _check_default(tool: str, param: str, hint: Any, default: Any) -> None:
    """A default that its own annotation refuses (``x: int = "notint"``) would reach the
    schema the model is shown and the call the model leaves it out of: refuse the tool."""
    try:
        pydantic.TypeAdapter(hint).validate_python(default)
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise ToolError(f"parameter {param!r}: its default {default!r} does not match its "
                        f"annotation ({problem})", tool) from None
    except (pydantic.PydanticUserError, TypeError):
        return  # an annotation Pydantic cannot check alone: create_model says so below


def tool_turn(tools: Sequence[ToolLike], choice: Any = "auto",
              parallel: bool = False, max_calls: int | None = None) -> ToolTurn:
    """The tools of one request; ``choice`` is ``"auto"``, ``"required"`` or one of the
    tools (its class, function, ToolSpec or name). Without ``parallel`` the answer is
    exactly one call (its grammar has room for no second one); with it, one call or more,
    at most ``max_calls`` (a bound of the grammar too). Raises :class:`ToolError`."""
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence) or not tools:
        raise ToolError("tools must be a non-empty list of tools")
    specs = tuple(tool_spec(t) for t in tools)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ToolError("two tools have this name; a call could not say which one "
                            "it means", spec.name)
        seen.add(spec.name)
    if max_calls is not None:
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
            raise ToolError(f"max_calls must be a positive integer, not {max_calls!r}")
        if not parallel and max_calls != 1:
            raise ToolError("max_calls > 1 needs parallel=True (without it a turn has "
                            "exactly one call)")
        if not parallel:
            max_calls = None
    return ToolTurn(specs, _choice(choice, tools, specs), bool(parallel), max_calls)


def _choice(choice: Any, tools: Sequence[ToolLike], specs: tuple[ToolSpec, ...]) -> str:
    if isinstance(choice, str) and choice in CHOICES:
        return choice
    if isinstance(choice, str):
        if any(s.name == choice for s in specs):
            return choice
        raise ToolError(f"tool_choice names no offered tool (offered: "
                        f"{', '.join(s.name for s in specs)}; or 'auto', 'required')", choice)
    for tool, spec in zip(tools, specs, strict=True):
        if choice is tool or (isinstance(choice, ToolSpec) and choice.name == spec.name):
            return spec.name
    raise ToolError(f"tool_choice {choice!r} is not one of the offered tools")


# The envelope ---------------------------------------------------------------------------
_envelopes: OrderedDict[tuple[Any, ...], CompiledOutput] = OrderedDict()
_envelopes_lock = threading.Lock()
ENVELOPES_KEPT = 64


def toolset_key(turn: ToolTurn) -> tuple[Any, ...]:
    """What a turn's envelope depends on: its tools' digests (each computed once per spec),
    the choice, ``parallel`` and ``max_calls``."""
    return (tuple(t.digest for t in turn.tools), turn.choice, turn.parallel, turn.max_calls)


# (key, make) -> the text kept under key, made and kept when missing (a shared store:
# constrain.grammar_cache.text_store)
TextStore = Callable[[str, Callable[[], str]], str]


def envelope_output(turn: ToolTurn, limits: Limits = DEFAULT_LIMITS,
                    store: TextStore | None = None) -> CompiledOutput:
    """The compiled output of a tool turn (see the module docstring), kept by tool-set key
    (:func:`toolset_key`): a repeated tool set costs a dictionary look-up, and the same
    output object (so its cached hashes, and the grammar cache's entry) comes back.

    ``store``: where a new tool set's compiled argument schemas are kept as text, by the
    set's hash (the engine's grammar cache: disk, Redis), so another process or worker
    offering the same set reads them instead of checking every schema again."""
    def make() -> CompiledOutput:
        if store is not None:
            _stored_arguments(offered(turn), limits, store)
        return _envelope_output(turn, limits)

    return _kept(_envelopes, (toolset_key(turn), limits), make, ENVELOPES_KEPT)


def _kept(kept: OrderedDict[Any, CompiledOutput], key: Any,
          make: Callable[[], CompiledOutput], most: int) -> CompiledOutput:
    """``kept[key]``, else ``make()`` kept there (the ``most`` recently used stay)."""
    with _envelopes_lock:
        known = kept.get(key)
        if known is not None:
            kept.move_to_end(key)
            return known
    made = make()
    _keep(kept, key, made, most)
    return made


def _keep(kept: OrderedDict[Any, CompiledOutput], key: Any, value: CompiledOutput,
          most: int) -> None:
    with _envelopes_lock:
        kept[key] = value
        while len(kept) > most:
            kept.popitem(last=False)


def _envelope_output(turn: ToolTurn, limits: Limits) -> CompiledOutput:
    """The grammar's schema is put together from each tool's compiled arguments
    (:func:`compiled_arguments`: checked, patterns made portable, once per tool);
    validation reads the dispatching form. Every step is one pass over the tools, so the
    cost grows linearly with their number."""
    offered = [t for t in turn.tools if turn.choice in CHOICES or t.name == turn.choice]
    auto = turn.choice == "auto"
    defs: dict[str, Any] = {}
    bases = _bases(len(offered), turn.parallel, "/anyOf/0" if auto else "")
    grammar_calls = [_call_branch(t, defs, base, limits)
                     for t, base in zip(offered, bases, strict=True)]
    check_defs: dict[str, Any] = {}
    check_calls = _dispatch(offered, turn.parallel, "/else" if auto else "", check_defs)
    grammar: dict[str, Any] = (grammar_calls[0] if len(grammar_calls) == 1
                               else {"anyOf": grammar_calls})
    if turn.parallel:
        bound = {} if turn.max_calls is None else {"maxItems": turn.max_calls}
        grammar = {"type": "array", "items": grammar, "minItems": 1, **bound}
        check_calls = {"type": "array", "items": check_calls, "minItems": 1, **bound}
    text = TextAnswer.model_json_schema()
    text.pop("title", None)
    if auto:
        grammar = {"anyOf": [grammar, text]}
        check = {"if": {"type": "object", "required": ["text"]}, "then": text,
                 "else": check_calls}
    else:
        check = check_calls
    if defs:
        grammar["$defs"] = defs
    if check_defs:
        check["$defs"] = check_defs
    # each tool's arguments were compiled (checked, made portable) on their own, once per
    # tool: the envelope around them needs no pass over the whole document. An "auto"
    # turn's table is its trigger grammar's (decoded_output)
    calls = None if auto or len(offered) < 2 else call_table(
        offered, limits, frame="array" if turn.parallel else "single",
        max_calls=turn.max_calls)
    return CompiledOutput(kind="json", json_schema=grammar, model=envelope_model(turn),
                          name="tool_call", limits=limits, written_schema=check, calls=calls)


def call_table(tools: Sequence[ToolSpec], limits: Limits = DEFAULT_LIMITS, *,
               frame: Literal["single", "array"] = "single",
               max_calls: int | None = None) -> CallTable:
    """The calls of ``tools``, one grammar per tool (see :class:`CallTable`): the head
    names them all (``frame="array"``: an array of 1 to ``max_calls`` calls), each tool's
    call is :func:`call_output`. A grammar engine then compiles the names, not every
    tool's schema (llguidance: ~0.3 ms per tool, so 150 ms for 500 MaskBench tools,
    against a few ms for their names)."""
    by_name = {t.name: t for t in tools}
    head: dict[str, Any] = call_head(tools)
    if frame == "array":
        bound = {} if max_calls is None else {"maxItems": max_calls}
        head = {"type": "array", "items": head, "minItems": 1, **bound}
    return CallTable(compile_output(JsonSchema(head, name="tool_call_head"), limits=limits),
                     lambda name: call_output(by_name[name], limits), frame)


def call_head(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """One call of one of ``tools`` with its arguments any JSON (a :class:`CallTable`'s
    placeholder: each call's own grammar holds them)."""
    return {"type": "object",
            "properties": {"name": {"enum": [t.name for t in tools]}, "arguments": {}},
            "required": ["name", "arguments"], "additionalProperties": False}


_calls: OrderedDict[tuple[str, Limits], CompiledOutput] = OrderedDict()
CALLS_KEPT = 4096


def call_output(tool: ToolSpec, limits: Limits = DEFAULT_LIMITS) -> CompiledOutput:
    """``{"name": <tool>, "arguments": <its schema>}`` alone, compiled once per tool
    (its digest): the grammar a :class:`CallTable` switches to once the name is known."""
    def make() -> CompiledOutput:
        defs: dict[str, Any] = {}
        branch = _call_branch(tool, defs, "/properties/arguments", limits)
        if defs:
            branch["$defs"] = defs
        return CompiledOutput(kind="json", json_schema=branch, name="tool_call",
                              limits=limits)

    return _kept(_calls, (tool.digest, limits), make, CALLS_KEPT)


def _bases(n: int, parallel: bool, prefix: str) -> list[str]:
    """Where each call branch's ``arguments`` sits in the grammar schema."""
    root = prefix + ("/items" if parallel else "")
    if n == 1:
        return [f"{root}/properties/arguments"]
    return [f"{root}/anyOf/{i}/properties/arguments" for i in range(n)]


def _call_branch(tool: ToolSpec, defs: dict[str, Any], base: str,
                 limits: Limits) -> dict[str, Any]:
    """``{"name": <tool>, "arguments": <its compiled schema>}``, the arguments at ``base``."""
    arguments = compiled_arguments(tool, limits)
    branch: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"const": tool.name},
                       "arguments": _placed(tool.name, arguments.to_json_schema(),
                                            arguments.json_text, defs, base)},
        "required": ["name", "arguments"], "additionalProperties": False}
    if tool.description:  # part of the output's hash, so of the cache key
        branch["description"] = tool.description
    return branch


_arguments: OrderedDict[tuple[str, Limits], CompiledOutput] = OrderedDict()
ARGUMENTS_KEPT = 4096


def compiled_arguments(tool: ToolSpec, limits: Limits = DEFAULT_LIMITS) -> CompiledOutput:
    """A tool's arguments schema compiled like any output (checked, older drafts upgraded,
    patterns made portable), once per tool (its digest): envelopes are put together from
    these, so a tool set that differs from a known one by one tool checks that tool alone.
    Raises :class:`SchemaError` naming the tool."""
    def make() -> CompiledOutput:
        try:
            return compile_output(JsonSchema(tool.parameters, name=tool.name), limits=limits)
        except SchemaError as exc:
            raise SchemaError(f"tool {tool.name!r}: {exc.reason}", exc.pointer) from None

    return _kept(_arguments, (tool.digest, limits), make, ARGUMENTS_KEPT)


STORED_MIN_TOOLS = 8  # smaller sets compile faster than a store round trip


def _stored_arguments(tools: Sequence[ToolSpec], limits: Limits, store: TextStore) -> None:
    """Fill :func:`compiled_arguments`' memory for ``tools`` from ``store`` (one entry per
    tool set, its JSON texts in order), compiling and storing them when it has none. The
    store's entries are signed text (never code): a hit is only parsed, not checked again."""
    with _envelopes_lock:
        missing = [t for t in tools if (t.digest, limits) not in _arguments]
    if len(missing) < STORED_MIN_TOOLS:
        return
    key = hashlib.sha256("\x00".join(
        [COMPILER_VERSION, repr(limits), *(t.digest for t in tools)]).encode()).hexdigest()
    kept = store(f"toolset-arguments:{key}", lambda: json.dumps(
        [compiled_arguments(t, limits).json_text for t in tools]))
    try:
        texts = json.loads(kept)
    except (ValueError, RecursionError):
        return  # not ours: compiled_arguments compiles them
    if not isinstance(texts, list) or len(texts) != len(tools):
        return  # not ours: compiled_arguments compiles them
    for tool, text in zip(tools, texts, strict=True):
        with _envelopes_lock:
            if (tool.digest, limits) in _arguments:
                continue
        try:
            compiled = json_output(json.loads(text), text, name=tool.name, limits=limits)
        except (TypeError, ValueError, RecursionError):
            return  # not ours either
        _keep(_arguments, (tool.digest, limits), compiled, ARGUMENTS_KEPT)


def _dispatch(tools: list[ToolSpec], parallel: bool, prefix: str,
              defs: dict[str, Any]) -> dict[str, Any]:
    """``name`` one of the tools; ``arguments`` checked by the named tool's schema only
    (as the caller wrote it: values are judged by the schema as written)."""
    root = prefix + ("/items" if parallel else "")
    rules = [{"if": {"properties": {"name": {"const": t.name}}},
              "then": {"properties": {"arguments": _placed(
                  t.name, t.parameters, t.parameters_text, defs,
                  f"{root}/allOf/{i}/then/properties/arguments")}}}
             for i, t in enumerate(tools)]
    return {"type": "object",
            "properties": {"name": {"enum": [t.name for t in tools]}, "arguments": True},
            "required": ["name", "arguments"], "additionalProperties": False,
            "allOf": rules}


def _placed(name: str, params: Any, text: str, defs: dict[str, Any], base: str) -> Any:
    """A tool's arguments schema ``params`` (its JSON ``text``) moved to ``base`` in a
    bigger document: its ``$defs`` become ``#/$defs/<tool>.<name>``, other references
    into it are re-rooted at ``base``. A schema without references is placed as it is
    (shared, never changed), so most tools cost nothing here."""
    if '"$ref"' not in text and '"$defs"' not in text:
        return params
    params = json_copy(params)[0]
    if not isinstance(params, dict):
        return params
    own = params.pop("$defs", None) or {}

    def move(ref: str) -> str:
        if ref.startswith("#/$defs/"):
            return f"#/$defs/{name}.{ref.removeprefix('#/$defs/')}"
        if ref == "#" or ref.startswith("#/"):
            return "#" + base + ref[1:]
        raise ToolError(f"a $ref outside the arguments schema ({ref!r}) cannot be offered",
                        name)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (move(v) if k == "$ref" and isinstance(v, str) else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    for key, sub in own.items():
        defs[f"{name}.{key}"] = walk(sub)
    return walk(params)


class _SchemaCall(BaseModel):
    """A call of a tool given as a raw JSON Schema (no model): its arguments come back as
    the validated ``dict`` (the envelope's schema has checked them before the model runs)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any]


_call_models: dict[tuple[str, Any], type[BaseModel]] = {}
_envelope_models: dict[tuple[Any, ...], type[BaseModel]] = {}
_models_lock = threading.Lock()


def _call_model(tool: ToolSpec) -> type[BaseModel]:
    """``{"name": <tool>, "arguments": <its model>}``, made once per (name, model)."""
    key = (tool.name, tool.model)
    with _models_lock:
        known = _call_models.get(key)
    if known is None:
        known = pydantic.create_model(
            f"{tool.name}_call", __config__=ConfigDict(extra="forbid"),
            name=(Literal.__getitem__(tool.name), ...),  # type: ignore[arg-type]
            arguments=(tool.model, ...))
        with _models_lock:
            if len(_call_models) > 4096:
                _call_models.clear()
            _call_models[key] = known
    return known


def envelope_model(turn: ToolTurn) -> type[BaseModel]:
    """The Pydantic model a tool turn's envelope validates into (``.root`` is the answer).

    One union over the offered tools, discriminated by ``name``: a tool with a model
    validates its arguments into that model (its validators run); the tools without one
    share :class:`_SchemaCall`, so a set of 500 schema tools builds no model per tool."""
    key = toolset_key(turn)
    with _models_lock:
        known = _envelope_models.get(key)
    if known is not None:
        return known
    offered = [t for t in turn.tools if turn.choice in CHOICES or t.name == turn.choice]
    modeled = {t.name: _call_model(t) for t in offered if t.model is not None}
    call: Any
    if len(modeled) == len(offered) == 1:
        call = next(iter(modeled.values()))
    elif not modeled:
        call = _SchemaCall
    else:
        def which(value: Any) -> str:
            name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
            return name if isinstance(name, str) and name in modeled else "*"

        branches = [Annotated[m, Tag(n)] for n, m in modeled.items()]
        if len(modeled) < len(offered):
            branches.append(Annotated[_SchemaCall, Tag("*")])
        call = Annotated[Union[tuple(branches)], Discriminator(which)]  # noqa: UP007
    answer: Any = list[call] if turn.parallel else call
    if turn.choice == "auto":
        answer = Union[answer, TextAnswer]  # noqa: UP007
    model: type[BaseModel] = RootModel[answer]
    with _models_lock:
        if len(_envelope_models) > 256:
            _envelope_models.clear()
        _envelope_models[key] = model
    return model


def tool_value(envelope: Any) -> ToolCall | list[ToolCall] | str:
    """A validated envelope (an instance of :func:`envelope_model`) as the caller's value."""
    answer = envelope.root if isinstance(envelope, RootModel) else envelope
    if isinstance(answer, TextAnswer):
        return answer.text
    if isinstance(answer, list):
        return [ToolCall(c.name, c.arguments) for c in answer]
    return ToolCall(answer.name, answer.arguments)


def called_tools(text: str) -> list[str]:
    """The tool names an envelope text calls (for metrics; ``[]`` when it names none)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return []
    items = data if isinstance(data, list) else [data]
    return [i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]


# The embedded backend's "auto" turn -------------------------------------------------------
def trigger_grammar(turn: ToolTurn, call_schema: dict[str, Any]) -> str:
    """One llguidance Lark grammar for an ``"auto"`` turn: free text with no
    ``<tool_call>`` in it, or free text, the trigger, one call's JSON (``call_schema``: the
    envelope of a single call, compact) and ``</tool_call>`` — several such blocks with
    ``parallel``. The trigger ends the free text the first time it appears (a lazy lexeme),
    and after the closing tag only the end of the answer may follow."""
    x_guidance = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    body = json.dumps({**call_schema, "x-guidance": x_guidance}, ensure_ascii=False)
    more = ""
    if turn.parallel:
        repeat = "*" if turn.max_calls is None else f"{{0,{turn.max_calls - 1}}}"
        more = f' ("\\n"? "{TRIGGER_OPEN}" block){repeat}'
    return (f"start: TEXT | pre block{more}\n"
            f'block: "\\n"? call "\\n"? "{TRIGGER_CLOSE}"\n'
            f"TEXT: /(?s:.*)/ & ~/(?s:.*{re.escape(TRIGGER_OPEN)}.*)/\n"
            f"pre[lazy]: /(?s:.*){re.escape(TRIGGER_OPEN)}/\n"
            f"call: %json {body}\n")


_decoded: OrderedDict[tuple[Any, ...], CompiledOutput] = OrderedDict()


def decoded_output(turn: ToolTurn, output: CompiledOutput) -> CompiledOutput:
    """What the embedded backend decodes a tool turn under: an ``"auto"`` turn's trigger
    grammar (:func:`trigger_grammar`), else the turn's ``output`` (its envelope) itself.

    The trigger grammar's :class:`CallTable` is the same grammar with each call's arguments
    a placeholder (the names, the trigger, the count), and one grammar per called tool
    beside it; the whole grammar is kept for the engines' other paths (reasoning). Kept by
    tool-set key, like the envelope."""
    if turn.choice != "auto":
        return output

    def make() -> CompiledOutput:
        grammar = trigger_grammar(turn, single_call_schema(output))
        tools = offered(turn)
        by_name = {t.name: t for t in tools}
        head = trigger_grammar(turn, call_head(tools))
        table = CallTable(
            CompiledOutput(kind="grammar", grammar=head, grammar_source=head,
                           grammar_syntax="lark", name="tool_call_head", limits=output.limits),
            lambda name: call_output(by_name[name], output.limits), "trigger",
            layout="compact")  # the trigger grammar writes calls compact
        return CompiledOutput(kind="grammar", grammar=grammar, grammar_source=grammar,
                              grammar_syntax="lark", name="tool_call", limits=output.limits,
                              calls=table)

    return _kept(_decoded, (toolset_key(turn), output.limits), make, ENVELOPES_KEPT)


def single_call_schema(output: CompiledOutput) -> dict[str, Any]:
    """The envelope schema of one call (no array, no text branch), from a turn's output."""
    schema = dict(output.json_schema or {})
    defs = schema.pop("$defs", None)
    if "anyOf" in schema and len(schema) == 1 and schema["anyOf"][-1].get(
            "required") == ["text"]:  # the "auto" text branch
        schema = dict(schema["anyOf"][0])
    if schema.get("type") == "array":
        schema = dict(schema["items"])
    if defs:
        schema["$defs"] = defs
    return schema


def parse_triggered(text: str, parallel: bool) -> tuple[list[RawToolCall] | None, str]:
    """An ``"auto"`` answer in the trigger format → (calls, free text).

    ``[]`` calls: the model answered in words. ``None``: a call was started but its JSON
    does not parse (cut at ``max_tokens``); the text is then the envelope JSON as far as it
    got, for syntax repair to mend.
    """
    head, sep, rest = text.partition(TRIGGER_OPEN)
    if not sep:
        return [], text.strip()
    blocks = [b.split(TRIGGER_CLOSE, 1)[0].strip() for b in rest.split(TRIGGER_OPEN)]
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
            calls.append(RawToolCall(str(data["name"]),
                                     json.dumps(data["arguments"], ensure_ascii=False)))
        except (ValueError, KeyError, TypeError, RecursionError):
            joined = ",".join(blocks)
            return None, f"[{joined}" if parallel else blocks[0]
    return calls, head.strip()


def offered(turn: ToolTurn) -> tuple[ToolSpec, ...]:
    """The tools the model may call in this turn: all of them, or only the named one."""
    if turn.choice in CHOICES:
        return turn.tools
    return tuple(t for t in turn.tools if t.name == turn.choice)


# How much of each tool the prompt shows, most first; a runtime whose context cannot hold
# the prompt with the answer takes the next (see LlamaCppRuntime.prompt_ids)
PROMPT_DETAILS = ("signatures", "types", "names", "bare")


def tools_prompt(turn: ToolTurn, *, detail: str = "signatures",
                 full_schemas: bool = False) -> str:
    """The tools as system-prompt text, for chat templates that do not take ``tools``
    (SmolLM2's, the tiny test model's), in the Hermes/Qwen layout, whose ``<tool_call>``
    tags are also the embedded grammar's trigger.

    Each tool is one line, a signature (:func:`tool_signature`): its name, its parameters'
    names and types, its description. The grammar enforces the full schema, so the prompt
    need not carry it: 200 tools of two parameters are about 5,400 tokens of SmolLM2's
    8,192 this way, and 15,400 as JSON Schemas (``full_schemas=True``, the layout
    this replaced; kept for the benchmark's comparison). A named ``tool_choice`` lists
    only that tool. ``detail`` (:data:`PROMPT_DETAILS`): ``"types"`` leaves the
    descriptions out, ``"names"`` the types too, ``"bare"`` the parameters too (500
    MaskBench tools: 14,000, 11,900, 8,100 and 3,600 tokens of SmolLM2's from the first
    detail to the last; 50,600 as JSON Schemas)."""
    tools = offered(turn)
    if full_schemas:
        listed = "\n".join(json.dumps(t, ensure_ascii=False)
                           for t in dataclasses.replace(turn, tools=tools).openai_tools())
        head = "Their signatures, as JSON Schema, are inside <tools></tools>"
    else:
        listed = "\n".join(tool_signature(t, detail) for t in tools)
        head = ("One function per line inside <tools></tools>: its name, its parameters "
                "(? marks an optional one)" + (" and what it does" if detail == "signatures"
                                               else ""))
        if detail == "bare":
            head = "Their names are inside <tools></tools>, one per line"
    if turn.choice == "auto":
        rule = ("If a function helps, call it; otherwise answer in plain text. To call a "
                f"function, write {TRIGGER_OPEN}, then one JSON object with its name and "
                f"arguments, then {TRIGGER_CLOSE}:\n{TRIGGER_OPEN}\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n'
                f"{TRIGGER_CLOSE}")
    else:
        which = "one of these functions" if turn.choice == "required" \
            else f"the function {turn.choice}"
        bound = "" if turn.max_calls is None else f" (at most {turn.max_calls})"
        if full_schemas:  # the layout before issue 31, word for word
            several = "" if not turn.parallel else (
                f", or a JSON array of such objects for several calls{bound}")
            rule = (f"Call {which}: answer with one JSON object with its name and arguments, "
                    '{"name": <function-name>, "arguments": <args-json-object>}'
                    f"{several}.")
        else:
            # the grammar writes the call's JSON (name, then arguments) from its first
            # token: the prompt need not describe it (BFCL sample: 29 tokens fewer a turn)
            rule = f"Call {which}" + ("" if not turn.parallel else
                                      f", once or more{bound}") + "."
            return f"# Tools\n\n{head}:\n<tools>\n{listed}\n</tools>\n\n{rule}"
    return (f"# Tools\n\nYou may call functions. {head}:\n<tools>\n{listed}\n</tools>\n\n"
            f"{rule}")


SIGNATURE_ENUM_VALUES = 6  # an enum with more values is shown by its type
SIGNATURE_DESCRIPTION_CHARS = 200


def tool_signature(tool: ToolSpec, detail: str = "signatures") -> str:
    """One line for a tool: ``name(a: string (its description), b?: integer) -
    description``; with
    ``detail="types"`` no description, with ``"names"`` no types either: ``name(a, b?)``,
    with ``"bare"`` the name alone."""
    if detail not in PROMPT_DETAILS:
        raise ValueError(f"detail is one of {PROMPT_DETAILS}, not {detail!r}")
    if detail == "bare":
        return tool.name
    params = tool.parameters if isinstance(tool.parameters, dict) else {}
    props: dict[str, Any] = params.get("properties") or {}
    required: list[Any] = params.get("required") or []
    if not isinstance(props, dict) or not isinstance(required, list):
        props, required = {}, []
    args = ", ".join(f"{name}{'' if name in required else '?'}"
                     + ("" if detail == "names" else f": {_type_text(sub, params)}")
                     + (_about(sub) if detail == "signatures" else "")
                     for name, sub in props.items())
    description = " ".join(tool.description.split()) if detail == "signatures" else ""
    if len(description) > SIGNATURE_DESCRIPTION_CHARS:
        description = description[:SIGNATURE_DESCRIPTION_CHARS - 3].rstrip() + "..."
    return f"{tool.name}({args})" + (f" - {description}" if description else "")


PARAMETER_DESCRIPTION_CHARS = 80


def _about(node: Any) -> str:
    """A parameter's own description, short, in parentheses (`` (The city)``)."""
    text = node.get("description") if isinstance(node, dict) else None
    if not isinstance(text, str) or not text.strip():
        return ""
    text = " ".join(text.split())
    if len(text) > PARAMETER_DESCRIPTION_CHARS:
        text = text[:PARAMETER_DESCRIPTION_CHARS - 3].rstrip() + "..."
    return f" ({text})"


def _type_text(node: Any, root: dict[str, Any], depth: int = 0) -> str:
    """A short type for a parameter's schema: ``string``, ``"a"|"b"``, ``array of
    integer``, ``object``, ``Name`` for a reference."""
    if not isinstance(node, dict) or depth > 3:
        return "any"
    if "const" in node:
        return json.dumps(node["const"], ensure_ascii=False)
    if isinstance(node.get("enum"), list) and len(node["enum"]) <= SIGNATURE_ENUM_VALUES:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in node["enum"])
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        target = root.get("$defs", {}).get(name) if ref.startswith("#/$defs/") else None
        if isinstance(target, dict) and ("enum" in target or "type" in target) \
                and target.get("type") != "object":
            return _type_text(target, root, depth + 1)
        return name or "object"
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return "|".join(dict.fromkeys(_type_text(b, root, depth + 1) for b in node[key]))
    kind = node.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array" or "items" in node:
        return f"array of {_type_text(node.get('items'), root, depth + 1)}"
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in node else "any"


def with_tools_prompt(messages: list[dict[str, Any]], turn: ToolTurn,
                      detail: str = "signatures") -> list[dict[str, Any]]:
    """``messages`` with :func:`tools_prompt` at the end of the system message (a new
    system message when there is none)."""
    prompt = tools_prompt(turn, detail=detail)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"},
                *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]
