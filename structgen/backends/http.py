"""The one HTTP layer the server backends (vLLM, SGLang, Ollama) share.

:class:`HTTPClient` owns an ``httpx.AsyncClient`` (connection pool sized from the
backend's config section), applies connect/read timeouts plus a total deadline, retries
with exponential backoff on 429, 5xx and connection errors only (never on 4xx, never
after a response body started streaming), and turns every failure into a typed
:class:`~structgen.errors.BackendError`:

    connection refused / reset       -> BackendUnavailable (retryable)
    429 / 5xx after the retries      -> BackendUnavailable (retryable)
    connect/read/total timeout       -> BackendTimeout
    4xx, non-JSON body, cut stream   -> BackendProtocolError
    body or stream line too large    -> BackendProtocolError

Every read of a streamed answer is bounded by the request's deadline, not only the
arrival of a whole line.

:class:`HTTPBackend` is the base class of the three server backends: it holds the
client and implements the request skeleton once (``agenerate``: build, POST, parse, time;
``stream``: build, read lines, decode, check the end marker), plus ``health`` and
``aclose``. A server backend's own file holds only its wire format: :meth:`~HTTPBackend.build`,
:meth:`~HTTPBackend.parse` and :meth:`~HTTPBackend.stream_decoder`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pydantic
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from structgen.backends.base import (
    BackendBase,
    Capabilities,
    Finished,
    GenerationRequest,
    GenerationResult,
)
from structgen.backends.capabilities import (
    PostEntries,
    ToolCalling,
    loosen_for,
    tool_choice_kind,
)
from structgen.config import Config as _Config
from structgen.config import redact_url
from structgen.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
)
from structgen.messages import hermes_messages
from structgen.portal import on_portal, portal
from structgen.schema.support import WHOLE_OUTPUT
from structgen.types import Sampling, ToolTurn

if TYPE_CHECKING:
    from structgen.config import Config, ServerConfig
    from structgen.schema import CompiledOutput

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_M = TypeVar("_M", bound=pydantic.BaseModel)
_T = TypeVar("_T")


class _RetryableStatus(Exception):
    """Internal: a 429/5xx answer, raised so tenacity retries it."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}")


def _retryable(exc: BaseException) -> bool:
    # Timeouts are not retried: the deadline is already spent, a retry only doubles it.
    if isinstance(exc, httpx.TimeoutException):
        return False
    return isinstance(exc, _RetryableStatus | httpx.TransportError)


