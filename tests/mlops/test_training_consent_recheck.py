"""Issue 14 item 1: training re-checks a snapshot's members against the consent ledger at
queue time, and never trains on a reconstruction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import ConsentEvent
from governance.services import ServiceConflict
from mlops import services
from mlops.models import TrainingRun
from provenance import services as provenance_services
from provenance.models import DataRecord, SnapshotMembership
from tests.mlops.factories import make_snapshot

pytestmark = pytest.mark.django_db


def _consent(snapshot, subject_ids, action: str, *, when=None, expires_at=None) -> None:
    when = when or timezone.now()
    ConsentEvent.objects.bulk_create([
        ConsentEvent(
            event_id=f"recheck-{action}-{snapshot.pk}-{sid}-{when.timestamp()}", subject_id=sid,
            purpose=snapshot.purpose, action=action, occurred_at=when, notice_version="v1",
            notice_sha256="0" * 64, method="web_form", expires_at=expires_at,
        )
        for sid in subject_ids
    ])


def _queue(snapshot, **extra):
    return services.training_run_queue(
        snapshot=snapshot.pk, epochs=1, batch_size=32, target_epsilon=3.0, model_spec={"hidden_sizes": [8]},
        enqueue=False, **extra,
    )


def _members(snapshot) -> list[int]:
    return sorted(set(SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True)))


def test_people_who_withdrew_or_expired_since_the_snapshot_stop_training(db):
    snapshot = make_snapshot(n=200, d=4, seed=1)
    assert _queue(snapshot).pk  # everyone consented: accepted
    members = _members(snapshot)
    _consent(snapshot, members[:2], "withdrawn")
    # Consent given again, but with an expiry that has passed by now.
    _consent(snapshot, members[2:3], "given", when=timezone.now() - timedelta(seconds=5),
             expires_at=timezone.now() - timedelta(seconds=1))
    runs = TrainingRun.objects.count()
    with pytest.raises(ServiceConflict) as refused:
        _queue(snapshot)
    assert refused.value.field == "snapshot"
    assert "3 people" in str(refused.value) and "fresh snapshot" in str(refused.value)
    assert TrainingRun.objects.count() == runs
    with pytest.raises(ServiceConflict):
        _queue(snapshot, sisa={"shards": 2, "slices": 2})


def test_a_reconstruction_is_never_trained_on_even_with_everyone_still_covered(db):
    from tests.provenance.helpers import SCHEMA, activity, consent, row

    act = activity()
    dataset = provenance_services.dataset_create(name="recheck reconstruction", owner="ml", processing_activity=act,
                                                 schema=SCHEMA)
    people = [f"r{i}@x.org" for i in range(40)]
    provenance_services.dataset_records_ingest(
        dataset=dataset, rows=[row(p, age=20 + i, outcome=bool(i % 2)) for i, p in enumerate(people)], actor="t"
    )
    DataRecord.objects.filter(dataset=dataset).update(ingested_at=timezone.now() - timedelta(days=30))
    for p in people:
        consent(p, "ml.training.clinical_risk", "given", timezone.now() - timedelta(days=20))
    purpose = act.purposes.get()
    snapshot = provenance_services.snapshot_create(dataset=dataset, purpose=purpose,
                                                   at=timezone.now() - timedelta(days=1))
    assert snapshot.kind == "reconstruction" and snapshot.included_subjects == 40
    with pytest.raises(ServiceConflict) as refused:
        services.training_run_queue(snapshot=snapshot.pk, epochs=1, allow_non_private=True, enqueue=False)
    assert "reconstruction" in str(refused.value)


@pytest.mark.django_db(transaction=True)
def test_an_erasure_retires_instead_of_retraining_on_people_who_withdrew_since(celery_worker):
    """Retraining after an erasure reads the snapshot afresh: if someone else withdrew in
    the meantime it would process them, so the head is retired and the erasure completes."""
    from mlops.models import ModelVersion
    from mlops.services import model_lineage_remediate
    from provenance.models import AmendmentReason
    from provenance.services import snapshot_records_remove
    from tests.rights import helpers as h

    people = h.crowd(40)
    snapshot = h.snapshot_of(h.people_dataset(act=h.activity(), people=people))
    version = ModelVersion.objects.get(training_run=h.train(snapshot=snapshot, name="withdrawn-since"))
    erased, withdrew = people[0], people[1]
    snapshot_records_remove(records=DataRecord.objects.filter(subject=erased), reason=AmendmentReason.ERASURE,
                            subject_ids=[erased.pk])
    _consent(snapshot, [withdrew.pk], "withdrawn")
    runs = TrainingRun.objects.count()

    result = model_lineage_remediate(name="withdrawn-since", action="retrain", reason="erasure request 1")
    assert result["outcome"] == "retired"
    assert "1 person" in result["retired_because"]
    version.refresh_from_db()
    assert version.status == "retired" and "no longer covered" in version.status_reason
    assert TrainingRun.objects.count() == runs  # nothing was trained on the person who withdrew


def test_people_who_withdraw_while_the_run_waits_in_the_queue_stop_it_before_any_record_is_read(db):
    from mlops.models import LedgerState, RunStatus

    snapshot = make_snapshot(n=120, d=4, seed=3)
    run = _queue(snapshot)  # accepted: everyone is covered at queue time
    assert run.ledger_entry.state == LedgerState.RESERVED
    _consent(snapshot, _members(snapshot)[:4], "withdrawn")
    finished = services.training_run_execute(run_id=run.pk)
    assert finished.status == RunStatus.FAILED
    assert "not started" in finished.error and "4 people" in finished.error and "fresh snapshot" in finished.error
    assert not finished.model_versions.exists() and finished.epoch_metrics in ([], None)
    finished.ledger_entry.refresh_from_db()
    assert finished.ledger_entry.state == LedgerState.RELEASED  # the reserved ε is given back
