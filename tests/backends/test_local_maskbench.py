"""Constrained decoding never returns an invalid object: agent schemas and a fixed MaskBench
sample, on the tiny random model, with llguidance and xgrammar, greedy and seeded sampling.

Correctness of constrained decoding does not depend on model quality, so a random model is
the honest adversary: it writes whatever the mask lets through. What is asserted:

* every output that *finished* (the grammar completed) parses and validates as it came out
  of the decoder, with no repair, unless the engine had to relax the schema to compile it
  (then validation enforces the dropped keywords, which is the contract);
* every request run through structgen's finalize step (repair + validation, as the Engine
  does) ends in a valid object or a typed ValidationFailed, and only outputs cut off at
  ``max_tokens`` may fail: an invalid object is never returned;
* floors on the share of generations that finish (the grammar completed before
  ``max_tokens``) and on the share that end in a valid value (finished, or cut and then
  repaired): an answer cut at ``max_tokens`` that repair cannot save counts against the
  second. The floors sit just under the measured rates (see the printed summary), so a
  decoder that finishes or validates less often fails them.

Only schemas the engine itself cannot compile even after relaxation are skipped (counted).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import SchemaError, ValidationFailed
from structgen.schema.canonical import json_copy
from structgen.schema.compiled import CompiledOutput
from structgen.validate import validate_data, validate_text

PER_SPLIT = 28  # 8 splits of tests/data/maskbench -> 224 schemas
MAX_TOKENS = 96
SEEDS = (1, 2, 3)
# (finish rate, valid rate) floors: measured (tests/data/maskbench, 2026-12-05), then set
# just under, so a decoder that finishes or validates less often fails.
AGENT_FLOORS = (0.9, 0.9)  # measured 12/12 finished and valid, both engines
MASKBENCH_FLOORS = {
    # measured greedy / sampled: finished 0.96 / 0.95 on both engines; valid 0.87 / 0.86
    # llguidance, 0.70 / 0.68 xgrammar (more of its schemas are relaxed: validation holds
    # what it leaves out, and a cut or relaxed answer repair cannot save counts against it)
    "llguidance": (0.92, 0.82),
    # xgrammar in the spaced layout (the default since issue 25): finished 0.91 greedy; a
    # separator's trailing space costs it a token where compact had none (docs/embedded.md)
    "xgrammar": (0.88, 0.62),
}


def maskbench_sample(folder: Path, per_split: int = PER_SPLIT) -> list[tuple[str, Any]]:
    """A fixed, deterministic sample: every k-th schema (by id) of each split."""
    out = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = sorted((json.loads(line) for line in f), key=lambda r: r["id"])
        step = max(1, len(rows) // per_split)
        out.extend((r["id"], r["schema"]) for r in rows[::step][:per_split])
    return out


def agent_schemas() -> list[tuple[str, Any]]:
    from schemas.debugger import Diagnosis  # type: ignore[attr-defined]
    from schemas.intent import Intent
    from schemas.reflection import Reflection  # type: ignore[attr-defined]

    return [("Intent", Intent), ("Diagnosis", Diagnosis), ("Reflection", Reflection)]


@dataclass
class Report:
    total: int = 0  # generations (refused schemas never generate)
    refused: set[str] = field(default_factory=set)  # the engine cannot compile even {}
    unreadable: set[str] = field(default_factory=set)  # structgen cannot canonicalize it
    finished: int = 0
    finished_raw_invalid: list[tuple[str, str, str]] = field(default_factory=list)
    relaxed: set[str] = field(default_factory=set)
    relaxed_raw_invalid: int = 0
    length: int = 0
    length_repaired: int = 0
    length_failed: int = 0
    valid: int = 0  # ended in a valid value, straight from the decoder or repaired
    returned_invalid: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, label: str) -> str:
        return (f"{label}: {self.total} generations, refused {len(self.refused)}, "
                f"finished {self.finished} ({self.finish_rate:.0%}), cut at max_tokens "
                f"{self.length} (repaired {self.length_repaired}, ValidationFailed "
                f"{self.length_failed}), valid {self.valid} ({self.valid_rate:.0%}), "
                f"relaxed schemas {len(self.relaxed)} (raw invalid {self.relaxed_raw_invalid})")

    @property
    def finish_rate(self) -> float:
        return self.finished / max(1, self.total)

    @property
    def valid_rate(self) -> float:
        return self.valid / max(1, self.total)


def run_all(tiny: Path, engine_name: str, outputs: list[tuple[str, Any]],
            modes: tuple[int | None, ...], max_tokens: int = MAX_TOKENS) -> Report:
    """Generate every output under every mode (None = greedy, int = sampling seed)."""
    cfg = Config.from_dict({
        # what is under test is the grammar: no compile-timeout fallback on a loaded machine
        "local": {"model": str(tiny), "engine": engine_name, "max_batch": 8, "threads": 2,
                  "compile_timeout_s": 600},
        "cache": {"backend": "none"}, "llm_backend": {"provider": "local"},
        "repair": {"reask": False}, "metrics": {"enabled": False}})
    backend = LocalBackend(cfg)
    engine = Engine(cfg, backends={"local": backend})
    report = Report()
    jobs = []
    for name, spec in outputs:
        if isinstance(spec, dict):  # raw MaskBench schemas skip structgen's own checks
            try:
                spec = CompiledOutput(kind="json", json_schema=json_copy(spec)[0],
                                      name=name)
            except SchemaError:
                report.unreadable.add(name)
                continue
        for seed in modes:
            sampling: dict[str, Any] = {"max_tokens": max_tokens}
            if seed is not None:
                sampling.update(temperature=1.0, seed=seed)
            jobs.append((name, engine.build_request(f"Answer for {name}", spec, **sampling)))

    async def one(name: str, req: Any) -> None:
        try:
            gen = await backend.agenerate(req)
        except SchemaError:
            report.refused.add(name)
            return
        report.total += 1
        raw_ok = validate_text(gen.text, req.output).ok
        if gen.finish_reason == "stop":
            report.finished += 1
            if gen.post_enforced:
                report.relaxed.add(name)
                report.relaxed_raw_invalid += not raw_ok
            elif not raw_ok:
                report.finished_raw_invalid.append((name, str(req.sampling.seed),
                                                    gen.text[:200]))
        else:
            assert gen.finish_reason == "length", gen.finish_reason
            report.length += 1
        try:
            fixed = await engine.finalize(gen, req)
        except ValidationFailed:
            if gen.finish_reason == "stop" and not gen.post_enforced:
                report.returned_invalid.append((name, "ValidationFailed on a finished output"))
            report.length_failed += gen.finish_reason == "length"
            return
        data = fixed.value.model_dump(mode="json") if hasattr(fixed.value, "model_dump") \
            else fixed.value
        if not validate_data(data, req.output).ok:
            report.returned_invalid.append((name, json.dumps(data)[:200]))
            return
        report.valid += 1
        report.length_repaired += gen.finish_reason == "length"

    async def go() -> None:
        await asyncio.gather(*(one(n, r) for n, r in jobs))
        await backend.aclose()

    asyncio.run(go())
    print("\n" + report.summary(engine_name))
    return report


def check(report: Report, min_finish_rate: float, min_valid_rate: float) -> None:
    assert report.total > 0, report.summary("nothing generated")
    assert report.returned_invalid == [], report.returned_invalid[:5]
    assert report.finished_raw_invalid == [], report.finished_raw_invalid[:5]
    assert report.finish_rate >= min_finish_rate, report.summary("finish rate too low")
    assert report.valid_rate >= min_valid_rate, report.summary("too few valid values")


@pytest.mark.parametrize("engine_name", ["llguidance", "xgrammar"])
def test_agent_schemas_always_valid(tiny_model_dir: Path, engine_name: str) -> None:
    # long free-text fields: a random model needs room to close them
    report = run_all(tiny_model_dir, engine_name, agent_schemas(), (None, *SEEDS),
                     max_tokens=256)
    assert not report.refused and not report.relaxed
    check(report, *AGENT_FLOORS)


@pytest.mark.parametrize("engine_name", ["llguidance", "xgrammar"])
def test_maskbench_sample_always_valid(tiny_model_dir: Path, maskbench_dir: Path,
                                       engine_name: str) -> None:
    sample = maskbench_sample(maskbench_dir)
    greedy = run_all(tiny_model_dir, engine_name, sample, (None,))
    usable = len(sample) - len(greedy.refused | greedy.unreadable)
    assert usable >= 220, (greedy.refused, greedy.unreadable)  # measured 224 of 224
    check(greedy, *MASKBENCH_FLOORS[engine_name])
    sampled = run_all(tiny_model_dir, engine_name, sample[::6], SEEDS)
    check(sampled, *MASKBENCH_FLOORS[engine_name])
