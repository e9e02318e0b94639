"""What both wire formats become before they reach the engine: one :class:`Call`, answered
by :func:`answer` or :func:`stream` through the one :class:`~structgen.engine.Engine`.

The OpenAI and Ollama modules only translate: their request body → a ``Call``, the
engine's :class:`~structgen.types.StructuredResult` → their response body. Errors are
mapped to an HTTP status here too (:func:`status_of`), once for both.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from structgen.engine import Engine
from structgen.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    MessageError,
    SchemaError,
    StructgenError,
    ToolError,
    ValidationFailed,
)
from structgen.messages import Message, normalize_messages
from structgen.schema.toolset import schema_tool
from structgen.types import Choice, Grammar, Regex, StructuredResult, ToolCall, ToolSpec
from structgen.validate import dump_value


class ApiError(Exception):
    """A request the server answers with an error: its status, a message, and the details
    each wire format puts in its own shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.details = details or {}
        super().__init__(message)


# Request bodies -----------------------------------------------------------------------------
class Wire(BaseModel):
    # clients send fields this server does not read (user, logprobs, metadata, ...); a
    # field's value must have its JSON type, as OpenAI and Ollama ask: "10" is not taken as
    # 10, nor "false" as false (an integer is still a number)
    model_config = ConfigDict(extra="ignore", strict=True)


