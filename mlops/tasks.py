"""Celery tasks for training, membership-inference audits and the stuck-run sweeper.

Thin: each takes ids and calls a service. acks_late and reject_on_worker_lost are set
globally, so a task whose worker dies mid-run is redelivered; the service then resets
the run and starts clean.
"""

from __future__ import annotations

from celery import shared_task

from mlops import services


@shared_task(bind=True, name="mlops.train_model")
def train_model(self, run_id: int) -> dict:
    def report(meta: dict) -> None:
        # In eager mode there is no result backend to report to; the run row has it all.
        if not self.request.called_directly and not self.request.is_eager:
            self.update_state(state="PROGRESS", meta=meta)

    run = services.training_run_execute(run_id=run_id, on_progress=report)
    return {"run_id": run_id, "status": run.status if run else "missing"}


@shared_task(bind=True, name="mlops.audit_membership_inference")
def audit_membership_inference(self, model_version_id: int) -> dict:
    audit = services.membership_inference_audit_run(model_version_id=model_version_id)
    return {"model_version_id": model_version_id, "audit_id": audit.pk, "auc": audit.auc}


@shared_task(bind=True, name="mlops.fail_stuck_training_runs")
def fail_stuck_training_runs(self) -> dict:
    return {"failed": services.training_run_fail_stuck()}
