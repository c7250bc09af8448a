"""What every benchmark module shares: results, timing, scale.

A benchmark module is ``benchmarks/bench_<name>.py`` with ``run(ctx: BenchContext) ->
list[Result]``. Every result carries a baseline measured in the same run on the same
data, and the ratio between the two; targets are printed, never asserted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    target: str  # e.g. "ratio <= 1.5" or "ratio >= 0.3"
    ratio: float | None = None
    note: str = ""

    def __post_init__(self):
        if self.ratio is None:
            self.ratio = self.value / self.baseline_value if self.baseline_value else float("inf")

    def as_dict(self) -> dict:
        return asdict(self)

    def meets_target(self) -> bool | None:
        parts = self.target.split()
        if len(parts) != 3 or parts[0] != "ratio":
            return None
        op, bound = parts[1], float(parts[2])
        return {"<=": self.ratio <= bound, ">=": self.ratio >= bound, "<": self.ratio < bound, ">": self.ratio > bound}.get(op)


@dataclass
class BenchContext:
    scale: float
    vendor: str  # "postgresql" or "sqlite"

    def n(self, full: int, minimum: int = 1) -> int:
        """A size scaled by BENCH_SCALE (1.0 is the size the issue asks for)."""
        return max(minimum, int(full * self.scale))


def bench_scale() -> float:
    return float(os.environ.get("BENCH_SCALE", "1.0"))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return p50, p95
