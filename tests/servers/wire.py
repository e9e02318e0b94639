"""Local wire-format servers for vLLM, SGLang and Ollama (fault injection needs no model).

These are NOT the real servers and prove nothing about their decoding. They implement the
documented request/response formats (SGLang: docs.sglang.io "Sampling Parameters" /
native API, ``GenerateReqInput``; Ollama: docs.ollama.com/api + ``api/types.go``
``ChatRequest``/``GenerateRequest``), check every request structgen sends against those
formats field by field (names, types, JSON string vs object; unknown fields rejected), and
answer with text they generate from the constraint so the engine can validate it. A
request that breaks the format gets HTTP 400 and is recorded in ``violations``, so a test
can assert there were none.

Faults a test can switch on: ``fail_statuses`` (answer these statuses first, e.g. 500),
``delay_s`` (slow answers), ``malformed`` (HTTP 200 with a non-JSON body),
``truncate`` (cut the stream without its terminator / mid-chunk), ``reply`` (a fixed text,
e.g. unconstrained prose), ``finish`` (the finish reason reported, e.g. ``"length"``),
``tool_calls`` (the tool calls answered to a request with ``tools``, e.g. broken ones;
by default valid calls are generated from the tools' schemas), ``canned`` (a
:class:`Canned` answer sent as is: any status, body or SSE framing, written in
chunks, slowly or cut off) and ``trickle_s`` (a streamed answer one byte at a time).
``connections`` counts the TCP connections accepted, so a test can tell a reused connection
pool from a new client per call; ``hung_up`` counts the trickled streams the client closed
before their end.

The vLLM stand-in exists for fault tests only; vLLM's real wire format is tested against a
real vLLM server (tests/backends/test_vllm.py).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

Number = StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- SGLang (native /generate and OpenAI-compatible chat) -----------------------------
class SGLangSamplingParams(_Strict):
    max_new_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    sampling_seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    json_schema: StrictStr | None = None  # a JSON *string*, not an object
    regex: StrictStr | None = None
    ebnf: StrictStr | None = None


class SGLangGenerate(_Strict):
    text: StrictStr
    sampling_params: SGLangSamplingParams
    stream: StrictBool = False
    require_reasoning: StrictBool | None = None


class OpenAICalledFunction(_Strict):
    name: StrictStr
    arguments: StrictStr  # the arguments' JSON *text*, not an object


class OpenAIToolCall(_Strict):
    id: StrictStr
    type: Literal["function"]
    function: OpenAICalledFunction


class OpenAIMessage(_Strict):
    """A chat message as the OpenAI API takes it (vLLM, SGLang): an assistant's earlier
    ``tool_calls`` (content then may be null), a tool result's ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr | None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _shape(self) -> OpenAIMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("content is null without tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls on a non-assistant message")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only one, carries tool_call_id")
        return self


class JsonSchemaFormat(_Strict):
    name: StrictStr
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["json_schema", "json_object", "text"]
    json_schema: JsonSchemaFormat | None = None


class ToolFunction(_Strict):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Strict):
    """One entry of ``tools`` in the OpenAI shape (vLLM, SGLang and Ollama all take it)."""

    type: Literal["function"]
    function: ToolFunction


