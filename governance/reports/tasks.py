"""Celery task that renders a queued report job (thin: the work is report_job_run)."""

from __future__ import annotations

from celery import shared_task

from governance.reports.jobs import report_job_run


@shared_task(name="governance.reports.generate_report")
def generate_report(job_id: int) -> dict:
    job = report_job_run(job_id=job_id)
    return {"job": job.pk, "status": job.status, "sha256": job.sha256}
