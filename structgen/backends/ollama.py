"""Ollama's native API: ``/api/chat`` (default) and ``/api/generate``.

    POST /api/chat {"model", "messages", "stream": bool, "format": <JSON Schema OBJECT>,
                    "options": {"temperature", "top_p", "num_predict", "seed"?, "stop"?},
                    "keep_alive"?: "5m", "think"?: true}
    -> {"model", "message": {"role", "content", "thinking"?}, "done": true,
        "done_reason": "stop"|"length", "total_duration" (ns), "prompt_eval_count",
        "eval_count"}

``/api/generate`` takes ``prompt`` instead of ``messages`` and answers ``response`` /
``thinking`` instead of ``message``. Streaming is NDJSON: one JSON object per line, the
last with ``"done": true``.

``format`` takes a JSON Schema only (llama.cpp turns it into a GBNF grammar), so Ollama
cannot constrain regex or grammar outputs: those raise :class:`BackendUnavailable` so the
router can fall back to a backend that can. A ``choice`` is sent as a string enum
(``{"type": "string", "enum": [...]}``) and the JSON string answer is unwrapped.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, NonNegativeInt, StrictStr

from structgen.backends import http, toolcalls
from structgen.backends.base import Finished, GenerationRequest, GenerationResult
from structgen.backends.capabilities import ToolCalling, server_row
from structgen.errors import BackendProtocolError, BackendUnavailable, ConfigError
from structgen.messages import ollama_messages
from structgen.schema.support import LLAMACPP
from structgen.types import RawToolCall

CHAT_PATH = "/api/chat"
GENERATE_PATH = "/api/generate"


def unwrap_choice(text: str, choices: tuple[str, ...]) -> str:
    """``"yes"`` (a JSON string, as the enum schema produces) -> ``yes`` when it is a choice.

    Anything else comes back unchanged, so validation reports it instead of it being hidden.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, str) and value in choices else text


# The answers read, as Ollama's api/types.go defines them (extra fields ignored).
class _Function(BaseModel):
    name: StrictStr
    arguments: dict[str, Any]  # a JSON OBJECT here, not the OpenAI format's string


class _ToolCall(BaseModel):
    function: _Function


class _Message(BaseModel):
    content: str = ""
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Answer(BaseModel):
    """One ``/api/chat`` or ``/api/generate`` answer, or one NDJSON stream line."""

    model: str | None = None
    message: _Message | None = None  # /api/chat
    response: str | None = None  # /api/generate
    thinking: str | None = None  # /api/generate
    done: bool = False
    done_reason: str | None = None
    total_duration: NonNegativeInt | None = None  # ns
    prompt_eval_count: NonNegativeInt | None = None
    eval_count: NonNegativeInt | None = None


