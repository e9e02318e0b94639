"""SGLang server: native ``/generate`` (default) or its OpenAI-compatible chat endpoint.

Native (``[sglang] api = "native"``)::

    POST /generate {"text": prompt, "stream": bool, "require_reasoning": bool?,
                    "sampling_params": {"max_new_tokens", "temperature", "top_p",
                                        "sampling_seed"?, "stop"?,
                                        "json_schema": "<schema as a JSON STRING>"
                                        | "regex": str | "ebnf": str}}
    -> {"text": str, "meta_info": {"finish_reason": {"type": "stop"|"length"},
                                   "prompt_tokens", "completion_tokens", "e2e_latency"}}

The native endpoint takes raw text, not messages. structgen does not ship the model's
tokenizer to the client, so it renders messages as ``role: content`` lines (see
:func:`~structgen.backends.http.render_prompt`); for chat models whose template matters,
use ``api = "openai"``, which sends the message list to ``/v1/chat/completions`` and
lets the server apply the model's own chat template. ``choice`` outputs are sent as a
regex (SGLang has no choice constraint). Streaming: SSE ``data:`` lines whose ``text`` is
the whole output so far (structgen yields the new suffix), ended by ``data: [DONE]``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, FiniteFloat, NonNegativeInt

from structgen.backends import http, toolcalls
from structgen.backends.base import Finished, GenerationRequest, GenerationResult
from structgen.backends.capabilities import (
    FORCED_CHOICES,
    SERVER_XGRAMMAR,
    ToolCalling,
    server_row,
)
from structgen.backends.openai_format import Completion, Event, WireUsage, usage_chunk
from structgen.errors import BackendProtocolError, BackendUnavailable
from structgen.messages import openai_messages
from structgen.schema.layout import guidance_options
from structgen.schema.support import LLGUIDANCE, OUTLINES

NATIVE_PATH = "/generate"
CHAT_PATH = "/v1/chat/completions"


# The answers read, as SGLang documents them (extra fields ignored).
class _Finish(BaseModel):
    type: str | None = None


class _Meta(BaseModel):
    finish_reason: _Finish | str | None = None
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None
    e2e_latency: FiniteFloat | None = None


def _finish_type(meta: _Meta | None) -> str | None:
    """The finish reason of a native answer or event (``None`` while it goes on)."""
    finish = meta.finish_reason if meta is not None else None
    return finish.type if isinstance(finish, _Finish) else finish


class _Native(BaseModel):
    """``/generate``: one answer, or one streamed event (``text`` = the output so far)."""

    text: str
    meta_info: _Meta | None = None


_SENT_AS = ("choice is sent as a regex", "grammar is sent as EBNF")


class SGLangBackend(http.HTTPBackend, name="sglang"):
    """Client for an SGLang server (``[sglang]`` config section)."""

    default_url = "http://127.0.0.1:30000"
    engine_field = "grammar_backend"
    # its rows of the capability matrix, by [sglang] grammar_backend
    capability_rows = {
        "xgrammar": server_row(SERVER_XGRAMMAR, *_SENT_AS),
        "llguidance": server_row(LLGUIDANCE, *_SENT_AS),
        "outlines": server_row(OUTLINES, "no grammar (EBNF) support",
                               kinds=frozenset({"json", "regex", "choice"})),
    }
    # how it answers a tool turn, by [sglang] api: the chat endpoint does all three choices
    # natively (its --tool-call-parser) and constrains the forced ones; /generate takes no
    # tools at all
    api_field = "api"
    tool_calling_rows = {
        "openai": ToolCalling(native=FORCED_CHOICES | {"auto"}, constrained=FORCED_CHOICES,
                              notes=("auto needs --tool-call-parser; its arguments are "
                                     "validated after",)),
        "native": ToolCalling(native=frozenset(), constrained=frozenset(), notes=(
            "/generate has no tools: every choice is the envelope JSON schema",)),
    }

    # Request -------------------------------------------------------------------------
    def _constraint(self, request: GenerationRequest) -> tuple[dict[str, Any], http.PostEntries]:
        """``{"json_schema"|"regex"|"ebnf": str}`` and the post-enforced entries."""
        out = request.output
        if out is None:
            return {}, ()
        schema, post = self.constraint_for(
            out, f"SGLang's {self.section.grammar_backend} backend cannot constrain "
            f"{out.kind} outputs")
        if out.kind == "json":
            fixed = guidance_options(request.whitespace)
            if fixed is not None and self.section.grammar_backend == "llguidance":
                # the layout, as for vLLM's guidance engine (other engines: the server's
                # own whitespace settings)
                schema = {**schema, "x-guidance": fixed}
            # SGLang wants the schema serialized: a JSON string, not an object.
            return {"json_schema": json.dumps(schema, ensure_ascii=False)}, post
        if out.kind in ("regex", "choice"):
            return {"regex": out.to_regex()}, post
        return {"ebnf": out.to_ebnf()}, post

    async def build(self, request: GenerationRequest, *, stream: bool = False
                    ) -> tuple[str, dict[str, Any], http.PostEntries]:
        """The path, JSON body and post-enforced entries for ``request``."""
        constraint, post = self._constraint(request)
        if self.section.api == "openai":
            turn = self.native_turn(request)
            if turn is None:
                return CHAT_PATH, self._chat_body(request, constraint, stream), post
            # the tool choice replaces the envelope constraint
            chat = self._chat_body(request, {}, stream)
            chat["tools"] = toolcalls.wire_tools(turn, self.capabilities())
            chat["tool_choice"] = turn.openai_tool_choice()
            chat["parallel_tool_calls"] = turn.parallel
            return CHAT_PATH, chat, post + toolcalls.unconstrained(turn, self.tool_calling())
        params = http.sampling_fields(request.sampling, max_tokens="max_new_tokens",
                                 seed="sampling_seed")
        params.update(constraint)
        body: dict[str, Any] = {"text": http.render_prompt(request), "sampling_params": params,
                                "stream": stream}
        if request.reasoning:
            # Native API only: make the grammar wait until the model finished thinking.
            body["require_reasoning"] = True
        return NATIVE_PATH, body, post

    def _chat_body(self, request: GenerationRequest, constraint: dict[str, Any],
                   stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_for(request) or "default",
                                "messages": openai_messages(request.messages),
                                **http.sampling_fields(request.sampling), "stream": stream}
        if stream:  # the token counts, in an event of their own at the end
            body["stream_options"] = {"include_usage": True}
        if "json_schema" in constraint:
            out = request.output
            assert out is not None
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": out.name, "schema": json.loads(constraint["json_schema"]),
                "strict": True}}
        else:
            body.update(constraint)  # SGLang's chat endpoint takes regex/ebnf as extra body
        if request.reasoning:
            body["separate_reasoning"] = True
            body["chat_template_kwargs"] = {"enable_thinking": True}
        return body

    # Response ------------------------------------------------------------------------
    def _parse_native(self, data: Any) -> GenerationResult:
        answer = http.parse_wire(_Native, data, self.name, f"{NATIVE_PATH} answer")
        meta = answer.meta_info or _Meta()
        return GenerationResult(
            text=answer.text, backend=self.name, model=str(self.section.model or ""),
            finish_reason=_finish_type(meta) or "stop",
            prompt_tokens=meta.prompt_tokens or 0,
            completion_tokens=meta.completion_tokens or 0,
            server_time_s=meta.e2e_latency)

    def _parse_chat(self, data: Any, request: GenerationRequest) -> GenerationResult:
        answer = http.parse_wire(Completion, data, self.name, f"{CHAT_PATH} answer")
        choice = answer.choices[0]
        if choice.message is None:
            raise BackendProtocolError(f"{CHAT_PATH} answer has no message: "
                                       f"{str(data)[:200]}", self.name)
        usage = answer.usage or WireUsage()
        calls = (toolcalls.openai_calls(choice.message.tool_calls, self.name)
                 if self.native_turn(request) is not None else None)
        return GenerationResult(
            text=choice.message.content or "", backend=self.name, model=answer.model or "",
            finish_reason=toolcalls.finish_reason(choice.finish_reason), tool_calls=calls,
            reasoning_text=choice.message.reasoning_content,
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0)

    stream_end = "data: [DONE]"

    def parse(self, data: Any, path: str, body: dict[str, Any],
              request: GenerationRequest) -> GenerationResult:
        if path == NATIVE_PATH:
            return self._parse_native(data)
        return self._parse_chat(data, request)

    def stream_decoder(self, path: str, request: GenerationRequest) -> http.StreamDecoder:
        """Native events carry the text so far; chat events carry deltas (a native tool
        turn's deltas are written as the call envelope)."""
        seen = ""
        turn = self.native_turn(request) if path == CHAT_PATH else None
        envelope = toolcalls.EnvelopeStream(turn, self.name) if turn is not None else None

        finish: list[str] = []  # the finish reason, once an event said it

        def on_event(payload: str) -> list[str | None]:
            nonlocal seen
            event = http.loads_event(payload, self.name)
            if isinstance(event, dict) and "error" in event:
                raise BackendUnavailable(f"server error mid-stream: {event['error']}",
                                         self.name, retryable=True)
            if path == NATIVE_PATH:
                native = http.parse_wire(_Native, event, self.name, "stream event")
                text = native.text
                if not text.startswith(seen):
                    raise BackendProtocolError("stream event text does not extend the "
                                               "previous one", self.name)
                chunk, seen = text[len(seen):], text
                reason = _finish_type(native.meta_info)  # only on the last event
                if not reason:
                    return [chunk]
                meta = native.meta_info
                assert meta is not None
                return [Finished(chunk, reason, prompt_tokens=meta.prompt_tokens,
                                 completion_tokens=meta.completion_tokens)]
            chat = http.parse_wire(Event, event, self.name, "stream event")
            if envelope is not None:
                out = toolcalls.envelope_chunks(envelope, chat)
            else:
                out = [Finished(piece or "", choice.finish_reason) if choice.finish_reason
                       else piece
                       for choice in chat.choices
                       for piece in [choice.delta.content if choice.delta is not None
                                     else None]]
            return [*out, *usage_chunk(chat, out, finish)]

        return http.sse_decoder(on_event)
