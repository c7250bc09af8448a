import time
from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent
from provenance import selectors, services
from provenance.models import DataRecord, Snapshot, SnapshotAmendment, SnapshotMembership
from provenance.services import removal
from provenance.tasks import retention_purge
from tests.provenance.helpers import SCHEMA, activity, merkle_root_independent, purpose, row

CODE = "ml.training.clinical_risk"


def _setup():
    act = activity(lawful_basis="contract", retention_days=(365, 30))
    dataset = services.dataset_create(name=f"retention {time.time()}", owner="ml", processing_activity=act, schema=SCHEMA)
    services.dataset_records_ingest(dataset=dataset, rows=[row("old-a"), row("old-b"), row("keep")], actor="test")
    old = list(DataRecord.objects.filter(dataset=dataset).order_by("id").values_list("id", flat=True)[:2])
    DataRecord.objects.filter(pk__in=old).update(ingested_at=timezone.now() - timedelta(days=29))
    # Taken while the old records were still within retention.
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    DataRecord.objects.filter(pk__in=old).update(ingested_at=timezone.now() - timedelta(days=31))
    untouched_act = activity(lawful_basis="contract")  # no retention rule: never purged
    untouched = services.dataset_create(name=f"no retention {time.time()}", owner="ml", processing_activity=untouched_act, schema=SCHEMA)
    services.dataset_records_ingest(dataset=untouched, rows=[row("forever")], actor="test")
    DataRecord.objects.filter(dataset=untouched).update(ingested_at=timezone.now() - timedelta(days=3000))
    return dataset, snapshot, old, untouched


def _check_purged(dataset, snapshot, old, untouched, result):
    assert result["records_deleted"] == 2
    assert result["snapshots_amended"] == 1
    assert not DataRecord.objects.filter(pk__in=old).exists()
    assert DataRecord.objects.filter(dataset=dataset).count() == 1
    assert DataRecord.objects.filter(dataset=untouched).count() == 1
    assert SnapshotMembership.objects.filter(snapshot=snapshot).count() == 1
    amendment = SnapshotAmendment.objects.get(snapshot=snapshot)
    assert (amendment.reason, amendment.records_removed, amendment.subjects_removed) == ("retention", 2, 2)
    fresh = Snapshot.objects.get(pk=snapshot.pk)
    assert fresh.merkle_root == snapshot.merkle_root == amendment.previous_root  # history kept
    remaining = list(
        DataRecord.objects.filter(pk__in=SnapshotMembership.objects.filter(snapshot=snapshot).values("record_id"))
        .order_by("id").values_list("id", "content_hash")
    )
    assert amendment.new_root == merkle_root_independent(remaining) == selectors.snapshot_current_root(snapshot=fresh)
    event = AuditEvent.objects.filter(action="dataset.retention_purged").order_by("-position").first()
    assert event.details["records_deleted"] == 2 and event.details["snapshots_amended"] == 1


@pytest.mark.django_db
def test_retention_purge_deletes_expired_records_and_amends_snapshots():
    dataset, snapshot, old, untouched = _setup()
    audit = AuditEvent.objects.count()
    result = services.retention_purge(actor="test")
    _check_purged(dataset, snapshot, old, untouched, result)
    assert AuditEvent.objects.count() == audit + 1  # one event for the whole purge
    again = services.retention_purge(actor="test")
    assert again["records_deleted"] == 0 and SnapshotAmendment.objects.count() == 1


@pytest.mark.django_db
def test_the_dpo_runs_the_purge_through_the_api(dpo_client):
    dataset, snapshot, old, untouched = _setup()
    response = dpo_client.post("/api/v1/retention/purge/")
    assert response.status_code == 200
    _check_purged(dataset, snapshot, old, untouched, response.json())


@pytest.mark.django_db(transaction=True)
def test_the_periodic_task_runs_the_purge_on_a_worker(celery_worker):
    dataset, snapshot, old, untouched = _setup()
    retention_purge.delay()
    deadline = time.monotonic() + 30
    while DataRecord.objects.filter(pk__in=old).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    while not AuditEvent.objects.filter(action="dataset.retention_purged").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    event = AuditEvent.objects.get(action="dataset.retention_purged")
    _check_purged(dataset, snapshot, old, untouched, event.details)
    assert event.actor == "celery-beat"


@pytest.mark.django_db
def test_an_amendment_counts_a_person_as_removed_only_when_none_of_their_rows_remain():
    act = activity(lawful_basis="contract")
    dataset = services.dataset_create(name=f"partial {time.time()}", owner="ml", processing_activity=act, schema=SCHEMA)
    services.dataset_records_ingest(
        dataset=dataset, rows=[row("twice", age=30), row("twice", age=31), row("other")], actor="test"
    )
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    first, second = DataRecord.objects.filter(dataset=dataset, features__age__in=[30, 31]).order_by("id")

    (one,) = services.snapshot_records_remove(records=DataRecord.objects.filter(pk=first.pk), reason="retention")
    assert (one.records_removed, one.subjects_removed) == (1, 0)  # their other row is still in the snapshot
    (two,) = services.snapshot_records_remove(records=DataRecord.objects.filter(pk=second.pk), reason="retention")
    assert (two.records_removed, two.subjects_removed) == (1, 1)
    assert two.previous_root == one.new_root != snapshot.merkle_root


@pytest.mark.django_db
def test_removal_in_chunks_counts_a_person_whose_rows_span_chunks_once(monkeypatch):
    monkeypatch.setattr(removal, "_REMOVAL_CHUNK", 1)  # PostgreSQL path: one record id per statement
    act = activity(lawful_basis="contract")
    dataset = services.dataset_create(name=f"chunks {time.time()}", owner="ml", processing_activity=act, schema=SCHEMA)
    services.dataset_records_ingest(
        dataset=dataset, rows=[row("twice", age=30), row("twice", age=31), row("other")], actor="test"
    )
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    twice = DataRecord.objects.filter(dataset=dataset, features__age__in=[30, 31])

    (amendment,) = services.snapshot_records_remove(records=twice, reason="retention")
    assert (amendment.records_removed, amendment.subjects_removed) == (2, 1)
    assert SnapshotMembership.objects.filter(snapshot=snapshot).count() == 1
