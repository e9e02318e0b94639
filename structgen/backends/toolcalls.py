"""Tool turns on the wire: what the server backends send and how they read the calls back.

A tool turn (``GenerationRequest.tools``) goes to a server in one of two ways, chosen per
backend and ``tool_choice`` by the backend's ``tool_calling_rows``
(:class:`~structgen.backends.capabilities.ToolCalling`):

- *native*: the server's own ``tools``/``tool_choice`` fields; the calls come back in the
  answer's ``tool_calls`` and the backend returns them as
  :class:`~structgen.types.RawToolCall` (the engine builds the envelope);
- *envelope*: plain JSON output constrained to the call envelope's schema
  (``GenerationRequest.output``); the answer text is the envelope itself.

A streamed native answer is turned into the envelope's JSON text as it arrives
(:class:`EnvelopeStream`), so the engine's partial parser reads a tool turn as any other
JSON output. Server answers are untrusted: names and argument text are only ever embedded
as JSON text (never evaluated) and a call of the wrong shape is a protocol error.
"""

from __future__ import annotations

import json
from typing import Any

from structgen.backends.base import Capabilities, Finished
from structgen.backends.capabilities import ToolCalling, server_schema, tool_choice_kind
from structgen.backends.openai_format import Event, WireToolCall
from structgen.errors import BackendProtocolError
from structgen.schema.support import PostEnforced
from structgen.types import RawToolCall, ToolTurn


def wire_tools(turn: ToolTurn, caps: Capabilities) -> list[dict[str, Any]]:
    """``tools`` in the OpenAI shape, each schema relaxed to what the server's engine
    enforces (the dropped keywords are post-enforced through the envelope schema), each
    marked ``strict``: vLLM's structural tags (xgrammar) constrain the arguments of strict
    tools only, and leave any other tool's arguments free (observed: ``"arguments": true``)."""
    tools = turn.openai_tools()
    for tool in tools:
        tool["function"]["parameters"] = server_schema(tool["function"]["parameters"], caps)[0]
        tool["function"]["strict"] = True
    return tools


def unconstrained(turn: ToolTurn, table: ToolCalling) -> tuple[PostEnforced, ...]:
    """``tools/<name>/arguments`` for each tool whose arguments the server will not
    constrain under this turn's choice (validated and repaired after)."""
    if tool_choice_kind(turn.choice) in table.constrained:
        return ()
    return tuple(PostEnforced(f"tools/{t.name}", "arguments", "the server does not "
                              "constrain tool arguments under this choice")
                 for t in turn.tools)


def openai_calls(calls: list[WireToolCall] | None, backend: str) -> list[RawToolCall]:
    """A whole answer's ``message.tool_calls`` (none: an empty list)."""
    out: list[RawToolCall] = []
    for call in calls or ():
        if call.function.name is None:
            raise BackendProtocolError("a tool call in the answer has no function name",
                                       backend)
        out.append(RawToolCall(call.function.name, call.function.arguments or "", call.id))
    return out


def finish_reason(reason: str | None) -> str:
    """The server's finish reason as structgen names it: ``tool_calls`` is a normal stop."""
    if not reason or reason == "tool_calls":
        return "stop"
    return reason


class EnvelopeStream:
    """The call envelope's JSON text, written as a native answer streams in.

    The text it yields joins to exactly what :func:`~structgen.types.call_envelope` makes of
    the whole answer: ``{"name":N,"arguments":`` then the argument fragments as the server
    sent them, then ``}`` (an array of them with ``parallel``; without it only the first
    call counts, as ``call_envelope`` does). Free text is held back until the end: it is the
    answer (``{"text": ...}``) only if no call came.
    """

    def __init__(self, turn: ToolTurn, backend: str) -> None:
        self.parallel = turn.parallel
        self.backend = backend
        self.calls = 0  # calls started
        self.index: int | None = None  # the server's index of the current call
        self.args_written = False  # the current call has non-blank argument text
        self.text: list[str] = []

    def content(self, piece: str | None) -> str:
        if piece:
            self.text.append(piece)
        return ""

    def call(self, index: int | None, name: str | None, arguments: str | None) -> str:
        """Text for one tool-call delta (``index`` None: a new call each time)."""
        out = ""
        if index is None or index != self.index:
            if self.index is not None and index is not None and index < self.index:
                raise BackendProtocolError(f"tool call {index} continued after call "
                                           f"{self.index} started", self.backend)
            if name is None:
                raise BackendProtocolError("a streamed tool call starts without a name",
                                           self.backend)
            out += self._close_call()
            self.calls += 1
            self.index = index
            self.args_written = False
            if self._kept():
                out += ("[" if self.calls == 1 else ",") if self.parallel else ""
                out += f'{{"name":{json.dumps(name, ensure_ascii=False)},"arguments":'
        if arguments and self._kept():
            if not self.args_written:
                arguments = arguments.lstrip()
            self.args_written = self.args_written or bool(arguments)
            out += arguments
        return out

    def close(self) -> str:
        """The text that ends the envelope (at the server's finish reason)."""
        if not self.calls:
            return json.dumps({"text": "".join(self.text)}, ensure_ascii=False)
        return self._close_call() + ("]" if self.parallel else "")

    def _kept(self) -> bool:
        return self.parallel or self.calls == 1

    def _close_call(self) -> str:
        if not self.calls or not (self.parallel or self.calls == 1):
            return ""
        return ("" if self.args_written else "{}") + "}"


def envelope_chunks(envelope: EnvelopeStream, event: Event) -> list[str | None]:
    """The envelope text one OpenAI stream event carries (vLLM, SGLang chat); the event with
    the finish reason closes the envelope, as a :class:`Finished` chunk."""
    out: list[str | None] = []
    for choice in event.choices:
        piece = ""
        if choice.delta is not None:
            piece += envelope.content(choice.delta.content)
            for call in choice.delta.tool_calls or ():
                piece += envelope.call(call.index, call.function.name, call.function.arguments)
        if choice.finish_reason:
            out.append(Finished(piece + envelope.close(), finish_reason(choice.finish_reason)))
        else:
            out.append(piece)
    return out
