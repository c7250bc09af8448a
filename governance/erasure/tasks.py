"""Celery task of the erasure workflow: thin, takes an id, calls the service."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="governance.erasure.execute_erasure_request", acks_late=True)
def execute_erasure_request(request_id: int) -> dict:
    """Execute (or resume) an erasure; every step already done is skipped."""
    from governance.erasure.execution import erasure_request_execute

    return erasure_request_execute(request_id=request_id)
