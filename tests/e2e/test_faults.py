"""Faults: a broker that is down, a database that drops, a worker host that dies, a task
delivered twice. Each test owns its fault: a Redis server, a TCP proxy in front of
PostgreSQL, or worker processes it starts and kills (see tests/faults.py). Never the
shared services.

What each proves (docs/architecture.md, "Reliability"):
- broker down: the API answers (JSON 2xx, about a second), the work is recorded, and
  after the broker is back the redispatch sweeper sends it and it finishes;
- database drop while training: the task retries and the run succeeds, one version, one
  ledger charge, never left 'running';
- a worker host killed outright (no redelivery before the visibility timeout): the lease
  lapses and the sweeper hands the run to another worker within the lease;
- the same run delivered twice while it trains: the duplicate waits, nothing is reset
  and no file of the new version is removed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from django.conf import settings
from django.test import override_settings

from governance import services as governance_services
from governance.models import AuditEvent, ReportJob
from governance.roles import DPO, ML_ENGINEER
from mlops import artifacts
from mlops import services as mlops_services
from mlops.models import LedgerState, ModelVersion, PrivacyLedgerEntry, RunStatus, TrainingRun
from provenance import services as provenance_services
from provenance.models import Snapshot
from rights import services as rights_services
from rights.models import ErasureRequest, ErasureStatus
from tests import faults
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run
from tests.provenance import helpers as ph
from tests.rights import helpers as h

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(settings.CELERY_EMBEDDED, reason="faults of a broker and of workers need a broker"),
]
LEASE = "5"  # seconds: killed work is taken over quickly here; a minute by default


def _key(role: str) -> dict[str, str]:
    user = governance_services.user_ensure_with_role(username=f"faults_{role}", role=role)
    _, raw = governance_services.api_key_create(user=user, name="faults")
    return {"Authorization": f"Token {raw}"}


def _version_files_intact(version: ModelVersion) -> bool:
    path = artifacts.absolute(version.artifact_path)
    return path.is_file() and artifacts.sha256_of(path) == version.artifact_sha256


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_api_records_the_work_and_it_finishes_after_the_broker_is_back():
    port, http = faults.free_port(), faults.free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis = faults.start_redis(port)
    lease = {"TASK_LEASE_SECONDS": LEASE}
    server = faults.start_server(http, broker=broker, extra=lease)
    worker = faults.start_worker("after-outage", broker=broker, extra=lease)
    ml, dpo = _key(ML_ENGINEER), _key(DPO)
    snapshot = make_snapshot(n=300, d=6, seed=3)
    erin = h.subject_for("erin.outage@example.org")
    h.snapshot_of(h.people_dataset(act=h.activity(), people=[erin, *h.crowd(9)]))
    li = provenance_services.dataset_create(
        name="outage snapshot", owner="ml", processing_activity=ph.activity(lawful_basis="legitimate_interests"),
        schema=ph.SCHEMA,
    )
    provenance_services.dataset_records_ingest(dataset=li, rows=[ph.row(f"p{i}") for i in range(5)], actor="test")
    erasure = rights_services.erasure_request_receive(identifier="erin.outage@example.org", ground="17_1_a")
    rights_services.erasure_request_verify(erasure_request=erasure)
    api = f"http://127.0.0.1:{http}/api/v1"
    try:
        faults.stop(redis, sig=signal.SIGKILL)  # the broker (and result backend) is gone

        answers = {}
        started = time.monotonic()
        answers["training"] = requests.post(f"{api}/training-runs/", headers=ml, timeout=60, json={
            "snapshot": snapshot.pk, "name": "queued-in-outage", "epochs": 2, "batch_size": 32,
            "noise_multiplier": 1.0, "model_spec": {"hidden_sizes": [8]},
        })
        answers["report"] = requests.post(f"{api}/reports/", headers=dpo, timeout=60, json={"kind": "ropa"})
        answers["snapshot"] = requests.post(f"{api}/snapshots/", headers=ml, timeout=60, json={
            "dataset": li.pk, "purpose": "ml.training.clinical_risk",
        })
        answers["erasure"] = requests.post(f"{api}/erasure-requests/{erasure.pk}/execute/", headers=dpo, timeout=60)
        seconds_per_answer = (time.monotonic() - started) / len(answers)
        for what, answer in answers.items():
            assert answer.status_code == (201 if what == "snapshot" else 202), (what, answer.status_code, answer.text[:300])
            assert answer.headers["Content-Type"].startswith("application/json"), what

        # Recorded, not sent: the rows are the outbox.
        run = TrainingRun.objects.get(pk=answers["training"].json()["id"])
        assert run.status == RunStatus.QUEUED and run.dispatched_at is None
        assert PrivacyLedgerEntry.objects.get(training_run=run).state == LedgerState.RESERVED
        job = ReportJob.objects.get(pk=answers["report"].json()["id"])
        assert job.status == "queued" and job.dispatched_at is None
        assert Snapshot.objects.get(pk=answers["snapshot"].json()["id"]).included_count == 5
        erasure.refresh_from_db()
        assert erasure.status == ErasureStatus.IN_PROGRESS and erasure.dispatched_at is None
        print(f"\nAPI answer with the broker down: {seconds_per_answer:.2f} s")  # docs/architecture.md

        # The broker comes back empty (no persistence); the sweeper sends what was recorded.
        redis = faults.start_redis(port)
        out = faults.manage("redispatch_stalled_work", broker=broker,
                            extra={"REDISPATCH_UNSENT_AFTER_SECONDS": "0", **lease})
        assert "training runs: 1 sent again" in out and "report jobs: 1 sent again" in out, out
        assert "erasure requests: 1 sent again" in out, out

        run = wait_for_run(run.pk, timeout=240)
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.dispatched_at is not None and run.attempts == 1
        wait_for(lambda: ReportJob.objects.get(pk=job.pk).status == "succeeded", timeout=120, what="the report")
        wait_for(lambda: ErasureRequest.objects.get(pk=erasure.pk).status == ErasureStatus.COMPLETED,
                 timeout=180, what="the erasure")
        assert ErasureRequest.objects.get(pk=erasure.pk).certificate_sha256
    finally:
        faults.stop(server)
        faults.stop(worker)
        faults.stop(redis)


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_while_training_is_retried_and_the_run_succeeds_once(tmp_path):
    proxy = faults.FaultProxy(faults.database_port())
    queue = "faults-db-outage"
    log = tmp_path / "worker.log"
    worker = faults.start_worker(
        "db-outage", queue=queue, database=faults.database_url(host="127.0.0.1", port=proxy.port),
        extra={"TASK_LEASE_SECONDS": LEASE}, log=log,
    )
    try:
        run = mlops_services.training_run_queue(
            snapshot=make_snapshot(n=1200, d=10, seed=8), name="db-outage", epochs=40, batch_size=32,
            noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}, queue=queue,
        )
        wait_for(lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2,
                 timeout=240, what="two epochs")
        proxy.cut()  # every connection of the worker is reset; new ones are refused
        time.sleep(3)
        proxy.restore()
        try:
            run = wait_for_run(run.pk, timeout=300)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker log:\n{faults.log_tail(log)}") from None
    finally:
        faults.stop(worker)
        proxy.close()

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts >= 2  # the attempt the outage broke, then the retry that finished
    assert len(run.epoch_metrics) == 40 and run.heartbeat_at is None
    version = ModelVersion.objects.get(training_run=run)
    assert _version_files_intact(version)
    entry = PrivacyLedgerEntry.objects.get(training_run=run)
    assert entry.state == LedgerState.SPENT and entry.epsilon == pytest.approx(run.epsilon)


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_host_is_recovered_by_the_lease_within_seconds_not_the_visibility_timeout():
    queue = "faults-host-dies"
    lease = {"TASK_LEASE_SECONDS": LEASE}
    first = faults.start_worker("host-dies", queue=queue, extra=lease)  # default visibility timeout: 75 min
    second = None
    try:
        run = mlops_services.training_run_queue(
            snapshot=make_snapshot(n=1200, d=10, seed=9), name="host-dies", epochs=40, batch_size=32,
            noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}, queue=queue,
        )
        wait_for(lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2,
                 timeout=240, what="two epochs")
        os.killpg(first.pid, signal.SIGKILL)  # the whole worker: nothing is requeued by Celery
        first.wait(timeout=30)
        killed_at = time.monotonic()
        second = faults.start_worker("survivor", queue=queue, extra=lease)

        with override_settings(TASK_LEASE_SECONDS=int(LEASE)):
            wait_for(lambda: mlops_services.training_runs_redispatch() > 0, timeout=60,
                     what="the sweeper to find the lapsed lease")
        recovered_after = time.monotonic() - killed_at
        wait_for(lambda: TrainingRun.objects.get(pk=run.pk).attempts == 2, timeout=60, what="the takeover")
        run = wait_for_run(run.pk, timeout=300)
    finally:
        faults.stop(first)
        faults.stop(second)
    print(f"\nkilled worker host: re-sent {recovered_after:.1f} s after the kill (lease {LEASE} s)")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2
    version = ModelVersion.objects.get(training_run=run)
    assert _version_files_intact(version)
    referenced = {artifacts.absolute(version.artifact_path)}
    assert set(artifacts.run_files(run.pk)) == referenced  # the dead attempt's files are gone


@pytest.mark.django_db(transaction=True)
def test_a_run_delivered_twice_while_it_trains_is_trained_once_and_keeps_its_files():
    from mlops.tasks import train_model

    queue = "faults-duplicate"
    lease = {"TASK_LEASE_SECONDS": LEASE}
    workers = [faults.start_worker(f"dup-{i}", queue=queue, extra=lease) for i in range(2)]
    try:
        run = mlops_services.training_run_queue(
            snapshot=make_snapshot(n=1200, d=10, seed=10), name="duplicate", epochs=30, batch_size=32,
            noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}, queue=queue,
        )
        wait_for(lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 1,
                 timeout=240, what="training to start")
        # A manual retry, a redelivery, a re-send by the sweeper: the same task again.
        train_model.apply_async(args=[run.pk], queue=queue)
        run = wait_for_run(run.pk, timeout=300)
        time.sleep(int(LEASE) + 3)  # the duplicate's wait ends and it finds the run done
    finally:
        for worker in workers:
            faults.stop(worker)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 1
    versions = ModelVersion.objects.filter(training_run=run)
    assert versions.count() == 1 and _version_files_intact(versions.get())
    actions = list(AuditEvent.objects.filter(object_type="training_run", object_id=str(run.pk))
                   .values_list("action", flat=True))
    assert actions.count("training_run.started") == 1 and "training_run.cancelled" not in actions


@pytest.mark.django_db(transaction=True)
def test_a_frozen_worker_that_wakes_after_its_run_was_taken_over_touches_nothing():
    """A worker paused past its lease (a frozen VM, heavy swapping): the run is taken over
    and finished by another; when the first wakes it must not cancel the run or remove the
    new version's weights (it did, before attempts were compared whatever the status)."""
    queue = "faults-frozen"
    lease = {"TASK_LEASE_SECONDS": LEASE}
    frozen = faults.start_worker("frozen", queue=queue, extra=lease)
    survivor = None
    try:
        run = mlops_services.training_run_queue(
            snapshot=make_snapshot(n=1200, d=10, seed=11), name="frozen", epochs=30, batch_size=32,
            noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}, queue=queue,
        )
        wait_for(lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2,
                 timeout=240, what="two epochs")
        os.killpg(frozen.pid, signal.SIGSTOP)
        survivor = faults.start_worker("survivor", queue=queue, extra=lease)
        with override_settings(TASK_LEASE_SECONDS=int(LEASE)):
            wait_for(lambda: mlops_services.training_runs_redispatch() > 0, timeout=60, what="the lapsed lease")
        run = wait_for_run(run.pk, timeout=300)
        assert run.status == RunStatus.SUCCEEDED and run.attempts == 2, run.error
        os.killpg(frozen.pid, signal.SIGCONT)
        time.sleep(5)  # it checks whether the run is still its own at least once a second
    finally:
        if frozen.poll() is None:
            os.killpg(frozen.pid, signal.SIGCONT)
        faults.stop(frozen)
        faults.stop(survivor)

    run.refresh_from_db()
    assert (run.status, run.attempts) == (RunStatus.SUCCEEDED, 2)
    version = ModelVersion.objects.get(training_run=run)
    assert version.status == "active" and _version_files_intact(version)
    actions = list(AuditEvent.objects.filter(object_type="training_run", object_id=str(run.pk))
                   .values_list("action", flat=True))
    assert "training_run.cancelled" not in actions and "training_run.failed" not in actions
