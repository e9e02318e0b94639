"""Chat messages: every shape a caller or a wire format sends, parsed once into structgen's
:class:`Message`, and written back out in each shape a model or a server reads.

What :func:`normalize_messages` takes, as dicts or objects with those attributes (the
``openai`` and ``ollama`` packages' message objects, structgen's own
:class:`~structgen.types.ToolCall`):

- ``role``: ``system``, ``user``, ``assistant``, ``tool`` (OpenAI's ``developer`` is a
  system message);
- ``content``: a string, ``None`` or a list of text parts ``{"type": "text", "text": ...}``
  (joined with newlines, as vLLM joins them); any other part (an image) is refused;
- an assistant's ``tool_calls``, OpenAI's shape (``{"id", "type": "function", "function":
  {"name", "arguments": "<JSON text>"}}``) or Ollama's (``{"function": {"name",
  "arguments": {...}}}``), or :class:`~structgen.types.ToolCall` values as structgen
  returned them;
- a ``tool`` message answering one of them: OpenAI's ``tool_call_id``, Ollama's
  ``tool_name``, or neither (the oldest call not answered yet).

A :class:`Message` is the shape Hugging Face chat templates read (``tool_calls[].function``
with ``arguments`` as an object; a tool message's ``name``): every call has an ``id`` (made
up from its position when none was given, so the same history is the same cache key) and
every tool result names its call's ``id`` and tool when there is a call before it.
Malformed input is a :class:`~structgen.errors.MessageError` naming the message and field.

Out: :func:`openai_messages` (vLLM, SGLang), :func:`ollama_messages`, and
:func:`hermes_messages`: plain ``role``/``content`` turns for a chat template that cannot
render tool turns, calls as ``<tool_call>`` blocks and results as ``<tool_response>``
blocks in a user turn (Qwen 2.5's and Hermes' layout). :func:`tool_arguments` tells
which of the two a template gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, get_args

from structgen.errors import MessageError, StructgenError

ROLES = ("system", "user", "assistant", "tool")
# the tags of the Hermes tool-call layout, which the tools prompt asks for and the "auto"
# grammar waits for (structgen/schema/toolset.py)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# how a chat template takes a call's arguments: an object (Hugging Face's convention) or
# JSON text (see tool_arguments)
ToolArguments = Literal["object", "text"]


class MessageFunction(TypedDict):
    name: str
    arguments: dict[str, Any]


class MessageToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: MessageFunction


class Message(TypedDict):
    """One chat turn. ``tool_calls``: an assistant's calls; ``tool_call_id`` and ``name``:
    the call a tool message answers and its tool (each when known)."""

    role: str
    content: str
    tool_calls: NotRequired[list[MessageToolCall]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


# Parsing ------------------------------------------------------------------------------------
def normalize_messages(prompt_or_messages: str | Sequence[Any]) -> list[Message]:
    """A prompt string or a list of chat messages as a validated :class:`Message` list.

    >>> normalize_messages([{"role": "assistant", "content": None, "tool_calls": [
    ...     {"id": "c1", "type": "function",
    ...      "function": {"name": "f", "arguments": '{"x": 1}'}}]},
    ...     {"role": "tool", "tool_call_id": "c1", "content": "2"}])[1]
    {'role': 'tool', 'content': '2', 'tool_call_id': 'c1', 'name': 'f'}
    """
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    if isinstance(prompt_or_messages, bytes | Mapping) or \
            not isinstance(prompt_or_messages, Sequence) or not prompt_or_messages:
        raise StructgenError("prompt_or_messages must be a non-empty str or list of messages")
    out: list[Message] = []
    unanswered: list[MessageToolCall] = []  # calls no tool message has answered yet
    for i, raw in enumerate(prompt_or_messages):
        m = _fields(raw, i)
        if m.get("images"):
            raise MessageError("images are not served: only text", i, "images")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise MessageError(f"role {role!r} is not one of {', '.join(ROLES)}", i, "role")
        message: Message = {"role": role, "content": _content(m.get("content"), i)}
        calls = m.get("tool_calls")
        if calls is not None and role != "assistant":
            raise MessageError("only an assistant message carries tool_calls", i, "tool_calls")
        if calls:  # an empty list is no calls
            message["tool_calls"] = _tool_calls(calls, i)
            unanswered.extend(message["tool_calls"])
        if role == "tool":
            _answer(message, m, unanswered, out, i)
        out.append(message)
    return out


def _fields(raw: Any, i: int) -> dict[str, Any]:
    """A message's fields, from a dict or an object (a Pydantic model, a dataclass)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    dump = getattr(raw, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dict(dumped)
    if hasattr(raw, "role"):
        return {k: getattr(raw, k) for k in ("role", "content", "tool_calls", "tool_call_id",
                                             "tool_name", "name") if hasattr(raw, k)}
    raise MessageError(f"a message is a dict with a role, not {type(raw).__name__}", i)


