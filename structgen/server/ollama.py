"""Ollama-compatible routes: ``POST /api/chat``, ``POST /api/generate``, ``GET /api/tags``,
``GET /api/version``.

``format`` is ``"json"`` (any JSON object) or a JSON Schema; ``options`` carries
``temperature``, ``top_p``, ``seed``, ``num_predict`` and ``stop``. As in Ollama, ``stream``
defaults to true: NDJSON lines, the last one ``"done": true``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from structgen import __version__
from structgen.engine import Engine
from structgen.messages import Message
from structgen.server import calls
from structgen.server.calls import ApiError, Call, Wire, WireTool
from structgen.types import StructuredResult, ToolCall

# Ollama's own version line; clients read it to pick features
OLLAMA_VERSION = "0.12.0"


class WireOllamaCalled(Wire):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class WireOllamaToolCall(Wire):
    function: WireOllamaCalled


class WireOllamaMessage(Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[Any] | None = None
    tool_calls: list[WireOllamaToolCall] | None = None
    tool_name: str | None = None  # a tool result: the tool that gave it


class WireOllamaOptions(Wire):
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = None


class WireOllamaChat(Wire):
    model: str
    messages: list[WireOllamaMessage] = Field(min_length=1)
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: WireOllamaOptions | None = None
    stream: bool = True
    tools: list[WireTool] | None = None
    think: bool | str | None = None


class WireOllamaGenerate(Wire):
    model: str
    prompt: str = ""
    system: str | None = None
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: WireOllamaOptions | None = None
    stream: bool = True
    think: bool | str | None = None


def parse_chat(body: dict[str, Any]) -> WireOllamaChat:
    return calls.parse_wire(WireOllamaChat, body)


def parse_generate(body: dict[str, Any]) -> WireOllamaGenerate:
    return calls.parse_wire(WireOllamaGenerate, body)


def _call(engine: Engine, model: str, messages: list[Message], fmt: Any,
          options: WireOllamaOptions | None, think: bool | str | None) -> Call:
    backend, routed = calls.model_route(engine, model)
    sampling: dict[str, Any] = {}
    if options is not None:
        calls.check_stop(options.stop, "options.stop")
        for name, value in (("temperature", options.temperature), ("top_p", options.top_p),
                            ("seed", options.seed), ("stop", options.stop)):
            if value is not None:
                sampling[name] = value
        if options.num_predict is not None and options.num_predict > 0:
            sampling["max_tokens"] = options.num_predict
    output = None
    if fmt == "json":
        output = {"type": "object"}
    elif isinstance(fmt, dict):
        output = fmt
    reasoning = think if isinstance(think, bool) else (True if think else None)
    return Call(messages=messages, output=output, backend=backend, model=routed,
                reasoning=reasoning, sampling=sampling)


def chat_call(engine: Engine, req: WireOllamaChat) -> Call:
    if any(m.images for m in req.messages):
        raise ApiError(400, "images are not served", param="messages")
    messages = calls.chat_messages([m.model_dump(exclude_none=True) for m in req.messages])
    call = _call(engine, req.model, messages, req.format, req.options, req.think)
    if req.tools:
        if call.output is not None:
            raise ApiError(400, "give format or tools, not both", param="tools")
        call.tools = [calls.function_tool(t.function.name, t.function.parameters,
                                          t.function.description) for t in req.tools]
    return call


def generate_call(engine: Engine, req: WireOllamaGenerate) -> Call:
    messages: list[Message] = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": req.prompt})
    return _call(engine, req.model, messages, req.format, req.options, req.think)


# Answers ------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _done(model: str, result: StructuredResult, call: Call) -> dict[str, Any]:
    ns = int(result.latency_s * 1e9)
    return {"model": model, "created_at": _now(), "done": True,
            "done_reason": "length" if calls.cut_off(result, call) else "stop",
            "total_duration": ns, "load_duration": 0,
            "prompt_eval_count": result.usage.prompt_tokens,
            "eval_count": result.usage.completion_tokens, "eval_duration": ns,
            "structgen": calls.provenance(result)}


def _message(result: StructuredResult, call: Call) -> dict[str, Any]:
    return calls.assistant_message(result, calls.content_of(result, call) or "", _wire_call,
                                   "thinking")


def _wire_call(call: ToolCall) -> dict[str, Any]:
    arguments = json.loads(calls.dump_json(call.arguments))
    return {"function": {"name": call.name, "arguments": arguments}}


async def chat(engine: Engine, req: WireOllamaChat) -> dict[str, Any]:
    call = chat_call(engine, req)
    result = await calls.answer(engine, call)
    return {**_done(req.model, result, call), "message": _message(result, call)}


async def generate(engine: Engine, req: WireOllamaGenerate) -> dict[str, Any]:
    call = generate_call(engine, req)
    result = await calls.answer(engine, call)
    return {**_done(req.model, result, call), "response": calls.content_of(result, call) or ""}


async def chat_stream(engine: Engine, req: WireOllamaChat) -> AsyncIterator[str]:
    call = chat_call(engine, req)
    async for line in _lines(engine, call, req.model, chat=True):
        yield line


async def generate_stream(engine: Engine, req: WireOllamaGenerate) -> AsyncIterator[str]:
    call = generate_call(engine, req)
    async for line in _lines(engine, call, req.model, chat=False):
        yield line


async def _lines(engine: Engine, call: Call, model: str, *, chat: bool) -> AsyncIterator[str]:
    """NDJSON: a line per new piece of content, then the ``done`` line (with the tool calls,
    which Ollama sends whole). A failure after the first line is an ``error`` line."""

    def line(content: str, **extra: Any) -> str:
        body: dict[str, Any] = {"model": model, "created_at": _now()}
        if chat:
            body["message"] = {"role": "assistant", "content": content, **extra}
        else:
            body["response"] = content
        body["done"] = False
        return json.dumps(body, ensure_ascii=False) + "\n"

    items = calls.stream(engine, call)
    item = await anext(items)  # errors before any line go out with their own status
    sent, last = "", ""
    try:
        while not isinstance(item, StructuredResult):
            if not isinstance(item, ToolCall | list):
                text = calls.dump_json(item) if call.json_output else str(item)
                stable = calls.stable_prefix(last, text) if call.json_output else text
                last = text
                if stable.startswith(sent) and len(stable) > len(sent):
                    yield line(stable[len(sent):])
                    sent = stable
            item = await anext(items)
        content = calls.content_of(item, call) or ""
        done = _done(model, item, call)
        if content.startswith(sent):
            tail = content[len(sent):]
        else:  # repair changed what was sent: the done line restates it whole
            tail = ""
            done["structgen"]["content"] = content
        if chat:
            message = _message(item, call)
            message["content"] = tail
            done["message"] = message
        else:
            done["response"] = tail
        yield json.dumps(done, ensure_ascii=False) + "\n"
    except ApiError as exc:
        yield json.dumps({"error": exc.message}) + "\n"
    finally:
        await items.aclose()  # type: ignore[attr-defined]


def tags(engine: Engine) -> dict[str, Any]:
    now = _now()
    return {"models": [{"name": name, "model": name, "modified_at": now, "size": 0,
                        "digest": "", "details": {"format": "", "family": backend or "structgen",
                                                  "families": None, "parameter_size": "",
                                                  "quantization_level": ""}}
                       for name, (backend, _) in calls.served_models(engine).items()]}


def version() -> dict[str, Any]:
    return {"version": OLLAMA_VERSION, "structgen": __version__}
