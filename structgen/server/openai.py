"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models``.

The request's ``response_format`` (``json_schema``, ``json_object``), vLLM's
``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``; also its older
``guided_*`` fields) or ``tools`` become the engine's output; the answer's
``message.content`` (or ``tool_calls[].function.arguments``) is the engine's validated
value. ``stream: true`` answers with OpenAI's SSE chunks, ending in ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field

from structgen.engine import Engine
from structgen.server.calls import (
    ApiError,
    Call,
    Wire,
    WireTool,
    answer,
    assistant_message,
    call_id,
    calls_of,
    chat_messages,
    check_stop,
    content_of,
    cut_off,
    dump_json,
    function_tool,
    model_route,
    parse_wire,
    provenance,
    served_models,
    stable_prefix,
    stream,
)
from structgen.types import Choice, Grammar, JsonSchema, Regex, StructuredResult, ToolCall


class WireCalledFunction(Wire):
    name: str
    arguments: str | dict[str, Any] = "{}"


class WireToolCall(Wire):
    id: str | None = None
    function: WireCalledFunction


class WireMessage(Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None


class WireJsonSchema(Wire):
    name: str = "output"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class WireResponseFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: WireJsonSchema | None = None


class WireStructuredOutputs(Wire):
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class WireChatRequest(Wire):
    model: str
    messages: list[WireMessage] = Field(min_length=1)
    response_format: WireResponseFormat | None = None
    structured_outputs: WireStructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    tools: list[WireTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)


def parse_request(body: dict[str, Any]) -> WireChatRequest:
    return parse_wire(WireChatRequest, body)


def to_call(engine: Engine, req: WireChatRequest) -> Call:
    backend, model = model_route(engine, req.model)
    check_stop(req.stop, "stop")
    sampling: dict[str, Any] = {}
    max_tokens = req.max_tokens if req.max_completion_tokens is None \
        else req.max_completion_tokens
    for name, value in (("max_tokens", max_tokens), ("temperature", req.temperature),
                        ("top_p", req.top_p), ("seed", req.seed), ("stop", req.stop)):
        if value is not None:
            sampling[name] = value
    call = Call(messages=chat_messages([m.model_dump(exclude_none=True) for m in req.messages]),
                backend=backend, model=model, sampling=sampling)
    call.output = _output(req)
    if req.tools and req.tool_choice != "none":
        if call.output is not None:
            raise ApiError(400, "give response_format or tools, not both: a tool turn's "
                                "answer is a tool call", param="tools")
        call.tools = [function_tool(t.function.name, t.function.parameters,
                                    t.function.description) for t in req.tools]
        call.tool_choice = _tool_choice(req.tool_choice)
        # OpenAI's default is true; here one call unless the client asks for several
        call.parallel = bool(req.parallel_tool_calls)
    return call


def _output(req: WireChatRequest) -> Any:
    rf, so = req.response_format, req.structured_outputs
    specs: list[Any] = []
    if rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise ApiError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format")
        specs.append(JsonSchema(rf.json_schema.schema_, name=rf.json_schema.name))
    elif rf is not None and rf.type == "json_object":
        specs.append({"type": "object"})
    kinds: tuple[tuple[str, str, Any], ...] = (
        ("json_", "guided_json", _json_spec), ("regex", "guided_regex", Regex),
        ("choice", "guided_choice", Choice), ("grammar", "guided_grammar", Grammar))
    for field, guided, spec in kinds:  # structured_outputs' field, or its older guided_ one
        value = getattr(so, field) if so else getattr(req, guided)
        if value is not None:
            specs.append(spec(value))
    if len(specs) > 1:
        raise ApiError(400, "give one output constraint (response_format or one of "
                            "structured_outputs' json/regex/choice/grammar)",
                       param="structured_outputs")
    return specs[0] if specs else None


def _json_spec(value: dict[str, Any] | str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ApiError(400, "structured_outputs.json is not JSON",
                           param="structured_outputs.json") from None
    if not isinstance(value, dict | bool):
        raise ApiError(400, "structured_outputs.json must be a JSON Schema",
                       param="structured_outputs.json")
    return value


def _tool_choice(choice: str | dict[str, Any] | None) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice in ("auto", "required"):
            return choice
        raise ApiError(400, f"tool_choice {choice!r}: auto, none, required or "
                            '{"type": "function", "function": {"name": ...}}',
                       param="tool_choice")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ApiError(400, "tool_choice names no function", param="tool_choice")
    return name


# Answers ------------------------------------------------------------------------------------
async def complete(engine: Engine, req: WireChatRequest) -> dict[str, Any]:
    call = to_call(engine, req)
    results = await asyncio.gather(*(answer(engine, _nth(call, i)) for i in range(req.n)))
    choices = [{"index": i, "message": _assistant(r, call), "logprobs": None,
                "finish_reason": _finish(r, call)} for i, r in enumerate(results)]
    prompt = max(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"id": _id(), "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
            "structgen": provenance(results[0]) if req.n == 1
            else [provenance(r) for r in results]}


def _nth(call: Call, i: int) -> Call:
    """The i-th of ``n`` choices: a seeded call gets seed+i, so the choices differ."""
    if i == 0 or call.sampling.get("seed") is None:
        return call
    return Call(**{**call.__dict__, "sampling": {**call.sampling,
                                                   "seed": call.sampling["seed"] + i}})


def _assistant(result: StructuredResult, call: Call) -> dict[str, Any]:
    return assistant_message(result, content_of(result, call), _wire_call, "reasoning_content")


def _wire_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call_id(call), "type": "function",
            "function": {"name": call.name, "arguments": dump_json(call.arguments)}}


def _finish(result: StructuredResult, call: Call) -> str:
    if calls_of(result):
        return "tool_calls"
    return "length" if cut_off(result, call) else "stop"


def _id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def models(engine: Engine) -> dict[str, Any]:
    return {"object": "list",
            "data": [_model(name, backend) for name, (backend, _) in served_models(engine).items()]}


def model(engine: Engine, name: str) -> dict[str, Any]:
    """``GET /v1/models/{model}``: one served model, else 404."""
    backend, _ = model_route(engine, name)
    return _model(name, backend)


def _model(name: str, backend: str | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED,
            "owned_by": backend or "structgen"}


_STARTED = int(time.time())  # a model's "created": the same in every answer


# Streaming ----------------------------------------------------------------------------------
async def complete_stream(engine: Engine, req: WireChatRequest) -> AsyncIterator[str]:
    """SSE events: a role chunk, content (or tool-call) deltas, a last chunk with
    ``finish_reason``, ``usage`` and the ``structgen`` object, ``[DONE]``.

    Deltas carry the part of the partial value's JSON that can no longer change; the last
    delta completes it to the validated value. An error after the first event is sent as an
    ``error`` event (the status line has gone out)."""
    if req.n != 1:
        raise ApiError(400, "stream with n > 1 is not served", param="n")
    call = to_call(engine, req)
    cid, created = _id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": req.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    items = stream(engine, call)
    first = await anext(items)  # errors before any event go out with their own status
    yield chunk({"role": "assistant", "content": ""})
    sent = _Sent(call)
    try:
        item = first
        while True:
            if isinstance(item, StructuredResult):
                for delta in sent.final(item):
                    yield chunk(delta)
                usage = item.usage
                yield chunk({}, _finish(item, call), usage={
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens},
                    structgen={**provenance(item), **sent.restated(item)})
                break
            for delta in sent.partial(item):
                yield chunk(delta)
            item = await anext(items)
    except ApiError as exc:
        yield f"data: {json.dumps({'error': _error_body(exc)})}\n\n"
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


def _error_body(exc: ApiError) -> dict[str, Any]:
    return {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.status,
            **exc.details}


class _Sent:
    """What a stream has sent so far, so each delta is only what is new and final."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.content = ""  # content sent
        self.last = ""  # the last partial value's JSON
        self.args: list[str] = []  # per tool call: arguments sent
        self.last_args: list[str] = []
        self.diverged = False

    def partial(self, item: Any) -> list[dict[str, Any]]:
        calls = item if isinstance(item, list) else [item] if isinstance(item, ToolCall) else []
        if calls:
            return self._calls(calls, final=False)
        if self.call.json_output:
            text = dump_json(item)
            stable = stable_prefix(self.last, text)
        else:  # the text so far
            text = stable = str(item)
        self.last = text
        return self._text(stable)

    def final(self, result: StructuredResult) -> list[dict[str, Any]]:
        calls = calls_of(result)
        if calls:
            return self._calls(calls, final=True)
        return self._text(content_of(result, self.call) or "")

    def restated(self, result: StructuredResult) -> dict[str, Any]:
        """Repair changed what was already sent: the whole valid content, restated."""
        if not self.diverged:
            return {}
        calls = calls_of(result)
        return {"content": content_of(result, self.call),
                "tool_calls": [_wire_call(c) for c in calls] or None}

    def _text(self, text: str) -> list[dict[str, Any]]:
        if not text.startswith(self.content):
            self.diverged = True
            return []
        new, self.content = text[len(self.content):], text
        return [{"content": new}] if new else []

    def _calls(self, calls: list[ToolCall], final: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for i, c in enumerate(calls):
            args = dump_json(c.arguments) if c.arguments is not None else ""
            if i >= len(self.args):
                self.args.append("")
                self.last_args.append("")
                deltas.append({"tool_calls": [{"index": i, "id": call_id(c), "type": "function",
                                               "function": {"name": c.name, "arguments": ""}}]})
            stable = args if final else stable_prefix(self.last_args[i], args)
            self.last_args[i] = args
            if not stable.startswith(self.args[i]):
                self.diverged = True
                continue
            new, self.args[i] = stable[len(self.args[i]):], stable
            if new:
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": new}}]})
        return deltas
