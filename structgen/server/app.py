"""The ASGI application and the uvicorn server around it.

Every request passes, in order: the connection's deadlines on receiving it (protocol.py:
``header_timeout_s``, ``body_timeout_s``, then 408); a request id (``X-Request-Id``, the
client's or a new one) and an access-log line; the API key check (``[server] api_keys``;
``/health`` and ``/ready`` are open); admission (``max_concurrency + max_queue`` requests at
once, then 503; ``max_concurrency_per_key``, then 429), before the body is read; the body
read with its size limit; a slot (``max_concurrency`` answered at once). Errors go out in the
shape of the API that was called (``/api/*``: Ollama's ``{"error": ...}``, else OpenAI's
``{"error": {"message", "type", "param", "code"}}``), never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from structgen.config import Config, ServeConfig
from structgen.engine import Engine
from structgen.errors import ConfigError
from structgen.server import ollama, openai
from structgen.server.calls import ApiError
from structgen.server.protocol import DeadlineProtocol

log = logging.getLogger("structgen.server")


class _Gate:
    """Admission, before the body is read: at most ``limit + queue`` requests admitted at
    once (past that 503), ``limit`` of them answered while the rest wait; one API key may
    have at most ``per_key`` admitted (past that 429). Refusing before the body is read is
    what bounds memory: only admitted requests hold a body (each under ``max_body_bytes``)."""

    def __init__(self, limit: int, queue: int, per_key: int | None, in_flight: Gauge) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._room = limit + queue
        self._admitted = 0
        self._per_key = per_key
        self._by_key: dict[int, int] = {}
        self._in_flight = in_flight

    @contextlib.asynccontextmanager
    async def admit(self, key: int | None) -> AsyncIterator[None]:
        counted = key if self._per_key is not None else None
        if counted is not None and self._by_key.get(counted, 0) >= (self._per_key or 0):
            raise ApiError(429, f"this API key has {self._per_key} requests in flight "
                                "already, retry later", "rate_limit_exceeded")
        if self._admitted >= self._room:
            raise ApiError(503, "server busy: too many requests in flight, retry later",
                           "server_busy")
        self._admitted += 1
        if counted is not None:
            self._by_key[counted] = self._by_key.get(counted, 0) + 1
        try:
            with self._in_flight.track_inprogress():
                yield
        finally:
            self._admitted -= 1
            if counted is not None:
                self._by_key[counted] -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the ``limit`` places where an admitted request is answered."""
        async with self._slots:
            yield


def api_keys(settings: ServeConfig) -> list[str]:
    """``api_keys`` and the lines of ``api_keys_file``."""
    keys = list(settings.api_keys)
    if settings.api_keys_file:
        try:
            text = Path(settings.api_keys_file).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc}", "server.api_keys_file") from None
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    return keys


