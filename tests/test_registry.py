"""A backend and a constraint engine are one file each: both below are defined here and
nowhere else, and the config, the engine, the embedded backend, the capability matrix and
the tool-calling table take them by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.backends.capabilities import (
    ToolCalling,
    capabilities_for,
    matrix,
    tool_calling_matrix,
    tool_choice_kind,
)
from structgen.config import Config, ServerConfig
from structgen.constrain.base import ConstraintOptions
from structgen.constrain.llguidance import LLGuidanceConstraint
from structgen.engine import Engine
from structgen.errors import ConfigError
from structgen.registry import BUILT_IN_BACKENDS
from structgen.schema import CompiledOutput
from structgen.schema.support import LLGUIDANCE
from structgen.types import RawToolCall, Regex, ToolCall

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


class EchoSettings(ServerConfig):
    answer: str = '{"ok": true}'


class EchoBackend(BackendBase, name="tiny-echo"):
    """A server backend in a few lines: always answers its ``[tiny-echo] answer``; a named
    tool choice natively, as a call with that answer as its arguments."""

    settings = EchoSettings
    # its row of the capability matrix and of the tool-calling table
    capability_rows = {None: Capabilities(output_kinds=frozenset({"json"}))}
    tool_calling_rows = {None: ToolCalling(
        native=frozenset({"named"}), constrained=frozenset(),
        notes=("a named tool gets the [tiny-echo] answer as its arguments",))}

    def __init__(self, config: Config) -> None:
        self.config = config

    def capabilities(self) -> Capabilities:
        return self.capability_rows[None]

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        answer = self.config.section(self.name).answer
        turn = request.tools
        native = self.tool_calling_rows[None].native
        if turn is not None and tool_choice_kind(turn.choice) in native:
            return GenerationResult(text="", backend=self.name, model="echo",
                                    tool_calls=[RawToolCall(turn.choice, answer)])
        return GenerationResult(text=answer, backend=self.name, model="echo")

    async def stream(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        yield '{"ok": true}'

    async def health(self) -> bool:
        return True


class TinyGuidance(LLGuidanceConstraint, support=LLGUIDANCE.plus(
        "tiny-guidance", {"maxItems": "tiny-guidance leaves it to validation"}),
        package="llguidance", kinds=frozenset({"json", "regex", "choice"})):
    """llguidance under another name, declaring what it enforces and the kinds it takes."""

    compiles = 0

    def compile(self, output: CompiledOutput, options: ConstraintOptions) -> object:
        type(self).compiles += 1
        return super().compile(output, options)


def test_a_backend_defined_in_one_file_is_a_provider(tmp_path: Path) -> None:
    env = {"STRUCTGEN_PROVIDER": "tiny-echo", "STRUCTGEN_FALLBACK": "tiny-echo,local",
           "STRUCTGEN_CACHE_BACKEND": "none",
           "STRUCTGEN_METRICS_STATE_FILE": str(tmp_path / "m.json")}
    cfg = Config.load(None, env=env)
    assert cfg.llm_backend.fallback == ["tiny-echo", "local"]
    engine = Engine(cfg)
    result = engine.run("q", SCHEMA)
    assert (result.value, result.backend, result.model) == ({"ok": True}, "tiny-echo", "echo")
    engine.close()


def test_a_backend_declares_its_own_config_section(tmp_path: Path) -> None:
    cfg = Config.from_dict({
        "tiny-echo": {"answer": '{"ok": false}', "model": "echo-2"},
        "llm_backend": {"provider": "tiny-echo"}, "cache": {"backend": "none"},
        "metrics": {"state_file": str(tmp_path / "m.json")}})
    assert cfg.section("tiny-echo").model == "echo-2" and cfg.vllm.endpoint == "chat"
    engine = Engine(cfg)
    assert engine.run("q", SCHEMA).value == {"ok": False}
    engine.close()
    with pytest.raises(ConfigError) as err:  # its keys are checked as a built-in section's
        Config.from_dict({"tiny-echo": {"answr": "{}"}})
    assert err.value.key == "tiny-echo.answr" and "answer" in str(err.value)


def test_an_engine_defined_in_one_file_serves_the_embedded_backend(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = Config.from_dict({
        "local": {"engine": "tiny-guidance", "model": str(tiny_model_dir)},
        "llm_backend": {"provider": "local"}, "cache": {"backend": "none"},
        "metrics": {"state_file": str(tmp_path / "m.json")}})
    engine = Engine(cfg)
    caps = engine.backend("local").capabilities()
    assert caps.support is not None and caps.support.engine == "tiny-guidance"
    assert caps.output_kinds == frozenset({"json", "regex", "choice"})  # as it declared
    result = engine.run("q", Regex(r"[a-z]{1,3}"), max_tokens=8)
    assert len(result.value) <= 3 and TinyGuidance.compiles == 1
    engine.close()


class Flag(BaseModel):
    """Set a flag."""

    ok: bool


def test_a_backend_declares_its_rows_of_the_matrix_and_the_tool_table(tmp_path: Path) -> None:
    row = EchoBackend.capability_rows[None]
    assert matrix()["tiny-echo"] is capabilities_for("tiny-echo") is row
    assert tool_calling_matrix()["tiny-echo"].native == {"named"}
    assert "tiny-echo" not in matrix(BUILT_IN_BACKENDS)  # the documented rows
    cfg = Config.from_dict({
        "llm_backend": {"provider": "tiny-echo", "fallback": []}, "cache": {"backend": "none"},
        "metrics": {"state_file": str(tmp_path / "m.json")}})
    engine = Engine(cfg)
    result = engine.run("set it", tools=[Flag], tool_choice="Flag")  # answered natively
    assert result.value == ToolCall("Flag", Flag(ok=True))
    engine.close()