class WireFunction(Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class WireTool(Wire):
    """A ``function`` tool, the same in both formats' requests."""

    type: Literal["function"] = "function"
    function: WireFunction


W = TypeVar("W", bound=Wire)


def parse_wire(model: type[W], body: dict[str, Any]) -> W:
    """A request body as ``model``; the first thing wrong is a 400 naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = field_path(model, err["loc"])
        raise ApiError(400, f"{where}: {err['msg']}", param=where) from None


def field_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The request field a pydantic error's ``loc`` names, as ``messages.0.content``.

    Where a field takes more than one type, pydantic puts the union member it tried in the
    ``loc`` (``messages.0.content.str``, ``stop.list[str].0``, a model's class name); that
    is no part of the request, so it is left out: ``loc`` is walked along ``model``'s
    fields, and at a union the next item is its member's tag."""
    kept: list[str] = []
    here: list[Any] = [model]  # the types the next item of loc is inside
    for item in loc:
        if any(len(_members(t)) > 1 for t in here):  # pydantic tags each member's errors
            here = [m for t in here for m in _members(t)]
            continue
        inner = [c for t in here for c in _inside(t, item)]
        kept.append(str(item))
        here = inner or [Any]  # past what the annotations say: the rest as it is
    return ".".join(kept)


def _members(hint: Any) -> list[Any]:
    """A union's members (without None, which pydantic does not tag); ``[hint]`` else."""
    if get_origin(hint) is Annotated:
        return _members(get_args(hint)[0])
    if get_origin(hint) in (Union, UnionType):
        return [m for a in get_args(hint) if a is not type(None) for m in _members(a)]
    return [hint]


def _inside(hint: Any, item: int | str) -> list[Any]:
    """The type at ``item`` inside ``hint`` (a model's field, a list's item, a dict's
    value); none when ``item`` is not in it."""
    hint = _members(hint)[0]
    origin = get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return [f.annotation for name, f in hint.model_fields.items()
                if item in (name, f.alias, f.validation_alias)]
    if origin is list and isinstance(item, int):
        return list(get_args(hint)[:1]) or [Any]
    if origin is dict and isinstance(item, str):
        return list(get_args(hint)[1:]) or [Any]
    if hint is Any:
        return [Any]
    return []


def check_stop(stop: str | list[str] | None, param: str) -> None:
    """An empty stop string is a 400 naming ``param``, as OpenAI answers it: it matches
    before the first token, so the answer would end at once with empty text."""
    if stop is not None and "" in ([stop] if isinstance(stop, str) else stop):
        raise ApiError(400, f"{param}: an empty stop string would end every answer at once",
                       param=param)


def status_of(exc: StructgenError) -> ApiError:
    """The HTTP answer for an error the engine raised."""
    if isinstance(exc, ValidationFailed):
        return ApiError(422, str(exc), "validation_failed", details=exc.to_dict())
    if isinstance(exc, SchemaError):
        return ApiError(400, str(exc), "invalid_schema", param=exc.pointer or None)
    if isinstance(exc, ToolError):
        return ApiError(400, str(exc), "invalid_tool", param=exc.tool)
    if isinstance(exc, MessageError):
        where = f"messages[{exc.index}]" + (f".{exc.field}" if exc.field else "")
        return ApiError(400, str(exc), param=where)
    if isinstance(exc, BackendTimeout):
        return ApiError(504, str(exc), "backend_timeout")
    if isinstance(exc, BackendUnavailable):
        return ApiError(503, str(exc), "backend_unavailable")
    if isinstance(exc, BackendError):
        return ApiError(502, str(exc), "backend_error")
    if isinstance(exc, ConfigError):
        return ApiError(500, str(exc), "server_config_error")
    return ApiError(400, str(exc))  # a bad parameter (sampling, messages, output spec)


@dataclass
class Call:
    """One request as the engine takes it. ``output`` None and no ``tools``: plain text."""

    messages: list[Message]
    output: Any = None
    tools: list[ToolSpec] | None = None
    tool_choice: str = "auto"
    parallel: bool = False
    backend: str | None = None
    model: str | None = None
    reasoning: bool | None = None
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def json_output(self) -> bool:
        """The answer is a JSON value (its content is its JSON text, even a string's)."""
        return self.tools is None and self.output is not None \
            and not isinstance(self.output, Regex | Choice | Grammar)

    def keywords(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"backend": self.backend, "model": self.model,
                              "reasoning": self.reasoning, **self.sampling}
        if self.tools is not None:
            kw.update(tools=self.tools, tool_choice=self.tool_choice, parallel=self.parallel)
        return kw


async def answer(engine: Engine, call: Call) -> StructuredResult:
    try:
        if call.tools is None and call.output is None:
            return await engine.arun_text(call.messages, backend=call.backend,
                                          model=call.model, reasoning=call.reasoning,
                                          **call.sampling)
        return await engine.arun(call.messages, call.output, **call.keywords())
    except StructgenError as exc:
        raise status_of(exc) from None


async def stream(engine: Engine, call: Call) -> AsyncIterator[Any]:
    """Partial values, then the final :class:`StructuredResult` (a plain-text call is not
    streamed by the engine: its one item is the result)."""
    if call.tools is None and call.output is None:
        yield await answer(engine, call)
        return
    items = engine.astream(call.messages, call.output, final_result=True, **call.keywords())
    try:
        async for item in items:
            yield item
    except StructgenError as exc:
        raise status_of(exc) from None
    finally:
        await items.aclose()  # type: ignore[attr-defined]


# Building a Call ----------------------------------------------------------------------------
def function_tool(name: Any, parameters: Any, description: Any) -> ToolSpec:
    """An OpenAI/Ollama ``function`` tool; its arguments come back as a validated dict."""
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    try:
        return schema_tool(name, parameters, description or "")
    except StructgenError as exc:
        raise status_of(exc) from None


def chat_messages(messages: list[dict[str, Any]]) -> list[Message]:
    """A request's messages as the engine takes them, earlier tool calls and results
    included (:func:`structgen.messages.normalize_messages`, the Python API's own parser)."""
    try:
        return normalize_messages(messages)
    except StructgenError as exc:
        raise status_of(exc) from None


def model_route(engine: Engine, name: str) -> tuple[str | None, str | None]:
    """(backend, model) for a request's ``model`` (see :func:`served_models`)."""
    routes = served_models(engine)
    if name not in routes:
        raise ApiError(404, f"model {name!r} not found (served: {', '.join(routes)})",
                       "model_not_found", param="model")
    return routes[name]


def served_models(engine: Engine) -> dict[str, tuple[str | None, str | None]]:
    """``structgen`` (routed as the config says) and each backend's configured model
    (pinned to that backend)."""
    out: dict[str, tuple[str | None, str | None]] = {"structgen": (None, None)}
    for name in engine.router.order():
        model = getattr(engine.config.section(name), "model", None)
        if model:
            out.setdefault(str(model), (name, str(model)))
    return out


# Results ------------------------------------------------------------------------------------
def content_of(result: StructuredResult, call: Call) -> str | None:
    """The answer as text: the JSON of a JSON value, the string of a regex/choice/grammar,
    plain-text or tool-turn text answer; None for tool calls."""
    if call.json_output:
        return dump_json(result.value)
    if calls_of(result):
        return None
    return str(result.value)


def assistant_message(result: StructuredResult, content: str | None,
                      wire_call: Callable[[ToolCall], dict[str, Any]],
                      reasoning_key: str) -> dict[str, Any]:
    """The answer as an assistant message: its content, its tool calls in the format's shape
    (``wire_call``), its reasoning under the format's key."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    tool_calls = calls_of(result)
    if tool_calls:
        message["tool_calls"] = [wire_call(c) for c in tool_calls]
    if result.reasoning_text:
        message[reasoning_key] = result.reasoning_text
    return message


def cut_off(result: StructuredResult, call: Call) -> bool:
    """Was the answer cut at ``max_tokens`` (OpenAI's ``finish_reason: "length"``)? A value
    made from a cut answer is ``truncated``; a plain-text answer has nothing to validate, so
    the backend's finish reason says it."""
    plain = call.tools is None and call.output is None
    return result.truncated or (plain and result.finish_reason == "length")


def calls_of(result: StructuredResult) -> list[ToolCall]:
    value = result.value
    if isinstance(value, ToolCall):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, ToolCall) for v in value):
        return list(value)
    return []


def dump_json(value: Any) -> str:
    return json.dumps(dump_value(value), ensure_ascii=False, separators=(",", ":"))


def call_id(call: ToolCall) -> str:
    return call.id or f"call_{secrets.token_hex(12)}"


def provenance(result: StructuredResult) -> dict[str, Any]:
    """The ``structgen`` extension object of a response: how the answer was made."""
    return {
        "backend": result.backend, "model": result.model, "cached": result.cached,
        "repaired": result.repaired,
        "repairs": [{"stage": r.stage, "changes": list(r.changes)} for r in result.repairs],
        "post_enforced": list(result.post_enforced),
        "attempts": [{"backend": a.backend, "ok": a.ok, "error": a.error,
                      "skipped": a.skipped} for a in result.attempts],
        "truncated": result.truncated, "latency_s": round(result.latency_s, 6),
    }


def stable_prefix(before: str, now: str) -> str:
    """The longest common prefix: what of a partial value's JSON will not change any more
    (a partial string's closing quote, an unclosed object's brace are not sent yet)."""
    n = 0
    for a, b in zip(before, now, strict=False):
        if a != b:
            break
        n += 1
    return now[:n]
