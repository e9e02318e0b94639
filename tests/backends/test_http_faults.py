"""The shared HTTP layer under faults: down, slow, 5xx, malformed, truncated, unconstrained.

Each fault must end in the right typed error or a repaired valid result, never a crash
and never an invalid object. Runs against the local wire-format servers and a closed port.
"""

from __future__ import annotations

import socket

import pytest

from schemas.intent import Intent
from structgen.backends.base import run_sync
from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.backends.vllm import VLLMBackend
from structgen.engine import Engine
from structgen.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ValidationFailed,
)
from tests.backends.helpers import request, server_config
from tests.servers.wire import OllamaWireServer, SGLangWireServer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize("cls", [VLLMBackend, SGLangBackend, OllamaBackend])
async def test_server_down_is_backend_unavailable(cls):
    cfg = server_config(cls.name, f"http://127.0.0.1:{closed_port()}", retries=1,
                        model="m")
    b = cls(cfg)
    with pytest.raises(BackendUnavailable, match="cannot reach") as info:
        await b.agenerate(request(Intent))
    assert info.value.retryable and info.value.backend == cls.name
    assert await b.health() is False
    await b.aclose()


async def test_a_connect_timeout_is_unreachable_not_a_slow_generation() -> None:
    """A server whose listen backlog is full never completes the handshake: that is an
    unreachable backend (BackendUnavailable, which the breaker counts, issue 24), not a
    generation past its deadline (BackendTimeout, which it does not)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the backlog: later SYNs are dropped, connects hang
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    b = SGLangBackend(server_config("sglang", f"http://127.0.0.1:{port}",
                                    connect_timeout_s=0.3))
    try:
        with pytest.raises(BackendUnavailable, match="no connection within"):
            await b.agenerate(request(Intent))
    finally:
        await b.aclose()
        for f in fillers:
            f.close()
        listener.close()


async def test_slow_server_is_backend_timeout(sglang: SGLangWireServer):
    sglang.delay_s = 2.0
    b = SGLangBackend(server_config("sglang", sglang.base_url, read_timeout_s=0.3,
                                    retries=2))
    with pytest.raises(BackendTimeout):
        await b.agenerate(request(Intent))
    assert len(sglang.requests) == 1  # a timeout is not retried


async def test_deadline_bounds_the_whole_call(sglang: SGLangWireServer):
    import time

    sglang.delay_s = 2.0
    b = SGLangBackend(server_config("sglang", sglang.base_url, read_timeout_s=30))
    req = request(Intent)
    req.deadline = time.monotonic() + 0.3
    with pytest.raises(BackendTimeout):
        await b.agenerate(req)


async def test_500_is_retried_then_succeeds(sglang: SGLangWireServer):
    sglang.fail_statuses = [500, 503]
    b = SGLangBackend(server_config("sglang", sglang.base_url, retries=2))
    result = await b.agenerate(request(Intent))
    Intent.model_validate_json(result.text)
    assert len(sglang.requests) == 3


async def test_500_after_retries_is_backend_error(ollama: OllamaWireServer):
    ollama.fail_statuses = [500, 500, 500]
    b = OllamaBackend(server_config("ollama", ollama.base_url, retries=2, model="m"))
    with pytest.raises(BackendUnavailable, match="HTTP 500") as info:
        await b.agenerate(request(Intent))
    assert isinstance(info.value, BackendError) and len(ollama.requests) == 3


async def test_429_is_retried(ollama: OllamaWireServer):
    ollama.fail_statuses = [429]
    b = OllamaBackend(server_config("ollama", ollama.base_url, retries=1, model="m"))
    Intent.model_validate_json((await b.agenerate(request(Intent))).text)
    assert len(ollama.requests) == 2


async def test_4xx_is_not_retried(sglang: SGLangWireServer):
    sglang.fail_statuses = [400, 400]
    b = SGLangBackend(server_config("sglang", sglang.base_url, retries=3))
    with pytest.raises(BackendProtocolError, match="HTTP 400"):
        await b.agenerate(request(Intent))
    assert len(sglang.requests) == 1


async def test_malformed_json_body_is_protocol_error(sglang: SGLangWireServer):
    sglang.malformed = True
    b = SGLangBackend(server_config("sglang", sglang.base_url, retries=2))
    with pytest.raises(BackendProtocolError, match="not JSON"):
        await b.agenerate(request(Intent))
    assert len(sglang.requests) == 1


@pytest.mark.parametrize("flavor", ["sglang", "ollama"])
async def test_truncated_stream_is_protocol_error(flavor, sglang, ollama):
    server = sglang if flavor == "sglang" else ollama
    server.truncate = True
    cls = SGLangBackend if flavor == "sglang" else OllamaBackend
    b = cls(server_config(flavor, server.base_url, model="m"))
    with pytest.raises(BackendProtocolError):
        [c async for c in b.stream(request(Intent))]


async def test_unconstrained_text_is_repaired_or_rejected(ollama: OllamaWireServer):
    """HTTP 200 whose text ignores the constraint: repaired when repair can, else
    ValidationFailed, never an invalid object."""
    engine = Engine(server_config("ollama", ollama.base_url, model="m"))
    ollama.reply = ('Sure! Here it is: {"kind": "edit_code", "targets": ["app.py"], '
                    '"confidence": 0.9, "rationale": "fix the test",}')
    result = await engine.arun("Fix app.py", Intent, backend="ollama")
    assert isinstance(result.value, Intent) and result.repaired
    ollama.reply = "I cannot help with that."
    with pytest.raises(ValidationFailed) as info:
        await engine.arun("Fix app.py", Intent, backend="ollama", use_cache=False)
    assert info.value.raw_text == "I cannot help with that."
    await engine.aclose()


def test_sync_generate_reuses_the_pool(sglang: SGLangWireServer):
    """Sync calls share one pooled client: three requests, one TCP connection."""
    b = SGLangBackend(server_config("sglang", sglang.base_url))
    for _ in range(3):
        Intent.model_validate_json(b.generate(request(Intent)).text)
    assert len(sglang.requests) == 3
    assert sglang.connections == 1
    run_sync(b.aclose())


async def test_api_key_is_sent_as_bearer(sglang: SGLangWireServer):
    from tests.servers import wire

    seen: list[str] = []
    original = wire.WireServer._post

    def spy(self, h):  # type: ignore[no-untyped-def]
        seen.append(h.headers.get("Authorization", ""))
        original(self, h)

    wire.WireServer._post = spy  # type: ignore[method-assign]
    try:
        b = SGLangBackend(server_config("sglang", sglang.base_url, api_key="sk-test"))
        await b.agenerate(request(Intent))
    finally:
        wire.WireServer._post = original  # type: ignore[method-assign]
    assert seen == ["Bearer sk-test"]
