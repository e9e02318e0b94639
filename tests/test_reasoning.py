"""Reasoning: the thinking comes back separately and is never parsed as the answer."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ValidationFailed
from structgen.reasoning import is_reasoning_model, split_think

# tests/servers (the wire-format servers) is imported from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers.wire import OllamaWireServer, SGLangWireServer

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}
# Thinking that is itself JSON-looking: it must never be taken for the answer.
THINKING = 'The user wants a number. {"answer": 999} would be wrong; 42 it is.'


class ThinkingBackend(BackendBase):
    """A real Backend that leaves a <think> block in its text (as some servers do)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.seen: list[GenerationRequest] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json"}), reasoning=True)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.seen.append(request)
        return GenerationResult(text=self.text, backend=self.name)

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        yield self.text

    async def health(self) -> bool:
        return True


def make_config(tmp_path: Path, provider: str, **sections: Any) -> Config:
    return Config.from_dict({
        "llm_backend": {"provider": provider, "fallback": [provider], "timeout_s": 20},
        "cache": {"backend": "none"}, "repair": {"max_retries": 0},
        "metrics": {"state_file": str(tmp_path / "m.json")}, **sections})


def test_split_think() -> None:
    assert split_think(f"<think>{THINKING}</think>\n{{\"answer\": 42}}") == (
        '{"answer": 42}', THINKING)
    assert split_think('  <think>a</think>{"x":1}') == ('{"x":1}', "a")
    # The template opened the block: everything before </think> is thinking.
    assert split_think('plan</think>{"x":1}', opened=True) == ('{"x":1}', "plan")
    assert split_think('plan</think>{"x":1}') == ('plan</think>{"x":1}', None)
    assert split_think("<think>never closed") == ("", "never closed")
    assert split_think('{"x": "<think>"}') == ('{"x": "<think>"}', None)


def test_is_reasoning_model(tmp_path: Path) -> None:
    for name in ("Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "qwen3:8b",
                 "Qwen/Qwen3-0.6B", "some-thinking-model", "deepseek-r1:1.5b"):
        assert is_reasoning_model(name), name
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama3.2:1b", "qwen2.5:7b", None, ""):
        assert not is_reasoning_model(name), name
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "chat_template.jinja").write_text("{{ messages }}")
    thinks = tmp_path / "custom"
    thinks.mkdir()
    (thinks / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% if thinking %}<think>\n{% endif %}{{ messages }}"}))
    assert not is_reasoning_model(str(plain)) and is_reasoning_model(str(thinks))


async def test_leftover_think_block_is_stripped(tmp_path: Path) -> None:
    backend = ThinkingBackend("local", f"<think>{THINKING}</think>\n{{\"answer\": 42}}")
    engine = Engine(make_config(tmp_path, "local"), backends={"local": backend})
    result = await engine.arun("What is six times seven?", SCHEMA, reasoning=True)
    assert result.value == {"answer": 42} and result.reasoning_text == THINKING
    assert "<think>" not in result.raw_text
    await engine.aclose()


async def test_unclosed_thinking_is_not_an_answer(tmp_path: Path) -> None:
    backend = ThinkingBackend("local", '<think>{"answer": 999} hmm, let me see')
    engine = Engine(make_config(tmp_path, "local"), backends={"local": backend})
    with pytest.raises(ValidationFailed) as info:
        await engine.arun("q", SCHEMA, reasoning=True)
    assert info.value.raw_text == ""  # the thinking was never treated as the answer
    await engine.aclose()


async def test_reasoning_auto_from_model_name(tmp_path: Path) -> None:
    answer = '{"answer": 1}'
    r1 = ThinkingBackend("vllm", answer)
    engine = Engine(make_config(tmp_path, "vllm", vllm={"model": "deepseek-r1:7b"}),
                    backends={"vllm": r1})
    await engine.arun("q", SCHEMA)  # reasoning left to auto: on for an R1 model
    await engine.arun("q", SCHEMA, reasoning=False)  # explicit off wins
    assert [r.reasoning for r in r1.seen] == [True, False]
    await engine.aclose()
    plain = ThinkingBackend("vllm", answer)
    engine = Engine(make_config(tmp_path, "vllm", vllm={"model": "llama3.2:1b"}),
                    backends={"vllm": plain})
    await engine.arun("q", SCHEMA)
    assert [r.reasoning for r in plain.seen] == [False]
    await engine.aclose()


# Wire formats ------------------------------------------------------------------------------
@pytest.fixture
def vllm_reasoning_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server answering like vLLM with ``--reasoning-parser``:
    thinking in ``message.reasoning``, the answer in ``message.content``."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._json({"object": "list", "data": [{"id": "qwen3-tiny"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            self._json({"id": "c1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": '{"answer": 42}',
                            "reasoning": THINKING}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 9}})

        def _json(self, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


async def test_vllm_reasoning_channel(tmp_path: Path,
                                      vllm_reasoning_server: tuple[str, list[Any]]) -> None:
    url, seen = vllm_reasoning_server
    engine = Engine(make_config(tmp_path, "vllm", vllm={"base_url": url,
                                                        "model": "qwen3-tiny"}))
    result = await engine.arun("What is six times seven?", SCHEMA)
    assert result.value == {"answer": 42} and result.reasoning_text == THINKING
    assert seen and seen[0]["model"] == "qwen3-tiny"
    await engine.aclose()


@pytest.mark.parametrize(("server_cls", "section", "inline"), [
    (SGLangWireServer, {"api": "openai"}, False),  # reasoning_content channel
    (SGLangWireServer, {"api": "native"}, True),  # /generate: the block stays in the text
    (OllamaWireServer, {}, False),  # "thinking" field (think: true)
], ids=["sglang-openai", "sglang-native", "ollama"])
async def test_server_reasoning_channels(tmp_path: Path, server_cls: type[Any],
                                         section: dict[str, Any], inline: bool) -> None:
    with server_cls() as server:
        answer = '{"answer": 42}'
        server.reply = f"<think>{THINKING}</think>\n{answer}" if inline else answer
        server.thinking = None if inline else THINKING
        name = server.flavor
        engine = Engine(make_config(tmp_path, name, **{name: {
            "base_url": server.base_url, "model": "served-model", **section}}))
        try:
            result = await engine.arun("What is six times seven?", SCHEMA, reasoning=True)
        finally:
            await engine.aclose()
        assert not server.violations, server.violations
    assert result.value == {"answer": 42} and result.reasoning_text == THINKING