def _content(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind != "text":
                raise MessageError(f"only text parts ({{'type': 'text', 'text': ...}}) are "
                                   f"served, not {kind or type(part).__name__!r}", i,
                                   f"content[{j}]")
            if not isinstance(part.get("text"), str):
                raise MessageError("a text part's text must be a string", i,
                                   f"content[{j}].text")
            texts.append(part["text"])
        return "\n".join(texts)
    raise MessageError(f"content must be a string, null or a list of text parts, not "
                       f"{type(content).__name__}", i, "content")


def _tool_calls(calls: Any, i: int) -> list[MessageToolCall]:
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
        raise MessageError("tool_calls must be a list of calls", i, "tool_calls")
    out: list[MessageToolCall] = []
    for j, call in enumerate(calls):
        where = f"tool_calls[{j}]"
        c = _call_fields(call)
        fn = c.get("function")
        if fn is None and "name" in c:  # a flat call: structgen's ToolCall, {"name", "arguments"}
            fn = {"name": c.get("name"), "arguments": c.get("arguments")}
        if not isinstance(fn, Mapping):
            raise MessageError("a tool call is {'function': {'name': ..., 'arguments': ...}}",
                               i, where)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise MessageError("a tool call needs the function's name", i,
                               f"{where}.function.name")
        call_id = c.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise MessageError("a tool call's id must be a string", i, f"{where}.id")
        # a made-up id is nine letters and digits: Mistral's templates refuse any other
        out.append({"id": call_id or f"call{i:03d}{j:02d}", "type": "function",
                    "function": {"name": name, "arguments": _arguments(
                        fn.get("arguments"), i, f"{where}.function.arguments")}})
    return out


def _call_fields(call: Any) -> dict[str, Any]:
    if isinstance(call, Mapping):
        return dict(call)
    dump = getattr(call, "model_dump", None)
    if callable(dump):  # the openai/ollama packages' tool-call objects
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dict(dumped)
    # structgen's ToolCall (a dataclass; its arguments a Pydantic model instance)
    return {k: getattr(call, k) for k in ("id", "name", "arguments", "function")
            if hasattr(call, k)}


def _arguments(arguments: Any, i: int, where: str) -> dict[str, Any]:
    """A call's arguments as a JSON object: OpenAI sends JSON text, Ollama an object,
    structgen's ToolCall a Pydantic model."""
    if arguments is None or arguments == "":
        return {}
    dump = getattr(arguments, "model_dump", None)
    if callable(dump):
        arguments = dump(mode="json", exclude_none=True)
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            raise MessageError("the arguments are not JSON text", i, where) from None
    if not isinstance(arguments, Mapping):
        raise MessageError(f"the arguments must be a JSON object, not "
                           f"{type(arguments).__name__}", i, where)
    try:  # a plain JSON value, whatever the caller's mapping held
        value: dict[str, Any] = json.loads(json.dumps(arguments))
    except (TypeError, ValueError, RecursionError):
        raise MessageError("the arguments are not a JSON object", i, where) from None
    return value


def _answer(message: Message, m: dict[str, Any], unanswered: list[MessageToolCall],
            earlier: list[Message], i: int) -> None:
    """Link a tool message to the call it answers: by ``tool_call_id``, else by the
    tool's name (Ollama's ``tool_name``), else the oldest call not answered yet."""
    call_id, name = m.get("tool_call_id"), m.get("tool_name") or m.get("name")
    if call_id is not None and not isinstance(call_id, str):
        raise MessageError("tool_call_id must be a string", i, "tool_call_id")
    if name is not None and not isinstance(name, str):
        raise MessageError("tool_name must be a string", i, "tool_name")
    if call_id:
        calls = [c for m_ in earlier for c in m_.get("tool_calls", ())]
        match = next((c for c in calls if c["id"] == call_id), None)
        if match is None:
            known = ", ".join(c["id"] for c in calls) or "none"
            raise MessageError(f"tool_call_id {call_id!r} answers no earlier assistant tool "
                               f"call (their ids: {known})", i, "tool_call_id")
    else:
        match = next((c for c in unanswered if name is None or c["function"]["name"] == name),
                     None)
    if match is not None:
        if match in unanswered:
            unanswered.remove(match)
        message["tool_call_id"] = match["id"]
        name = name or match["function"]["name"]
    if name:
        message["name"] = name


# Writing ------------------------------------------------------------------------------------
def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The messages as OpenAI's chat API takes them (vLLM, SGLang): calls' arguments as
    JSON text, a tool result's ``tool_call_id``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        wire: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if "tool_calls" in m:
            wire["content"] = m["content"] or None
            wire["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": _json(c["function"]["arguments"])}}
                for c in m["tool_calls"]]
        if "tool_call_id" in m:
            wire["tool_call_id"] = m["tool_call_id"]
        out.append(wire)
    return out