class NamedFunction(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


OpenAIToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class SGLangChat(_Strict):
    model: StrictStr
    messages: list[OpenAIMessage]
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: dict[Literal["include_usage", "continuous_usage_stats"], StrictBool] \
        | None = None
    response_format: ResponseFormat | None = None
    regex: StrictStr | None = None
    ebnf: StrictStr | None = None
    separate_reasoning: StrictBool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: OpenAIToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None


# --- Ollama (/api/chat, /api/generate) -----------------------------------------------
class OllamaOptions(_Strict):
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    num_predict: StrictInt | None = None
    seed: StrictInt | None = None
    stop: list[StrictStr] | None = None


class OllamaCalledFunction(_Strict):
    name: StrictStr
    arguments: dict[str, Any]  # an OBJECT, not JSON text


class OllamaToolCall(_Strict):
    function: OllamaCalledFunction


class OllamaMessage(_Strict):
    """A chat message as ``/api/chat`` takes it: an assistant's earlier ``tool_calls``,
    a tool result's ``tool_name``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: StrictStr | None = None


class OllamaChat(_Strict):
    model: StrictStr
    messages: list[OllamaMessage]
    tools: list[Tool] | None = None  # no tool_choice: Ollama has none
    stream: StrictBool | None = None
    format: dict[str, Any] | Literal["json"] | None = None  # schema OBJECT or "json"
    options: OllamaOptions | None = None
    keep_alive: StrictStr | StrictInt | None = None
    think: StrictBool | Literal["high", "medium", "low"] | None = None


class OllamaGenerate(_Strict):
    model: StrictStr
    prompt: StrictStr
    stream: StrictBool | None = None
    format: dict[str, Any] | Literal["json"] | None = None
    options: OllamaOptions | None = None
    keep_alive: StrictStr | StrictInt | None = None
    think: StrictBool | Literal["high", "medium", "low"] | None = None


# --- vLLM (OpenAI-compatible /v1/chat/completions, /v1/completions) ------------------
class VLLMStructuredOutputs(_Strict):
    json_: dict[str, Any] | None = Field(None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    disable_any_whitespace: StrictBool | None = None
    whitespace_pattern: StrictStr | None = None


class VLLMRequest(_Strict):
    model: StrictStr
    messages: list[OpenAIMessage] | None = None
    prompt: StrictStr | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: StrictInt | None = None
    stop: list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: dict[str, StrictBool] | None = None
    structured_outputs: VLLMStructuredOutputs | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: OpenAIToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None


@dataclass
class Canned:
    """An answer sent exactly as given, whatever the request (fault injection).

    ``chunks`` are written one after the other (``delay_s`` apart), with chunked transfer
    encoding unless ``length`` is set; ``cut`` hangs up before the terminating chunk.
    """

    status: int = 200
    chunks: tuple[bytes, ...] = ()
    content_type: str = "application/json"
    delay_s: float = 0.0
    cut: bool = False
    length: bool = False


# --- Answers generated from the constraint ------------------------------------------
def instance_for(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A small valid instance of ``schema`` (enough of JSON Schema for our schemas)."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return instance_for(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance_for(schema[key][0], root)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return instance_for(merged, root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: instance_for(props.get(k, {}), root) for k in schema.get("required", [])}
    if kind == "array":
        return [instance_for(schema.get("items", {}), root)
                for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        if "pattern" in schema:
            return regex_example(schema["pattern"].lstrip("^").rstrip("$"))
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 0.5))
    if kind == "boolean":
        return True
    return None


def regex_example(pattern: str) -> str:
    """The simplest string that fully matches ``pattern`` (hypothesis finds it)."""
    from hypothesis import find, settings
    from hypothesis import strategies as st

    return str(find(st.from_regex(pattern, fullmatch=True), lambda _s: True,
                    settings=settings(database=None, max_examples=200)))


# --- The server -----------------------------------------------------------------------
class WireServer:
    """A ThreadingHTTPServer on 127.0.0.1 speaking one product's wire format."""

    flavor = "base"

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.violations: list[str] = []
        self.fail_statuses: list[int] = []
        self.delay_s = 0.0
        self.malformed = False
        self.truncate = False
        self.reply: str | None = None
        self.thinking: str | None = None
        # the tool calls answered (name, argument text as sent), instead of valid ones
        # generated from the tools' schemas; a text answer under "auto" when ``reply`` is set
        self.tool_calls: list[tuple[str, str]] | None = None
        self.finish = "stop"
        self.canned: Canned | None = None
        self.trickle_s = 0.0
        self.connections = 0
        self.hung_up = 0
        self._lock = threading.Lock()
        # One per test (``reset`` starts the next): a handler still sleeping out a delay
        # when its test ended must not answer from, or change, the next test's settings
        # (it would pop that test's ``fail_statuses``, say).
        self._epoch = 0
        self._epoch_over = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in separate writes: without this, Nagle plus the
            # client's delayed ACK add ~40 ms to every answer
            disable_nagle_algorithm = True

            def setup(self) -> None:  # once per accepted connection (keep-alive serves many)
                super().setup()
                with server._lock:
                    server.connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._get(self)

            def do_POST(self) -> None:
                server._post(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        default_handle_error = self.httpd.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # A client that hung up (a deadline, a size limit) is expected here, not a bug.
            if not isinstance(sys.exc_info()[1], OSError):
                default_handle_error(request, client_address)

        self.httpd.handle_error = handle_error  # type: ignore[method-assign]
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WireServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self._epoch += 1
            self._epoch_over.set()  # wakes the handlers still delaying an earlier answer
            self._epoch_over = threading.Event()
            self.requests.clear()
            self.violations.clear()
            self.connections = 0
            self.hung_up = 0
        self.fail_statuses = []
        self.delay_s = 0.0
        self.malformed = self.truncate = False
        self.reply = self.thinking = None
        self.tool_calls = None
        self.finish = "stop"
        self.canned = None
        self.trickle_s = 0.0

    # HTTP plumbing ------------------------------------------------------------------
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes,
              ctype: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _send_json(self, h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        self._send(h, status, json.dumps(obj).encode())

    def _send_stream(self, h: BaseHTTPRequestHandler, lines: Iterator[str],
                     ctype: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i, line in enumerate(lines):
            data = line.encode()
            if self.trickle_s:
                # one byte per chunk: data keeps flowing, a line never seems to end
                try:
                    for byte in data:
                        h.wfile.write(b"1\r\n" + bytes([byte]) + b"\r\n")
                        h.wfile.flush()
                        time.sleep(self.trickle_s)
                except OSError:  # the client gave up (its deadline, or closed): stop here
                    h.close_connection = True
                    with self._lock:
                        self.hung_up += 1
                    return
                continue
            if self.truncate and i >= 2:
                # half a chunk, then hang up: the client sees an incomplete body
                h.wfile.write(f"{len(data):x}\r\n".encode() + data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _send_canned(h: BaseHTTPRequestHandler, c: Canned) -> None:
        h.send_response(c.status)
        h.send_header("Content-Type", c.content_type)
        if c.length:
            h.send_header("Content-Length", str(sum(len(part) for part in c.chunks)))
        else:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            for part in c.chunks:
                if c.delay_s:
                    time.sleep(c.delay_s)
                h.wfile.write(part if c.length or not part
                              else f"{len(part):x}\r\n".encode() + part + b"\r\n")
                h.wfile.flush()
            if c.cut:
                h.close_connection = True
                return
            if not c.length:
                h.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client gave up first (a deadline): nothing left to do
            h.close_connection = True

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        answer = self.get(h.path)
        if answer is None:
            self._send_json(h, 404, {"error": f"no route {h.path}"})
        else:
            self._send_json(h, 200, answer)

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if h.headers.get("Content-Type", "").split(";")[0] != "application/json":
            self._violation(h, f"Content-Type is {h.headers.get('Content-Type')!r}")
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._violation(h, "body is not JSON")
            return
        with self._lock:
            self.requests.append((h.path, body))
            epoch, epoch_over = self._epoch, self._epoch_over
        if self.delay_s:
            epoch_over.wait(self.delay_s)
        with self._lock:
            if epoch != self._epoch:  # its test is over: hang up, touching nothing
                h.close_connection = True
                return
        if self.fail_statuses:
            status = self.fail_statuses.pop(0)
            self._send_json(h, status, {"error": f"injected HTTP {status}"})
            return
        problem = self.check(h.path, body)
        if problem:
            self._violation(h, problem)
            return
        if self.malformed:
            self._send(h, 200, b'{"text": "unterminated')
            return
        if self.canned is not None:
            self._send_canned(h, self.canned)
            return
        self.answer(h, h.path, body)

    def _violation(self, h: BaseHTTPRequestHandler, problem: str) -> None:
        with self._lock:
            self.violations.append(problem)
        self._send_json(h, 400, {"error": problem})

    @staticmethod
    def validate(model: type[BaseModel], body: dict[str, Any]) -> str | None:
        try:
            model.model_validate(body)
        except PydanticValidationError as exc:
            return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        return None

    # Overridden per product ---------------------------------------------------------
    def get(self, path: str) -> Any:
        raise NotImplementedError

    def check(self, path: str, body: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def text_for(self, *, json_schema: dict[str, Any] | None = None,
                 regex: str | None = None, choices: list[str] | None = None) -> str:
        if self.reply is not None:
            return self.reply
        if json_schema is not None:
            return json.dumps(instance_for(json_schema), separators=(",", ":"))
        if regex is not None:
            return regex_example(regex)
        if choices:
            return choices[0]
        return "plain text"


    def calls_for(self, body: dict[str, Any]) -> list[tuple[str, str]] | None:
        """The tool calls that answer ``body`` (None: a text answer).

        A named choice calls that tool, "required" the first tool (the first two with
        ``parallel_tool_calls``), "auto" the first one too unless ``reply`` is set.
        """
        tools = body.get("tools")
        choice = body.get("tool_choice", "auto")
        if not tools or choice == "none" or (choice == "auto" and self.reply is not None):
            return None
        if self.tool_calls is not None:
            return list(self.tool_calls)
        params = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
        if isinstance(choice, dict):
            names = [choice["function"]["name"]]
        else:
            names = list(params)[:2 if body.get("parallel_tool_calls") else 1]
        return [(n, json.dumps(instance_for(params[n]), separators=(",", ":")))
                for n in names]


def named_tool_missing(body: dict[str, Any]) -> str | None:
    """The error of an OpenAI-style server for a named tool_choice not among ``tools``."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        names = {t["function"]["name"] for t in body.get("tools") or ()}
        if choice["function"]["name"] not in names:
            return f"tool_choice names {choice['function']['name']!r}, not in tools"
    return None


def openai_tool_calls(calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """``message.tool_calls`` of a whole OpenAI chat answer (arguments as a JSON string)."""
    return [{"id": f"call_{i}", "type": "function",
             "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(calls)]


def openai_tool_deltas(calls: list[tuple[str, str]]) -> Iterator[list[dict[str, Any]]]:
    """``delta.tool_calls`` of a streamed OpenAI chat answer: each call's first delta has
    its id and name, the arguments follow in fragments."""
    for i, (name, args) in enumerate(calls):
        yield [{"index": i, "id": f"call_{i}", "type": "function",
                "function": {"name": name, "arguments": ""}}]
        for piece in _chunks(args):
            yield [{"index": i, "function": {"arguments": piece}}]


def _loads_or(text: str) -> Any:
    """``text`` decoded, or as is when it is not JSON (an injected broken answer)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _chunks(text: str, n: int = 3) -> list[str]:
    """Split ``text`` into a few pieces, as a token stream would."""
    step = max(1, len(text) // n)
    return [text[i:i + step] for i in range(0, len(text), step)] or [""]


class _ServesModels(WireServer):
    """``/health`` and the OpenAI ``/v1/models`` list, as vLLM and SGLang answer them."""

    def get(self, path: str) -> Any:
        if path == "/health":
            return {}
        if path == "/v1/models":
            return {"object": "list", "data": [{"id": "served-model", "object": "model"}]}
        return None


class SGLangWireServer(_ServesModels):
    """SGLang's native ``/generate``, ``/v1/chat/completions`` and ``/health``."""

    flavor = "sglang"

    def check(self, path: str, body: dict[str, Any]) -> str | None:
        if path == "/generate":
            problem = self.validate(SGLangGenerate, body)
            if problem:
                return problem
            sp = body["sampling_params"]
            kinds = [k for k in ("json_schema", "regex", "ebnf") if sp.get(k) is not None]
            if len(kinds) > 1:
                return f"only one of json_schema/regex/ebnf allowed, got {kinds}"
            if "json_schema" in sp:
                try:
                    if not isinstance(json.loads(sp["json_schema"]), dict):
                        return "json_schema must encode a JSON object"
                except json.JSONDecodeError:
                    return "json_schema is not a JSON string"
            if "regex" in sp:
                try:
                    re.compile(sp["regex"])
                except re.error as exc:
                    return f"regex does not compile: {exc}"
            return None
        if path == "/v1/chat/completions":
            return self.validate(SGLangChat, body) or named_tool_missing(body)
        return f"no route {path}"

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        if path == "/generate":
            sp = body["sampling_params"]
            schema = json.loads(sp["json_schema"]) if "json_schema" in sp else None
            text = self.text_for(json_schema=schema, regex=sp.get("regex"))
            meta = {"id": "req-1", "finish_reason": {"type": self.finish, "matched": 1},
                    "prompt_tokens": len(body["text"].split()),
                    "completion_tokens": len(text), "cached_tokens": 0,
                    "e2e_latency": 0.004}
            if not body.get("stream"):
                self._send_json(h, 200, {"text": text, "output_ids": [1, 2], "meta_info": meta})
                return

            def events() -> Iterator[str]:
                so_far = ""
                pieces = _chunks(text)
                for i, piece in enumerate(pieces):
                    so_far += piece  # native stream events carry the text so far
                    # as SGLang does: no finish reason until the last event
                    going_on = {**meta, "finish_reason": None}
                    info = meta if i == len(pieces) - 1 else going_on
                    yield "data: " + json.dumps({"text": so_far, "meta_info": info}) + "\n\n"
                yield "data: [DONE]\n\n"

            self._send_stream(h, events(), "text/event-stream")
            return
        rf = body.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema")
        calls = self.calls_for(body)
        text = "" if calls else self.text_for(json_schema=schema, regex=body.get("regex"))
        # as OpenAI and SGLang do: a turn that called tools finishes with "tool_calls"
        finish = "tool_calls" if calls and self.finish == "stop" else self.finish
        message: dict[str, Any] = {"role": "assistant", "content": text,
                                   "reasoning_content": self.thinking}
        if calls:
            message["tool_calls"] = openai_tool_calls(calls)
        if not body.get("stream"):
            self._send_json(h, 200, {
                "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(text),
                          "total_tokens": 5 + len(text)}})
            return

        def chat_events() -> Iterator[str]:
            deltas: list[dict[str, Any]] = [{"tool_calls": part}
                                            for part in openai_tool_deltas(calls or [])]
            deltas += [{"content": piece} for piece in _chunks(text) if piece or not calls]
            for i, delta in enumerate(deltas):
                last = i == len(deltas) - 1
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": delta,
                    "finish_reason": finish if last else None}]}) + "\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                # as OpenAI servers do: the counts in an event of their own, no choices
                yield "data: " + json.dumps({"choices": [], "model": body["model"], "usage": {
                    "prompt_tokens": 5, "completion_tokens": len(text),
                    "total_tokens": 5 + len(text)}}) + "\n\n"
            yield "data: [DONE]\n\n"

        self._send_stream(h, chat_events(), "text/event-stream")


class OllamaWireServer(WireServer):
    """Ollama's ``/api/chat``, ``/api/generate``, ``/api/tags`` and ``/api/version``."""

    flavor = "ollama"

    def get(self, path: str) -> Any:
        if path == "/api/version":
            return {"version": "0.12.0"}
        if path == "/api/tags":
            return {"models": [{"name": "smollm2:135m", "model": "smollm2:135m"}]}
        return None

    def check(self, path: str, body: dict[str, Any]) -> str | None:
        if path == "/api/chat":
            return self.validate(OllamaChat, body)
        if path == "/api/generate":
            return self.validate(OllamaGenerate, body)
        return f"no route {path}"

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        fmt = body.get("format")
        schema = fmt if isinstance(fmt, dict) else None
        calls = self.calls_for(body) if path == "/api/chat" else None
        text = "" if calls else self.text_for(json_schema=schema)
        # Ollama's tool calls: arguments as a JSON OBJECT, all of them in one message
        ollama_calls = [{"function": {"index": i, "name": name, "arguments": _loads_or(args)}}
                        for i, (name, args) in enumerate(calls or [])]
        thinking = self.thinking if body.get("think") else None
        stats = {"total_duration": 4_000_000, "load_duration": 1_000,
                 "prompt_eval_count": 5, "eval_count": len(text), "eval_duration": 3_000_000}

        def final(content: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                                   "done": True, "done_reason": self.finish, **stats}
            if path == "/api/chat":
                msg: dict[str, Any] = {"role": "assistant", "content": content}
                if thinking:
                    msg["thinking"] = thinking
                out["message"] = msg
            else:
                out["response"] = content
                if thinking:
                    out["thinking"] = thinking
            return out

        if body.get("stream") is False:
            answer = final(text)
            if ollama_calls:
                answer["message"]["tool_calls"] = ollama_calls
            self._send_json(h, 200, answer)
            return

        def lines() -> Iterator[str]:
            if ollama_calls:  # streamed, the calls come whole in one line before the last
                yield json.dumps({"model": body["model"], "done": False, "message": {
                    "role": "assistant", "content": "", "tool_calls": ollama_calls}}) + "\n"
            for piece in _chunks(text) if text or not ollama_calls else ():
                part: dict[str, Any] = {"model": body["model"], "done": False}
                if path == "/api/chat":
                    part["message"] = {"role": "assistant", "content": piece}
                else:
                    part["response"] = piece
                yield json.dumps(part) + "\n"
            yield json.dumps(final("")) + "\n"

        self._send_stream(h, lines(), "application/x-ndjson")


class VLLMWireServer(_ServesModels):
    """vLLM's OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions``, ``/health``."""

    flavor = "vllm"

    def check(self, path: str, body: dict[str, Any]) -> str | None:
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return f"no route {path}"
        problem = self.validate(VLLMRequest, body)
        if problem:
            return problem
        chat = path == "/v1/chat/completions"
        if chat != ("messages" in body) or chat == ("prompt" in body):
            return "chat takes messages, completions take prompt"
        return None

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any]) -> None:
        so = body.get("structured_outputs") or {}
        text = self.text_for(json_schema=so.get("json"), regex=so.get("regex"),
                             choices=so.get("choice"))
        chat = path == "/v1/chat/completions"
        usage = {"prompt_tokens": 5, "completion_tokens": len(text),
                 "total_tokens": 5 + len(text)}
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            self._send_json(h, 200, {"id": "cmpl-1", "model": body["model"],
                                     "choices": [choice], "usage": usage})
            return

        def events() -> Iterator[str]:
            pieces = _chunks(text)
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                choice = {"index": 0, "finish_reason": self.finish if last else None}
                if chat:
                    choice["delta"] = {"content": piece}
                else:
                    choice["text"] = piece
                yield "data: " + json.dumps({"choices": [choice]}) + "\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({"choices": [], "model": body["model"],
                                             "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        self._send_stream(h, events(), "text/event-stream")
