"""Celery tasks for training, privacy audits, logic summaries and the stuck-run sweeper.

Thin: each takes ids and calls a service. acks_late and reject_on_worker_lost are set
globally, so a task whose worker dies mid-run is redelivered; the service then resets
the run and starts clean.
"""

from __future__ import annotations

import logging
import math
import time

from celery import shared_task

from governance.leases import LeaseHeld, task_wait_for_lease
from mlops import services
from mlops.services.external import external_runs_expire

logger = logging.getLogger(__name__)
PROGRESS_STATE_INTERVAL = 0.5  # seconds


# A database error is retried with backoff (training_run_execute releases the run's lease
# first, so the retry takes it over at once); a run another live worker trains is waited
# for (max_retries=None: for as long as that worker lives) and then found done.
@shared_task(
    bind=True, name="mlops.train_model", max_retries=None, autoretry_for=services.DATABASE_FAULTS,
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, retry_kwargs={"max_retries": 20},
)
def train_model(self, run_id: int) -> dict:
    last_sent = -math.inf

    def report(meta: dict) -> None:
        nonlocal last_sent
        # In eager mode there is no result backend to report to; the run row has it all.
        if self.request.called_directly or self.request.is_eager:
            return
        # The run row gets every epoch; the task state, a round trip to the result backend,
        # at most twice a second, so short epochs do not pay for their own progress reports.
        now = time.monotonic()
        if now - last_sent >= PROGRESS_STATE_INTERVAL:
            last_sent = now
            try:
                self.update_state(state="PROGRESS", meta=meta)
            except Exception:
                # Progress must never fail the work it reports on: a result backend that is
                # down (or blips) costs the task state an update, never the training. The
                # run row, written every epoch, keeps the progress.
                logger.warning("progress of training run %s not sent to the result backend", run_id, exc_info=True)

    try:
        run = services.training_run_execute(run_id=run_id, on_progress=report)
    except LeaseHeld as held:
        return task_wait_for_lease(self, held)
    return {"run_id": run_id, "status": run.status if run else "missing"}


@shared_task(bind=True, name="mlops.audit_membership_inference")
def audit_membership_inference(self, model_version_id: int) -> dict:
    """The loss attack alone; kept for messages sent before audits became jobs."""
    audit = services.membership_inference_audit_run(model_version_id=model_version_id)
    return {"model_version_id": model_version_id, "audit_id": audit.pk, "auc": audit.auc}


# As for training: a database error is retried with backoff, and a job another live worker
# runs is waited for and then found finished.
@shared_task(
    bind=True, name="mlops.privacy_audit", max_retries=None, autoretry_for=services.DATABASE_FAULTS,
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, retry_kwargs={"max_retries": 20},
)
def privacy_audit(self, job_id: int) -> dict:
    def report(meta: dict) -> None:
        if self.request.called_directly or self.request.is_eager:
            return
        try:
            self.update_state(state="PROGRESS", meta=meta)
        except Exception:
            logger.warning("progress of privacy audit job %s not sent to the result backend", job_id, exc_info=True)

    try:
        job = services.privacy_audit_job_run(job_id=job_id, on_progress=report)
    except LeaseHeld as held:
        return task_wait_for_lease(self, held)
    if job is None:
        return {"job_id": job_id, "status": "missing"}
    return {"job_id": job_id, "kind": job.kind, "status": job.status}


@shared_task(
    name="mlops.model_explanation_summary", max_retries=None, autoretry_for=services.DATABASE_FAULTS,
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, retry_kwargs={"max_retries": 20},
)
def model_explanation_summary(model_version_id: int) -> dict:
    """The logic summary of a newly registered version; a redelivery finds it stored."""
    summary = services.model_explanation_summary_compute(model_version_id=model_version_id)
    if summary is None:
        return {"model_version_id": model_version_id, "status": "missing"}
    return {"model_version_id": model_version_id, "summary_id": summary.pk, "error": summary.error}


@shared_task(bind=True, name="mlops.fail_stuck_training_runs")
def fail_stuck_training_runs(self) -> dict:
    # The same sweep releases external runs' reservations left unreported past
    # EXTERNAL_RUN_REPORT_HOURS (their trainer gave up or was lost).
    return {"failed": services.training_run_fail_stuck(), "external_expired": external_runs_expire()}


@shared_task(name="mlops.training_run_openlineage_emit")
def training_run_openlineage_emit(run_id: int) -> bool:
    """Send a finished run's OpenLineage events; best effort, like the snapshots' (a lineage
    backend being down must never fail or undo training)."""
    from mlops.models import TrainingRun
    from provenance.lineage_exports import openlineage_emit_training_run

    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return False
    try:
        openlineage_emit_training_run(run=run)
    except Exception:
        logger.exception("OpenLineage events for training run %s could not be sent", run_id)
        return False
    return True
