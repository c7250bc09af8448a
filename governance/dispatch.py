"""Sending background work to the broker so that an outage loses nothing.

The row that describes a piece of work (a queued training run, a report job, an erasure
request in progress) is its own outbox entry: it is written in the caller's transaction,
and the Celery task is published only after the commit. If the broker cannot be reached,
the API still answers (the work is recorded, ``dispatched_at`` stays empty) and the
redispatch sweeper, a beat task every ``REDISPATCH_SWEEP_SECONDS``, publishes it again
once the broker is back. It also re-sends work whose worker died (its lease lapsed, see
``governance.leases``) and work sent long ago that never started (a broker restarted
without persistence loses its queue). Every task refuses work in the wrong state and
waits for a live lease, so a message published twice is harmless.

Each app registers the sweep of its own kind of work (``redispatch_register``); this
module, at the bottom of the layers, knows none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)

_SWEEPS: dict[str, Callable[[], int]] = {}


def redispatch_register(name: str, sweep: Callable[[], int]) -> None:
    """Register ``sweep`` (returns how many tasks it re-sent) under ``name``; from AppConfig.ready."""
    _SWEEPS[name] = sweep


def task_publish(task: Any, *, args: list, task_id: str | None = None, queue: str | None = None) -> bool:
    """Publish ``task`` now; False (logged) if the broker cannot be reached.

    The retry policy in the settings keeps a failed publish to about a second, so an API
    request never hangs on a broker that is down.
    """
    options: dict[str, Any] = {}
    if task_id:
        options["task_id"] = task_id
    if queue:
        options["queue"] = queue
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode runs the task here and now; its errors are the caller's, as before.
        task.apply_async(args=args, **options)
        return True
    try:
        task.apply_async(args=args, **options)
    except Exception:
        logger.warning(
            "broker unreachable: %s%s not sent; it stays recorded and the redispatch sweeper sends it again",
            task.name, args, exc_info=True,
        )
        return False
    return True


def task_dispatch_on_commit(
    task: Any, *, args: list, task_id: str | None = None, queue: str | None = None,
    outbox: QuerySet | None = None,
) -> None:
    """Publish ``task`` after the current transaction commits; ``outbox``, the row recording
    the work, gets its ``dispatched_at`` once the broker has accepted it. Never raises for
    the broker."""

    def publish() -> None:
        if task_publish(task, args=args, task_id=task_id, queue=queue) and outbox is not None:
            try:
                outbox.update(dispatched_at=timezone.now())
            except Exception:
                # Not knowing it was sent only costs a duplicate message later, never the work.
                logger.warning("could not record that %s%s was sent", task.name, args, exc_info=True)

    transaction.on_commit(publish)


def tasks_redispatch(task: Any, *, outbox: QuerySet, stalled: Iterable[tuple[int, str | None, str | None]]) -> int:
    """A sweep's sending: ``task`` again for each stalled (row id, task id, queue); one
    UPDATE stamps ``dispatched_at`` on the rows the broker accepted. Returns how many."""
    sent = [
        pk for pk, task_id, queue in stalled
        if task_publish(task, args=[pk], task_id=task_id or None, queue=queue or None)
    ]
    if sent:
        outbox.filter(pk__in=sent).update(dispatched_at=timezone.now())
    return len(sent)


def unsent_cutoff(now: datetime | None = None) -> datetime:
    """Work recorded before this and never marked sent: the publish failed or the process died."""
    return (now or timezone.now()) - timedelta(seconds=settings.REDISPATCH_UNSENT_AFTER_SECONDS)


def unstarted_cutoff(now: datetime | None = None) -> datetime:
    """Work sent before this that never started: its message was probably lost."""
    return (now or timezone.now()) - timedelta(seconds=settings.REDISPATCH_UNSTARTED_AFTER_SECONDS)


def stalled_work_redispatch() -> dict[str, int]:
    """Run every registered sweep; one failing (logged) does not stop the others.

    Not in embedded mode: there is no broker to lose work and no second worker, and the
    leases are not refreshed on SQLite, so a sweep would take over work still running.
    """
    if settings.CELERY_EMBEDDED:
        logger.info("embedded mode (no broker): nothing to redispatch")
        return {}
    sent: dict[str, int] = {}
    for name, sweep in sorted(_SWEEPS.items()):
        try:
            sent[name] = sweep()
        except Exception:
            logger.exception("redispatch sweep %s failed", name)
            sent[name] = -1
    return sent
