"""Consent events through the API: idempotent, all or nothing, pseudonymised, one audit event per batch."""

from __future__ import annotations

import hashlib
import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone

from governance.models import AuditEvent, ConsentEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from rights.models import ErasureGround, ErasureRequest
from tests.governance.consent_helpers import at, consent_activity, event

CLINICAL = "ml.training.clinical_risk"
URL = "/api/v1/consent-events/"


@pytest.fixture
def default_taxonomy(transactional_db):
    # Another transactional test may have flushed what the data migration created.
    importlib.import_module("governance.migrations.0003_default_taxonomy").load_defaults(apps, None)


def _post(client, payload):
    return client.post(URL, payload, format="json")


@pytest.mark.django_db
def test_one_event_is_stored_pseudonymised_with_the_notice_hash_and_truncated_ip(dpo_client):
    payload = event(
        "Alice@Example.org ", CLINICAL, "given", at(0), event_id="crm-1",
        evidence={"form_url": "https://portal.example/consent", "ip": "203.0.113.57",
                  "user_agent": "Mozilla/5.0", "source_system": "portal"},
    )
    response = _post(dpo_client, payload)
    assert response.status_code == 201, response.content
    assert response.json() == {"created": 1, "already_present": 0}
    stored = ConsentEvent.objects.select_related("subject").get(event_id="crm-1")
    assert stored.subject.pseudonym == pseudonymise("alice@example.org")
    assert stored.notice_sha256 == hashlib.sha256(payload["notice_text"].encode()).hexdigest()
    assert stored.evidence == {"form_url": "https://portal.example/consent", "ip": "203.0.113.0",
                               "user_agent": "Mozilla/5.0", "source_system": "portal"}


@pytest.mark.django_db
def test_ipv6_evidence_keeps_only_the_first_48_bits(dpo_client):
    payload = event("a@x.org", CLINICAL, "given", at(0), event_id="v6", evidence={"ip": "2001:db8:abcd:12:34::7"})
    assert _post(dpo_client, payload).status_code == 201
    assert ConsentEvent.objects.get(event_id="v6").evidence["ip"] == "2001:db8:abcd::"


@pytest.mark.django_db
def test_resubmitting_a_batch_creates_nothing_twice(dpo_client):
    batch = [
        event("a@x.org", CLINICAL, "given", at(0), event_id="e-1"),
        event("b@x.org", CLINICAL, "given", at(1)),  # no event id: derived from the content
        event("b@x.org", CLINICAL, "withdrawn", at(2)),
    ]
    first = _post(dpo_client, batch)
    assert first.status_code == 201
    assert first.json() == {"created": 3, "already_present": 0}
    again = _post(dpo_client, batch + [event("c@x.org", CLINICAL, "given", at(3))])
    assert again.json() == {"created": 1, "already_present": 3}
    assert ConsentEvent.objects.count() == 4
    assert DataSubject.objects.count() == 3
    # The same id inside one batch is written once.
    repeat = _post(dpo_client, [event("d@x.org", CLINICAL, "given", at(4), event_id="dup")] * 2)
    assert repeat.json() == {"created": 1, "already_present": 1}
    assert _post(dpo_client, batch).status_code == 200  # nothing new: 200, not 201


@pytest.mark.django_db
def test_one_audit_event_per_batch_with_counts_and_no_identifier(dpo_client):
    before = AuditEvent.objects.count()
    batch = [event(f"person{i}@x.org", CLINICAL, "given", at(i)) for i in range(25)]
    _post(dpo_client, batch)
    events = list(AuditEvent.objects.filter(action="consent_event.ingested"))
    assert AuditEvent.objects.count() == before + 1
    assert len(events) == 1
    assert events[0].details["created"] == 25
    assert events[0].details["given"] == 25
    assert events[0].subject_ref is None
    text = str(events[0].details)
    assert "@x.org" not in text and pseudonymise("person0@x.org") not in text