def create_app(engine: Engine, settings: ServeConfig | None = None) -> Starlette:
    """The server's ASGI app, answering with ``engine`` (closed when the app shuts down)."""
    settings = settings or engine.config.server
    registry = engine.metrics.registry
    requests = Counter("structgen_http_requests", "HTTP requests answered",
                       ["route", "status"], registry=registry)
    gate = _Gate(settings.max_concurrency, settings.max_queue,
                 settings.max_concurrency_per_key, Gauge(
        "structgen_http_in_flight", "Requests admitted: being read, waiting for a slot or answered",
        registry=registry))

    async def read_json(request: Request) -> dict[str, Any]:
        """The body as a JSON object. Its time limit is the connection's (protocol.py): past
        it the client is answered 408 there and this read ends as a disconnect."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(request)
            raise ApiError(413, f"request body over {limit} bytes", "request_too_large")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body over {limit} bytes",
                                   "request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(408, "request body not received (past [server] body_timeout_s, "
                                "or the client went away)", "request_timeout") from None
        raw = b"".join(chunks)
        if settings.log_prompts:
            log.info("%s body %s", request.state.request_id,
                     raw[:_LOGGED_BODY].decode("utf-8", "replace"))
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body is not JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    def route(handler: Callable[[Request], Awaitable[Response]], label: str | None = None
              ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` answering errors in the API's shape, counted under ``label`` (a path
        with parameters: its template, so a client cannot add a series per path)."""
        async def endpoint(request: Request) -> Response:
            ollama_api = request.url.path.startswith("/api/")
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _error(exc, ollama_api)
            except Exception:
                log.exception("%s: unexpected error", request.state.request_id)
                response = _error(ApiError(500, f"internal error (request "
                                                f"{request.state.request_id})",
                                           "internal_error"), ollama_api)
            requests.labels(label or request.url.path, str(response.status_code)).inc()
            return response
        return endpoint

    async def answer(request: Request, parse: Any, stream: Any, whole: Any,
                     media_type: str) -> Response:
        """One generating route: admitted first (503/429 before its body is read), then
        the body parsed, then a slot to answer in, held until the answer is sent; for a
        stream, until its last line (or the client going away)."""
        held = contextlib.AsyncExitStack()
        await held.enter_async_context(gate.admit(_key(request)))
        try:
            req = parse(await read_json(request))
            await held.enter_async_context(gate.slot())
            if not req.stream:
                async with held:
                    return JSONResponse(await whole(engine, req))
            lines = stream(engine, req)
            first = await anext(lines)  # a request error is still an HTTP status here
        except BaseException:
            await held.aclose()
            raise

        async def events() -> AsyncIterator[str]:
            try:
                yield first
                async for line in lines:
                    yield line
            finally:
                await lines.aclose()
                await held.aclose()

        return StreamingResponse(events(), media_type=media_type)

    def generating(parse: Any, stream: Any, whole: Any, media_type: str
                   ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return await answer(request, parse, stream, whole, media_type)
        return route(handler)

    chat_completions = generating(openai.parse_request, openai.complete_stream,
                                  openai.complete, "text/event-stream")
    api_chat = generating(ollama.parse_chat, ollama.chat_stream, ollama.chat,
                          "application/x-ndjson")
    api_generate = generating(ollama.parse_generate, ollama.generate_stream, ollama.generate,
                              "application/x-ndjson")

    @route
    async def v1_models(request: Request) -> Response:
        return JSONResponse(openai.models(engine))

    async def get_v1_model(request: Request) -> Response:
        return JSONResponse(openai.model(engine, request.path_params["model"]))

    v1_model = route(get_v1_model, "/v1/models/{model}")

    @route
    async def api_tags(request: Request) -> Response:
        return JSONResponse(ollama.tags(engine))

    @route
    async def api_version(request: Request) -> Response:
        return JSONResponse(ollama.version())

    @route
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @route
    async def ready(request: Request) -> Response:
        deadline = time.monotonic() + engine.config.llm_backend.timeout_s
        for name in engine.router.order():
            if await engine.router.healthy(name, engine.backend(name), deadline):
                return JSONResponse({"status": "ready", "backend": name})
        raise ApiError(503, "no backend can serve", "backend_unavailable")

    @route
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(engine.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.aclose()

    middleware = [Middleware(_Front, keys=api_keys(settings))]
    if settings.cors_origins:  # outermost: a browser's preflight carries no key
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                                        allow_methods=["GET", "POST"], allow_headers=["*"]))
    return Starlette(exception_handlers={HTTPException: _no_route}, routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", v1_models, methods=["GET"]),
        Route("/v1/models/{model:path}", v1_model, methods=["GET"]),  # names hold "/"
        Route("/api/chat", api_chat, methods=["POST"]),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/tags", api_tags, methods=["GET"]),
        Route("/api/version", api_version, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], middleware=middleware, lifespan=lifespan)


async def _drain(request: Request) -> None:
    """Read and drop a refused body (its time bounded by the connection's body deadline),
    so the client gets the 413 and not a reset connection while it is still sending."""
    with contextlib.suppress(ClientDisconnect):
        async for _ in request.stream():
            pass


