"""Restriction (Art. 18) and objection (Art. 21) keep people out of new snapshots and out of
training; a snapshot taken before stays as it was, and its verification agrees with the
rule evaluated at its own moment. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from governance import services as governance_services
from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from provenance import services
from provenance.integrity import snapshot_verify
from provenance.models import SnapshotMembership
from tests.provenance.helpers import SCHEMA, activity, consent, purpose, row

pytestmark = pytest.mark.django_db

ANALYTICS = "analytics.product"
QUALITY = "analytics.quality"
MARKETING = "marketing.email"
CLINICAL = "ml.training.clinical_risk"
PEOPLE = ["ann@example.org", "ben@example.org", "cat@example.org"]


def _dataset(*, lawful_basis: str = "legitimate_interests", purposes=(ANALYTICS, QUALITY), people=PEOPLE):
    act = activity(lawful_basis=lawful_basis, purposes=purposes)
    dataset = services.dataset_create(name=f"limits {act.pk}", owner="ml", processing_activity=act, schema=SCHEMA)
    services.dataset_records_ingest(dataset=dataset, rows=[row(p, age=30 + i, outcome=bool(i % 2)) for i, p in enumerate(people)],
                                    actor="test")
    return dataset


def _members(snapshot) -> set[str]:
    ids = SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True)
    return set(DataSubject.objects.filter(pk__in=ids).values_list("pseudonym", flat=True))


def _restrict(identifier: str):
    return governance_services.processing_restriction_create(
        subject=identifier, ground="18_1_a", justification="Accuracy contested.", actor="dpo",
    )


def _lift(restriction):
    from django.utils import timezone

    return governance_services.processing_restriction_lift(
        restriction=restriction, reason="Verified.", informed_at=timezone.now(), actor="dpo",
    )


def _object(identifier: str, code: str, grounds: str = "My situation."):
    return governance_services.processing_objection_create(subject=identifier, purpose=code, grounds=grounds, actor="dpo")


def _snapshot(dataset, code: str):
    return services.snapshot_create(dataset=dataset, purpose=purpose(code), requested_by="test")


def _train(client, snapshot_id: int):
    return client.post(
        "/api/v1/training-runs/",
        {"snapshot": snapshot_id, "name": f"limits-{snapshot_id}", "epochs": 1, "batch_size": 2,
         "allow_non_private": True, "validation_split": 0.0, "holdout_fraction": 0.0},
        format="json",
    )


def test_a_restricted_person_is_absent_from_the_next_snapshot_and_present_again_after_lifting():
    dataset = _dataset()
    before = _snapshot(dataset, ANALYTICS)
    restriction = _restrict(PEOPLE[0])
    during = _snapshot(dataset, ANALYTICS)
    other_purpose = _snapshot(dataset, QUALITY)  # a restriction covers every purpose
    _lift(restriction)
    after = _snapshot(dataset, ANALYTICS)

    everyone = {pseudonymise(p) for p in PEOPLE}
    assert _members(before) == everyone
    assert _members(during) == everyone - {pseudonymise(PEOPLE[0])}
    assert _members(other_purpose) == everyone - {pseudonymise(PEOPLE[0])}
    assert during.excluded_counts["restricted"] == 1 and during.excluded_counts["objected"] == 0
    assert during.included_subjects == 2
    assert _members(after) == everyone and after.excluded_counts["restricted"] == 0
    event = AuditEvent.objects.get(action="snapshot.created", object_id=str(during.pk))
    assert event.details["excluded"]["restricted"] == 1 and event.details["limits_at"]
    # Each verifies against the rule at its own moment: the snapshot taken before the
    # restriction stays as it was, the one taken during it holds no restricted person.
    for snapshot in (before, during, other_purpose, after):
        assert snapshot_verify(snapshot_id=snapshot.pk).ok, snapshot_verify(snapshot_id=snapshot.pk).line()


def test_restriction_applies_under_consent_too_and_is_counted_after_the_consent_reasons():
    dataset = _dataset(lawful_basis="consent", purposes=(CLINICAL,))
    from django.utils import timezone

    for p in PEOPLE[:2]:
        consent(p, CLINICAL, "given", timezone.now() - timezone.timedelta(days=1))
    _restrict(PEOPLE[0])
    _restrict(PEOPLE[2])  # no consent either: counted as no_consent, the first reason that applies
    snapshot = _snapshot(dataset, CLINICAL)
    assert _members(snapshot) == {pseudonymise(PEOPLE[1])}
    assert snapshot.excluded_counts["restricted"] == 1 and snapshot.excluded_counts["no_consent"] == 1
    assert snapshot_verify(snapshot_id=snapshot.pk).ok


def test_an_objecting_person_is_absent_for_that_purpose_present_for_another_and_again_after_compelling_grounds():
    dataset = _dataset()
    objection = _object(PEOPLE[1], ANALYTICS)
    objected = _snapshot(dataset, ANALYTICS)
    other = _snapshot(dataset, QUALITY)
    governance_services.processing_objection_compelling_grounds_record(
        objection=objection, justification="Fraud detection protects other customers.", actor="dpo",
    )
    overridden = _snapshot(dataset, ANALYTICS)

    everyone = {pseudonymise(p) for p in PEOPLE}
    assert _members(objected) == everyone - {pseudonymise(PEOPLE[1])}
    assert objected.excluded_counts["objected"] == 1 and objected.excluded_counts["restricted"] == 0
    assert _members(other) == everyone and other.excluded_counts["objected"] == 0
    assert _members(overridden) == everyone
    for snapshot in (objected, other, overridden):
        assert snapshot_verify(snapshot_id=snapshot.pk).ok


def test_an_objection_to_direct_marketing_is_absolute():
    dataset = _dataset(purposes=(MARKETING,))
    objection = _object(PEOPLE[2], MARKETING, grounds="")
    with pytest.raises(governance_services.ServiceConflict, match=r"Art\. 21\(3\)"):
        governance_services.processing_objection_compelling_grounds_record(
            objection=objection, justification="We would like to.", actor="dpo",
        )
    snapshot = _snapshot(dataset, MARKETING)
    assert _members(snapshot) == {pseudonymise(p) for p in PEOPLE[:2]}
    assert snapshot.excluded_counts["objected"] == 1


def test_an_objection_does_not_exclude_from_a_snapshot_under_contract():
    # Art. 21(1) covers Art. 6(1)(e) and (f): the same purpose processed under contract by
    # another activity is not stopped by it.
    objecting_dataset = _dataset()
    _object(PEOPLE[0], ANALYTICS)
    contract = _dataset(lawful_basis="contract", purposes=(ANALYTICS,))
    assert _members(_snapshot(contract, ANALYTICS)) == {pseudonymise(p) for p in PEOPLE}
    assert pseudonymise(PEOPLE[0]) not in _members(_snapshot(objecting_dataset, ANALYTICS))


def test_verification_finds_a_restricted_member_a_faulty_classifier_let_in(monkeypatch):
    dataset = _dataset()
    _restrict(PEOPLE[0])
    # A classifier that ignores the limits, as a regression would: the snapshot, its counts,
    # root and audit event are all consistent, so only the limits check can tell.
    monkeypatch.setattr(services.snapshots, "limits_reason_branches", lambda **kwargs: ([], []))
    faulty = _snapshot(dataset, ANALYTICS)
    monkeypatch.undo()
    assert pseudonymise(PEOPLE[0]) in _members(faulty)
    result = snapshot_verify(snapshot_id=faulty.pk)
    assert not result.ok
    assert "restricted (Art. 18)" in result.first_difference


def test_training_refuses_a_snapshot_holding_a_restricted_person_naming_art_18_and_how_many(ml_client):
    dataset = _dataset(people=[f"t{i}@example.org" for i in range(6)])
    snapshot = _snapshot(dataset, ANALYTICS)
    _restrict("t0@example.org")
    _restrict("t1@example.org")
    response = _train(ml_client, snapshot.pk)
    assert response.status_code == 409, response.content
    body = response.json()
    assert "Art. 18" in body["detail"] and "2 people" in body["detail"] and "new snapshot" in body["detail"]
    assert body["restricted"] == 2 and body["objected"] == 0
    # A new snapshot leaves them out, and training on it is not refused for them.
    fresh = _snapshot(dataset, ANALYTICS)
    assert fresh.included_subjects == 4
    assert _train(ml_client, fresh.pk).status_code in (201, 202)


def test_training_refuses_a_snapshot_holding_an_objecting_person_naming_art_21(ml_client):
    dataset = _dataset(people=[f"o{i}@example.org" for i in range(6)])
    snapshot = _snapshot(dataset, ANALYTICS)
    _object("o3@example.org", ANALYTICS)
    response = _train(ml_client, snapshot.pk)
    assert response.status_code == 409, response.content
    assert "Art. 21" in response.json()["detail"] and "1 person" in response.json()["detail"]
    # For another purpose the objection does not stop the training.
    assert _train(ml_client, _snapshot(dataset, QUALITY).pk).status_code in (201, 202)
