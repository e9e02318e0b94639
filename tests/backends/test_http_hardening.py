"""The HTTP layer against hostile servers and URLs (issue 24, B8, B14, B18): a health
check does not read the body, credentials in ``base_url`` appear nowhere, and an answer
needs a 2xx status."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas.intent import Intent
from structgen.backends.vllm import VLLMBackend
from structgen.engine import Engine
from structgen.errors import BackendError, BackendProtocolError, StructgenError
from tests.backends.helpers import request, server_config

COMPLETION = {"id": "x", "object": "chat.completion", "model": "m", "choices": [{
    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(
        {"kind": "edit_code", "files": ["app.py"], "summary": "fix"})}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class Hostile:
    """A server on 127.0.0.1 whose answers the test sets: status, body, body size."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.health_bytes = 0  # a /health body this long (0: empty)
        self.sent = 0  # bytes of the /health body the client took
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(hostile.health_bytes))
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    while hostile.sent < hostile.health_bytes:
                        self.wfile.write(chunk)
                        hostile.sent += len(chunk)
                except OSError:  # the client closed the connection: what it wanted
                    pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(hostile.status)
                if 300 <= hostile.status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(hostile.body)))
                self.end_headers()
                self.wfile.write(hostile.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


async def test_health_probe_does_not_read_the_body(hostile: Hostile) -> None:
    hostile.health_bytes = 256 << 20  # the old probe read all of it (300 MB: +680 MB RSS)
    backend = VLLMBackend(server_config("vllm", hostile.url, model="m"))
    assert await backend.health() is True
    await backend.aclose()
    assert hostile.sent < 64 << 20, hostile.sent


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_whose_body_is_a_completion_is_no_answer(hostile: Hostile,
                                                                  status: int) -> None:
    hostile.status, hostile.body = status, json.dumps(COMPLETION).encode()
    backend = VLLMBackend(server_config("vllm", hostile.url, model="m"))
    with pytest.raises(BackendProtocolError, match=f"HTTP {status} instead of 2xx"):
        await backend.agenerate(request(Intent))
    await backend.aclose()
    hostile.status = 200  # the same body with 200 is an answer
    backend = VLLMBackend(server_config("vllm", hostile.url, model="m"))
    assert "edit_code" in (await backend.agenerate(request(Intent))).text
    await backend.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_credentials_in_base_url_appear_nowhere(hostile: Hostile,
                                                caplog: pytest.LogCaptureFixture) -> None:
    secret = "S3CRET-PW"
    for base in (f"http://admin:{secret}@127.0.0.1:{_closed_port()}",
                 hostile.url.replace("http://", f"http://admin:{secret}@")):
        hostile.status, hostile.body = 400, b'{"error": "bad request"}'
        config = server_config("vllm", base, model="m")
        assert secret not in repr(config) and secret not in str(config.vllm)
        engine = Engine(config)
        with pytest.raises(StructgenError) as info:
            engine.run("Fix app.py", Intent)
        error = info.value
        assert isinstance(error, BackendError) or error.__cause__ is None
        shown = [str(error), repr(error), *(repr(a) for a in getattr(error, "attempts", []))]
        assert not any(secret in text for text in shown), shown
        assert "admin:***@" in str(error)
        engine.close()
    assert secret not in caplog.text
