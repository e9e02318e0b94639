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

Fewer than :data:`MIN_CALLS` recorded calls is not enough to judge; the advice is then to
stay.
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
    """``{"advice": ..., "reasons": [...], "criteria": {...}}`` from a :func:`describe` dict."""
    p99 = summary["latency_p99_s"] or 0.0
    crit = {
        "concurrency": {"value": summary["inflight_peak"], "limit": CONCURRENCY_LIMIT,
                        "over": summary["inflight_peak"] > CONCURRENCY_LIMIT},
        "p99_s": {"value": round(p99, 3), "limit": P99_LIMIT_S, "over": p99 > P99_LIMIT_S},
        "structured_share": {"value": round(summary["structured_share"], 3),
                             "limit": STRUCTURED_SHARE,
                             "over": summary["structured_share"] > STRUCTURED_SHARE},
        "multi_turn_share": {"value": round(summary["multi_turn_share"], 3),
                             "limit": MULTI_TURN_SHARE,
                             "over": summary["multi_turn_share"] > MULTI_TURN_SHARE},
    }
    numbers = (f"concurrency peak {summary['inflight_peak']} (>{CONCURRENCY_LIMIT}?), "
               f"P99 {p99:.2f} s (>{P99_LIMIT_S:g} s?), "
               f"structured {summary['structured_share']:.0%} (>{STRUCTURED_SHARE:.0%}?), "
               f"multi-turn {summary['multi_turn_share']:.0%} (>{MULTI_TURN_SHARE:.0%}?)")
    if summary["calls"] < MIN_CALLS:
        advice = "stay on Ollama"
        reasons = [f"only {summary['calls']} call(s) recorded; need {MIN_CALLS} to judge"]
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
