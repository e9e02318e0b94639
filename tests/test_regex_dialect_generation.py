"""ECMA-262 patterns end to end on the embedded backend (issue 15): what the grammar lets the
model write is what JSON Schema means. ``\\d`` read as "any Unicode digit" let the embedded
default answer the README's date with U+1FBF8 digits; these samples, drawn at temperature 1
from the tiny model so every token the grammar allows is likely somewhere, are all ASCII.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen import Engine, Regex
from structgen.config import Config

pytestmark = pytest.mark.slow

DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
WORDS_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["word", "pair", "tail"],
    "properties": {
        "word": {"type": "string", "pattern": r"^\w{2,6}$"},
        "pair": {"type": "string", "pattern": r"^[a-z]\s[a-z]$"},
        "tail": {"type": "string", "pattern": r"^\d\.$"},
    },
}
ECMA_SPACE = "\t\n\x0b\x0c\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
             "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def _engine(model_dir: Path, constraint: str) -> Engine:
    cfg = Config()
    cfg.local.model = str(model_dir)
    cfg.local.engine = constraint  # type: ignore[assignment]
    cfg.cache.backend = "none"
    cfg.repair.reask = False  # what the grammar allowed, not what a re-ask fixed
    cfg.llm_backend.fallback = []
    return Engine(cfg)


@pytest.fixture(scope="module", params=["llguidance", "xgrammar", "outlines"])
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[Engine]:
    eng = _engine(tiny_model_dir, request.param)
    yield eng
    eng.close()


# outlines-core turns a JSON Schema into one regular expression; with these patterns its
# index takes minutes to build, so the schema samples run on the two grammar engines
@pytest.fixture(scope="module", params=["llguidance", "xgrammar"])
def json_engine(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[Engine]:
    eng = _engine(tiny_model_dir, request.param)
    yield eng
    eng.close()


def test_digit_class_gives_ascii_dates(engine: Engine) -> None:
    samples = 200 if engine.config.local.engine == "llguidance" else 40
    for seed in range(samples):
        result = engine.run("A date:", Regex(r"\d{4}-\d{2}-\d{2}"), backend="local",
                            temperature=1.0, seed=seed, max_tokens=24)
        assert DATE.fullmatch(result.value), (seed, ascii(result.value))
        assert result.raw_text == result.value  # the grammar wrote it; nothing repaired


def test_word_space_and_end_anchor_in_schemas_are_ecma(json_engine: Engine) -> None:
    engine = json_engine
    samples = 40 if engine.config.local.engine == "llguidance" else 20
    for seed in range(samples):
        result = engine.run("Fill it in:", WORDS_SCHEMA, backend="local", temperature=1.0,
                            seed=seed, max_tokens=60)
        value = result.value
        assert re.fullmatch(r"[A-Za-z0-9_]{2,6}", value["word"]), (seed, ascii(value))
        pair = value["pair"]
        assert len(pair) == 3 and pair[1] in ECMA_SPACE, (seed, ascii(value))
        assert re.fullmatch(r"[0-9]\.", value["tail"]), (seed, ascii(value))
