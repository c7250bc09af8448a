"""From consent to a DP model: ingest, a snapshot taken at queue time, training by a
worker, the registry, the budget ledger and the lineage back to the processing activity."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import ConsentEvent, LawfulBasis, ProcessingActivity, Purpose
from governance.pseudonymisation import pseudonymise_many
from governance.services import data_subject_ensure_many
from mlops.models import ModelVersion, RunStatus
from provenance import services as provenance_services
from provenance.models import SnapshotMembership
from tests.mlops.helpers import wait_for_run


@pytest.mark.django_db(transaction=True)
def test_consent_filtered_snapshot_to_registered_dp_model(celery_worker, ml_client, dpo_client, auditor_client):
    purpose, _ = Purpose.objects.get_or_create(code="ml.training.e2e", defaults={"name": "ML training (e2e)"})
    activity = ProcessingActivity.objects.create(
        name="e2e training", controller_name="Acme", controller_contact="privacy@acme.test",
        dpo_contact="dpo@acme.test", security_measures="pseudonymisation", lawful_basis=LawfulBasis.CONSENT,
    )
    activity.purposes.set([purpose])
    identifiers = [f"e2e-person-{i}@example.test" for i in range(150)]
    subject_ids = data_subject_ensure_many(pseudonyms=pseudonymise_many(identifiers))
    now = timezone.now()
    withdrawn = set()
    events = []
    for n, subject_id in enumerate(subject_ids.values()):
        events.append(ConsentEvent(event_id=f"e2e-{n}-given", subject_id=subject_id, purpose=purpose, action="given",
                                   occurred_at=now - timedelta(days=10), notice_version="v1",
                                   notice_sha256="0" * 64, method="web form"))
        if n % 10 == 0:
            withdrawn.add(subject_id)
            events.append(ConsentEvent(event_id=f"e2e-{n}-withdrawn", subject_id=subject_id, purpose=purpose,
                                       action="withdrawn", occurred_at=now - timedelta(days=1),
                                       notice_version="v1", notice_sha256="0" * 64, method="web form"))
    ConsentEvent.objects.bulk_create(events)
    schema = {"features": [{"name": f"x{i}", "type": "float"} for i in range(5)], "label": {"name": "y", "type": "bool"}}
    dataset = provenance_services.dataset_create(
        name="e2e-dataset", owner="ml", processing_activity=activity, schema=schema, actor="test"
    )
    rng = random.Random(1)
    rows = []
    for identifier in identifiers:
        for _ in range(2):
            x = [rng.gauss(0, 1) for _ in range(5)]
            rows.append({"subject": identifier, "features": {f"x{i}": v for i, v in enumerate(x)},
                         "label": x[0] + x[1] > 0})
    provenance_services.dataset_records_ingest(dataset=dataset, rows=rows, actor="test")
    dpo_client.put(f"/api/v1/datasets/{dataset.pk}/privacy-budget/", {"epsilon_cap": 10, "delta": 1e-5}, format="json")

    response = ml_client.post("/api/v1/training-runs/", {
        "dataset": dataset.pk, "purpose": purpose.code, "epochs": 2, "batch_size": 16, "target_epsilon": 2.0,
        "target_delta": 1e-5, "model_spec": {"hidden_sizes": [16]},
    }, format="json")
    assert response.status_code == 202, response.content
    run = wait_for_run(response.json()["id"])
    assert run.status == RunStatus.SUCCEEDED, run.error

    trained_on = set(SnapshotMembership.objects.filter(snapshot=run.snapshot).values_list("subject_id", flat=True))
    assert trained_on and not trained_on & withdrawn  # withdrawn consent kept them out
    version = ModelVersion.objects.get(training_run=run)
    assert version.epsilon <= 2.0
    lineage = auditor_client.get(f"/api/v1/models/{version.pk}/lineage/")
    assert lineage.status_code == 200 and "e2e training" in lineage.content.decode()
    budget = auditor_client.get(f"/api/v1/datasets/{dataset.pk}/privacy-budget/").json()
    assert budget["spent_epsilon"] == pytest.approx(version.epsilon, rel=1e-9)
    assert budget["runs"][0]["training_run"] == run.pk
