"""Hypothesis profiles for the fuzzers (issue 11).

``ci`` (the default, run by ``make test``): derandomized (a fixed seed), a bounded example
count per fuzzer, no deadline flakiness. ``fuzz`` (``make fuzz``): random seeds and 20x the
examples. Every fuzzer counts the inputs it tried; the session prints the total.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

MASKBENCH = Path(__file__).resolve().parents[1] / "data" / "maskbench"

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz", derandomize=False, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SCALE = 20 if settings().derandomize is False else 1

TRIED: Counter[str] = Counter()


def examples(n: int) -> int:
    """The example count of one fuzzer under the active profile."""
    return n * SCALE


def maskbench_schemas(per_split: int = 50) -> list[dict[str, Any]]:
    """The MaskBench dev sample's schemas (``tests/data/maskbench``, the first ``per_split``
    of each split); empty when the data is missing (the ``maskbench_dir`` fixture fails)."""
    out: list[dict[str, Any]] = []
    for path in sorted(MASKBENCH.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as fh:
            for n, line in enumerate(fh):
                if n >= per_split:
                    break
                schema = json.loads(line)["schema"]
                # small ones: the mutations, not the copying of 100 kB schemas, are the point
                if isinstance(schema, dict) and len(json.dumps(schema)) < 20_000:
                    out.append(schema)
    return out


@pytest.fixture(scope="session", autouse=True)
def _report_tried() -> Iterator[None]:
    yield
    if TRIED:
        print(f"\nfuzz inputs tried: {sum(TRIED.values())} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})")