def ollama_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The messages as Ollama's ``/api/chat`` takes them: calls' arguments as objects, a
    tool result's ``tool_name``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        wire: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if "tool_calls" in m:
            wire["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                                "arguments": c["function"]["arguments"]}}
                                  for c in m["tool_calls"]]
        if m["role"] == "tool" and "name" in m:
            wire["tool_name"] = m["name"]
        out.append(wire)
    return out


def template_messages(messages: Sequence[Message],
                      arguments: ToolArguments = "object") -> list[dict[str, Any]]:
    """The messages for a chat template that renders tool turns: as they are (copies, so
    a template cannot change the request), calls' arguments as JSON text for a template
    that writes them as text (``arguments="text"``)."""
    out: list[dict[str, Any]] = json.loads(json.dumps(messages))
    if arguments == "text":
        for m in out:
            for c in m.get("tool_calls", ()):
                c["function"]["arguments"] = _json(c["function"]["arguments"])
    return out


def hermes_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Plain ``role``/``content`` turns: an assistant's calls as ``<tool_call>`` blocks after
    its text, and each run of tool results as one user turn of ``<tool_response>`` blocks
    (so the turns still alternate for a template that insists on it)."""
    out: list[dict[str, Any]] = []
    in_results = False  # the last turn written is a user turn of tool results
    for m in messages:
        if m["role"] == "tool":
            block = f"{TOOL_RESPONSE_OPEN}\n{m['content']}\n{TOOL_RESPONSE_CLOSE}"
            if in_results:
                out[-1]["content"] += f"\n{block}"
            else:
                out.append({"role": "user", "content": block})
            in_results = True
            continue
        in_results = False
        content = m["content"]
        if "tool_calls" in m:
            calls = tool_call_text(m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": m["role"], "content": content})
    return out


def tool_call_text(calls: Sequence[MessageToolCall]) -> str:
    """Calls as the model writes them in the Hermes layout (what the tools prompt asks for)."""
    return "\n".join(f"{TOOL_CALL_OPEN}\n{_json(_hermes_call(c))}\n{TOOL_CALL_CLOSE}"
                     for c in calls)


def _hermes_call(call: MessageToolCall) -> dict[str, Any]:
    return {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# Which layout a chat template gets --------------------------------------------------------
_PROBE_TOOL, _PROBE_ARGUMENT = "probe_tool_x7q", "probe_value_k3z"
_PROBE_RESULT = "probe_result_w9m"
PROBE: list[Message] = [
    {"role": "user", "content": "probe"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "probe0001", "type": "function",
         "function": {"name": _PROBE_TOOL, "arguments": {"probe": _PROBE_ARGUMENT}}}]},
    {"role": "tool", "content": _PROBE_RESULT, "tool_call_id": "probe0001",
     "name": _PROBE_TOOL}]


def tool_arguments(render: Callable[[list[dict[str, Any]]], str]) -> ToolArguments | None:
    """Whether a chat template writes an assistant's tool calls (name and arguments) and a
    tool result when given them in the :class:`Message` shape, and how it takes the calls'
    arguments: ``"object"`` (Hugging Face's convention: Qwen, Llama 3.x, Mistral), ``"text"``
    (JSON text, as Functionary's), None when it renders neither (SmolLM2, Phi-3.5: they get
    :func:`hermes_messages`). ``render`` (the template applied to a message list) is tried on
    a short conversation, as llama.cpp's minja probes a template's capabilities; a template
    that fails on it does not render tool turns."""
    for arguments in get_args(ToolArguments):
        try:
            text = render(template_messages(PROBE, arguments))
        except Exception:  # any failure of an untrusted template means "no"
            continue
        if all(s in text for s in (_PROBE_TOOL, _PROBE_ARGUMENT, _PROBE_RESULT)):
            return arguments
    return None