@pytest.mark.django_db
def test_a_single_subject_batch_names_the_subject_by_reference_only(dpo_client):
    _post(dpo_client, event("solo@x.org", CLINICAL, "given", at(0)))
    audit = AuditEvent.objects.get(action="consent_event.ingested")
    assert audit.subject_ref == DataSubject.objects.get(pseudonym=pseudonymise("solo@x.org")).reference


FUTURE = (timezone.now() + timedelta(days=2)).isoformat()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"purpose": "no.such.purpose"}, "events[1].purpose"),
        ({"action": "maybe"}, "events[1].action"),
        ({"occurred_at": FUTURE}, "events[1].occurred_at"),
        ({"occurred_at": "not a time"}, "events[1].occurred_at"),
        ({"occurred_at": "2025-01-01T09:00:00"}, "events[1].occurred_at"),  # no time zone
        ({"expires_at": at(-1).isoformat()}, "events[1].expires_at"),
        ({"notice_text": None}, "events[1].notice_text"),
        ({"notice_sha256": "ab" * 32}, "events[1].notice_sha256"),  # does not match the text
        ({"subject": ""}, "events[1].subject"),
        ({"method": ""}, "events[1].method"),
        ({"evidence": {"ip": "not-an-ip"}}, "events[1].evidence.ip"),
        ({"evidence": {"colour": "blue"}}, "events[1].evidence.colour"),
        ({"evidence": {"form_url": "https://x.example/?email=b@x.org"}}, "events[1].evidence.form_url"),
        ({"surprise": 1}, "events[1].surprise"),
    ],
)
def test_bad_event_in_a_batch_is_a_400_naming_index_and_field_and_nothing_is_written(dpo_client, bad, field):
    audit_before = AuditEvent.objects.count()
    good = event("a@x.org", CLINICAL, "given", at(0))
    broken = {**event("b@x.org", CLINICAL, "given", at(1)), **bad}
    response = _post(dpo_client, [good, broken, event("c@x.org", CLINICAL, "given", at(2))])
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert body[field][0]
    assert ConsentEvent.objects.count() == 0
    assert DataSubject.objects.count() == 0
    assert AuditEvent.objects.count() == audit_before


@pytest.mark.django_db
def test_every_bad_event_is_reported_not_only_the_first(dpo_client):
    response = _post(dpo_client, [
        event("a@x.org", "nope", "given", at(0)),
        event("b@x.org", CLINICAL, "given", at(0)),
        event("c@x.org", CLINICAL, "perhaps", at(0)),
    ])
    assert response.status_code == 400
    assert set(response.json()) == {"events[0].purpose", "events[2].action"}


@pytest.mark.django_db
@pytest.mark.parametrize("payload", ["just a string", [], [1, 2], {"events": "x"}])
def test_malformed_bodies_are_400(dpo_client, payload):
    response = _post(dpo_client, payload)
    assert response.status_code == 400
    assert ConsentEvent.objects.count() == 0


@pytest.mark.django_db
def test_oversized_batch_is_refused_before_anything_is_read(dpo_client):
    response = _post(dpo_client, [event("a@x.org", CLINICAL, "given", at(0))] * 10_001)
    assert response.status_code == 400
    assert "10000" in response.json()["events"][0]
    assert ConsentEvent.objects.count() == 0


@pytest.mark.django_db
def test_notice_hash_alone_is_accepted(dpo_client):
    payload = event("a@x.org", CLINICAL, "given", at(0), event_id="h")
    digest = hashlib.sha256(b"notice").hexdigest()
    del payload["notice_text"]
    payload["notice_sha256"] = digest.upper()
    assert _post(dpo_client, payload).status_code == 201
    assert ConsentEvent.objects.get(event_id="h").notice_sha256 == digest


