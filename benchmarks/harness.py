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


# Scale curves (issue 21.4): the same service-vs-baseline measurement at several multiples of
# today's size, so growth is visible. BENCH_CURVE=0 measures today's size only (a quick run).
CURVE_FACTORS = (0.1, 1.0, 3.0)


def curve_factors() -> tuple[float, ...]:
    """The multiples of today's size a curve measures (1.0 alone when BENCH_CURVE=0)."""
    return CURVE_FACTORS if os.environ.get("BENCH_CURVE", "1") != "0" else (1.0,)


def factor_label(factor: float) -> str:
    return f"{factor:g}x"


def growth(
    *,
    name: str,
    sizes: list[str],
    service: list[float],
    baseline: list[float],
    tolerance: float,
    note: str = "",
) -> Result:
    """One Result for a curve: value = the service's growth from the smallest to the largest
    size (t_last / t_first), baseline_value = the baseline's, ratio = their quotient. The target
    ``ratio <= tolerance`` says "grows no faster than its baseline" with ``tolerance`` for the
    noise of the four timings the quotient is made of."""
    if len(service) < 2 or len(service) != len(baseline) or len(sizes) != len(service):
        raise ValueError("a growth needs the same two or more sizes measured on both sides")
    points = ", ".join(f"{s}: {a:.4g} vs {b:.4g}" for s, a, b in zip(sizes, service, baseline, strict=True))
    return Result(
        name=f"{name}: growth {sizes[0]} -> {sizes[-1]}",
        value=service[-1] / service[0], unit="x", baseline="the baseline's growth",
        baseline_value=baseline[-1] / baseline[0], target=f"ratio <= {tolerance:g}",
        note=f"{points}" + (f"; {note}" if note else ""),
    )


def table_rows(table: str) -> int:
    """PostgreSQL's estimate of a table's rows (pg_class.reltuples, as of its last ANALYZE):
    for a note, without scanning the table. Curves need it: the consent state is read with a
    sequential scan of the whole event table, so every size pays for every row in it."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [table])
        row = cur.fetchone()
    return int(row[0]) if row else 0
