"""Privacy audits as background work (issue 15): the outbox sweep re-sends a lost or
orphaned audit, a second delivery waits for a live worker and takes over a dead one's,
and on PostgreSQL with a real two-thread worker the same job delivered twice at once
leaves one result."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance import dispatch
from governance.leases import LeaseHeld
from governance.models import AuditEvent
from mlops import services
from mlops.models import AuditJobStatus, ModelVersion, PrivacyAuditJob, RunStatus
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run


def _ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


@pytest.fixture
def sent(monkeypatch):
    calls: list[tuple[str, list]] = []

    def publish(task, *, args, task_id=None, queue=None):
        calls.append((task.name, list(args)))
        return True

    monkeypatch.setattr(dispatch, "task_publish", publish)
    return calls


@pytest.fixture
def version(db, sent) -> ModelVersion:
    run = services.training_run_queue(
        snapshot=make_snapshot(n=100, d=3, seed=1), epochs=1, batch_size=16, noise_multiplier=1.0, seed=2,
        holdout_fraction=0.3, model_spec={"hidden_sizes": [4]},
    )
    run = services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return ModelVersion.objects.get(training_run=run)


@pytest.mark.django_db
def test_the_sweep_resends_lost_and_orphaned_audits_only(version, sent):
    jobs = {j.kind: j for j in version.audit_jobs.all()}
    loss, attribute = jobs["loss"], jobs["attribute"]
    sent.clear()
    # Recorded long ago, never sent (the broker was down): re-sent.
    PrivacyAuditJob.objects.filter(pk=loss.pk).update(status=AuditJobStatus.QUEUED, dispatched_at=None, created_at=_ago(3600))
    # Running, its worker's lease lapsed: re-sent.
    PrivacyAuditJob.objects.filter(pk=attribute.pk).update(
        status=AuditJobStatus.RUNNING, heartbeat_at=_ago(3600), started_at=_ago(3600), dispatched_at=_ago(7200))
    assert services.privacy_audit_jobs_redispatch() == 2
    assert sorted(args[0] for name, args in sent if name == "mlops.privacy_audit") == sorted([loss.pk, attribute.pk])

    # Live or finished work is never sent again.
    sent.clear()
    PrivacyAuditJob.objects.filter(pk=loss.pk).update(status=AuditJobStatus.COMPLETED)
    PrivacyAuditJob.objects.filter(pk=attribute.pk).update(heartbeat_at=timezone.now(), dispatched_at=timezone.now())
    assert services.privacy_audit_jobs_redispatch() == 0 and sent == []


@pytest.mark.django_db
def test_a_second_delivery_waits_for_a_live_worker_and_takes_over_a_dead_ones(version):
    job = version.audit_jobs.get(kind="loss")
    version.membership_inference_audits.all().delete()
    PrivacyAuditJob.objects.filter(pk=job.pk).update(
        status=AuditJobStatus.RUNNING, heartbeat_at=timezone.now(), attempts=1)
    with pytest.raises(LeaseHeld):
        services.privacy_audit_job_run(job_id=job.pk)
    assert not version.membership_inference_audits.exists()

    PrivacyAuditJob.objects.filter(pk=job.pk).update(heartbeat_at=_ago(3600))  # the worker died
    taken = services.privacy_audit_job_run(job_id=job.pk)
    assert taken.status == AuditJobStatus.COMPLETED and taken.attempts == 2
    assert version.membership_inference_audits.filter(attack="loss").count() == 1
    # A message for a job whose version is gone is dropped, not an error.
    assert services.privacy_audit_job_run(job_id=987654321) is None


@pytest.mark.django_db(transaction=True)
def test_one_job_delivered_twice_at_once_to_a_two_thread_worker_leaves_one_result(celery_worker, settings):
    if settings.CELERY_EMBEDDED:
        pytest.skip("embedded mode has no broker and no worker threads to race; set CELERY_BROKER_URL to run it")
    from mlops.tasks import privacy_audit

    settings.MLOPS_LIRA_REFERENCES = 4
    run = services.training_run_queue(
        snapshot=make_snapshot(n=160, d=4, seed=3), epochs=3, batch_size=16, noise_multiplier=1.0, seed=4,
        holdout_fraction=0.4, model_spec={"hidden_sizes": [16]},
    )
    assert wait_for_run(run.pk).status == RunStatus.SUCCEEDED
    version = ModelVersion.objects.get(training_run_id=run.pk)
    job = version.audit_jobs.get(kind="lira")
    wait_for(lambda: PrivacyAuditJob.objects.filter(pk=job.pk, status=AuditJobStatus.COMPLETED).exists(),
             what="the first LiRA audit")
    # Start over, then deliver the job twice at the same moment.
    version.membership_inference_audits.filter(attack="lira").delete()
    PrivacyAuditJob.objects.filter(pk=job.pk).update(status=AuditJobStatus.QUEUED, attempts=0, heartbeat_at=None)
    before = AuditEvent.objects.filter(action="membership_inference_audit.completed", object_id=str(version.pk)).count()
    privacy_audit.delay(job.pk)
    privacy_audit.delay(job.pk)
    wait_for(lambda: PrivacyAuditJob.objects.filter(pk=job.pk, status=AuditJobStatus.COMPLETED).exists(),
             what="the redelivered LiRA audit")
    assert version.membership_inference_audits.filter(attack="lira").count() == 1
    assert PrivacyAuditJob.objects.get(pk=job.pk).attempts == 1  # the second waited, then found it done
    after = AuditEvent.objects.filter(action="membership_inference_audit.completed", object_id=str(version.pk)).count()
    assert after - before == 1
