"""``[limits]`` in config.toml: the parse limits (depth, sizes, digits, schema depth) and the
HTTP limits (answer and stream-line size) are read from the config, reach the code that
enforces them, and a bad value is a ConfigError naming the key.

Each lowered limit is shown to trigger its typed error through a real Engine or backend
against the local vLLM stand-in server (tests/servers/wire.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.http import HTTPClient
from structgen.backends.vllm import VLLMBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendProtocolError, ConfigError, SchemaError, ValidationFailed
from structgen.schema.limits import DEFAULT_LIMITS
from tests.backends.helpers import request, server_config
from tests.servers.wire import VLLMWireServer

ANY = {"type": "object"}


@pytest.fixture(scope="module")
def vllm() -> Iterator[VLLMWireServer]:
    with VLLMWireServer() as server:
        yield server


def _config(server: VLLMWireServer, tmp_path: Path, limits: str) -> Config:
    """A config.toml on disk with ``limits`` as its [limits] table, read by Config.load."""
    server.reset()
    base = server_config("vllm", server.base_url, model="m").model_dump(
        exclude_none=True, include={"vllm", "llm_backend", "cache", "metrics", "repair"})
    lines = []
    for section, values in base.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + f"\n[limits]\n{limits}\n", encoding="utf-8")
    return Config.load(path, env={})


def test_defaults_are_unchanged() -> None:
    cfg = Config()
    assert cfg.limits.parse_limits() == DEFAULT_LIMITS
    assert (cfg.limits.max_body_bytes, cfg.limits.max_line_bytes) == (
        HTTPClient.max_body_bytes, HTTPClient.max_line_bytes) == (32 << 20, 8 << 20)


@pytest.mark.parametrize(("text", "key"), [
    ("max_depth = 0", "limits.max_depth"),
    ("max_depth = 1000", "limits.max_depth"),  # past it, validation would hit RecursionError
    ("max_schema_depth = -1", "limits.max_schema_depth"),
    ("max_number_digits = 5000", "limits.max_number_digits"),  # CPython refuses > 4300
    ("max_chars = 'many'", "limits.max_chars"),
    ("max_body_bytes = 10", "limits.max_body_bytes"),
    ("max_body_bytes = 4096\nmax_line_bytes = 8192", "limits.max_line_bytes"),
    ("max_dept = 3", "limits.max_dept"),  # a typo is an unknown key, not ignored
    ("max_chars = 1.5", "limits.max_chars"),
])
def test_bad_values_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[limits]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert key in str(info.value)


def test_environment_sets_a_limit() -> None:
    cfg = Config.load(None, env={"STRUCTGEN_LIMITS_MAX_DEPTH": "7"})
    assert cfg.limits.max_depth == 7
    with pytest.raises(ConfigError, match=r"limits\.max_depth"):
        Config.load(None, env={"STRUCTGEN_LIMITS_MAX_DEPTH": "0"})


@pytest.mark.parametrize(("limits", "reply", "message"), [
    ("max_depth = 3", '{"a": [[[1]]]}', "[limits] max_depth = 3"),
    ("max_chars = 20", '{"a": "' + "x" * 30 + '"}', "[limits] max_chars = 20"),
    ("max_number_digits = 5", '{"a": 123456}', "[limits] max_number_digits = 5"),
])
async def test_lowered_parse_limit_refuses_model_text(vllm: VLLMWireServer, tmp_path: Path,
                                                      limits: str, reply: str,
                                                      message: str) -> None:
    engine = Engine(_config(vllm, tmp_path, limits))
    vllm.reply = reply
    with pytest.raises(ValidationFailed) as info:
        await engine.arun("Describe it", ANY)
    assert any(message in e.message for e in info.value.errors)
    # the same answer passes under the default limits
    default = Engine(_config(vllm, tmp_path, ""))
    vllm.reply = reply
    assert (await default.arun("Describe it", ANY)).value == json.loads(reply)
    await engine.aclose()
    await default.aclose()


async def test_lowered_schema_depth_refuses_the_schema(vllm: VLLMWireServer,
                                                       tmp_path: Path) -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5):
        deep = {"type": "array", "items": deep}
    engine = Engine(_config(vllm, tmp_path, "max_schema_depth = 4"))
    with pytest.raises(SchemaError, match=r"\[limits\] max_schema_depth = 4"):
        await engine.arun("Describe it", deep)
    await engine.aclose()


@pytest.mark.parametrize("streamed", [False, True])
async def test_lowered_http_limits_refuse_the_answer(vllm: VLLMWireServer, tmp_path: Path,
                                                     streamed: bool) -> None:
    cfg = _config(vllm, tmp_path, "max_body_bytes = 8192\nmax_line_bytes = 2048")
    backend = VLLMBackend(cfg)
    # the answer's body > 8192 bytes; streamed, its first SSE event (a third) > 2048
    vllm.reply = json.dumps({"a": "w" * 9000})
    key = "max_line_bytes" if streamed else "max_body_bytes"
    with pytest.raises(BackendProtocolError, match=rf"\[limits\] {key}"):
        if streamed:
            [c async for c in backend.stream(request(ANY))]
        else:
            await backend.agenerate(request(ANY))
    await backend.aclose()
