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

import dataclasses
import inspect
import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Union, get_type_hints

import pydantic
from pydantic import BaseModel, ConfigDict, Field, RootModel

from structgen.errors import SchemaError, ToolError
from structgen.messages import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from structgen.schema.canonical import json_copy
from structgen.schema.compiled import CompiledOutput, compile_output
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
def tool_spec(tool: ToolLike) -> ToolSpec:
    """A tool as the pipeline carries it.

    A Pydantic model: the name is its ``tool_name`` class attribute, else its
    ``model_config["title"]``, else the class name; the description its docstring. A
    function: its name and docstring, its parameters (each annotated; defaults make them
    optional) become the arguments model. Raises :class:`ToolError`.
    """
    if isinstance(tool, ToolSpec):
        check_name(tool.name)
        return tool
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
              parallel: bool = False) -> ToolTurn:
    """The tools of one request; ``choice`` is ``"auto"``, ``"required"`` or one of the
    tools (its class, function, ToolSpec or name). Raises :class:`ToolError`."""
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence) or not tools:
        raise ToolError("tools must be a non-empty list of tools")
    specs = tuple(tool_spec(t) for t in tools)
    names = [s.name for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise ToolError("two tools have this name; a call could not say which one "
                            "it means", n)
    return ToolTurn(specs, _choice(choice, tools, specs), bool(parallel))


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
def envelope_output(turn: ToolTurn, limits: Limits = DEFAULT_LIMITS) -> CompiledOutput:
    """The compiled output of a tool turn (see the module docstring). The grammar's schema
    goes through :func:`compile_output` like any JSON Schema (checked, patterns made
    portable); validation reads the dispatching form."""
    offered = [t for t in turn.tools if turn.choice in CHOICES or t.name == turn.choice]
    auto = turn.choice == "auto"
    defs: dict[str, Any] = {}
    bases = _bases(len(offered), turn.parallel, "/anyOf/0" if auto else "")
    grammar_calls = [_call_branch(t, defs, base) for t, base in zip(offered, bases, strict=True)]
    check_calls = _dispatch(offered, turn.parallel, "/else" if auto else "")
    grammar: dict[str, Any] = (grammar_calls[0] if len(grammar_calls) == 1
                               else {"anyOf": grammar_calls})
    if turn.parallel:
        grammar = {"type": "array", "items": grammar, "minItems": 1}
        check_calls = {"type": "array", "items": check_calls, "minItems": 1}
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
        check["$defs"] = defs
    compiled = compile_output(JsonSchema(grammar, name="tool_call"), limits=limits)
    return dataclasses.replace(compiled, model=envelope_model(turn),
                               written_schema=json_copy(check, limits.max_schema_depth)[0])


def _bases(n: int, parallel: bool, prefix: str) -> list[str]:
    """Where each call branch's ``arguments`` sits in the grammar schema."""
    root = prefix + ("/items" if parallel else "")
    if n == 1:
        return [f"{root}/properties/arguments"]
    return [f"{root}/anyOf/{i}/properties/arguments" for i in range(n)]


def _call_branch(tool: ToolSpec, defs: dict[str, Any], base: str) -> dict[str, Any]:
    branch: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"const": tool.name},
                       "arguments": _placed(tool, defs, base)},
        "required": ["name", "arguments"], "additionalProperties": False}
    if tool.description:  # part of the output's hash, so of the cache key
        branch["description"] = tool.description
    return branch


def _dispatch(tools: list[ToolSpec], parallel: bool, prefix: str) -> dict[str, Any]:
    """``name`` one of the tools; ``arguments`` checked by the named tool's schema only."""
    root = prefix + ("/items" if parallel else "")
    rules = [{"if": {"properties": {"name": {"const": t.name}}},
              "then": {"properties": {"arguments": _placed(
                  t, {}, f"{root}/allOf/{i}/then/properties/arguments")}}}
             for i, t in enumerate(tools)]
    return {"type": "object",
            "properties": {"name": {"enum": [t.name for t in tools]}, "arguments": True},
            "required": ["name", "arguments"], "additionalProperties": False,
            "allOf": rules}