@pytest.mark.django_db
def test_withdrawal_under_an_erasing_activity_is_noted_for_erasure(dpo_client, django_capture_on_commit_callbacks):
    consent_activity(erasure_on_consent_withdrawal=True)
    _post(dpo_client, event("a@x.org", CLINICAL, "given", at(0)))
    # The request is opened by the rights app once the batch commits (consent_withdrawn).
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(dpo_client, event("a@x.org", CLINICAL, "withdrawn", at(1)))
    assert response.json()["withdrawals_under_erasure_on_withdrawal"] == 1
    audit = AuditEvent.objects.filter(action="consent_event.ingested").last()
    assert audit.details["erasure_activities"] == ["activity for ml.training.clinical_risk"]
    subject = DataSubject.objects.get(pseudonym=pseudonymise("a@x.org"))
    requests = ErasureRequest.objects.filter(subject=subject)
    assert requests.count() == 1
    assert requests.get().ground == ErasureGround.CONSENT_WITHDRAWN
    # Resubmitting the withdrawal is harmless: nothing new in the ledger, no second request.
    with django_capture_on_commit_callbacks(execute=True):
        again = _post(dpo_client, event("a@x.org", CLINICAL, "withdrawn", at(1))).json()
    assert again["already_present"] == 1
    assert requests.count() == 1


@pytest.mark.django_db
def test_withdrawal_under_an_activity_that_keeps_data_opens_no_erasure(dpo_client):
    consent_activity(erasure_on_consent_withdrawal=False)
    _post(dpo_client, [event("a@x.org", CLINICAL, "given", at(0)), event("a@x.org", CLINICAL, "withdrawn", at(1))])
    assert not ErasureRequest.objects.exists()


