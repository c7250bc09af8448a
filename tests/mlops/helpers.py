"""Waiting for work done by a real Celery worker (or in-process in embedded mode)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mlops.models import TrainingRun


def wait_for(predicate: Callable[[], bool], *, timeout: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_run(run_id: int, *, statuses=("succeeded", "failed", "cancelled"), timeout: float = 180.0) -> TrainingRun:
    wait_for(
        lambda: TrainingRun.objects.filter(pk=run_id, status__in=statuses).exists(),
        timeout=timeout, what=f"training run {run_id} to reach {statuses}",
    )
    return TrainingRun.objects.get(pk=run_id)
