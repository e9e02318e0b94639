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
import time
from collections.abc import AsyncIterator
from typing import Any

from structgen.backends.base import Capabilities, GenerationRequest, GenerationResult
from structgen.backends.capabilities import capabilities_for, relax_for
from structgen.backends.http import HTTPBackend, loads_event, render_prompt
from structgen.errors import BackendProtocolError, BackendUnavailable, ConfigError

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


class OllamaBackend(HTTPBackend):
    """Client for an Ollama server (``[ollama]`` config section)."""

    name = "ollama"
    default_url = "http://127.0.0.1:11434"
    health_path = "/api/version"

    def capabilities(self) -> Capabilities:
        return capabilities_for("ollama")

    # Request -------------------------------------------------------------------------
    def _format(self, request: GenerationRequest) -> tuple[dict[str, Any] | None, list[str]]:
        out = request.output
        if out is None:
            return None, []
        schema, post = relax_for(out, self.capabilities())
        if post == ["/"]:
            raise BackendUnavailable(
                f"Ollama cannot constrain {out.kind} outputs (its `format` takes a JSON "
                "Schema only); use vllm, sglang or local", self.name)
        if out.kind == "choice":
            return {"type": "string", "enum": list(out.choices or ())}, post
        return schema, post

    def build(self, request: GenerationRequest, *, stream: bool = False
              ) -> tuple[str, dict[str, Any], list[str]]:
        """The path, JSON body and post-enforced pointers for ``request``."""
        model = self.model_for(request)
        if not model:
            raise ConfigError("Ollama needs a model name: set [ollama] model or pass model=",
                              "ollama.model")
        s = request.sampling
        options: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p,
                                   "num_predict": s.max_tokens}
        if s.seed is not None:
            options["seed"] = s.seed
        if s.stop:
            options["stop"] = list(s.stop)
        body: dict[str, Any] = {"model": model, "stream": stream, "options": options}
        if self.section.endpoint == "chat":
            path = CHAT_PATH
            body["messages"] = [dict(m) for m in request.messages]
        else:
            path = GENERATE_PATH
            body["prompt"] = render_prompt(request)
        fmt, post = self._format(request)
        if fmt is not None:
            body["format"] = fmt  # the schema object itself, not a JSON string
        if self.section.keep_alive is not None:
            body["keep_alive"] = self.section.keep_alive
        if request.reasoning:
            body["think"] = True
        return path, body, post

    # Response ------------------------------------------------------------------------
    def _parts(self, data: Any, path: str) -> tuple[str, str | None]:
        try:
            if path == CHAT_PATH:
                msg = data["message"]
                text, thinking = msg.get("content", ""), msg.get("thinking")
            else:
                text, thinking = data["response"], data.get("thinking")
        except (KeyError, TypeError, AttributeError):
            raise BackendProtocolError(
                f"answer is not an Ollama {path} result: {str(data)[:200]}",
                self.name) from None
        if not isinstance(text, str):
            raise BackendProtocolError("answer text is not a string", self.name)
        return text, thinking if isinstance(thinking, str) else None

    def _result(self, data: dict[str, Any], text: str, thinking: str | None,
                request: GenerationRequest) -> GenerationResult:
        out = request.output
        if out is not None and out.kind == "choice":
            text = unwrap_choice(text, out.choices or ())
        total_ns = data.get("total_duration")
        return GenerationResult(
            text=text, backend=self.name, model=str(data.get("model") or ""),
            finish_reason=str(data.get("done_reason") or "stop"),
            reasoning_text=thinking or None,
            prompt_tokens=int(data.get("prompt_eval_count") or 0),
            completion_tokens=int(data.get("eval_count") or 0),
            server_time_s=total_ns / 1e9 if isinstance(total_ns, int | float) else None)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        path, body, post = self.build(request)
        timing: dict[str, float] = {}
        data = await self.http.request_json("POST", path, body, deadline=request.deadline,
                                            timing=timing)
        if isinstance(data, dict) and "error" in data:
            raise BackendProtocolError(f"Ollama error: {data['error']}", self.name)
        text, thinking = self._parts(data, path)
        result = self._result(data, text, thinking, request)
        result.latency_s = time.perf_counter() - start
        result.stats["post_enforced"] = post
        result.stats["endpoint"] = path
        result.stats.update(timing)
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text chunks from the NDJSON stream (one object a line, the last ``done``)."""
        path, body, _post = self.build(request, stream=True)
        done = False
        async for line in self.http.stream_lines(path, body, deadline=request.deadline):
            event = loads_event(line, self.name)
            if isinstance(event, dict) and "error" in event:
                raise BackendUnavailable(f"Ollama error mid-stream: {event['error']}",
                                         self.name, retryable=True)
            chunk, _thinking = self._parts(event, path)
            if chunk:
                yield chunk
            if event.get("done"):
                done = True
                break
        if not done:
            raise BackendProtocolError("stream ended before a done:true line", self.name,
                                       retryable=True)