class OllamaBackend(http.HTTPBackend, name="ollama"):
    """Client for an Ollama server (``[ollama]`` config section)."""

    default_url = "http://127.0.0.1:11434"
    health_path = "/api/version"
    # its one row of the capability matrix
    capability_rows = {None: server_row(
        LLAMACPP, "`format` takes a JSON Schema only: no regex or grammar outputs",
        "choice is sent as a JSON string enum and unwrapped",
        kinds=frozenset({"json", "choice"}), batching=False)}
    # how it answers a tool turn, by [ollama] endpoint. Ollama has no tool_choice: its
    # `tools` are only "auto" and never constrained, so required/named go as `format` = the
    # envelope schema, which llama.cpp's grammar does enforce
    api_field = "endpoint"
    tool_calling_rows = {
        "chat": ToolCalling(native=frozenset({"auto"}), constrained=frozenset(), notes=(
            "no tool_choice: required/named are `format` = the envelope JSON schema",
            "auto: native tools, arguments validated after",)),
        "generate": ToolCalling(native=frozenset(), constrained=frozenset(), notes=(
            "/api/generate has no tools: every choice is `format` = the envelope JSON "
            "schema",)),
    }

    # Request -------------------------------------------------------------------------
    def _format(self, request: GenerationRequest) -> tuple[dict[str, Any] | None, http.PostEntries]:
        out = request.output
        if out is None:
            return None, ()
        schema, post = self.constraint_for(
            out, f"Ollama cannot constrain {out.kind} outputs (its `format` takes a JSON "
            "Schema only); use vllm, sglang or local")
        if out.kind == "choice":
            return {"type": "string", "enum": list(out.choices or ())}, post
        return schema, post

    async def build(self, request: GenerationRequest, *, stream: bool = False
                    ) -> tuple[str, dict[str, Any], http.PostEntries]:
        """The path, JSON body and post-enforced entries for ``request``."""
        model = self.model_for(request)
        if not model:
            raise ConfigError("Ollama needs a model name: set [ollama] model or pass model=",
                              "ollama.model")
        options = http.sampling_fields(request.sampling, max_tokens="num_predict")
        body: dict[str, Any] = {"model": model, "stream": stream, "options": options}
        if self.section.endpoint == "chat":
            path = CHAT_PATH
            body["messages"] = ollama_messages(request.messages)
        else:
            path = GENERATE_PATH
            body["prompt"] = http.render_prompt(request)
        fmt, post = self._format(request)
        turn = self.native_turn(request)
        if turn is not None:
            # the tools go as written: Ollama never constrains their arguments, so they are
            # validated after (post-enforced) and the model may as well see every keyword
            body["tools"] = turn.openai_tools()
            post = toolcalls.unconstrained(turn, self.tool_calling())  # all of them
        elif fmt is not None:
            body["format"] = fmt  # the schema object itself, not a JSON string
        if self.section.keep_alive is not None:
            body["keep_alive"] = self.section.keep_alive
        if request.reasoning:
            body["think"] = True
        return path, body, post

    # Response ------------------------------------------------------------------------
    def _read(self, data: Any, path: str, what: str, *, streaming: bool = False
              ) -> tuple[_Answer, str, str | None]:
        """The answer, its text and its thinking; a protocol error for any other shape."""
        if isinstance(data, dict) and "error" in data:
            if streaming:  # the server started, then failed: worth trying elsewhere
                raise BackendUnavailable(f"Ollama error mid-stream: {data['error']}",
                                         self.name, retryable=True)
            raise BackendProtocolError(f"Ollama error: {data['error']}", self.name)
        answer = http.parse_wire(_Answer, data, self.name, what)
        if path == CHAT_PATH:
            if answer.message is None:
                raise BackendProtocolError(f"{what} has no message: {str(data)[:200]}",
                                           self.name)
            return answer, answer.message.content, answer.message.thinking
        if answer.response is None:
            raise BackendProtocolError(f"{what} has no response: {str(data)[:200]}",
                                       self.name)
        return answer, answer.response, answer.thinking

    def _result(self, answer: _Answer, text: str, thinking: str | None,
                request: GenerationRequest) -> GenerationResult:
        out = request.output
        if out is not None and out.kind == "choice":
            text = unwrap_choice(text, out.choices or ())
        total_ns = answer.total_duration
        return GenerationResult(
            text=text, backend=self.name, model=answer.model or "",
            finish_reason=answer.done_reason or "stop",
            reasoning_text=thinking or None,
            prompt_tokens=answer.prompt_eval_count or 0,
            completion_tokens=answer.eval_count or 0,
            server_time_s=total_ns / 1e9 if total_ns is not None else None)

    stream_end = "a done:true line"

    def parse(self, data: Any, path: str, body: dict[str, Any],
              request: GenerationRequest) -> GenerationResult:
        answer, text, thinking = self._read(data, path, f"{path} answer")
        result = self._result(answer, text, thinking, request)
        if self.native_turn(request) is not None and answer.message is not None:
            result.tool_calls = [RawToolCall(c.function.name, _arguments(c.function))
                                 for c in answer.message.tool_calls or ()]
        return result

    def stream_decoder(self, path: str, request: GenerationRequest) -> http.StreamDecoder:
        """NDJSON: one object a line, the last one ``done`` (a native tool turn's lines are
        written as the call envelope; Ollama sends each call whole)."""
        turn = self.native_turn(request)
        envelope = toolcalls.EnvelopeStream(turn, self.name) if turn is not None else None

        def decode(line: str) -> tuple[list[str | None], bool]:
            event, chunk, _thinking = self._read(http.loads_event(line, self.name), path,
                                                 "stream line", streaming=True)
            if envelope is not None:
                calls = event.message.tool_calls if event.message is not None else None
                chunk = envelope.content(chunk) + "".join(
                    envelope.call(None, c.function.name, _arguments(c.function))
                    for c in calls or ())
                if event.done:
                    chunk += envelope.close()
            if event.done:  # the last line says why it stopped, and what it took
                return [Finished(chunk, event.done_reason or "stop",
                                 prompt_tokens=event.prompt_eval_count,
                                 completion_tokens=event.eval_count,
                                 model=event.model)], True
            return [chunk], False
        return decode


def _arguments(function: _Function) -> str:
    """A call's arguments object as JSON text (what validation and the envelope take)."""
    try:
        return json.dumps(function.arguments, ensure_ascii=False)
    except (ValueError, RecursionError):  # nested past what json writes back
        raise BackendProtocolError(f"the arguments of tool call {function.name!r} cannot "
                                   "be written back as JSON", OllamaBackend.name) from None
