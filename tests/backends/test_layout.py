"""The JSON layout the embedded backend emits: each layout on every engine (the tiny
random model, whose every separator comes from the grammar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from structgen.schema.layout import json_layout
from structgen.validate import validate_text

from .test_llamacpp import ENGINES, gen, make
from .test_local import Color


class Ticket(BaseModel):
    """Nested objects and arrays: every separator kind, forced and chosen."""

    model_config = {"extra": "forbid"}
    kind: Color
    tags: list[Color] = Field(max_length=3)
    owner: dict[str, int]
    urgent: bool
    score: int  # no bounds: Outlines leaves them to validation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from structgen.tools.testing import build_tiny_gguf

    return build_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layout", ["compact", "spaced"])
def test_every_engine_emits_exactly_the_layout(tiny: Path, engine: str, layout: str) -> None:
    eng, backend = make(tiny, engine=engine, whitespace=layout)
    request = eng.build_request("Classify it", Ticket)
    assert request.whitespace == layout
    for seed in range(4):
        r = gen(eng, backend, Ticket, temperature=1.0, seed=seed, max_tokens=200)
        assert r.finish_reason == "stop", r.text
        assert validate_text(r.text, request.output).ok, r.text
        json.loads(r.text)
        assert json_layout(r.text) == layout, r.text