class HTTPClient:
    """Pooled async HTTP client for one server backend.

    A pool is bound to the event loop it was created in, so every call runs on the
    portal loop (:func:`on_portal`) whatever loop the caller awaits it from: one pool for
    the life of the process. Should that loop ever change, the old pool is closed.
    """

    #: The most a server may send: a whole answer, and one line of a stream (an SSE event
    #: or NDJSON line; SGLang's native events repeat the whole text so far). Beyond them
    #: the answer is a BackendProtocolError, so a broken server cannot exhaust memory.
    max_body_bytes = 32 * 1024 * 1024
    max_line_bytes = 8 * 1024 * 1024

    def __init__(self, backend: str, section: ServerConfig, *, total_timeout_s: float,
                 default_url: str, max_body_bytes: int | None = None,
                 max_line_bytes: int | None = None) -> None:
        self.backend = backend
        if max_body_bytes is not None:  # [limits] in config.toml
            self.max_body_bytes = max_body_bytes
        if max_line_bytes is not None:
            self.max_line_bytes = max_line_bytes
        self.base_url = (section.base_url or default_url).rstrip("/")
        # what messages show: credentials in the URL (http://user:pw@host) stay out of
        # errors, the attempt trail and logs
        self.where = redact_url(self.base_url)
        self.section = section
        self.total_timeout_s = total_timeout_s
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # The pool ------------------------------------------------------------------------
    def _make_client(self) -> httpx.AsyncClient:
        s = self.section
        headers = {"Content-Type": "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
            limits=httpx.Limits(max_connections=s.max_connections,
                                max_keepalive_connections=s.max_keepalive),
            trust_env=False,  # a local server must not be routed through HTTP_PROXY
        )

    @property
    def client(self) -> httpx.AsyncClient:
        """The pool, on the portal loop (see :func:`on_portal`)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            old, old_loop = self._client, self._loop
            self._client = self._make_client()
            self._loop = loop
            if old is not None and old_loop is not None:
                _close_on(old, old_loop)
        return self._client

    async def aclose(self) -> None:
        await on_portal(self._aclose())

    async def _aclose(self) -> None:
        client, self._client = self._client, None
        if client is None or self._loop is None:
            return
        if self._loop is asyncio.get_running_loop():
            await client.aclose()
        else:
            _close_on(client, self._loop)

    # Deadlines ------------------------------------------------------------------------
    def _budget(self, deadline: float | None) -> float:
        """Seconds left for this call: the request's deadline or the total timeout."""
        budget = self.total_timeout_s
        if deadline is not None:
            budget = min(budget, deadline - time.monotonic())
        if budget <= 0:
            raise BackendTimeout("deadline already passed before the request", self.backend)
        return budget

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.section.retries + 1),
            wait=wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.05),
            reraise=True,
        )

    # Error mapping -------------------------------------------------------------------
    def _map(self, exc: BaseException, path: str) -> BackendError:
        where = f"{self.where}{path}"
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            # no connection within connect_timeout_s: unreachable, a fault of the backend
            # (a BackendTimeout is a generation past its deadline: no breaker verdict)
            return BackendUnavailable(f"cannot reach {where}: no connection within "
                                      f"{self.section.connect_timeout_s} s", self.backend,
                                      retryable=True)
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return BackendTimeout(f"timed out calling {where}", self.backend, retryable=True)
        if isinstance(exc, _RetryableStatus):
            return BackendUnavailable(
                f"{where} answered HTTP {exc.status} after {self.section.retries + 1} "
                f"attempt(s): {exc.body[:300]}", self.backend, retryable=True)
        if isinstance(exc, httpx.RemoteProtocolError):
            return BackendProtocolError(f"{where} broke the HTTP protocol: {self._scrub(exc)}",
                                        self.backend, retryable=True)
        if isinstance(exc, httpx.TransportError):
            return BackendUnavailable(
                f"cannot reach {where}: {self._scrub(exc) or type(exc).__name__}",
                self.backend, retryable=True)
        return BackendProtocolError(f"unexpected error calling {where}: "
                                    f"{self._scrub(repr(exc))}", self.backend)

    def _scrub(self, text: object) -> str:
        """``text`` without the URL's credentials (an exception may quote the URL)."""
        text = str(text)
        return text.replace(self.base_url, self.where) if self.where != self.base_url else text

    def _check_status(self, response: httpx.Response, body: str, path: str) -> None:
        if response.status_code in RETRY_STATUS:
            raise _RetryableStatus(response.status_code, body)
        if response.status_code >= 400:
            raise BackendProtocolError(
                f"{self.where}{path} rejected the request with HTTP "
                f"{response.status_code}: {body[:500]}", self.backend)
        if not response.is_success:  # a redirect or 1xx is no answer, whatever its body
            raise BackendProtocolError(
                f"{self.where}{path} answered HTTP {response.status_code} instead of 2xx "
                f"(structgen follows no redirects: point base_url at the server itself)",
                self.backend)

    # Calls -------------------------------------------------------------------------
    async def request_json(self, method: str, path: str, body: dict[str, Any] | None = None,
                           *, deadline: float | None = None,
                           timing: dict[str, float] | None = None) -> Any:
        """Send ``body`` as JSON and return the decoded JSON answer.

        ``timing["http_s"]`` receives the last attempt's round trip as httpx measured it
        (request sent to body read): the rest of a call's latency is client-side work.
        """
        return await on_portal(self._request_json(method, path, body, deadline=deadline,
                                                  timing=timing))

    async def _request_json(self, method: str, path: str, body: dict[str, Any] | None,
                            *, deadline: float | None,
                            timing: dict[str, float] | None) -> Any:
        budget = self._budget(deadline)

        async def once() -> Any:
            client = self.client
            response = await client.send(client.build_request(method, path, json=body),
                                         stream=True)
            try:
                text = await self._read_body(response, path)
            finally:
                await response.aclose()
            if timing is not None:
                timing["http_s"] = response.elapsed.total_seconds()
            self._check_status(response, text, path)
            return loads_json(text, self.backend, f"{self.where}{path} answered HTTP "
                              f"{response.status_code} with a body that")

        try:
            async with asyncio.timeout(budget):
                async for attempt in self._retrying():
                    with attempt:
                        return await once()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._map(exc, path) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream_lines(self, path: str, body: dict[str, Any], *,
                           deadline: float | None = None) -> AsyncIterator[str]:
        """POST ``body`` and yield the answer's non-empty lines as they arrive.

        Retries happen only until the server sends a 2xx status: once bytes of the body
        flowed, a failure is reported (a retry would repeat text the caller already has).
        """
        lines = self._stream_lines(path, body, deadline=deadline)
        if asyncio.get_running_loop() is portal():
            try:
                async for line in lines:
                    yield line
            finally:
                await lines.aclose()
            return
        try:
            while (item := await on_portal(_next_or_none(lines))) is not None:
                yield item
        finally:
            await on_portal(lines.aclose())

    async def _stream_lines(self, path: str, body: dict[str, Any], *,
                            deadline: float | None) -> AsyncGenerator[str, None]:
        budget = self._budget(deadline)
        end = time.monotonic() + budget
        try:
            async with self._open_stream(path, body, budget) as response:
                chunks = response.aiter_bytes()
                pending = bytearray()  # the line being received
                total = 0
                while True:
                    # Every read is bounded by what is left of the deadline: a server that
                    # trickles bytes (never finishing a line) cannot hold the caller.
                    try:
                        async with asyncio.timeout(end - time.monotonic()):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    total += len(chunk)
                    if total > self.max_body_bytes:
                        raise self._too_big(path, "streamed answer", "max_body_bytes")
                    searched = len(pending)  # only the new bytes can hold a newline
                    pending += chunk
                    while (newline := pending.find(b"\n", searched)) != -1:
                        if newline > self.max_line_bytes:
                            raise self._too_big(path, "stream line", "max_line_bytes")
                        line = self._decode(bytes(pending[:newline]), path).strip()
                        del pending[:newline + 1]
                        searched = 0
                        if line:
                            yield line
                    if len(pending) > self.max_line_bytes:
                        raise self._too_big(path, "stream line", "max_line_bytes")
                last = self._decode(bytes(pending), path).strip()
                if last:
                    yield last
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                raise
            raise self._map(exc, path) from None

    async def _read_body(self, response: httpx.Response, path: str) -> str:
        """The whole (decompressed) body, refused past :attr:`max_body_bytes`."""
        parts: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self.max_body_bytes:
                raise self._too_big(path, "answer", "max_body_bytes")
            parts.append(chunk)
        raw = b"".join(parts)
        if not response.is_success:  # only quoted in the error: keep what can be read
            return raw.decode("utf-8", "replace")
        return self._decode(raw, path)

    def _decode(self, raw: bytes, path: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BackendProtocolError(f"{self.where}{path} sent text that is not UTF-8: "
                                       f"{exc}", self.backend) from None

    def _too_big(self, path: str, what: str, key: str) -> BackendProtocolError:
        limit = getattr(self, key)
        return BackendProtocolError(f"{self.where}{path}: {what} exceeds {limit} bytes "
                                    f"([limits] {key})", self.backend)

    @asynccontextmanager
    async def _open_stream(self, path: str, body: dict[str, Any],
                           budget: float) -> AsyncIterator[httpx.Response]:
        async with asyncio.timeout(budget):
            async for attempt in self._retrying():
                with attempt:
                    req = self.client.build_request("POST", path, json=body)
                    response = await self.client.send(req, stream=True)
                    if not response.is_success:
                        try:
                            text = await self._read_body(response, path)
                        finally:
                            await response.aclose()
                        self._check_status(response, text, path)
        try:
            yield response
        finally:
            await response.aclose()

    async def ok(self, path: str) -> bool:
        """True when GET ``path`` answers 2xx within the connect timeout (health probes)."""
        return await on_portal(self._ok(path))

    async def _ok(self, path: str) -> bool:
        # The status is the answer: the body is never read (a server that answers its
        # health check with 300 MB costs nothing here), the connection is closed instead.
        try:
            async with self.client.stream("GET", path,
                                          timeout=self.section.connect_timeout_s) as response:
                return response.is_success
        except httpx.HTTPError:
            return False


async def _next_or_none(lines: AsyncIterator[str]) -> str | None:
    try:
        return await anext(lines)
    except StopAsyncIteration:
        return None


def _close_on(client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
    """Close ``client`` on its own loop, if that loop still runs (a closed loop took its
    connections with it)."""
    if not loop.is_closed() and loop.is_running():
        asyncio.run_coroutine_threadsafe(client.aclose(), loop)


class HTTPBackend(BackendBase):
    """Base class of the server backends: one :class:`HTTPClient`, shared plumbing."""

    name = "http"
    default_url = "http://127.0.0.1:8000"
    health_path = "/health"

    def __init__(self, config: Config) -> None:
        if not isinstance(config, _Config):
            raise ConfigError(f"{type(self).__name__} needs a structgen Config")
        self.config = config
        self.section: Any = config.section(self.name)
        self.http = HTTPClient(self.name, self.section,
                               total_timeout_s=config.llm_backend.timeout_s,
                               default_url=self.default_url,
                               max_body_bytes=config.limits.max_body_bytes,
                               max_line_bytes=config.limits.max_line_bytes)

    def model_for(self, request: GenerationRequest) -> str | None:
        return request.model or self.section.model

    # The config field naming the server's grammar engine (its capabilities depend on it),
    # and the backend's rows of the capability matrix by that field's value (None: one row)
    engine_field: str | None = None
    capability_rows: dict[str | None, Capabilities] = {}

    def capabilities(self) -> Capabilities:
        engine = getattr(self.section, self.engine_field) if self.engine_field else None
        return self.capability_rows[engine]

    # The config field naming the API the backend speaks, and how it answers a tool turn
    # by that field's value (None: one row): structgen.backends.capabilities.ToolCalling
    api_field: str | None = None
    tool_calling_rows: dict[str | None, ToolCalling] = {}

    def tool_calling(self) -> ToolCalling:
        api = getattr(self.section, self.api_field) if self.api_field else None
        return self.tool_calling_rows[api]

    def native_turn(self, request: GenerationRequest) -> ToolTurn | None:
        """The request's tool turn when the server answers its choice with its own tool
        calling (:meth:`tool_calling`); None when the call envelope's schema is sent."""
        turn = request.tools
        if turn is None or tool_choice_kind(turn.choice) not in self.tool_calling().native:
            return None
        return turn

    # The wire format: what each server backend's file writes --------------------------
    # What closes a complete stream, for the error when a stream ends without it.
    stream_end = "the end-of-stream marker"

    async def build(self, request: GenerationRequest, *, stream: bool = False
                    ) -> tuple[str, dict[str, Any], PostEntries]:
        """The path, JSON body and post-enforced constraint entries for ``request``."""
        raise NotImplementedError

    def parse(self, data: Any, path: str, body: dict[str, Any],
              request: GenerationRequest) -> GenerationResult:
        """The result in the server's JSON answer ``data`` to ``body`` sent to ``path``."""
        raise NotImplementedError

    def stream_decoder(self, path: str, request: GenerationRequest) -> StreamDecoder:
        """A fresh decoder for one streamed answer from ``path``."""
        raise NotImplementedError

    def constraint_for(self, out: CompiledOutput, refusal: str
                       ) -> tuple[Any, PostEntries]:
        """The schema this server's grammar engine is given for ``out`` and the entries
        validation post-enforces (backends/capabilities.py); ``refusal`` is the
        BackendUnavailable message when the server cannot constrain ``out`` at all."""
        schema, post = loosen_for(out, self.capabilities())
        if any(e.keyword == WHOLE_OUTPUT for e in post):
            raise BackendUnavailable(refusal, self.name)
        return schema, post

    # The skeleton ---------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        path, body, post = await self.build(request)
        timing: dict[str, float] = {}
        data = await self.http.request_json("POST", path, body, deadline=request.deadline,
                                            timing=timing)
        result = self.parse(data, path, body, request)
        result.latency_s = time.perf_counter() - start
        result.post_enforced = post
        result.endpoint = path
        result.http_s = timing.get("http_s")
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text chunks as the server's stream lines arrive; a stream cut before its end
        marker is a (retryable) protocol error, not a short answer."""
        path, body, post = await self.build(request, stream=True)
        decode = self.stream_decoder(path, request)
        lines = self.http.stream_lines(path, body, deadline=request.deadline)
        try:
            async for line in lines:
                chunks, done = decode(line)
                for chunk in chunks:
                    if isinstance(chunk, Finished):  # an empty one says why it ended
                        yield chunk.reported(post)
                    elif chunk:
                        yield chunk
                if done:
                    return
        finally:
            # left early (end marker, or the consumer closed us): close the HTTP response now
            await lines.aclose()  # type: ignore[attr-defined]
        raise BackendProtocolError(f"stream ended before {self.stream_end}", self.name,
                                   retryable=True)

    async def health(self) -> bool:
        """True when the server answers its health endpoint."""
        return await self.http.ok(self.health_path)

    async def aclose(self) -> None:
        await self.http.aclose()


# One line of a streamed answer -> (the text chunks it carries, empty ones skipped; whether
# it is the line that ends the stream).
StreamDecoder = Callable[[str], tuple[list[str | None], bool]]


def sse_decoder(on_event: Callable[[str], list[str | None]]) -> StreamDecoder:
    """A decoder for server-sent events: ``on_event`` reads each ``data:`` payload,
    ``data: [DONE]`` ends the stream, other lines carry nothing."""
    def decode(line: str) -> tuple[list[str | None], bool]:
        payload = sse_data(line)
        if payload is None:
            return [], False
        if payload == "[DONE]":
            return [], True
        return on_event(payload), False
    return decode


def sampling_fields(s: Sampling, *, max_tokens: str = "max_tokens",
                    seed: str = "seed") -> dict[str, Any]:
    """The sampling parameters as a server's body names them: the token limit under
    ``max_tokens``, ``temperature``, ``top_p``, and ``seed``/``stop`` only when set."""
    body: dict[str, Any] = {max_tokens: s.max_tokens, "temperature": s.temperature,
                            "top_p": s.top_p}
    if s.seed is not None:
        body[seed] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    return body


def sse_data(line: str) -> str | None:
    """The payload of a server-sent-events ``data:`` line (None for other lines)."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def loads_json(text: str, backend: str, what: str) -> Any:
    """Decode a server's JSON, as a protocol error when it is not JSON we can hold.

    Nesting deeper than the interpreter's recursion limit and integers longer than
    Python's digit limit are refused by ``json`` (RecursionError, ValueError): both are
    answers of the wrong shape, not crashes.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
        raise BackendProtocolError(f"{what} is {reason}: {text[:200]!r}", backend) from None


def loads_event(payload: str, backend: str) -> Any:
    """Decode one streamed JSON event, as a protocol error when it is not JSON."""
    return loads_json(payload, backend, "stream event")


def parse_wire(model: type[_M], data: Any, backend: str, what: str) -> _M:
    """``data`` read as the wire-format ``model``; any other shape is a protocol error.

    Each server backend declares the answers it reads as Pydantic models, so a field of
    the wrong type (``"usage": "x"``), a missing one or an event that is not an object
    is reported here, once, instead of surfacing as a TypeError deep in a parser.
    """
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the answer"
        raise BackendProtocolError(
            f"{what} has the wrong shape ({where}: {first['msg']}; {exc.error_count()} "
            f"problem(s)): {_preview(data)}", backend) from None


def _preview(data: Any) -> str:
    try:
        return json.dumps(data)[:200]
    except (ValueError, TypeError, RecursionError):
        return type(data).__name__


def render_prompt(request: GenerationRequest) -> str:
    """Plain-text prompt for completion-style endpoints that take no message list.

    One user message is sent as is. A conversation is rendered as ``role: content``
    lines ending with ``assistant:``; a server that knows the model's chat template
    should be called through its chat endpoint instead (the default everywhere). Earlier
    tool calls and results are written in the Hermes layout.
    """
    msgs = hermes_messages(request.messages)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    lines = [f"{m['role']}: {m['content']}" for m in msgs]
    return "\n".join([*lines, "assistant:"])
