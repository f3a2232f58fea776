"""Latency statistics shared by the benchmarks (nearest-rank percentiles, milliseconds)."""

from __future__ import annotations

import statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def latency_summary(ms: list[float], digits: int = 3) -> dict[str, float]:
    """n, p50/p90/p99, max and mean of latencies in milliseconds, rounded to ``digits``."""
    ms = sorted(ms)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), digits), "p90_ms": round(percentile(ms, 90), digits),
            "p99_ms": round(percentile(ms, 99), digits), "max_ms": round(ms[-1], digits),
            "mean_ms": round(statistics.fmean(ms), digits)}