@pytest.mark.django_db
def test_ledger_is_listed_to_dpo_and_auditor_by_pseudonym_and_never_to_ml_engineers(
    dpo_client, auditor_client, ml_client
):
    _post(dpo_client, [event("a@x.org", CLINICAL, "given", at(0), event_id="l-1"),
                       event("b@x.org", "marketing.email", "given", at(1), event_id="l-2")])
    for client in (dpo_client, auditor_client):
        response = client.get(URL, {"purpose": CLINICAL})
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["event_id"] for r in results] == ["l-1"]
        assert results[0]["subject"] == pseudonymise("a@x.org")
    by_subject = auditor_client.get(URL, {"subject": pseudonymise("b@x.org")}).json()["results"]
    assert [r["event_id"] for r in by_subject] == ["l-2"]
    in_range = auditor_client.get(URL, {"occurred_after": at(0.5).isoformat(), "action": "given"}).json()["results"]
    assert [r["event_id"] for r in in_range] == ["l-2"]
    assert ml_client.get(URL).status_code == 403
    assert ml_client.get(f"{URL}l-1/").status_code == 403
    assert auditor_client.post(URL, event("c@x.org", CLINICAL, "given", at(0)), format="json").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_of_one_batch_write_each_event_once(default_taxonomy):
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite serialises writers itself")
    from governance import services

    batch = [event(f"c{i}@x.org", CLINICAL, "given", at(i)) for i in range(200)]
    answers, errors = [], []
    barrier = threading.Barrier(2)

    def submit():
        try:
            barrier.wait()
            answers.append(services.consent_events_ingest(events=batch, actor="test"))
        except Exception as exc:  # reported below: the test fails with the worker's error
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(a["created"] for a in answers) == 200
    assert sum(a["already_present"] for a in answers) == 200
    assert ConsentEvent.objects.count() == 200
    assert DataSubject.objects.count() == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_withdrawals_under_an_erasing_activity_all_store_and_open_one_request_each(default_taxonomy):
    """Four batches withdraw the same 200 people at once under an activity that erases on
    withdrawal: every batch stores its withdrawals, none fails because opening the erasure
    requests raced, and each person ends with exactly one open request."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite serialises writers itself")
    from governance import services
    from rights.models import ErasureRequest

    consent_activity(erasure_on_consent_withdrawal=True)
    people = [f"w{i}@x.org" for i in range(200)]
    services.consent_events_ingest(events=[event(p, CLINICAL, "given", at(0)) for p in people], actor="test")
    batches = [
        [event(p, CLINICAL, "withdrawn", at(1 + b), event_id=f"w-{b}-{i}") for i, p in enumerate(people)]
        for b in range(4)
    ]
    answers, errors = [], []
    barrier = threading.Barrier(len(batches))

    def submit(batch):
        try:
            barrier.wait()
            answers.append(services.consent_events_ingest(events=batch, actor="test"))
        except Exception as exc:  # reported below: the test fails with the worker's error
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(a["created"] for a in answers) == [200, 200, 200, 200]
    assert ConsentEvent.objects.filter(action="withdrawn").count() == 800
    open_requests = ErasureRequest.objects.filter(status="received")
    assert open_requests.count() == 200
    assert open_requests.values("subject_id").distinct().count() == 200


def _stored(event_id: str) -> dict:
    return ConsentEvent.objects.filter(event_id=event_id).values(
        "subject__pseudonym", "purpose__code", "action", "occurred_at", "recorded_at", "notice_version",
        "notice_sha256", "method", "evidence", "expires_at",
    ).get()


@pytest.mark.django_db
def test_characters_with_a_meaning_in_copy_are_stored_as_sent_on_both_write_paths():
    """A fresh batch goes straight into the ledger (COPY on PostgreSQL); a batch holding an
    event already present goes through the conflict-tolerant path. Both store tabs, line
    breaks and backslashes in every free-text column exactly as sent, and the same values."""
    from governance import services

    notice = "Notice with a tab\there, a backslash \\ and\na line break."
    odd = {
        "notice_version": "v\t2 \\N",
        "method": "paper\\form\nscanned",
        "notice_text": notice,
        "evidence": {"note": "called back\tat 10:00 \\ see\r\nfile", "user_agent": "Agent \\x00 /1.0"},
        "expires_at": at(400).isoformat(),
    }
    fresh = services.consent_events_ingest(
        events=[event("tab@x.org", CLINICAL, "given", at(1), event_id="id\\with\ttab", **odd)], actor="test"
    )
    mixed = services.consent_events_ingest(
        events=[
            event("tab@x.org", CLINICAL, "given", at(1), event_id="id\\with\ttab", **odd),  # already present
            event("tab2@x.org", CLINICAL, "given", at(1), event_id="second\\id", **odd),
        ],
        actor="test",
    )
    assert fresh == {"created": 1, "already_present": 0}
    assert mixed == {"created": 1, "already_present": 1}
    first, second = _stored("id\\with\ttab"), _stored("second\\id")
    expected = {
        "purpose__code": CLINICAL, "action": "given", "occurred_at": at(1), "notice_version": "v\t2 \\N",
        "notice_sha256": hashlib.sha256(notice.encode()).hexdigest(), "method": "paper\\form\nscanned",
        "evidence": {"note": "called back\tat 10:00 \\ see\r\nfile", "user_agent": "Agent \\x00 /1.0"},
        "expires_at": at(400),
    }
    for stored, person in ((first, "tab@x.org"), (second, "tab2@x.org")):
        assert stored.pop("subject__pseudonym") == pseudonymise(person)
        assert stored.pop("recorded_at") is not None
        assert stored == expected


@pytest.mark.django_db
def test_a_batch_naming_a_person_many_times_creates_the_person_once():
    from governance import services

    answer = services.consent_events_ingest(
        events=[event(" Many@X.org", CLINICAL, "given" if i % 2 == 0 else "withdrawn", at(i)) for i in range(6)]
        + [event("many@x.org\u200b", CLINICAL, "given", at(10)), event("other@x.org", CLINICAL, "given", at(0))],
        actor="test",
    )
    assert answer == {"created": 8, "already_present": 0}
    assert DataSubject.objects.count() == 2
    assert ConsentEvent.objects.filter(subject__pseudonym=pseudonymise("many@x.org")).count() == 7
