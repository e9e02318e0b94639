"""The MaskBench dev sample (tests/data/maskbench): zero false accepts and a pass-rate floor.

The full dev splits are a benchmark (``structgen check path/to/maskbench``,
benchmarks/results/conformance.md); CI checks every schema with instances in the
repository's sample (8 splits, 371 schemas, deterministic).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from structgen.tools.conformance import SchemaCase, iter_cases, run_checks, summarize

PASS_RATE_FLOOR = 0.95  # the full dev set reaches more; the floor catches regressions


def stratified_sample(folder: Path) -> list[SchemaCase]:
    sample: list[SchemaCase] = []
    for file in sorted(folder.glob("*.jsonl.gz")):
        sample.extend(c for c in iter_cases(file) if c.tests)
    return sample


@pytest.mark.slow
def test_stratified_sample_has_no_false_accepts(maskbench_dir: Path) -> None:
    cases = stratified_sample(maskbench_dir)
    assert len({c.split for c in cases}) == 8 and len(cases) > 300
    results = run_checks(cases, jobs=2, timeout_s=60)
    summary = summarize(results)
    total = summary["total"]
    print({name: (f["passing"], f["schemas"]) for name, f in summary["splits"].items()})
    print("failure keywords:", summary["failure_keywords"])
    assert total["schemas"] == len(cases)
    assert total["false_accepts"] == 0, [r.id for r in results if r.false_accepts]
    assert total["pass_rate"] >= PASS_RATE_FLOOR, summary["failure_keywords"]
