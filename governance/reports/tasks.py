"""Celery task that renders a queued report job (thin: the work is report_job_run)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from governance.leases import LeaseHeld, task_wait_for_lease
from governance.reports.jobs import report_job_run


# A dropped database connection is retried with backoff (rendering again is harmless); a
# job another live worker renders is waited for (max_retries=None: as long as it lives).
@shared_task(
    bind=True, name="governance.reports.generate_report", max_retries=None,
    autoretry_for=(OperationalError, InterfaceError), retry_backoff=2, retry_backoff_max=60, retry_jitter=True,
    retry_kwargs={"max_retries": 20},
)
def generate_report(self, job_id: int) -> dict:
    try:
        job = report_job_run(job_id=job_id)
    except LeaseHeld as held:
        return task_wait_for_lease(self, held)
    return {"job": job.pk, "status": job.status, "sha256": job.sha256}
