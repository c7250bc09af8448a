from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from provenance import services
from provenance.models import DataRecord, ImmutableError, Snapshot, SnapshotMembership
from tests.provenance.helpers import SCHEMA, activity, compatibility, consent, merkle_root_independent, purpose, row

pytestmark = pytest.mark.django_db
CODE = "ml.training.clinical_risk"


def _dataset(act, name="snapshots test"):
    return services.dataset_create(name=name, owner="ml", processing_activity=act, schema=SCHEMA)


def _ingest(dataset, rows, *, days_ago: float):
    services.dataset_records_ingest(dataset=dataset, rows=rows, actor="test")
    DataRecord.objects.filter(dataset=dataset, ingested_at__gt=timezone.now() - timedelta(minutes=5)).update(
        ingested_at=timezone.now() - timedelta(days=days_ago)
    )


def _members(snapshot):
    ids = SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True)
    return set(DataSubject.objects.filter(pk__in=ids).values_list("pseudonym", flat=True))


def test_withdrawn_subject_is_excluded_after_the_withdrawal_and_included_before():
    now = timezone.now()
    act = activity()
    dataset = _dataset(act)
    _ingest(dataset, [row("alice"), row("bob"), row("bob", 50), row("carol"), row("dave"), row("erin")], days_ago=20)
    consent("alice", CODE, "given", now - timedelta(days=10))
    consent("bob", CODE, "given", now - timedelta(days=10))
    consent("bob", CODE, "withdrawn", now - timedelta(days=5))
    consent("dave", CODE, "given", now - timedelta(days=10), expires_at=now - timedelta(days=8))
    consent("erin", "ml.training", "given", now - timedelta(days=10))  # an ancestor purpose covers it

    before = services.snapshot_create(dataset=dataset, purpose=purpose(CODE), at=now - timedelta(days=7))
    after = services.snapshot_create(dataset=dataset, purpose=purpose(CODE), at=now)

    p = pseudonymise
    assert _members(before) == {p("alice"), p("bob"), p("erin")}
    assert before.included_count == 4 and before.included_subjects == 3
    assert before.excluded_counts == {"no_consent": 1, "withdrawn": 0, "expired": 1, "retention_passed": 0, "restricted": 0, "objected": 0}
    assert _members(after) == {p("alice"), p("erin")}
    assert after.included_count == 2
    assert after.excluded_counts == {"no_consent": 1, "withdrawn": 2, "expired": 1, "retention_passed": 0, "restricted": 0, "objected": 0}
    assert after.lawful_basis == "consent"
    assert after.merkle_root == merkle_root_independent(
        list(DataRecord.objects.filter(pk__in=SnapshotMembership.objects.filter(snapshot=after).values("record_id"))
             .order_by("id").values_list("id", "content_hash"))
    )
    event = AuditEvent.objects.get(action="snapshot.created", object_id=str(after.pk))
    assert event.details["excluded"]["withdrawn"] == 2


def test_records_past_retention_and_records_not_yet_ingested_are_left_out():
    now = timezone.now()
    act = activity(lawful_basis="legitimate_interests", retention_days=(30, 10))
    dataset = _dataset(act)
    _ingest(dataset, [row("old-1"), row("old-2")], days_ago=15)
    _ingest(dataset, [row("new-1")], days_ago=5)
    current = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    assert current.lawful_basis == "legitimate_interests"
    assert _members(current) == {pseudonymise("new-1")}
    assert current.excluded_counts["retention_passed"] == 2
    earlier = services.snapshot_create(dataset=dataset, purpose=purpose(CODE), at=now - timedelta(days=6))
    assert _members(earlier) == {pseudonymise("old-1"), pseudonymise("old-2")}
    assert earlier.excluded_counts == {
        "no_consent": 0, "withdrawn": 0, "expired": 0, "retention_passed": 0, "restricted": 0, "objected": 0
    }