def _placed(tool: ToolSpec, defs: dict[str, Any], base: str) -> Any:
    """``tool.parameters`` moved to ``base`` in a bigger document: its ``$defs`` become
    ``#/$defs/<tool>.<name>``, other references into it are re-rooted at ``base``."""
    params = json_copy(tool.parameters)[0]
    if not isinstance(params, dict):
        return params
    own = params.pop("$defs", None) or {}

    def move(ref: str) -> str:
        if ref.startswith("#/$defs/"):
            return f"#/$defs/{tool.name}.{ref.removeprefix('#/$defs/')}"
        if ref == "#" or ref.startswith("#/"):
            return "#" + base + ref[1:]
        raise ToolError(f"a $ref outside the arguments schema ({ref!r}) cannot be offered",
                        tool.name)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (move(v) if k == "$ref" and isinstance(v, str) else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    for key, sub in own.items():
        defs[f"{tool.name}.{key}"] = walk(sub)
    return walk(params)


_envelope_models: dict[tuple[Any, ...], type[BaseModel]] = {}
_models_lock = threading.Lock()


def envelope_model(turn: ToolTurn) -> type[BaseModel]:
    """The Pydantic model a tool turn's envelope validates into (``.root`` is the answer)."""
    key = (tuple((t.name, t.model or id(t)) for t in turn.tools), turn.choice, turn.parallel)
    with _models_lock:
        known = _envelope_models.get(key)
    if known is not None:
        return known
    offered = [t for t in turn.tools if turn.choice in CHOICES or t.name == turn.choice]
    calls = [pydantic.create_model(
        f"{t.name}_call", __config__=ConfigDict(extra="forbid"),
        name=(Literal.__getitem__(t.name), ...),  # type: ignore[arg-type]
        arguments=(t.model if t.model is not None else dict[str, Any], ...))
        for t in offered]
    call: Any = calls[0] if len(calls) == 1 else Annotated[
        Union[tuple(calls)], Field(discriminator="name")]  # noqa: UP007 - built at runtime
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
    more = f' ("\\n"? "{TRIGGER_OPEN}" block)*' if turn.parallel else ""
    return (f"start: TEXT | pre block{more}\n"
            f'block: "\\n"? call "\\n"? "{TRIGGER_CLOSE}"\n'
            f"TEXT: /(?s:.*)/ & ~/(?s:.*{re.escape(TRIGGER_OPEN)}.*)/\n"
            f"pre[lazy]: /(?s:.*){re.escape(TRIGGER_OPEN)}/\n"
            f"call: %json {body}\n")


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


def tools_prompt(turn: ToolTurn) -> str:
    """The tools as system-prompt text, for chat templates that do not take ``tools``
    (SmolLM2's, the tiny test model's): the Hermes/Qwen layout, whose ``<tool_call>`` tags
    are also the embedded grammar's trigger."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in turn.openai_tools())
    if turn.choice == "auto":
        rule = ("If a function helps, call it; otherwise answer in plain text. To call a "
                f"function, write {TRIGGER_OPEN}, then one JSON object with its name and "
                f"arguments, then {TRIGGER_CLOSE}:\n{TRIGGER_OPEN}\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n'
                f"{TRIGGER_CLOSE}")
    else:
        which = "one of these functions" if turn.choice == "required" \
            else f"the function {turn.choice}"
        rule = (f"Call {which}: answer with one JSON object with its name and arguments, "
                '{"name": <function-name>, "arguments": <args-json-object>}'
                + (", or a JSON array of such objects for several calls." if turn.parallel
                   else "."))
    return ("# Tools\n\nYou may call functions. Their signatures, as JSON Schema, are "
            f"inside <tools></tools>:\n<tools>\n{listed}\n</tools>\n\n{rule}")


def with_tools_prompt(messages: list[dict[str, Any]], turn: ToolTurn) -> list[dict[str, Any]]:
    """``messages`` with :func:`tools_prompt` at the end of the system message (a new
    system message when there is none)."""
    prompt = tools_prompt(turn)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"},
                *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]
