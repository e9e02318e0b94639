"""Streaming: the partial values stream_structured yields from a JSON prefix, the
engine's astream over a wire-format server (partial model instances, then the validated
object), and the limits a stream runs under (deadline on every read, line/body sizes, circuit breaker)."""

from __future__ import annotations

import json
import time

import pytest

from schemas.intent import Intent
from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendProtocolError, BackendTimeout, ValidationFailed
from structgen.streaming import partial_model, partial_value
from tests.backends.helpers import request, server_config
from tests.servers.wire import Canned, OllamaWireServer, SGLangWireServer, VLLMWireServer


def test_partial_value_grows_with_the_prefix():
    text = json.dumps({"kind": "edit_code", "targets": ["a.py", "b.py"], "confidence": 0.75})
    seen = [partial_value(text[:i]) for i in range(len(text) + 1)]
    assert seen[0] is None and seen[-1] == json.loads(text)
    assert partial_value('{"kind": "edi') == {"kind": "edi"}
    assert partial_value('{"targets": ["a.py", "b') == {"targets": ["a.py", "b"]}
    # an unfinished number is held back: "0.7" may still become "0.75"
    assert "confidence" not in (partial_value('{"kind": "x", "confidence": 0.7') or {})


async def test_astream_yields_partials_then_validated(ollama: OllamaWireServer):
    engine = Engine(server_config("ollama", ollama.base_url, model="m"))
    ollama.reply = json.dumps({"kind": "debug", "targets": ["app.py"], "confidence": 0.5,
                               "rationale": "The test fails."})
    items = [i async for i in engine.astream("Why does app.py fail?", Intent,
                                             backend="ollama")]
    partials, final = items[:-1], items[-1]
    assert isinstance(final, Intent) and final.kind.value == "debug"
    # a Pydantic output streams instances of its partial model (every field optional)
    assert partials and all(isinstance(p, partial_model(Intent)) for p in partials)
    assert partials[-1].rationale == "The test fails."
    ollama.reply = '{"kind": "nonsense"}'
    with pytest.raises(ValidationFailed):
        [i async for i in engine.astream("?", Intent, backend="ollama")]
    await engine.aclose()


# Deadlines, size limits and the circuit breaker while streaming ------------------------------
async def test_trickling_server_times_out_at_the_deadline(sglang: SGLangWireServer):
    """A server sending one byte every 5 ms never finishes a line (the native events carry
    the whole text so far): the deadline must end the stream, not the next line."""
    sglang.reply = "x" * 3000  # ~15 s per event at this pace
    sglang.trickle_s = 0.005
    b = SGLangBackend(server_config("sglang", sglang.base_url, read_timeout_s=10))
    req = request(Intent)
    req.deadline = time.monotonic() + 1.0
    start = time.monotonic()
    with pytest.raises(BackendTimeout):
        [c async for c in b.stream(req)]
    # the next line is >= 15 s away (the server's sleeps only get longer under load): a
    # wide margin over the 1 s deadline still tells the two apart on a starved machine
    assert time.monotonic() - start < 10
    await b.aclose()


async def test_stream_line_over_the_limit_is_protocol_error(ollama: OllamaWireServer):
    ollama.reply = "y" * 5000
    b = OllamaBackend(server_config("ollama", ollama.base_url, model="m"))
    b.http.max_line_bytes = 1000
    with pytest.raises(BackendProtocolError, match="stream line exceeds 1000 bytes"):
        [c async for c in b.stream(request(Intent))]
    await b.aclose()


async def test_endless_line_is_cut_at_the_limit(sglang: SGLangWireServer):
    """No newline ever comes: the buffer must not grow past the line limit."""
    sglang.canned = Canned(chunks=(b"data: " + b"z" * 4000,) * 50,
                           content_type="text/event-stream")
    b = SGLangBackend(server_config("sglang", sglang.base_url))
    b.http.max_line_bytes = 10_000
    with pytest.raises(BackendProtocolError, match="stream line exceeds"):
        [c async for c in b.stream(request(Intent))]
    await b.aclose()


@pytest.mark.parametrize("streamed", [False, True])
async def test_body_over_the_limit_is_protocol_error(sglang: SGLangWireServer, streamed):
    sglang.reply = "w" * 5000
    b = SGLangBackend(server_config("sglang", sglang.base_url))
    b.http.max_body_bytes = 4000
    with pytest.raises(BackendProtocolError, match="exceeds 4000 bytes"):
        if streamed:
            [c async for c in b.stream(request(Intent))]
        else:
            await b.agenerate(request(Intent))
    await b.aclose()


async def test_streaming_honours_the_circuit_breaker(ollama: OllamaWireServer,
                                                     sglang: SGLangWireServer):
    cfg = Config.from_dict({
        "ollama": {"base_url": ollama.base_url, "model": "m", "retries": 0},
        "sglang": {"base_url": sglang.base_url, "retries": 0},
        "llm_backend": {"provider": "ollama", "fallback": ["ollama", "sglang"]},
        "router": {"breaker_failures": 1, "breaker_cooldown_s": 600},
        "cache": {"backend": "none"}, "metrics": {"enabled": False}})
    engine = Engine(cfg)
    ollama.fail_statuses = [500] * 10
    items = [i async for i in engine.astream("Fix app.py", Intent)]
    assert isinstance(items[-1], Intent) and len(ollama.requests) == 1
    assert engine.router.breaker("ollama").state == "open"
    items = [i async for i in engine.astream("Fix app.py", Intent)]
    assert isinstance(items[-1], Intent)
    assert len(ollama.requests) == 1  # open: the stream went straight to SGLang
    assert engine.router.breaker("sglang").state == "closed"
    await engine.aclose()


# A streamed answer's usage is the call's -----------------------------------------------------
STREAMED = [("ollama", {"model": "m"}), ("sglang", {}), ("sglang", {"api": "openai"}),
            ("vllm", {"model": "m"})]


@pytest.mark.parametrize(("backend", "section"), STREAMED,
                         ids=["ollama", "sglang-native", "sglang-openai", "vllm"])
async def test_a_streamed_answer_reports_the_calls_token_counts(
        backend: str, section: dict[str, str]) -> None:
    """Every backend reports its token counts at the end of a stream (Ollama's last line,
    SGLang's last meta_info, an OpenAI server's usage event when asked for with
    stream_options.include_usage): the streamed result's usage is what the same call
    reports unstreamed, not zeros (which is what a server's streamed answer and the metrics
    used to get)."""
    servers = {"ollama": OllamaWireServer, "sglang": SGLangWireServer,
               "vllm": VLLMWireServer}
    reply = json.dumps({"kind": "debug", "targets": ["app.py"], "confidence": 0.5,
                        "rationale": "The test fails."})
    with servers[backend]() as server:
        server.reply = reply
        engine = Engine(server_config(backend, server.base_url, **section))
        try:
            called = await engine.arun("Why does app.py fail?", Intent)
            items = [i async for i in engine.astream("Why does app.py fail?", Intent,
                                                     final_result=True)]
        finally:
            await engine.aclose()
    streamed = items[-1]
    assert streamed.value == called.value
    assert called.usage.completion_tokens == len(reply)  # the stand-ins count characters
    counts = ("prompt_tokens", "completion_tokens")
    assert [streamed.usage[k] for k in counts] == [called.usage[k] for k in counts]
    assert streamed.model == called.model  # (SGLang's native answers name none)
