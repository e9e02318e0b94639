"""ECMA-262 patterns through a REAL vLLM server (issue 15, the server path): seeded samples
of ``Regex(r"\\d{4}-\\d{2}-\\d{2}")`` and of a schema using ``\\w``, ``\\s`` and ``$``, drawn
at temperature 1 from the tiny random model (so any token the grammar allows turns up), are
all ECMA-correct, under both of vLLM's structured-output engines.

structgen sends vLLM the pattern in portable form (``[0-9]`` for ``\\d``: llguidance reads
``\\d`` as any Unicode digit) and post-enforces ECMA semantics with its own validator, so a
value the server's engine read differently could only surface as ValidationFailed, never as
a returned value; here every sample must come back valid.

Without the translation (measured on this server, tiny model, these seeds) the guidance
engine wrote 115 of 191 dates with non-ASCII digits ("\\u19d0176-15-36", fullwidth
"\\uff15") and 20 of 197 ``\\s`` as U+0085; with post-enforcement alone those became
ValidationFailed (124 of 200 dates). XGrammar reads ``\\d``/``\\s`` as ASCII: all 200 complied.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from structgen.engine import Engine, StructuredResult
from structgen.types import Regex
from tests.backends.conftest import vllm_config
from tests.servers.vllm_process import VLLMProcess
from tests.test_regex_dialect_generation import DATE, ECMA_SPACE, WORDS_SCHEMA

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# Sent together, so vLLM batches them: on 2 shared CPU cores, 200 dates took 4-9 s and 200
# schema samples 5-14 s per engine (server already up).
DATE_SAMPLES = 200
SCHEMA_SAMPLES = 200


async def _samples(server: VLLMProcess, output: Any, n: int,
                   max_tokens: int) -> list[StructuredResult]:
    engine = Engine(vllm_config(server))  # no cache, no re-ask: what the server wrote
    try:
        return list(await asyncio.gather(*(
            engine.arun("Answer:", output, backend="vllm", temperature=1.0, seed=seed,
                        max_tokens=max_tokens) for seed in range(n))))
    finally:
        await engine.aclose()


async def test_vllm_digit_class_gives_ascii_dates(vllm_tiny: VLLMProcess) -> None:
    results = await _samples(vllm_tiny, Regex(r"\d{4}-\d{2}-\d{2}"), DATE_SAMPLES, 24)
    for seed, result in enumerate(results):
        assert DATE.fullmatch(result.value), (vllm_tiny.engine, seed, ascii(result.value))
        assert result.raw_text == result.value  # the server wrote it; nothing repaired
    # a random model over a 4-digit field: the samples are not one answer repeated
    assert len({r.value for r in results}) > DATE_SAMPLES // 2


async def test_vllm_word_space_and_end_anchor_are_ecma(vllm_tiny: VLLMProcess) -> None:
    results = await _samples(vllm_tiny, WORDS_SCHEMA, SCHEMA_SAMPLES, 60)
    for seed, result in enumerate(results):
        value = result.value
        where = (vllm_tiny.engine, seed, ascii(value))
        assert re.fullmatch(r"[A-Za-z0-9_]{2,6}", value["word"]), where
        pair = value["pair"]
        assert len(pair) == 3 and pair[1] in ECMA_SPACE, where
        assert re.fullmatch(r"[0-9]\.", value["tail"]), where
