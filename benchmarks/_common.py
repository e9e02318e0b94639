"""What every benchmark script shares: the machine line and percentiles."""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
from pathlib import Path

RESULTS_ENV = "STRUCTGEN_BENCH_RESULTS"


def results_dir() -> Path:
    """Where a benchmark writes its result files: ``$STRUCTGEN_BENCH_RESULTS`` (set by
    ``run_all.py --out`` / ``structgen bench``), else the committed benchmarks/results/."""
    raw = os.environ.get(RESULTS_ENV)
    return Path(raw) if raw else Path(__file__).resolve().parent / "results"


def machine_line() -> str:
    """CPU, cores, RAM, Python, torch and the date: the line every result file carries."""
    cpu, mem = "unknown CPU", "? RAM"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        if found:
            mem = f"{int(found.group(1)) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    try:
        import torch

        torch_version = f", torch {torch.__version__}"
    except ImportError:
        torch_version = ""
    return (f"{cpu}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}"
            f"{torch_version}, {datetime.date.today().isoformat()}")


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) as the value at rank ``q% of n``; NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]
