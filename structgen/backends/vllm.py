"""vLLM's OpenAI-compatible server (v0.12+): ``/v1/chat/completions`` and ``/v1/completions``.

Every constraint goes in the request body's ``structured_outputs`` object, one of
``json`` (the schema object), ``regex``, ``choice`` (a list) or ``grammar`` (text), which
both endpoints accept; ``disable_any_whitespace`` is added for a layout with fixed
separators (compact or spaced JSON, see ``[local] whitespace``) and ``whitespace_pattern``
when the request asks for one. With ``structured_backend = "guidance"`` the layout's
separators also go into the schema (``x-guidance``), which llguidance reads over the
server's defaults; XGrammar and Outlines servers write compact JSON for both layouts. The removed ``guided_*`` fields are
never sent: vLLM >= 0.12 ignores them and would return unconstrained text.

Note: vLLM 0.32 accepts ``disable_any_whitespace`` per request but its grammar engines
read the server-wide ``--structured-outputs-config`` value only, so start the server with
``{"disable_any_whitespace": true}`` to get compact JSON from a small model.

Server time: with ``--enable-per-request-metrics`` the answer carries ``metrics``
(queue, time to first token, generation, in ms), read into ``server_time_s``/``ttft_s``.

Thinking models: with a ``--reasoning-parser`` the server returns the thinking in
``message.reasoning`` (``reasoning_content`` before v0.13); both are read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, FiniteFloat

from structgen.backends import http, toolcalls
from structgen.backends.base import Finished, GenerationRequest, GenerationResult
from structgen.backends.capabilities import (
    SERVER_XGRAMMAR,
    VLLM_AUTO,
    PostEntries,
    ToolCalling,
    server_row,
)
from structgen.backends.openai_format import Completion, Event, WireUsage, usage_chunk
from structgen.errors import BackendProtocolError, BackendUnavailable
from structgen.messages import openai_messages
from structgen.schema.layout import guidance_options
from structgen.schema.support import LLGUIDANCE, OUTLINES
from structgen.types import RawToolCall

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


# The answers read, as vLLM's OpenAI-compatible server documents them (extra fields ignored).
class _Metrics(BaseModel):
    """``--enable-per-request-metrics`` (vLLM >= 0.32), in milliseconds."""

    queue_time_ms: FiniteFloat | None = None
    time_to_first_token_ms: FiniteFloat | None = None
    generation_time_ms: FiniteFloat | None = None


class _Completion(Completion):
    metrics: _Metrics | None = None


class VLLMBackend(http.HTTPBackend, name="vllm"):
    """Client for a vLLM OpenAI-compatible server (``[vllm]`` config section)."""

    default_url = "http://127.0.0.1:8000"
    engine_field = "structured_backend"
    # its rows of the capability matrix, by [vllm] structured_backend
    capability_rows = {
        "guidance": server_row(LLGUIDANCE, "grammar outputs are sent as Lark (llguidance dialect)"),
        "xgrammar": server_row(SERVER_XGRAMMAR, "grammar outputs are sent as GBNF/EBNF",
                               "raw control characters possible in bounded strings"),
        "outlines": server_row(OUTLINES, "grammar outputs are sent as Lark"),
        "auto": server_row(VLLM_AUTO, "grammar outputs are sent as GBNF/EBNF"),
    }
    # how it answers a tool turn, by [vllm] endpoint. vLLM forces a named choice with its
    # structured-output engine on the tool's own schema. Its "required" schema leaves each
    # call object open ({"name", "parameters"} without additionalProperties: false): a weak
    # model adds keys until max_tokens, and a cut answer comes back with empty content,
    # nothing left to repair (tests/backends/test_vllm_tools.py). "auto" needs
    # --enable-auto-tool-choice and leaves the arguments free. Both go as the envelope's
    # JSON schema (closed, every call checked), the tools still shown to the template.
    api_field = "endpoint"
    tool_calling_rows = {
        "chat": ToolCalling(native=frozenset({"named"}), constrained=frozenset({"named"}),
                            notes=("required/auto: the envelope JSON schema in "
                                   "structured_outputs, tool_choice=none",)),
        "completions": ToolCalling(native=frozenset(), constrained=frozenset(), notes=(
            "/v1/completions has no tools: every choice is the envelope JSON schema",)),
    }

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._served_model: str | None = None

    # Request -------------------------------------------------------------------------
    async def _model(self, request: GenerationRequest) -> str:
        """The configured model, else the first one the server lists (asked once)."""
        model = self.model_for(request)
        if model:
            return model
        if self._served_model is None:
            data = await self.http.request_json("GET", "/v1/models", deadline=request.deadline)
            try:
                self._served_model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise BackendProtocolError("/v1/models lists no model", self.name) from None
        return self._served_model

    def structured_outputs(self, request: GenerationRequest) -> tuple[dict[str, Any] | None,
                                                                      PostEntries]:
        """The ``structured_outputs`` object and the post-enforced constraint entries."""
        out = request.output
        if out is None:
            return None, ()
        schema, post = self.constraint_for(
            out, f"vLLM's {self.section.structured_backend} backend cannot constrain "
            f"{out.kind} outputs")
        so: dict[str, Any]
        if out.kind == "json":
            fixed = guidance_options(request.whitespace)
            if (fixed is not None and schema is not None
                    and self.section.structured_backend == "guidance"):
                # llguidance reads the layout from the schema ("x-guidance" comes after the
                # server's defaults): spaced JSON whatever the server-wide whitespace flag
                schema = {**schema, "x-guidance": fixed}
            so = {"json": schema}
            if fixed is not None:
                so["disable_any_whitespace"] = True
        elif out.kind == "regex":
            so = {"regex": out.pattern}
        elif out.kind == "choice":
            so = {"choice": list(out.choices or ())}
        else:
            so = {"grammar": self._grammar_text(out)}
        if "whitespace_pattern" in request.extra:
            so["whitespace_pattern"] = str(request.extra["whitespace_pattern"])
        return so, post

    def _grammar_text(self, out: Any) -> str:
        # llguidance and outlines read Lark; XGrammar (also behind "auto") reads GBNF and
        # recognises Lark too, so an EBNF grammar goes as given and anything else as Lark.
        engine = self.section.structured_backend
        if engine in ("xgrammar", "auto") and out.grammar_syntax == "ebnf":
            return str(out.grammar_source)
        return str(out.grammar)

    async def build(self, request: GenerationRequest, *, stream: bool = False
                    ) -> tuple[str, dict[str, Any], PostEntries]:
        """The path, JSON body and post-enforced entries for ``request``."""
        body: dict[str, Any] = {"model": await self._model(request)}
        if self.section.endpoint == "chat":
            path = CHAT_PATH
            body["messages"] = openai_messages(request.messages)
            if request.reasoning:
                body["chat_template_kwargs"] = {"enable_thinking": True}
        else:
            path = COMPLETIONS_PATH
            body["prompt"] = http.render_prompt(request)
        body.update(http.sampling_fields(request.sampling))
        so, post = self.structured_outputs(request)
        native = self.native_turn(request)
        if request.tools is not None and path == CHAT_PATH:
            # the tools always reach the chat template; "none" leaves the envelope schema
            # in structured_outputs as the constraint (vLLM refuses both with a forced choice)
            body["tools"] = toolcalls.wire_tools(request.tools, self.capabilities())
            body["tool_choice"] = "none"
        if native is not None:
            body["tool_choice"] = native.openai_tool_choice()
            body["parallel_tool_calls"] = native.parallel
            post += toolcalls.unconstrained(native, self.tool_calling())
        elif so is not None:
            body["structured_outputs"] = so
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return path, body, post

    # Response ------------------------------------------------------------------------
    stream_end = "data: [DONE]"

    def parse(self, data: Any, path: str, body: dict[str, Any],
              request: GenerationRequest) -> GenerationResult:
        answer = http.parse_wire(_Completion, data, self.name, f"{path} answer")
        choice = answer.choices[0]
        calls: list[RawToolCall] | None = None
        if path == CHAT_PATH:
            if choice.message is None:
                raise BackendProtocolError(f"{path} answer has no message: "
                                           f"{str(data)[:200]}", self.name)
            text = choice.message.content or ""
            reasoning = choice.message.reasoning or choice.message.reasoning_content
            if self.native_turn(request) is not None:
                calls = toolcalls.openai_calls(choice.message.tool_calls, self.name)
        else:
            if choice.text is None:
                raise BackendProtocolError(f"{path} answer has no text: {str(data)[:200]}",
                                           self.name)
            text, reasoning = choice.text, None
        usage = answer.usage or WireUsage()
        server_s, ttft_s = _server_times(answer.metrics)
        return GenerationResult(
            text=text, backend=self.name, model=answer.model or body["model"],
            finish_reason=toolcalls.finish_reason(choice.finish_reason),
            reasoning_text=reasoning,
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            server_time_s=server_s, ttft_s=ttft_s, tool_calls=calls)

    def stream_decoder(self, path: str, request: GenerationRequest) -> http.StreamDecoder:
        turn = self.native_turn(request)
        envelope = toolcalls.EnvelopeStream(turn, self.name) if turn is not None else None

        finish: list[str] = []  # the finish reason, once an event said it

        def on_event(payload: str) -> list[str | None]:
            event = http.parse_wire(Event, http.loads_event(payload, self.name), self.name,
                               "stream event")
            if event.error is not None:
                raise BackendUnavailable(f"server error mid-stream: {event.error}",
                                         self.name, retryable=True)
            if envelope is not None:
                out = toolcalls.envelope_chunks(envelope, event)
            else:  # the last content event says why it stopped
                out = [Finished(chunk or "", choice.finish_reason) if choice.finish_reason
                       else chunk
                       for choice in event.choices
                       for chunk in [choice.delta.content if choice.delta is not None
                                     else choice.text]]
            return [*out, *usage_chunk(event, out, finish)]

        return http.sse_decoder(on_event)


def _server_times(metrics: _Metrics | None) -> tuple[float | None, float | None]:
    """(engine time, time to first token) from the ``metrics`` object that vLLM >= 0.32
    adds to each answer when started with ``--enable-per-request-metrics``.

    Engine time = queue + time to first token + generation: from the engine queueing the
    request to its last token (the API server's own parsing/tokenizing is not included).
    """
    if metrics is None:
        return None, None
    parts = [metrics.queue_time_ms, metrics.time_to_first_token_ms, metrics.generation_time_ms]
    known = [p for p in parts if p is not None]
    ttft = metrics.time_to_first_token_ms
    return ((sum(known) / 1000 if known else None),
            ttft / 1000 if ttft is not None else None)