def test_purpose_not_covered_is_refused_citing_purpose_limitation(ml_client):
    dataset = _dataset(activity(purposes=(CODE,)))
    audit = AuditEvent.objects.count()
    response = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": purpose("ml.evaluation").code}, format="json")
    assert response.status_code == 400
    assert "Art. 5(1)(b)" in response.json()["purpose"][0]
    # The parent purpose is wider than the activity's: refused too.
    response = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": "ml.training"}, format="json")
    assert response.status_code == 400
    assert not Snapshot.objects.exists() and not SnapshotMembership.objects.exists()
    assert AuditEvent.objects.count() == audit


def test_a_recorded_art_6_4_assessment_allows_a_compatible_purpose(ml_client):
    dataset = _dataset(activity(lawful_basis="public_task", purposes=(CODE,)))
    services.dataset_records_ingest(dataset=dataset, rows=[row("a")], actor="test")
    assessment = compatibility(CODE, "ml.evaluation")
    response = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": "ml.evaluation"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["compatibility"] == assessment.pk
    assert response.json()["included_count"] == 1


def test_an_activity_purpose_covers_its_descendants():
    dataset = _dataset(activity(lawful_basis="contract", purposes=("ml.training",)))
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    assert snapshot.compatibility is None and snapshot.included_count == 0


def test_unknown_purpose_and_dataset_are_400_naming_the_field(ml_client):
    dataset = _dataset(activity())
    response = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": "no.such.purpose"}, format="json")
    assert response.status_code == 400 and "purpose" in response.json()
    response = ml_client.post("/api/v1/snapshots/", {"dataset": 999999, "purpose": CODE}, format="json")
    assert response.status_code == 400 and "dataset" in response.json()
    assert not Snapshot.objects.exists()


def test_manifest_recomputes_to_the_published_root(ml_client, auditor_client):
    now = timezone.now()
    dataset = _dataset(activity())
    _ingest(dataset, [row(f"s{i}", age=i) for i in range(13)], days_ago=3)
    for i in range(0, 13, 2):
        consent(f"s{i}", CODE, "given", now - timedelta(days=1))
    created = ml_client.post("/api/v1/snapshots/", {"dataset": dataset.pk, "purpose": CODE}, format="json")
    assert created.status_code == 201, created.content
    snapshot = auditor_client.get(f"/api/v1/snapshots/{created.json()['id']}/").json()
    assert snapshot["included_count"] == 7 and snapshot["excluded_counts"]["no_consent"] == 6
    response = auditor_client.get(f"/api/v1/snapshots/{snapshot['id']}/manifest/")
    assert response.status_code == 200
    manifest = __import__("json").loads(b"".join(response.streaming_content))
    pairs = [(r["record_id"], r["content_hash"]) for r in manifest["records"]]
    assert len(pairs) == 7 and pairs == sorted(pairs)
    assert merkle_root_independent(pairs) == snapshot["merkle_root"] == manifest["merkle_root"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_snapshots_cannot_be_changed_or_deleted_through_the_api(dpo_client, method):
    dataset = _dataset(activity())
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    response = dpo_client.generic(method, f"/api/v1/snapshots/{snapshot.pk}/", data="{}", content_type="application/json")
    assert response.status_code == 405
    assert "immutable" in response.json()["detail"]
    assert Snapshot.objects.filter(pk=snapshot.pk).exists()


def test_snapshots_and_membership_refuse_update_and_delete_in_the_orm():
    dataset = _dataset(activity(lawful_basis="contract"))
    services.dataset_records_ingest(dataset=dataset, rows=[row("a")], actor="test")
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    snapshot.included_count = 99
    with pytest.raises(ImmutableError):
        snapshot.save()
    with pytest.raises(ImmutableError):
        snapshot.delete()
    with pytest.raises(ImmutableError):
        Snapshot.objects.filter(pk=snapshot.pk).update(merkle_root="0" * 64)
    with pytest.raises(ImmutableError):
        SnapshotMembership.objects.filter(snapshot=snapshot).delete()
    assert SnapshotMembership.objects.filter(snapshot=snapshot).count() == 1