def _key(request: Request) -> int | None:
    """Which configured key the request carried (its index; None when none are asked)."""
    return getattr(request.state, "key", None)


def _head_size(scope: Scope) -> int:
    return (len(scope.get("raw_path") or b"") + len(scope["query_string"])
            + sum(len(name) + len(value) + 4 for name, value in scope["headers"]))


def _no_route(request: Request, exc: Exception) -> Response:
    """An unserved path (404) or method (405, with ``Allow``), in the API's error shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        error = ApiError(405, f"{where}: method not allowed (allowed: "
                              f"{(exc.headers or {}).get('Allow', '')})", "method_not_allowed")
    elif exc.status_code == 404:
        error = ApiError(404, f"{where}: no such route", "not_found")
    else:
        error = ApiError(exc.status_code, f"{where}: {exc.detail}")
    response = _error(error, request.url.path.startswith("/api/"))
    response.headers.update(exc.headers or {})
    return response


def _error(exc: ApiError, ollama_api: bool) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    if ollama_api:
        return JSONResponse({"error": exc.message, **exc.details}, exc.status, headers)
    return JSONResponse({"error": {"message": exc.message, "type": exc.kind,
                                   "param": exc.param, "code": exc.status, **exc.details}},
                        exc.status, headers)


_OPEN = frozenset({"/health", "/ready"})
# Request line and headers: h11 stops buffering an unfinished head past this (it cannot grow
# without bound), and a finished one past it is answered 431 here (h11 lets a head that
# arrives whole in one read through at any size)
MAX_HEAD_BYTES = 64 * 1024
_LOGGED_BODY = 64 * 1024  # [server] log_prompts: the first 64 kB of a body


class _Front:
    """Request id, access log and API keys, as plain ASGI (streams pass through as they
    are). Keys are compared in constant time and never logged."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] \
            or secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            ollama_api = scope["path"].startswith("/api/")
            if _head_size(scope) > MAX_HEAD_BYTES:
                await _error(ApiError(431, f"request line and headers over {MAX_HEAD_BYTES} "
                                           "bytes", "request_headers_too_large"),
                             ollama_api)(scope, receive, sending)
                return
            key = self._key(headers) if self.keys else None
            scope["state"]["key"] = key
            if self.keys and scope["path"] not in _OPEN and key is None:
                await _error(ApiError(401, "missing or wrong API key (Authorization: Bearer "
                                           "<key>)", "invalid_api_key"),
                             ollama_api)(scope, receive, sending)
                return
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %s %d %.1fms", rid, client[0], scope["method"], scope["path"],
                     status, (time.perf_counter() - start) * 1000)

    def _key(self, headers: dict[bytes, bytes]) -> int | None:
        """The index of the key the request carries, or None."""
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        token = token.strip()
        found = None
        for i, key in enumerate(self.keys):  # every key compared: the time tells nothing
            if hmac.compare_digest(key, token):
                found = i
        return found if scheme.lower() == b"bearer" else None


def run(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting, finish what is in flight within
    ``[server] drain_s``, close the engine and return."""
    settings = config.server
    engine = Engine(config)
    app = create_app(engine, settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = uvicorn.Server(uvicorn.Config(
        app, host=host or settings.host, port=port or settings.port, access_log=False,
        log_level="info", timeout_keep_alive=int(max(1, settings.timeout_keep_alive_s)),
        timeout_graceful_shutdown=max(1, round(settings.drain_s)),
        http=DeadlineProtocol.configured(settings.header_timeout_s, settings.body_timeout_s),
        limit_concurrency=settings.max_connections, backlog=settings.max_connections,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, server_header=False, lifespan="on"))
    # uvicorn drains, then raises the signal it caught again under the handler that was
    # there before it: SIGTERM after a drain is a clean stop, so that handler exits 0
    signal.signal(signal.SIGTERM, _drained)
    server.run()


def _drained(signum: int, frame: Any) -> None:
    raise SystemExit(0)
