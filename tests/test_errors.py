"""Every error class in structgen.errors, raised by real bad input (no mocks):
closed ports and misbehaving HTTP servers on 127.0.0.1, broken model text, bad specs."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas.intent import Intent
from structgen.backends import GenerationResult
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    SchemaError,
    StructgenError,
    ValidationFailed,
)


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _engine(base_url: str, **vllm: Any) -> Engine:
    return Engine(Config.from_dict({
        "llm_backend": {"provider": "vllm", "fallback": ["vllm"], "timeout_s": 3},
        "vllm": {"base_url": base_url, "model": "m", "retries": 0, **vllm},
        "cache": {"backend": "none"},
    }))


class _NotJSON(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b"<html>surprise</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def not_json_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotJSON)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_closed_port_is_backend_unavailable() -> None:
    engine = _engine(f"http://127.0.0.1:{_closed_port()}")
    try:
        with pytest.raises(BackendUnavailable) as info:
            engine.run("add a flag to cli.py", Intent, max_tokens=16)
    finally:
        engine.close()
    assert info.value.backend == "vllm"
    assert info.value.retryable
    assert "cannot reach" in str(info.value)


def test_router_falls_through_and_reraises_the_last_error() -> None:
    """provider=vllm with an unreachable sglang next in line: both fail, the last one is
    raised and the engine's router tried them in order."""
    engine = Engine(Config.from_dict({
        "llm_backend": {"provider": "vllm", "fallback": ["vllm", "sglang"], "timeout_s": 3},
        "vllm": {"base_url": f"http://127.0.0.1:{_closed_port()}", "model": "m", "retries": 0},
        "sglang": {"base_url": f"http://127.0.0.1:{_closed_port()}", "model": "m",
                   "retries": 0},
        "cache": {"backend": "none"},
    }))
    try:
        assert engine.router.order()[:2] == ["vllm", "sglang"]
        with pytest.raises(BackendError) as info:
            engine.run("hi", Intent, max_tokens=16)
    finally:
        engine.close()
    assert info.value.backend == "sglang"


def test_non_json_answer_is_backend_protocol_error(not_json_server: str) -> None:
    engine = _engine(not_json_server)
    try:
        with pytest.raises(BackendProtocolError, match="not JSON"):
            engine.run("hi", Intent, max_tokens=16)
    finally:
        engine.close()


def test_silent_server_is_backend_timeout(silent_server: str) -> None:
    engine = _engine(silent_server, read_timeout_s=0.3)
    try:
        with pytest.raises(BackendTimeout) as info:
            engine.run("hi", Intent, max_tokens=16)
    finally:
        engine.close()
    assert info.value.backend == "vllm"


def test_broken_text_is_validation_failed() -> None:
    """Engine.finalize with text no local repair can save, and no re-ask allowed (a re-ask
    would go to a real model): the raw text and the validator's errors come back."""
    engine = Engine(Config.from_dict({"cache": {"backend": "none"},
                                      "repair": {"reask": False, "max_retries": 0}}))
    try:
        request = engine.build_request("hi", Intent)
        text = '{"kind": "teleport", "confidence": 7}'
        with pytest.raises(ValidationFailed) as info:
            asyncio.run(engine.finalize(GenerationResult(text=text, backend="test"), request))
    finally:
        engine.close()
    err = info.value
    assert err.raw_text == text
    assert {e.pointer for e in err.errors} >= {"/kind", "/confidence"}
    assert err.attempts and err.attempts[0].stage == "generate"
    assert err.to_dict()["raw_text"] == text


def test_schema_and_config_errors_reach_the_engine_caller() -> None:
    engine = Engine(Config.from_dict({"cache": {"backend": "none"}}))
    try:
        with pytest.raises(SchemaError) as schema_info:
            engine.build_request("hi", {"type": "object", "required": 3})
        assert schema_info.value.pointer == "/required"
        with pytest.raises(ConfigError):
            engine.backend("tgi")
    finally:
        engine.close()


@pytest.mark.parametrize(("prompt", "sampling", "words"), [
    ([], {}, "non-empty"),
    ("hi", {"temprature": 0.5}, "unknown sampling parameter"),
    ("hi", {"top_p": 0}, "top_p"),
    ("hi", {"stop": ""}, "stop"),  # an empty stop string would end every answer at once
    ("hi", {"stop": [""]}, "stop"),
    ("hi", {"stop": ["END", ""]}, "stop"),
])
def test_bad_request_is_a_plain_structgen_error(prompt: Any, sampling: dict[str, Any],
                                                words: str) -> None:
    engine = Engine(Config.from_dict({"cache": {"backend": "none"}}))
    try:
        with pytest.raises(StructgenError, match=words) as info:
            engine.build_request(prompt, Intent, **sampling)
    finally:
        engine.close()
    assert type(info.value) is StructgenError


def test_hierarchy() -> None:
    for cls in (SchemaError, ConfigError, BackendError, ValidationFailed):
        assert issubclass(cls, StructgenError)
    for cls in (BackendUnavailable, BackendTimeout, BackendProtocolError):
        assert issubclass(cls, BackendError)


def test_every_error_class_is_in_the_errors_module() -> None:
    """One tree a caller can read in one place (httpx's ``_exceptions.py``): no module of
    the package defines an error class of its own."""
    import importlib
    import pkgutil

    import structgen
    from structgen.errors import StructgenError

    for info in pkgutil.walk_packages(structgen.__path__, "structgen."):
        importlib.import_module(info.name)
    found, todo = set(), [StructgenError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    elsewhere = sorted(f"{c.__module__}.{c.__qualname__}" for c in found
                       if c.__module__.startswith("structgen") and c.__module__ != "structgen.errors")
    assert not elsewhere
