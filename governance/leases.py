"""Leases on background work: who is working on a row now, and when they were last alive.

A task that claims a piece of work (a training run, a report job, an erasure request)
stamps the row's ``heartbeat_at`` and refreshes it from a background thread while it
works. Another delivery of the same task (a duplicate sent by the redispatch sweeper, a
manual retry, a redelivery after the broker's visibility timeout) finds the lease held and
waits for it instead of starting the work a second time. A worker that dies stops
refreshing: once ``TASK_LEASE_SECONDS`` have passed without a heartbeat the work is taken
over (by a redelivery, or by the sweeper that re-sends it), within minutes instead of the
broker's visibility timeout (an hour or more).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, connections
from django.db.models import QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)


class LeaseHeld(Exception):
    """Another live worker holds this work; try again after ``retry_after`` seconds."""

    def __init__(self, what: str, *, retry_after: float):
        super().__init__(f"{what} is being worked on by another worker")
        self.retry_after = retry_after


def lease_seconds() -> int:
    return int(settings.TASK_LEASE_SECONDS)


def lease_cutoff(now: datetime | None = None) -> datetime:
    """Heartbeats older than this belong to a worker presumed dead."""
    return (now or timezone.now()) - timedelta(seconds=lease_seconds())


def lease_is_live(heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    return heartbeat_at is not None and heartbeat_at > lease_cutoff(now)


def lease_refuse_if_held(heartbeat_at: datetime | None, *, what: str) -> None:
    """Raise ``LeaseHeld`` if a live worker holds the work whose heartbeat is ``heartbeat_at``."""
    if lease_is_live(heartbeat_at):
        raise LeaseHeld(what, retry_after=lease_retry_after(heartbeat_at))


def lease_retry_after(heartbeat_at: datetime | None, now: datetime | None = None) -> float:
    """Seconds until a lease last refreshed at ``heartbeat_at`` expires, plus a margin."""
    if heartbeat_at is None:
        return 1.0
    left = (heartbeat_at - lease_cutoff(now)).total_seconds()
    return max(1.0, left + 2.0)


@contextmanager
def lease_heartbeat(queryset: QuerySet, *, field: str = "heartbeat_at") -> Iterator[None]:
    """Refresh ``field`` on the rows of ``queryset`` every lease/6 seconds while the block runs.

    The refresh runs in a thread of its own with its own database connection, so it goes
    on while the worker's main thread trains or holds a transaction. Not when tasks run
    in-process on SQLite (make demo, the SQLite suite): one process, no second worker to keep
    out, and a second writer thread would only contend for SQLite's single write lock. With
    `make run`'s worker process on SQLite the leases are refreshed as on PostgreSQL.
    """
    if connection.vendor != "postgresql" and settings.CELERY_TASK_ALWAYS_EAGER:
        yield
        return
    stop = threading.Event()
    interval = max(1.0, lease_seconds() / 6)

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    queryset.update(**{field: timezone.now()})
                except Exception:
                    # The database is unreachable from here too; the main thread will notice.
                    # The lease then lapses, which is what lets another worker take over.
                    logger.warning("heartbeat of %s not written", queryset.model.__name__, exc_info=True)
                    connections.close_all()
        finally:
            connections.close_all()

    thread = threading.Thread(target=beat, name=f"lease-heartbeat-{queryset.model.__name__}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def task_wait_for_lease(task: object, held: LeaseHeld) -> dict:
    """From inside a bound Celery task that met ``held``: send it again once the lease may
    have lapsed. A duplicate so waits for the live worker and then finds the work done; a
    redelivery after a worker died takes the work over. In eager mode there is no second
    worker to wait for: the task just reports that the work is held."""
    request = task.request  # type: ignore[attr-defined]
    if request.is_eager or request.called_directly:
        return {"status": "held by another worker"}
    raise task.retry(countdown=held.retry_after, max_retries=None)  # type: ignore[attr-defined]
