"""The snapshot integrity verifier: each tampering the manifest check misses is named.

Tampering goes around the services the way someone with database access would: a
queryset .update() where the model allows it (records), raw SQL where the ORM refuses
(snapshots and memberships are immutable in the ORM; there are no database triggers).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from governance.services import ServiceConflict, audit_event_record
from provenance import services
from provenance.integrity import snapshot_verify, snapshots_verify
from provenance.models import AmendmentReason, DataRecord, Snapshot, SnapshotAmendment, SnapshotMembership
from tests.provenance.helpers import activity, consent, merkle_root_independent, purpose, row

pytestmark = pytest.mark.django_db
CODE = "ml.training.clinical_risk"
AWKWARD_SCHEMA = {
    "features": [
        {"name": "big", "type": "float"},
        {"name": "tenth", "type": "float"},
        {"name": "zero", "type": "float"},
        {"name": "tiny", "type": "float"},
        {"name": "count", "type": "int"},
    ],
    "label": {"name": "score", "type": "float"},
}
AWKWARD_ROWS = [
    {"subject": "awk-1", "features": {"big": 1e20, "tenth": 0.1, "zero": -0.0, "tiny": 5e-324, "count": 2**62}, "label": -0.0},
    {"subject": "awk-2", "features": {"big": 1.7976931348623157e308, "tenth": 1e-7, "zero": 0.0, "tiny": -1e-300,
                                      "count": 10**30}, "label": 0.30000000000000004},
    {"subject": "awk-3", "features": {"big": 12345678901234567890, "tenth": 1, "zero": -0.0, "tiny": 2.5e-8,
                                      "count": -(2**63)}, "label": 1e16},
]


def _table(model) -> str:
    return model._meta.db_table


def _sql(statement: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _world(*, people: int = 4, uncovered: int = 0, name: str = "verify test"):
    """A consent-based dataset: ``people`` with consent (one record each, the first two
    people have two), ``uncovered`` without consent; a snapshot of it now."""
    now = timezone.now()
    act = activity()
    dataset = services.dataset_create(
        name=f"{name} {now.timestamp()}", owner="ml", processing_activity=act,
        schema={"features": [{"name": "age", "type": "int"}, {"name": "bmi", "type": "float"},
                             {"name": "smoker", "type": "bool"},
                             {"name": "region", "type": "category", "categories": ["north", "south"]}],
                "label": {"name": "outcome", "type": "bool"}},
    )
    rows = [row(f"p{i}", age=30 + i, outcome=bool(i % 2)) for i in range(people)]
    rows += [row("p0", age=70), row("p1", age=71, outcome=False)]
    rows += [row(f"nc{i}") for i in range(uncovered)]
    services.dataset_records_ingest(dataset=dataset, rows=rows, actor="test")
    DataRecord.objects.filter(dataset=dataset).update(ingested_at=now - timedelta(days=20))
    for i in range(people):
        consent(f"p{i}", CODE, "given", now - timedelta(days=10))
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE), at=now)
    assert snapshot.included_count == people + 2
    return dataset, snapshot


def _member_ids(snapshot) -> list[int]:
    return list(SnapshotMembership.objects.filter(snapshot=snapshot).order_by("record_id").values_list("record_id", flat=True))


def _root_of_members(snapshot) -> str:
    return merkle_root_independent(list(
        SnapshotMembership.objects.filter(snapshot=snapshot).order_by("record_id")
        .values_list("record_id", "record__content_hash")
    ))


def _fails(snapshot, expected: str):
    result = snapshot_verify(snapshot_id=snapshot.pk)
    assert not result.ok, result
    assert result.first_difference == expected, result.first_difference
    return result


# --- Clean snapshots verify ------------------------------------------------------------


def test_a_clean_snapshot_with_awkward_numbers_verifies_ok():
    # jsonb turns 1e20 into 100000000000000000000 and -0.0 into 0.0; the verifier
    # normalises through the same schema path as ingestion and still agrees (on SQLite the
    # JSON text round-trips as is, so the suite checks both behaviours).
    act = activity(lawful_basis="legitimate_interests")
    dataset = services.dataset_create(name="awkward numbers", owner="ml", processing_activity=act, schema=AWKWARD_SCHEMA)
    services.dataset_records_ingest(dataset=dataset, rows=AWKWARD_ROWS, actor="test")
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    assert snapshot.included_count == 3
    result = snapshot_verify(snapshot_id=snapshot.pk)
    assert result.ok, result.first_difference
    assert result.checked_members == 3 and result.first_difference is None and result.audit_checked


def test_members_are_read_in_chunks_with_a_fixed_number_of_queries():
    _, snapshot = _world(people=28)
    with CaptureQueriesContext(connection) as small_chunks:
        assert snapshot_verify(snapshot_id=snapshot.pk, chunk_size=7).ok
    with CaptureQueriesContext(connection) as one_chunk:
        assert snapshot_verify(snapshot_id=snapshot.pk, chunk_size=10_000).ok
    # One streamed read of the members whatever their number: no query per row or chunk
    # beyond the cursor's own fetches (which CaptureQueriesContext does not count).
    assert len(small_chunks) == len(one_chunk) <= 10


def test_an_amended_snapshot_verifies_ok_after_an_erasure_and_a_retention_purge():
    dataset, snapshot = _world(people=5)
    person = DataSubject.objects.get(pseudonym=pseudonymise("p0"))
    [amendment] = services.snapshot_records_remove(
        records=DataRecord.objects.filter(subject=person), reason=AmendmentReason.ERASURE,
        erasure_request_id=991, subject_ids=[person.pk],
    )
    services.subject_records_delete(subject_id=person.pk)
    # The record the erasure workflow (rights) writes for the amendments it made.
    audit_event_record(
        actor="test", action="erasure.snapshots_amended", object_type="erasure_request", object_id=991,
        details={"amendments": [{"snapshot": snapshot.pk, "sequence": 1, "new_root": amendment.new_root}]},
    )
    assert amendment.records_removed == 2 and amendment.new_root != snapshot.merkle_root
    result = snapshot_verify(snapshot_id=snapshot.pk)
    assert result.ok, result.first_difference
    assert result.checked_members == snapshot.included_count - 2

    other = DataSubject.objects.get(pseudonym=pseudonymise("p3"))
    services.snapshot_records_remove(records=DataRecord.objects.filter(subject=other), reason=AmendmentReason.RETENTION)
    DataRecord.objects.filter(subject=other)._raw_delete(DataRecord.objects.db)
    result = snapshot_verify(snapshot_id=snapshot.pk)
    assert result.ok, result.first_difference
    assert result.checked_members == snapshot.included_count - 3


# --- Each tampering is named -----------------------------------------------------------


def test_a_changed_feature_is_named_by_record():
    _, snapshot = _world()
    third = _member_ids(snapshot)[2]
    record = DataRecord.objects.get(pk=third)
    DataRecord.objects.filter(pk=third).update(features={**record.features, "age": record.features["age"] + 1})
    _fails(snapshot, f"record {third} (membership position 3): features or label differ from its content hash")


def test_a_changed_label_is_named_by_record():
    _, snapshot = _world()
    first = _member_ids(snapshot)[0]
    record = DataRecord.objects.get(pk=first)
    DataRecord.objects.filter(pk=first).update(label=not record.label)
    _fails(snapshot, f"record {first} (membership position 1): features or label differ from its content hash")


def test_a_changed_content_with_a_rewritten_content_hash_no_longer_gives_the_root():
    from provenance.schema import content_hash

    _, snapshot = _world()
    last = _member_ids(snapshot)[-1]
    record = DataRecord.objects.get(pk=last)
    features = {**record.features, "bmi": 40.0}
    DataRecord.objects.filter(pk=last).update(features=features, content_hash=content_hash(features, record.label))
    _fails(snapshot, "root recomputed from the members differs from the stored root")


def test_a_value_outside_the_schema_is_named():
    _, snapshot = _world()
    first = _member_ids(snapshot)[0]
    record = DataRecord.objects.get(pk=first)
    DataRecord.objects.filter(pk=first).update(features={**record.features, "region": "west"})
    result = snapshot_verify(snapshot_id=snapshot.pk)
    assert not result.ok
    assert result.first_difference == (
        f"record {first} (membership position 1): features or label differ from its content hash (and they no "
        "longer fit the dataset's schema: field 'region': 'west' is not one of north, south)"
    )


def test_a_changed_membership_subject_is_named_by_position():
    _, snapshot = _world()
    second = _member_ids(snapshot)[1]
    stranger = DataSubject.objects.create(pseudonym=pseudonymise("stranger"))
    _sql(f"UPDATE {_table(SnapshotMembership)} SET subject_id = %s WHERE snapshot_id = %s AND record_id = %s",
         [stranger.pk, snapshot.pk, second])
    _fails(snapshot, f"membership position 2 (record {second}): subject differs from the record's subject")


def test_an_inserted_member_with_a_rewritten_root_is_found_by_the_count():
    dataset, snapshot = _world(uncovered=1)
    outsider = DataRecord.objects.get(dataset=dataset, subject__pseudonym=pseudonymise("nc0"))
    SnapshotMembership.objects.create(snapshot=snapshot, record=outsider, subject_id=outsider.subject_id)
    # The attacker recomputes the root from the tampered (but each genuine) leaves.
    _sql(f"UPDATE {_table(Snapshot)} SET merkle_root = %s WHERE id = %s", [_root_of_members(snapshot), snapshot.pk])
    n = snapshot.included_count
    _fails(snapshot, f"included_count {n} but {n + 1} members")


def test_an_inserted_member_with_rewritten_root_and_counts_is_found_by_the_audit_log():
    dataset, snapshot = _world(uncovered=1)
    outsider = DataRecord.objects.get(dataset=dataset, subject__pseudonym=pseudonymise("nc0"))
    SnapshotMembership.objects.create(snapshot=snapshot, record=outsider, subject_id=outsider.subject_id)
    root = _root_of_members(snapshot)
    _sql(
        f"UPDATE {_table(Snapshot)} SET merkle_root = %s, included_count = included_count + 1, "
        "included_subjects = included_subjects + 1 WHERE id = %s",
        [root, snapshot.pk],
    )
    position = AuditEvent.objects.get(action="snapshot.created", object_id=str(snapshot.pk)).position
    _fails(snapshot, f"merkle_root {root} differs from {snapshot.merkle_root} recorded at creation (audit event #{position})")


def test_an_inserted_member_from_another_dataset_is_named():
    _, snapshot = _world()
    other_dataset, _ = _world(name="other")
    foreign = DataRecord.objects.filter(dataset=other_dataset).order_by("-id").first()
    SnapshotMembership.objects.create(snapshot=snapshot, record=foreign, subject_id=foreign.subject_id)
    position = _member_ids(snapshot).index(foreign.pk) + 1
    _fails(snapshot, f"record {foreign.pk} (membership position {position}): belongs to dataset "
                     f"{other_dataset.pk}, not the snapshot's dataset {snapshot.dataset_id}")


def test_an_included_count_that_disagrees_with_the_membership_is_named():
    _, snapshot = _world()
    _sql(f"UPDATE {_table(Snapshot)} SET included_count = included_count - 1 WHERE id = %s", [snapshot.pk])
    n = snapshot.included_count
    _fails(snapshot, f"included_count {n - 1} but {n} members")


def test_an_included_subjects_count_that_disagrees_is_named():
    _, snapshot = _world()
    _sql(f"UPDATE {_table(Snapshot)} SET included_subjects = included_subjects + 1 WHERE id = %s", [snapshot.pk])
    s = snapshot.included_subjects
    _fails(snapshot, f"included_subjects {s + 1} but {s} distinct subjects among the members")


def test_a_removed_member_is_named_by_the_count():
    _, snapshot = _world()
    _sql(f"DELETE FROM {_table(SnapshotMembership)} WHERE snapshot_id = %s AND record_id = %s",
         [snapshot.pk, _member_ids(snapshot)[3]])
    n = snapshot.included_count
    _fails(snapshot, f"included_count {n} but {n - 1} members")


def test_a_removed_member_hidden_by_a_rewritten_amendment_is_found_by_the_erasure_record():
    _, snapshot = _world()
    person = DataSubject.objects.get(pseudonym=pseudonymise("p2"))
    [amendment] = services.snapshot_records_remove(
        records=DataRecord.objects.filter(subject=person), reason=AmendmentReason.ERASURE,
        erasure_request_id=992, subject_ids=[person.pk],
    )
    audit_event_record(
        actor="test", action="erasure.snapshots_amended", object_type="erasure_request", object_id=992,
        details={"amendments": [{"snapshot": snapshot.pk, "sequence": 1, "new_root": amendment.new_root}]},
    )
    # Someone drops a further member (one of p0's two rows, so no person leaves) and makes
    # the last amendment account for it: chain, counts and root agree again.
    _sql(f"DELETE FROM {_table(SnapshotMembership)} WHERE snapshot_id = %s AND record_id = %s",
         [snapshot.pk, _member_ids(snapshot)[0]])
    _sql(f"UPDATE {_table(SnapshotAmendment)} SET new_root = %s, records_removed = records_removed + 1 WHERE id = %s",
         [_root_of_members(snapshot), amendment.pk])
    _fails(snapshot, "amendment 1: its new root differs from the one erasure request 992 recorded in the audit log")


def test_a_broken_amendment_chain_is_named():
    _, snapshot = _world()
    person = DataSubject.objects.get(pseudonym=pseudonymise("p2"))
    [amendment] = services.snapshot_records_remove(
        records=DataRecord.objects.filter(subject=person), reason=AmendmentReason.RETENTION,
    )
    _sql(f"UPDATE {_table(SnapshotAmendment)} SET previous_root = %s WHERE id = %s", ["f" * 64, amendment.pk])
    _fails(snapshot, "amendment 1: its previous root differs from the snapshot's merkle_root")


def test_snapshots_verify_filters_by_dataset_and_reports_each():
    dataset, clean = _world()
    _, tampered = _world(name="tampered")
    _sql(f"DELETE FROM {_table(SnapshotMembership)} WHERE snapshot_id = %s AND record_id = %s",
         [tampered.pk, _member_ids(tampered)[0]])
    assert [(r.snapshot_id, r.ok) for r in snapshots_verify(dataset_id=dataset.pk)] == [(clean.pk, True)]
    assert [(r.snapshot_id, r.ok) for r in snapshots_verify()] == [(clean.pk, True), (tampered.pk, False)]
    missing = snapshot_verify(snapshot_id=tampered.pk + 1000)
    assert not missing.ok and missing.first_difference == "the snapshot does not exist"


# --- The command, the beat task, the refusal before training -----------------------------


def test_the_command_prints_a_line_per_snapshot_and_exits_non_zero_on_a_failure(capsys):
    _, clean = _world()
    _, tampered = _world(name="tampered")
    call_command("snapshot_verify", "--snapshot", str(clean.pk))
    out = capsys.readouterr().out
    assert f"snapshot {clean.pk}: ok ({clean.included_count} members checked)" in out

    first = _member_ids(tampered)[0]
    DataRecord.objects.filter(pk=first).update(label=not DataRecord.objects.get(pk=first).label)
    with pytest.raises(SystemExit) as exited:
        call_command("snapshot_verify")
    assert exited.value.code == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"snapshot {clean.pk}: ok")
    assert lines[1] == (
        f"snapshot {tampered.pk}: FAILED after 0 members: "
        f"record {first} (membership position 1): features or label differ from its content hash"
    )
    assert "1 of 2 snapshot(s) FAILED" in captured.err

    with pytest.raises(SystemExit):
        call_command("snapshot_verify", "--dataset", str(tampered.dataset_id))


def test_the_beat_task_records_a_failed_verification_in_the_audit_log(caplog):
    from config.celery import app
    from provenance.tasks import verify_snapshots

    assert app.conf.beat_schedule["provenance-verify-snapshots"]["task"] == "provenance.verify_snapshots"
    _, clean = _world()
    _, tampered = _world(name="tampered")
    _sql(f"DELETE FROM {_table(SnapshotMembership)} WHERE snapshot_id = %s AND record_id = %s",
         [tampered.pk, _member_ids(tampered)[0]])
    with caplog.at_level(logging.ERROR, logger="provenance.tasks"):
        outcome = verify_snapshots.apply().get()
    assert outcome == {"snapshots": 2, "failed": [tampered.pk]}
    event = AuditEvent.objects.get(action="snapshot.verification_failed")
    n = tampered.included_count
    assert event.object_id == str(tampered.pk)
    assert event.details["first_difference"] == f"included_count {n} but {n - 1} members"
    summary = AuditEvent.objects.get(action="snapshots.verified")
    assert summary.details["snapshots"] == 2 and summary.details["failed"] == [tampered.pk]
    assert any(f"snapshot {tampered.pk} fails verification" in r.getMessage() for r in caplog.records)


def test_training_refuses_a_tampered_snapshot_with_409_naming_the_difference(ml_client):
    from mlops.models import TrainingRun
    from mlops.services import training_run_queue

    _, snapshot = _world(people=30)
    second = _member_ids(snapshot)[1]
    stranger = DataSubject.objects.create(pseudonym=pseudonymise("stranger"))
    _sql(f"UPDATE {_table(SnapshotMembership)} SET subject_id = %s WHERE snapshot_id = %s AND record_id = %s",
         [stranger.pk, snapshot.pk, second])
    difference = f"membership position 2 (record {second}): subject differs from the record's subject"

    response = ml_client.post(
        "/api/v1/training-runs/",
        {"snapshot": snapshot.pk, "epochs": 1, "batch_size": 8, "target_epsilon": 2.0},
        format="json",
    )
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["detail"] == f"Snapshot {snapshot.pk} fails its integrity check: {difference}."
    assert body["first_difference"] == difference
    with pytest.raises(ServiceConflict, match="subject differs"):
        training_run_queue(snapshot=snapshot.pk, epochs=1, batch_size=8, target_epsilon=2.0, enqueue=False)
    assert not TrainingRun.objects.exists()
