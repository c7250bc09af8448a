"""A run that fails or is cancelled while training leaves no model, no files, no budget spent."""

from __future__ import annotations

import pytest
from django.conf import settings

from governance.models import AuditEvent
from mlops import artifacts, services
from mlops.models import LedgerState, ModelVersion, RunStatus, TrainingRun
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for


@pytest.mark.django_db
def test_a_run_that_fails_while_training_is_failed_with_the_reason():
    snapshot = make_snapshot(n=200, d=5)
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0)
    # A spec the engine refuses at training time (it was valid when queued).
    TrainingRun.objects.filter(pk=run.pk).update(model_spec={"hidden_sizes": [0]})

    result = services.training_run_execute(run_id=run.pk)

    assert result.status == RunStatus.FAILED and "hidden_sizes" in result.error
    assert result.ledger_entry.state == LedgerState.RELEASED
    assert not ModelVersion.objects.filter(training_run=run).exists()
    assert artifacts.run_files(run.pk) == []
    assert AuditEvent.objects.filter(action="training_run.failed", object_id=str(run.pk)).exists()


EPOCHS = 250


@pytest.mark.skipif(settings.CELERY_EMBEDDED, reason="in embedded mode the task runs inside the request, before a cancel")
@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_run_stops_the_worker_and_publishes_nothing(celery_worker, ml_client):
    snapshot = make_snapshot(n=1500, d=10)
    # Far more epochs than the test lets run (about 5 s of training): the cancel must land
    # while the run is still training, however fast the machine.
    run = services.training_run_queue(
        snapshot=snapshot, epochs=EPOCHS, batch_size=32, noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}
    )
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).progress.get("epoch", 0) >= 1, what="first epoch")
    # The Celery task state carries the same progress as the run row.
    from config.celery import app

    state = app.AsyncResult(run.celery_task_id)
    wait_for(lambda: state.state == "PROGRESS", timeout=30, what="the task's PROGRESS state")
    assert state.info["run_id"] == run.pk and state.info["epoch"] >= 1 and state.info["epsilon"] > 0

    response = ml_client.post(f"/api/v1/training-runs/{run.pk}/cancel/")

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The worker notices at the next epoch and abandons the run.
    wait_for(lambda: AuditEvent.objects.filter(action="training_run.cancelled", object_id=str(run.pk), actor="system")
             .exists(), timeout=120, what="the worker to abandon the run")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.progress["epoch"] < EPOCHS
    assert not ModelVersion.objects.filter(training_run=run).exists()
    assert artifacts.run_files(run.pk) == []
    assert run.ledger_entry.state == LedgerState.RELEASED
