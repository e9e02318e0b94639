"""A fixed stratified MaskBench sample: zero false accepts and a pass-rate floor.

The full dev set is a benchmark (``structgen check ../shared/data/maskbench``); CI checks
every 20th schema with tests from every split (about 440 schemas, deterministic).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from structgen.tools.conformance import SchemaCase, iter_cases, run_checks, summarize

STRIDE = 20
PASS_RATE_FLOOR = 0.95  # the full dev set reaches more; the floor catches regressions


def stratified_sample(folder: Path) -> list[SchemaCase]:
    sample: list[SchemaCase] = []
    for file in sorted(folder.glob("*.jsonl.gz")):
        with_tests = [c for c in iter_cases(file) if c.tests]
        sample.extend(with_tests[::STRIDE])
    return sample


@pytest.mark.slow
def test_stratified_sample_has_no_false_accepts(maskbench_dir: Path) -> None:
    cases = stratified_sample(maskbench_dir)
    assert len({c.split for c in cases}) == 9 and len(cases) > 300
    results = run_checks(cases, jobs=2, timeout_s=60)
    summary = summarize(results)
    total = summary["total"]
    print({name: (f["passing"], f["schemas"]) for name, f in summary["splits"].items()})
    print("failure keywords:", summary["failure_keywords"])
    assert total["schemas"] == len(cases)
    assert total["false_accepts"] == 0, [r.id for r in results if r.false_accepts]
    assert total["pass_rate"] >= PASS_RATE_FLOOR, summary["failure_keywords"]
