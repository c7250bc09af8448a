"""Training runs are reported to the lineage backend as OpenLineage run events."""

from __future__ import annotations

import json

import pytest
from django.conf import settings

from mlops import services
from mlops.models import ModelVersion, RunStatus
from provenance.lineage_exports import training_run_openlineage_run_id
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run
from tests.provenance.test_lineage import _check_run_event


@pytest.mark.django_db(transaction=True)
def test_a_training_run_emits_start_and_complete_with_snapshot_in_and_model_out(celery_worker):
    path = settings.OPENLINEAGE_FILE
    # The file is the session's, and run ids follow primary keys, which an earlier
    # transactional test may have used too: read only what this test appends.
    start_at = path.stat().st_size if path.exists() else 0
    snapshot = make_snapshot(n=200, d=5, seed=4)
    run = services.training_run_queue(snapshot=snapshot, name="ol-run", epochs=1, batch_size=32, noise_multiplier=1.0)
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = ModelVersion.objects.get(training_run=run)
    run_id = training_run_openlineage_run_id(run)

    def events():
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(start_at)
            appended = handle.read().decode()
        return [json.loads(line) for line in appended.splitlines() if run_id in line]

    wait_for(lambda: len(events()) == 2, timeout=60, what="the run's OpenLineage events")
    start, complete = events()
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    for event in (start, complete):
        _check_run_event(event)
        assert event["job"]["name"] == "training.ol-run"
        assert event["inputs"][0]["name"] == f"snapshots/{snapshot.pk}"
    assert complete["outputs"][0]["name"] == f"models/{version.name}/v{version.version}"
