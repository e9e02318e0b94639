"""Every finished output is valid: agent schemas and a fixed MaskBench sample, on the tiny
random model, with llguidance and xgrammar, greedy and seeded sampling.

Correctness of constrained decoding does not depend on model quality, so a random model is
the honest adversary: it writes whatever the mask lets through. Outputs that reach
``max_tokens`` (a random model can wander inside an unbounded string) are counted apart and
must stay rare; schemas the engine itself refuses to compile are counted and reported.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import SchemaError
from structgen.schema.compiled import CompiledOutput, canonicalize_schema
from structgen.validate import validate_text

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "maskbench"
PER_SPLIT = 25  # 9 splits → 225 schemas
MAX_TOKENS = 256


def maskbench_sample(per_split: int = PER_SPLIT) -> list[tuple[str, dict[str, Any]]]:
    """A fixed, deterministic sample: every k-th schema (by id) of each split."""
    out = []
    for path in sorted(DATA.glob("*.jsonl.gz")):
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


def run_all(tiny: Path, engine_name: str, outputs: list[tuple[str, Any]]) -> dict[str, Any]:
    cfg = Config()
    cfg.local.model = str(tiny)
    cfg.local.engine = engine_name  # type: ignore[assignment]
    cfg.local.max_batch = 8
    backend = LocalBackend(cfg)
    engine = Engine(cfg, backends={"local": backend})
    report: dict[str, Any] = {"refused": [], "length": [], "invalid": [], "ok": 0}
    jobs = []
    for i, (name, spec) in enumerate(outputs):
        for mode in ("greedy", "sampled"):
            sampling: dict[str, Any] = {"max_tokens": MAX_TOKENS}
            if mode == "sampled":
                sampling.update(temperature=1.0, seed=1000 + i)
            # raw MaskBench schemas go straight to the engine: only its own compile may refuse
            if isinstance(spec, dict):
                spec = CompiledOutput(kind="json", json_schema=canonicalize_schema(spec),
                                      name=name)
            req = engine.build_request(f"Answer for {name}", spec, **sampling)
            jobs.append((name, mode, req))

    async def go() -> list[Any]:
        return await asyncio.gather(*(backend.agenerate(r) for _, _, r in jobs),
                                    return_exceptions=True)

    for (name, mode, req), res in zip(jobs, asyncio.run(go()), strict=True):
        if isinstance(res, SchemaError):
            report["refused"].append(name)  # the engine's own compile refused it
        elif isinstance(res, BaseException):
            raise res
        elif res.finish_reason == "length":
            report["length"].append((name, mode))
        elif not validate_text(res.text, req.output).ok:
            report["invalid"].append((name, mode, res.text[:300]))
        else:
            report["ok"] += 1
    report["total"] = len(jobs)
    return report


@pytest.mark.parametrize("engine_name", ["llguidance", "xgrammar"])
def test_agent_schemas_always_valid(tiny_model_dir: Path, engine_name: str) -> None:
    report = run_all(tiny_model_dir, engine_name, agent_schemas() * 3)
    assert report["refused"] == []
    assert report["invalid"] == []
    assert len(report["length"]) <= 0.05 * report["total"], report["length"]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"MaskBench data missing at {DATA}")
@pytest.mark.parametrize("engine_name", ["llguidance", "xgrammar"])
def test_maskbench_sample_always_valid(tiny_model_dir: Path, engine_name: str) -> None:
    sample = maskbench_sample()
    report = run_all(tiny_model_dir, engine_name, sample)
    print(f"\n{engine_name}: {len(sample)} schemas, refused {len(set(report['refused']))}, "
          f"{report['total']} generations, ok {report['ok']}, "
          f"length {len(report['length'])}, invalid {len(report['invalid'])}")
    assert len(sample) - len(set(report["refused"])) >= 200
    assert report["invalid"] == [], report["invalid"][:5]
    assert len(report["length"]) <= 0.05 * report["total"], len(report["length"])
