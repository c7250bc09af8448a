"""A worker process killed (SIGKILL) in the middle of an erasure; executing again recovers
to one consistent result. Needs a broker: a separate worker process is started and killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from mlops import services as mlops_services
from mlops.models import ModelVersion, TrainingRun
from rights import services
from rights.models import ErasureRequest, ErasureStep
from tests.mlops.helpers import wait_for, wait_for_run
from tests.rights import helpers as h

ROOT = Path(__file__).resolve().parent.parent.parent
QUEUE = "erasure-killed-worker-test"
ERIN = "erin@example.org"


def _database_url() -> str:
    cfg = connection.settings_dict
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def _start_worker() -> subprocess.Popen:
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DEBUG": "1",
        "DATABASE_URL": _database_url(), "STORAGE_ROOT": str(settings.STORAGE_ROOT),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Killed work is taken over once its lease lapses: seconds here, a minute by default.
        "TASK_LEASE_SECONDS": "5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", QUEUE, "--pool=solo", "-l", "WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


@pytest.mark.integration
@pytest.mark.skipif(settings.CELERY_EMBEDDED, reason="needs a broker and a separate worker process to kill")
@pytest.mark.django_db(transaction=True)
def test_killed_worker_mid_erasure_recovers_to_one_consistent_result(celery_worker, dpo_client):
    from rights.tasks import execute_erasure_request

    erin = h.subject_for(ERIN)
    act = h.activity()
    snap = h.snapshot_of(h.people_dataset(act=act, people=[erin, *h.crowd(149)], d=6))
    versions = []
    for k in range(3):
        run = mlops_services.training_run_queue(
            # Enough epochs that retraining the three models outlasts the 0.2 s poll below.
            snapshot=snap, name=f"killed-{k}", epochs=20, batch_size=16, noise_multiplier=1.0, seed=k,
            model_spec={"hidden_sizes": [32]}, validation_split=0.0, holdout_fraction=0.0,
        )
        assert wait_for_run(run.pk).status == "succeeded"  # trained by the fixture's worker
        versions.append(ModelVersion.objects.get(training_run_id=run.pk))
    request = services.erasure_request_receive(identifier=ERIN, ground="17_1_a")
    services.erasure_request_verify(erasure_request=request)
    ErasureRequest.objects.filter(pk=request.pk).update(status="in_progress", execution_started_at=timezone.now())

    worker = _start_worker()
    try:
        execute_erasure_request.apply_async(args=[request.pk], queue=QUEUE)
        wait_for(lambda: ErasureStep.objects.filter(request=request, name="delete_records", status="done").exists(),
                 timeout=240, what="the worker to delete the records")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    time.sleep(0.5)

    done = set(ErasureStep.objects.filter(request=request, status="done").values_list("name", flat=True))
    # Killed somewhere after the records went: in tainting, or in remediation (then with a
    # retraining run left 'running', which the resumed execution takes over).
    assert {"plan", "amend_snapshots", "delete_records"} <= done
    assert "certificate" not in done, "the worker finished before it was killed; the test proves nothing"
    request.refresh_from_db()
    assert request.status == "in_progress" and request.subject_id == erin.pk

    response = dpo_client.post(f"/api/v1/erasure-requests/{request.pk}/execute/", {}, format="json")
    assert response.status_code == 202, response.content
    wait_for(lambda: ErasureRequest.objects.filter(pk=request.pk, status="completed").exists(),
             timeout=300, what="the resumed erasure to complete")
    for version in versions:
        assert ModelVersion.objects.filter(supersedes=version).count() == 1
        version.refresh_from_db()
        assert version.status == "superseded"
    assert AuditEvent.objects.filter(action="erasure.certificate_issued", object_id=str(request.pk)).count() == 1
    assert not TrainingRun.objects.filter(status="running").exists()
    assert audit_chain_verify().ok
