"""Rectification (Art. 16): corrected record versions, new snapshots use them, old
snapshots still verify, bad input names the field and writes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone

from governance.models import AuditEvent, DataCategory, DataSubject, ProcessingActivityDataCategory
from governance.pseudonymisation import pseudonymise
from governance.services import ServiceConflict, ServiceError
from provenance import services
from provenance.integrity import snapshot_verify
from provenance.models import DataRecord, SnapshotMembership
from provenance.signals import records_rectified
from tests.provenance.helpers import SCHEMA, activity, consent, purpose, row

pytestmark = pytest.mark.django_db
CODE = "ml.training.clinical_risk"


def _world(*, people: int = 3):
    now = timezone.now()
    act = activity(lawful_basis="consent")
    act.recipients = [{"name": "Registry of Clinical Outcomes", "country": "DE"}]
    act.save(update_fields=["recipients"])
    dataset = services.dataset_create(name=f"rectify {now.timestamp()}", owner="ml", processing_activity=act, schema=SCHEMA)
    services.dataset_records_ingest(dataset=dataset, rows=[row(f"r{i}", age=30 + i) for i in range(people)], actor="test")
    DataRecord.objects.filter(dataset=dataset).update(ingested_at=now - timedelta(days=2))
    for i in range(people):
        consent(f"r{i}", CODE, "given", now - timedelta(days=1))
    return dataset


def _person(external_id: str) -> DataSubject:
    return DataSubject.objects.get(pseudonym=pseudonymise(external_id))


def _members(snapshot) -> dict[int, dict]:
    ids = SnapshotMembership.objects.filter(snapshot=snapshot).values_list("record_id", flat=True)
    return {r.pk: r for r in DataRecord.objects.filter(pk__in=list(ids))}


def test_the_next_snapshot_has_the_corrected_value_and_the_earlier_one_still_verifies():
    dataset = _world()
    before = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    assert snapshot_verify(snapshot_id=before.pk).ok
    person = _person("r1")
    old = DataRecord.objects.get(dataset=dataset, subject=person)
    sent = []
    records_rectified.connect(lambda **kw: sent.append(kw), weak=False, dispatch_uid="test_rectified_capture")
    try:
        with TestCase.captureOnCommitCallbacks(execute=True):
            result = services.record_rectify(
                subject=person, dataset=dataset, reason="the clinic measured BMI again",
                corrections=[{"record": old.pk, "values": {"bmi": 31.25, "outcome": False}}], actor="dpo",
            )
    finally:
        records_rectified.disconnect(dispatch_uid="test_rectified_capture")
    new = DataRecord.objects.get(pk=result["records"][0]["new"])
    old.refresh_from_db()
    assert new.supersedes_id == old.pk and old.superseded_at is not None and new.superseded_at is None
    assert new.features == {**old.features, "bmi": 31.25} and new.label is False and old.features["bmi"] == 22.5
    assert new.ingested_at == old.ingested_at  # retention still counts from collection
    assert result["records"][0]["fields"] == ["bmi", "outcome"]
    assert result["recipients"] == [{"name": "Registry of Clinical Outcomes", "country": "DE"}]

    after = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    members = _members(after)
    assert new.pk in members and old.pk not in members
    assert members[new.pk].features["bmi"] == 31.25
    assert after.included_count == before.included_count == 3
    # The earlier snapshot is as it was, holds the old version, and verifies before and after.
    assert old.pk in _members(before) and new.pk not in _members(before)
    assert snapshot_verify(snapshot_id=before.pk).ok, snapshot_verify(snapshot_id=before.pk).line()
    assert snapshot_verify(snapshot_id=after.pk).ok
    # A reconstruction of a moment before the rectification takes no superseded version either.
    reconstruction = services.snapshot_create(
        dataset=dataset, purpose=purpose(CODE), at=timezone.now() - timedelta(hours=1)
    )
    assert old.pk not in _members(reconstruction)

    event = AuditEvent.objects.filter(action="records.rectified").get()
    assert event.details["records"] == [{"old": old.pk, "new": new.pk, "fields": ["bmi", "outcome"]}]
    assert "31.25" not in str(event.details)  # names of fields, never the values
    assert len(sent) == 1 and sent[0]["old_record_ids"] == [old.pk] and sent[0]["new_record_ids"] == [new.pk]
    assert sent[0]["subject_id"] == person.pk and sent[0]["dataset_id"] == dataset.pk
    assert sent[0]["recipients"] == result["recipients"]


def test_a_rectified_record_cannot_be_rectified_again_and_its_successor_can():
    dataset = _world(people=1)
    person = _person("r0")
    old = DataRecord.objects.get(dataset=dataset, subject=person)
    first = services.record_rectify(subject=person.pk, dataset=dataset.pk, reason="typo",
                                    corrections=[{"record": old.pk, "values": {"age": 41}}])
    new_id = first["records"][0]["new"]
    with pytest.raises(ServiceConflict) as caught:
        services.record_rectify(subject=person, dataset=dataset, reason="again",
                                corrections=[{"record": old.pk, "values": {"age": 42}}])
    assert caught.value.field == "corrections[0].record" and f"record {new_id}" in str(caught.value)
    second = services.record_rectify(subject=person, dataset=dataset, reason="again",
                                     corrections=[{"record": new_id, "values": {"age": 42}}])
    assert DataRecord.objects.get(pk=second["records"][0]["new"]).features["age"] == 42
    assert DataRecord.objects.filter(dataset=dataset, superseded_at__isnull=True).count() == 1


def test_erasure_of_the_person_deletes_every_version():
    dataset = _world(people=1)
    person = _person("r0")
    old = DataRecord.objects.get(dataset=dataset, subject=person)
    services.record_rectify(subject=person, dataset=dataset, reason="typo",
                            corrections=[{"record": old.pk, "values": {"age": 41}}])
    assert services.subject_records_delete(subject_id=person.pk)["records_deleted"] == 2
    assert not DataRecord.objects.filter(subject=person).exists()


def _written() -> tuple[int, int, int]:
    return (DataRecord.objects.count(), DataRecord.objects.filter(superseded_at__isnull=False).count(),
            AuditEvent.objects.filter(action="records.rectified").count())


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"bmi": 24.0, "weight": 80.0}, "corrections[0].values.weight", "not in the dataset's schema"),
        ({"age": "forty"}, "corrections[0].values.age", "expected int"),
        ({"bmi": True}, "corrections[0].values.bmi", "expected float"),
        ({"smoker": "yes"}, "corrections[0].values.smoker", "expected bool"),
        ({"region": "east"}, "corrections[0].values.region", "'east' is not one of north, south"),
        ({"outcome": 1}, "corrections[0].values.outcome", "expected bool"),
        ({"bmi": 22.5}, "corrections[0].values", "nothing to rectify"),
        ({}, "corrections[0].values", "at least one field"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_nothing_is_written(values, field, words):
    dataset = _world(people=1)
    person = _person("r0")
    record = DataRecord.objects.get(dataset=dataset, subject=person)
    before = _written()
    with pytest.raises(ServiceError) as caught:
        services.record_rectify(subject=person, dataset=dataset, reason="correction",
                                corrections=[{"record": record.pk, "values": values}])
    assert caught.value.field == field
    assert str(caught.value).startswith(field) and words in str(caught.value)
    if "expected" in words:
        assert "the schema's type is" in str(caught.value)
    assert _written() == before


def test_another_persons_record_is_refused_and_nothing_is_written():
    dataset = _world(people=2)
    me, other = _person("r0"), _person("r1")
    mine = DataRecord.objects.get(dataset=dataset, subject=me)
    theirs = DataRecord.objects.get(dataset=dataset, subject=other)
    before = _written()
    with pytest.raises(ServiceError) as caught:
        services.record_rectify(
            subject=me, dataset=dataset, reason="correction",
            corrections=[{"record": mine.pk, "values": {"age": 50}}, {"record": theirs.pk, "values": {"age": 51}}],
        )
    assert caught.value.field == "corrections[1].record"
    assert "not one of this person's records" in str(caught.value)
    assert _written() == before
    # The same sentence for a record that does not exist: nothing tells whose ids are whose.
    with pytest.raises(ServiceError) as missing:
        services.record_rectify(subject=me, dataset=dataset, reason="correction",
                                corrections=[{"record": 10**9, "values": {"age": 50}}])
    assert "not one of this person's records" in str(missing.value)


@pytest.mark.parametrize(
    ("corrections", "reason", "field"),
    [
        ([], "why", "corrections"),
        ("bmi=24", "why", "corrections"),
        ([{"record": "1", "values": {"age": 3}}], "why", "corrections[0].record"),
        ([{"record": 1, "values": {"age": 3}, "note": "x"}], "why", "corrections[0]"),
        ([{"record": 1, "values": {"age": 3}}], "  ", "reason"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(corrections, reason, field):
    dataset = _world(people=1)
    person = _person("r0")
    before = _written()
    with pytest.raises(ServiceError) as caught:
        services.record_rectify(subject=person, dataset=dataset, corrections=corrections, reason=reason)
    assert caught.value.field == field
    assert _written() == before


def test_the_retention_purge_deletes_both_versions_when_the_original_is_due():
    dataset = _world(people=1)
    person = _person("r0")
    old = DataRecord.objects.get(dataset=dataset, subject=person)
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    services.record_rectify(subject=person, dataset=dataset, reason="typo",
                            corrections=[{"record": old.pk, "values": {"age": 41}}])
    category, _ = DataCategory.objects.get_or_create(code="rectify-test-cat", defaults={"name": "rectify"})
    ProcessingActivityDataCategory.objects.create(
        processing_activity=dataset.processing_activity, data_category=category, retention=timedelta(days=1)
    )
    result = services.retention_purge()
    assert result["records_deleted"] == 2  # the correction did not restart the retention period
    assert not DataRecord.objects.filter(dataset=dataset).exists()
    assert snapshot_verify(snapshot_id=snapshot.pk).ok
