"""Every results file README.md and docs/*.md name exists: a figure in the docs names the
benchmarks/results file it comes from, and that file is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# `results/x.md`, `benchmarks/results/x.json`, `results/embedded-agents-a-c-*.md`
NAMED = re.compile(r"(?:benchmarks/)?results/([A-Za-z0-9_.*-]+\.(?:md|json|png))")


def named_results(text: str) -> set[str]:
    return set(NAMED.findall(text))


def test_named_results_files_exist() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing, named = [], 0
    for doc in docs:
        for name in sorted(named_results(doc.read_text(encoding="utf-8"))):
            named += 1
            if not any(RESULTS.glob(name)):
                missing.append(f"{doc.relative_to(ROOT)}: results/{name}")
    assert named >= 8, named  # README's figures alone name eight files
    assert missing == [], missing


def test_named_results_reads_names_and_patterns() -> None:
    text = ("(`results/embedded.md`; `benchmarks/results/cache.json`, "
            "`results/embedded-agents-a-c-*.md`) and benchmarks/results/ alone")
    assert named_results(text) == {"embedded.md", "cache.json", "embedded-agents-a-c-*.md"}
    assert not any(RESULTS.glob("no-such-run.md"))
