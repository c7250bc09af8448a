"""The outbox sweeper and the leases, decided on rows (tests/e2e/test_faults.py runs the
same machinery against real outages and killed workers).

- What the redispatch sweep re-sends: work never sent, sent long ago and never started,
  or left by a worker whose lease lapsed; never work that is live or finished.
- What a second delivery does: it waits for a live lease (``LeaseHeld``) and never
  resets the work; a lapsed lease is taken over; a run that killed its worker
  ``MLOPS_MAX_ATTEMPTS`` times is failed, not tried forever.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from governance import dispatch
from governance.leases import LeaseHeld
from governance.models import ReportJob
from governance.reports import jobs
from mlops import services as mlops_services
from mlops.models import LedgerState, PrivacyLedgerEntry, RunStatus, TrainingRun
from rights import services as rights_services
from rights.execution import erasure_request_execute
from rights.models import ErasureRequest, ErasureStatus, ErasureStep, ErasureStepStatus
from tests.governance.reports_helpers import make_world
from tests.rights import helpers as h

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """What the sweeps publish, instead of a broker (which tests/e2e/test_faults.py has)."""
    calls: list[tuple[str, list]] = []

    def publish(task, *, args, task_id=None, queue=None):
        calls.append((task.name, list(args)))
        return True

    monkeypatch.setattr(dispatch, "task_publish", publish)  # every sweep sends through it
    return calls


def _run_like(template: TrainingRun, **fields) -> TrainingRun:
    run = TrainingRun.objects.get(pk=template.pk)
    run.pk = None
    run.celery_task_id = ""
    for name, value in fields.items():
        setattr(run, name, value)
    run.save()
    return run


def _ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


@override_settings(TASK_LEASE_SECONDS=60, REDISPATCH_UNSENT_AFTER_SECONDS=30, REDISPATCH_UNSTARTED_AFTER_SECONDS=1800)
def test_the_training_sweep_resends_unsent_lost_and_dead_runs_only(sent):
    template = make_world().model_version.training_run
    TrainingRun.objects.filter(pk=template.pk).update(status=RunStatus.SUCCEEDED)
    unsent = _run_like(template, status=RunStatus.QUEUED, dispatched_at=None)
    TrainingRun.objects.filter(pk=unsent.pk).update(created_at=_ago(40))
    just_queued = _run_like(template, status=RunStatus.QUEUED, dispatched_at=None)  # its commit hook may still send it
    waiting = _run_like(template, status=RunStatus.QUEUED, dispatched_at=_ago(600))  # behind other work
    lost = _run_like(template, status=RunStatus.QUEUED, dispatched_at=_ago(3600))
    live = _run_like(template, status=RunStatus.RUNNING, started_at=_ago(900), heartbeat_at=_ago(5),
                     dispatched_at=_ago(900))
    dead = _run_like(template, status=RunStatus.RUNNING, started_at=_ago(900), heartbeat_at=_ago(120),
                     dispatched_at=_ago(900))
    dead_resent = _run_like(template, status=RunStatus.RUNNING, started_at=_ago(900), heartbeat_at=_ago(120),
                            dispatched_at=_ago(30))  # re-sent after it was last seen: wait for that one
    remediation = _run_like(template, status=RunStatus.RUNNING, started_at=_ago(900), heartbeat_at=_ago(120),
                            remediates=template.model_versions.get())
    finished = _run_like(template, status=RunStatus.SUCCEEDED, dispatched_at=None)

    assert mlops_services.training_runs_redispatch() == 3
    assert sorted(args[0] for _, args in sent) == sorted([unsent.pk, lost.pk, dead.pk])
    for run in (just_queued, waiting, live, dead_resent, remediation, finished):
        assert [run.pk] not in [args for _, args in sent]
    assert TrainingRun.objects.get(pk=unsent.pk).dispatched_at is not None
    # Sent once per lapse: the next sweep leaves the re-sent ones to their new message.
    sent.clear()
    assert mlops_services.training_runs_redispatch() == 0


@override_settings(TASK_LEASE_SECONDS=60, REDISPATCH_UNSENT_AFTER_SECONDS=30, REDISPATCH_UNSTARTED_AFTER_SECONDS=1800)
def test_the_report_and_erasure_sweeps_resend_what_no_worker_has(sent):
    unsent = ReportJob.objects.create(kind="ropa")
    ReportJob.objects.filter(pk=unsent.pk).update(created_at=_ago(40))
    dead = ReportJob.objects.create(kind="ropa", status="running", heartbeat_at=_ago(120), dispatched_at=_ago(300))
    ReportJob.objects.create(kind="ropa", status="running", heartbeat_at=_ago(5), dispatched_at=_ago(300))
    ReportJob.objects.create(kind="ropa", status="succeeded", dispatched_at=None)
    assert jobs.report_jobs_redispatch() == 2
    assert sorted(args[0] for _, args in sent) == sorted([unsent.pk, dead.pk])

    sent.clear()
    act = h.activity()
    people = h.crowd(3)
    h.snapshot_of(h.people_dataset(act=act, people=people))
    requests = []
    for i, person in enumerate(people):
        request = rights_services.erasure_request_receive(identifier=f"sweep-{i}@example.org", ground="17_1_a")
        ErasureRequest.objects.filter(pk=request.pk).update(
            subject=person, status=ErasureStatus.IN_PROGRESS, execution_started_at=_ago(600), dispatched_at=None,
        )
        requests.append(request)
    failed = requests[2]
    ErasureStep.objects.create(
        request=failed, name="plan", status=ErasureStepStatus.FAILED, error="boom", started_at=_ago(500)
    )
    ErasureRequest.objects.filter(pk=requests[1].pk).update(dispatched_at=_ago(600), heartbeat_at=_ago(5))  # live
    assert rights_services.erasure_requests_redispatch() == 1
    assert sent == [("rights.execute_erasure_request", [requests[0].pk])]  # a failed one waits for the DPO


def test_a_second_delivery_waits_for_a_live_lease_and_changes_nothing():
    template = make_world().model_version.training_run
    run = _run_like(template, status=RunStatus.RUNNING, attempts=1, started_at=_ago(30), heartbeat_at=_ago(2))
    with pytest.raises(LeaseHeld) as held:
        mlops_services.training_run_execute(run_id=run.pk)
    assert 0 < held.value.retry_after <= 60 + 2
    again = TrainingRun.objects.get(pk=run.pk)
    assert (again.status, again.attempts, again.started_at) == (RunStatus.RUNNING, 1, run.started_at)

    job = ReportJob.objects.create(kind="ropa", status="running", heartbeat_at=_ago(2))
    with pytest.raises(LeaseHeld):
        jobs.report_job_run(job_id=job.pk)
    assert ReportJob.objects.get(pk=job.pk).status == "running"

    person = h.crowd(1)[0]
    h.snapshot_of(h.people_dataset(act=h.activity(), people=[person]))
    request = rights_services.erasure_request_receive(identifier="lease@example.org", ground="17_1_a")
    ErasureRequest.objects.filter(pk=request.pk).update(
        subject=person, status=ErasureStatus.IN_PROGRESS, heartbeat_at=_ago(2)
    )
    with pytest.raises(LeaseHeld):
        erasure_request_execute(request_id=request.pk)
    assert not ErasureStep.objects.filter(request=request).exists()


def test_a_lapsed_report_lease_is_taken_over_and_rendered():
    job = ReportJob.objects.create(kind="ropa", status="running", heartbeat_at=_ago(3600))
    job = jobs.report_job_run(job_id=job.pk)
    assert job.status == "succeeded" and job.sha256 and job.heartbeat_at is None


@override_settings(MLOPS_MAX_ATTEMPTS=3)
def test_a_run_that_lost_its_worker_too_often_is_failed_and_its_budget_released():
    world = make_world()
    template = world.model_version.training_run
    run = _run_like(template, status=RunStatus.RUNNING, attempts=3, started_at=_ago(900), heartbeat_at=_ago(900))
    PrivacyLedgerEntry.objects.create(
        dataset=world.snapshot.dataset, training_run=run, state=LedgerState.RESERVED, planned_epsilon=1.0, delta=1e-5,
    )
    run = mlops_services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.FAILED and "lost 3 times" in run.error
    assert PrivacyLedgerEntry.objects.get(training_run=run).state == LedgerState.RELEASED


def test_the_sweeper_does_nothing_in_embedded_mode(sent):
    with override_settings(CELERY_EMBEDDED=True):
        assert dispatch.stalled_work_redispatch() == {}
    assert sent == []
