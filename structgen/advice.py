"""Which serving engine the recorded load calls for: stay on Ollama, or consider vLLM or
SGLang. Reads the numbers :func:`structgen.metrics.describe` derives; records nothing.

The recommendation uses the switch criteria: more than 50 concurrent requests, P99 latency
over 5 s, more than 30 % structured calls, more than 50 % multi-turn calls.

* **consider SGLang** when calls are mostly multi-turn *and* mostly structured: RadixAttention
  reuses the shared conversation prefix and its grammar backend overlaps mask computation
  with decoding, so both criteria pay off at once;
* otherwise **consider vLLM** when the load is high (concurrency peak or P99 over the line):
  continuous batching and PagedAttention are what raise throughput under load;
* otherwise **stay on Ollama** (or whatever serves now): nothing crosses the line.

Fewer than :data:`MIN_CALLS` recorded calls is not enough to judge: there is no advice
then (``"none yet"``). Model loads are recorded apart from the latency (see
:mod:`structgen.metrics`), so a first call's load never counts as a slow request.
"""

from __future__ import annotations

from typing import Any

MIN_CALLS = 20

# The switch criteria.
CONCURRENCY_LIMIT = 50
P99_LIMIT_S = 5.0
STRUCTURED_SHARE = 0.30
MULTI_TURN_SHARE = 0.50


def recommend(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"advice": ..., "reasons": [...], "numbers": ..., "criteria": {...}}`` from a
    :func:`describe` dict. Below :data:`MIN_CALLS` the advice is ``"none yet"``: a few
    calls (a model load among them) say nothing about the load."""
    p99 = summary["latency_p99_s"]
    structured = summary["structured_share"]
    multi_turn = summary["multi_turn_share"]
    crit = {
        "concurrency": _criterion(summary["inflight_peak"], CONCURRENCY_LIMIT),
        "p99_s": _criterion(None if p99 is None else round(p99, 3), P99_LIMIT_S),
        "structured_share": _criterion(None if structured is None else round(structured, 3),
                                       STRUCTURED_SHARE),
        "multi_turn_share": _criterion(None if multi_turn is None else round(multi_turn, 3),
                                       MULTI_TURN_SHARE),
    }
    numbers = (f"concurrency peak {summary['inflight_peak']} (limit {CONCURRENCY_LIMIT}), "
               f"P99 {_num(p99, '.2f', ' s')} (limit {P99_LIMIT_S:g} s), "
               f"structured {_num(structured, '.0%')} (limit {STRUCTURED_SHARE:.0%}), "
               f"multi-turn {_num(multi_turn, '.0%')} (limit {MULTI_TURN_SHARE:.0%})")
    if summary["calls"] < MIN_CALLS:
        advice = "none yet"
        reasons = [f"{summary['calls']} call(s) recorded; {MIN_CALLS} are needed to judge"]
    elif crit["multi_turn_share"]["over"] and crit["structured_share"]["over"]:
        advice = "consider SGLang"
        reasons = ["mostly multi-turn and structured calls: RadixAttention reuses the shared "
                   "prefix and the grammar backend overlaps with decoding"]
    elif crit["concurrency"]["over"] or crit["p99_s"]["over"]:
        advice = "consider vLLM"
        reasons = ["high load (concurrency or P99 over the limit): continuous batching and "
                   "PagedAttention raise throughput"]
    else:
        advice = "stay on Ollama"
        reasons = ["no switch criterion calls for a serving engine"]
    return {"advice": advice, "reasons": reasons, "numbers": numbers, "criteria": crit}


def _criterion(value: float | None, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "over": value is not None and value > limit}


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"
