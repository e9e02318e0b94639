"""Servers for the backend tests: real vLLM processes (session scope, stopped by PID) and
the local SGLang/Ollama wire-format servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.config import Config
from structgen.tools.testing import build_tiny_gguf

# tests/servers is shared with benchmarks/client.py; import it from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.vllm_process import (
    VLLMProcess,
    start_vllm,
    vllm_compatible_copy,
    vllm_python,
)
from tests.servers.wire import OllamaWireServer, SGLangWireServer


def _need_vllm() -> None:
    if not vllm_python().exists():
        # `make test` builds .venv-vllm first, so this never fires in CI.
        pytest.fail(f"vLLM venv missing: {vllm_python()} (run `make vllm-env`)")


@pytest.fixture(scope="session")
def vllm_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model, re-initialised with 32-wide heads if vLLM's CPU kernels need it."""
    return vllm_compatible_copy(tiny_model_dir, tmp_path_factory.mktemp("tiny-vllm"))


@pytest.fixture(scope="session", params=["guidance", "xgrammar"])
def vllm_tiny(request: pytest.FixtureRequest, vllm_tiny_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMProcess]:
    """A real vLLM server on the tiny model, once per structured-output engine.

    pytest finishes one parameter before starting the next, so at most one of these runs
    at a time (plus ``vllm_smollm``: two servers at most).
    """
    _need_vllm()
    server = start_vllm(vllm_tiny_dir, engine=request.param,
                        workdir=tmp_path_factory.mktemp(f"vllm-{request.param}"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_smollm(smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[VLLMProcess]:
    """A real vLLM server on SmolLM2-135M-Instruct (guidance engine)."""
    _need_vllm()
    server = start_vllm(smollm_dir, engine="guidance",
                        workdir=tmp_path_factory.mktemp("vllm-smollm"))
    try:
        yield server
    finally:
        server.stop()


# vLLM 0.32 answers no tool_choice but "none" without a tool-call parser, and loads the
# parser only with --enable-auto-tool-choice (parser/parser_manager.py). Hermes' parser
# (SmolLM2's and Qwen's tool format) then makes vLLM force a named choice through an
# xgrammar structural tag, which the guidance engine rejects ("Invalid grammar
# specification: 'triggers'", cf. vllm#55152); VLLM_ENFORCE_STRICT_TOOL_CALLING=0 makes it
# the tool's JSON schema instead. The xgrammar engine takes the tag but, on this model,
# writes the call with free whitespace and raw control characters that hermes' parser
# cannot read (docs/capabilities.md "Tool calling"): the supported setup is this one.
TOOL_SERVER_ENV = {"VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}


@pytest.fixture(scope="session")
def vllm_tools(vllm_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[VLLMProcess]:
    """A real vLLM server on the tiny model with hermes' tool-call parser (guidance)."""
    _need_vllm()
    server = start_vllm(vllm_tiny_dir, engine="guidance",
                        workdir=tmp_path_factory.mktemp("vllm-tools"),
                        extra_args=("--enable-auto-tool-choice",
                                    "--tool-call-parser", "hermes"),
                        env=TOOL_SERVER_ENV)
    try:
        yield server
    finally:
        server.stop()


def vllm_config(server: VLLMProcess, **vllm: object) -> Config:
    return Config.from_dict({
        "vllm": {"base_url": server.base_url, "model": server.model,
                 "structured_backend": server.engine, "read_timeout_s": 60, **vllm},
        "llm_backend": {"provider": "vllm", "fallback": ["vllm"], "timeout_s": 120},
        "cache": {"backend": "none"}, "metrics": {"enabled": False},
        "repair": {"max_retries": 0}})


@pytest.fixture(scope="session")
def sglang_server() -> Iterator[SGLangWireServer]:
    with SGLangWireServer() as server:
        yield server


@pytest.fixture(scope="session")
def ollama_server() -> Iterator[OllamaWireServer]:
    with OllamaWireServer() as server:
        yield server


@pytest.fixture
def sglang(sglang_server: SGLangWireServer) -> Iterator[SGLangWireServer]:
    sglang_server.reset()
    yield sglang_server
    sglang_server.reset()


@pytest.fixture
def ollama(ollama_server: OllamaWireServer) -> Iterator[OllamaWireServer]:
    ollama_server.reset()
    yield ollama_server
    ollama_server.reset()


# GGUF models for the llama.cpp runtime ---------------------------------------------------
@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _token_id(tiny_model_dir: Path, text: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


@pytest.fixture(scope="session")
def favorite_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Any:
    """A tiny GGUF that always prefers one token (a runaway model, on purpose)."""
    out = tmp_path_factory.mktemp("favorite")

    def build(text: str) -> Path:
        path = out / f"fav-{ord(text[0])}.gguf"
        if not path.exists():
            build_tiny_gguf(tiny_model_dir, path, favorite=_token_id(tiny_model_dir, text))
        return path

    return build
