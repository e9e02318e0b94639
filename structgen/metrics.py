"""Metrics (first version: in-process counters; prometheus-client comes with its issue)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest, GenerationResult
    from structgen.config import MetricsConfig
    from structgen.engine import StructuredResult


class Metrics:
    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []

    def record(self, request: GenerationRequest, gen: GenerationResult,
               result: StructuredResult) -> None:
        self.counts[f"requests:{gen.backend}"] += 1
        self.latencies.append(result.latency_s)

    def record_cache_hit(self, request: GenerationRequest, result: StructuredResult) -> None:
        self.counts["cache_hits"] += 1

    def record_failure(self, request: GenerationRequest, exc: Exception, latency: float) -> None:
        self.counts[f"failures:{type(exc).__name__}"] += 1

    def summary(self) -> dict[str, Any]:
        return dict(self.counts)
