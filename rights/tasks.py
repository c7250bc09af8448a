"""Celery task of the erasure workflow: thin, takes an id, calls the service."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

# A deadlock victim or a dropped database connection is retried with backoff: every step
# done is skipped on the next attempt, so retrying is always safe.
_DATABASE_FAULTS = (OperationalError, InterfaceError)


# An execution another live worker is running is waited for (max_retries=None: for as long
# as that worker lives), then found done.
@shared_task(
    bind=True, name="rights.execute_erasure_request", acks_late=True, autoretry_for=_DATABASE_FAULTS,
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, retry_kwargs={"max_retries": 20}, max_retries=None,
)
def execute_erasure_request(self, request_id: int) -> dict:
    """Execute (or resume) an erasure; every step already done is skipped."""
    from governance.leases import LeaseHeld, task_wait_for_lease
    from rights.execution import erasure_request_execute

    try:
        return erasure_request_execute(request_id=request_id)
    except LeaseHeld as held:
        return task_wait_for_lease(self, held)


@shared_task(name="rights.open_erasure_requests_for_withdrawals")
def open_erasure_requests_for_withdrawals() -> int:
    """Catch up on withdrawals whose request was not opened after their commit (the
    receiver failed, or the process died between the commit and the receiver)."""
    from rights.services import erasure_requests_open_for_withdrawals_sweep

    return erasure_requests_open_for_withdrawals_sweep()


@shared_task(name="rights.send_deadline_digest")
def send_deadline_digest() -> int:
    """Daily: e-mail each DPO the erasure requests overdue or due within 7 days (at most
    once a day; the number of e-mails sent)."""
    from rights.digest import deadline_digest_send

    return deadline_digest_send()


@shared_task(
    bind=True, name="rights.build_rights_answer", acks_late=True, autoretry_for=_DATABASE_FAULTS,
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, retry_kwargs={"max_retries": 20}, max_retries=None,
)
def build_rights_answer(self, request_id: int) -> dict:
    """Build the answer of an access (Art. 15) or portability (Art. 20) request; a
    redelivered task finds it built, a duplicate waits for the live worker's lease."""
    from governance.leases import LeaseHeld, task_wait_for_lease
    from rights.services.answers import rights_request_answer_build

    try:
        return rights_request_answer_build(request_id=request_id)
    except LeaseHeld as held:
        return task_wait_for_lease(self, held)


@shared_task(name="rights.purge_expired_answers")
def purge_expired_answers() -> int:
    """Daily: delete access and portability answers past RIGHTS_ANSWER_DOWNLOAD_DAYS."""
    from rights.services.answers import rights_answers_purge

    return rights_answers_purge()
