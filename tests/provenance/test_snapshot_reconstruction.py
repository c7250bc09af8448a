"""Issue 14 item 1: a backdated snapshot must not be a way around a withdrawal.

A snapshot whose ``at`` lies before the moment it is taken (beyond the 5-minute clock
skew) reconstructs what was lawful then: it is recorded as ``reconstruction`` and can
never be trained on. A current snapshot holds only people covered both at ``at`` and
when it read the ledger, and training re-checks its members against the ledger at queue
time. Runs on SQLite and on PostgreSQL (CI runs the suite on both).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from mlops.models import TrainingRun
from provenance import services
from provenance.models import DataRecord, Snapshot
from tests.governance.consent_helpers import event
from tests.provenance.helpers import SCHEMA, activity, row

pytestmark = pytest.mark.django_db

CODE = "ml.training.clinical_risk"


def _people(n: int, tag: str) -> list[str]:
    return [f"{tag}-{i}@example.org" for i in range(n)]


def _world(dpo_client, people: list[str], *, given_days_ago: int = 60):
    """A consent dataset of ``people``, ingested and consented long ago."""
    dataset = services.dataset_create(name=f"recon {people[0]}", owner="ml", processing_activity=activity(), schema=SCHEMA)
    rows = [row(p, age=30 + i, outcome=bool(i % 2)) for i, p in enumerate(people)]
    assert dpo_client.post(f"/api/v1/datasets/{dataset.pk}/records/", rows, format="json").status_code == 201
    # The records have been held for months (ingested_at is stamped on arrival).
    DataRecord.objects.filter(dataset=dataset).update(ingested_at=timezone.now() - timedelta(days=90))
    given = timezone.now() - timedelta(days=given_days_ago)
    response = dpo_client.post(
        "/api/v1/consent-events/", [event(p, CODE, "given", given) for p in people], format="json"
    )
    assert response.status_code == 201, response.content
    return dataset


def _withdraw(dpo_client, people: list[str], when) -> None:
    response = dpo_client.post("/api/v1/consent-events/", [event(p, CODE, "withdrawn", when) for p in people], format="json")
    assert response.status_code == 201, response.content


def _train(client, snapshot_id: int):
    return client.post(
        "/api/v1/training-runs/",
        {"snapshot": snapshot_id, "name": f"recon-{snapshot_id}", "epochs": 1, "batch_size": 2,
         "allow_non_private": True, "validation_split": 0.0, "holdout_fraction": 0.0},
        format="json",
    )


def test_a_backdated_snapshot_is_a_reconstruction_that_cannot_be_trained_on(dpo_client, ml_client):
    people = _people(10, "backdated")
    dataset = _world(dpo_client, people)
    _withdraw(dpo_client, people[:4], timezone.now() - timedelta(days=2))

    old = timezone.now() - timedelta(days=10)
    response = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE, "at": old.isoformat()},
                              format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    # What was lawful ten days ago: everyone, withdrawals came later. Told as a reconstruction.
    assert body["included_subjects"] == 10 and body["excluded_counts"]["withdrawn"] == 0
    assert body["kind"] == "reconstruction" and body["trainable"] is False

    runs = TrainingRun.objects.count()
    refused = _train(ml_client, body["id"])
    assert refused.status_code == 409, refused.content
    assert "reconstruction" in refused.json()["detail"]
    assert TrainingRun.objects.count() == runs

    # The same dataset now: the four who withdrew are out, and it may be trained on.
    current = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE}, format="json").json()
    assert current["kind"] == "current" and current["trainable"] is True
    assert current["included_subjects"] == 6 and current["excluded_counts"]["withdrawn"] == 4
    accepted = _train(ml_client, current["id"])
    assert accepted.status_code == 202, accepted.content


def test_training_a_current_snapshot_after_a_withdrawal_is_refused_naming_how_many(dpo_client, ml_client):
    people = _people(10, "after")
    dataset = _world(dpo_client, people)
    snapshot = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE}, format="json").json()
    assert snapshot["included_subjects"] == 10 and snapshot["kind"] == "current"

    _withdraw(dpo_client, people[:3], timezone.now())
    runs = TrainingRun.objects.count()
    refused = _train(ml_client, snapshot["id"])
    assert refused.status_code == 409, refused.content
    message = refused.json()["detail"]
    assert "3 people" in message and "fresh snapshot" in message
    assert TrainingRun.objects.count() == runs

    fresh = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE}, format="json").json()
    assert fresh["included_subjects"] == 7
    assert _train(ml_client, fresh["id"]).status_code == 202


def test_a_current_snapshot_leaves_out_whoever_withdrew_between_at_and_its_reading_of_the_ledger(dpo_client):
    """``at`` a minute ago is within the clock skew, so the snapshot is current: it may be
    trained on, so it must hold only people still covered when it read the ledger."""
    people = _people(4, "skew")
    dataset = _world(dpo_client, people)
    _withdraw(dpo_client, people[:1], timezone.now() - timedelta(seconds=30))
    at = timezone.now() - timedelta(minutes=2)
    response = dpo_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE, "at": at.isoformat()},
                               format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "current"
    assert body["included_subjects"] == 3 and body["excluded_counts"]["withdrawn"] == 1


def test_the_kind_is_recorded_on_the_snapshot_and_in_its_audit_event(dpo_client):
    from governance.models import AuditEvent

    people = _people(2, "audit")
    dataset = _world(dpo_client, people)
    snapshot = services.snapshot_create(
        dataset=dataset, purpose=dataset.processing_activity.purposes.first(), at=timezone.now() - timedelta(days=1)
    )
    assert Snapshot.objects.get(pk=snapshot.pk).kind == "reconstruction"
    event_row = AuditEvent.objects.filter(action="snapshot.created", object_id=str(snapshot.pk)).get()
    assert event_row.details["kind"] == "reconstruction"
