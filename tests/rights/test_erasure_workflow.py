"""The erasure request workflow through the API: states, refusals, deadlines, impact."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent, ConsentEvent
from governance.pseudonymisation import pseudonymise
from rights import services
from rights.models import ErasureRequest, ErasureStatus
from tests.governance.reports_helpers import pdf_text
from tests.rights import helpers as h

URL = "/api/v1/erasure-requests/"
ALICE = "Alice@Example.org"


def _create(client, **overrides):
    body = {"subject": ALICE, "ground": "17_1_a", "channel": "email", "regime": "eu", **overrides}
    return client.post(URL, body, format="json")


def _state():
    """Everything a refused request must leave unchanged."""
    return (
        list(ErasureRequest.objects.order_by("id").values()),
        AuditEvent.objects.count(),
    )


@pytest.fixture
def alice(db):
    return h.subject_for(ALICE)


@pytest.mark.django_db
def test_receive_pseudonymises_and_answers_with_the_deadline(dpo_client, alice):
    response = _create(dpo_client, received_at="2025-09-03T10:00:00Z")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "received"
    assert body["due_at"] == "2025-10-03"
    assert body["subject_ref"] == str(alice.reference)
    assert body["data_held"] is True
    text = response.content.decode()
    assert "alice@example.org" not in text.lower() and alice.pseudonym not in text
    stored = ErasureRequest.objects.get(pk=body["id"])
    assert stored.subject_id == alice.id
    assert stored.identifier_receipt_hash not in (alice.pseudonym, pseudonymise(ALICE))
    event = AuditEvent.objects.get(action="erasure_request.received", object_id=str(stored.pk))
    assert event.subject_ref == alice.reference
    assert alice.pseudonym not in str(event.details) and "alice" not in str(event.details).lower()


@pytest.mark.django_db
def test_uk_and_ccpa_regimes_set_their_own_deadline(dpo_client, alice):
    uk = _create(dpo_client, regime="uk", received_at="2025-09-03T10:00:00Z").json()
    assert uk["due_at"] == "2025-10-06"
    ErasureRequest.objects.filter(pk=uk["id"]).update(status="rejected")
    ccpa = _create(dpo_client, regime="ccpa", received_at="2025-09-10T10:00:00Z").json()
    assert ccpa["due_at"] == "2025-10-25"


@pytest.mark.django_db
def test_unknown_subject_is_recorded_and_answered_no_data_held(dpo_client):
    response = _create(dpo_client, subject="nobody@example.org")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["data_held"] is False
    assert body["status"] == "completed"
    assert "no personal data" in body["outcome"].lower()
    assert body["subject_ref"] is None
    assert AuditEvent.objects.filter(action="erasure_request.answered_no_data", object_id=str(body["id"])).exists()
    impact = dpo_client.get(f"{URL}{body['id']}/impact/").json()
    assert impact["data_held"] is False and impact["totals"]["records"] == 0


@pytest.mark.django_db
def test_second_request_while_one_is_open_is_409_and_changes_nothing(dpo_client, alice):
    first = _create(dpo_client)
    assert first.status_code == 201
    before = _state()
    # Same person written differently: normalisation makes it the same identifier.
    second = _create(dpo_client, subject="  alice@EXAMPLE.org ")
    assert second.status_code == 409, second.content
    assert "still open" in second.json()["detail"]
    assert second.json()["open_request"] == first.json()["id"]
    assert _state() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": None}, "subject"),
        ({"ground": "17_3_a"}, "ground"),
        ({"ground": None}, "ground"),
        ({"regime": "us"}, "regime"),
        ({"channel": "pigeon"}, "channel"),
        ({"received_at": "yesterday"}, "received_at"),
        ({"received_at": "2999-01-01T00:00:00Z"}, "received_at"),
        ({"received_at": "2024-01-01T12:99:00Z"}, "received_at"),  # well formed, impossible (found by fuzzing)
        ({"received_at": "0001-01-01T00:30:00+01:00"}, "received_at"),  # before year 1 in UTC
        ({"received_at": 20240101}, "received_at"),
        ({"received_at": "0004-01-01T01:00:01Z"}, "received_at"),  # a mistyped year
    ],
)
def test_bad_input_is_400_naming_the_field(dpo_client, alice, overrides, field):
    before = _state()
    response = _create(dpo_client, **overrides)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert _state() == before


@pytest.mark.django_db
def test_execute_before_verify_is_409(dpo_client, alice):
    created = _create(dpo_client).json()
    before = _state()
    response = dpo_client.post(f"{URL}{created['id']}/execute/", {}, format="json")
    assert response.status_code == 409
    assert "not verified" in response.json()["detail"]
    assert _state() == before


@pytest.mark.django_db
def test_verify_records_who_and_when_and_only_once(dpo_client, alice):
    created = _create(dpo_client).json()
    response = dpo_client.post(f"{URL}{created['id']}/verify/", {"method": "reply from the registered e-mail"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "verified" and body["verified_at"] and body["verified_by"] == "test_dpo"
    assert dpo_client.post(f"{URL}{created['id']}/verify/", {}, format="json").status_code == 409


@pytest.mark.django_db
def test_extend_once_with_reasons_before_the_first_deadline(dpo_client, alice):
    received = timezone.now() - timedelta(days=3)
    created = _create(dpo_client, received_at=received.isoformat()).json()
    url = f"{URL}{created['id']}/extend/"
    before = _state()
    assert "reasons" in dpo_client.post(url, {"subject_informed_at": timezone.now().isoformat()}, format="json").json()
    assert "subject_informed_at" in dpo_client.post(url, {"reasons": "complex"}, format="json").json()
    assert _state() == before
    response = dpo_client.post(
        url, {"reasons": "14 models to retrain", "subject_informed_at": timezone.now().isoformat()}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["extended_due_at"] > body["due_at"]
    assert body["effective_due_at"] == body["extended_due_at"]
    assert body["subject_informed_of_extension_at"]
    before = _state()
    again = dpo_client.post(url, {"reasons": "more", "subject_informed_at": timezone.now().isoformat()}, format="json")
    assert again.status_code == 409 and "once" in again.json()["detail"]
    assert _state() == before


@pytest.mark.django_db
def test_extend_after_the_first_month_is_409(dpo_client, alice):
    created = _create(dpo_client, received_at=(timezone.now() - timedelta(days=40)).isoformat()).json()
    before = _state()
    response = dpo_client.post(
        f"{URL}{created['id']}/extend/",
        {"reasons": "complex", "subject_informed_at": (timezone.now() - timedelta(days=38)).isoformat()},
        format="json",
    )
    assert response.status_code == 409, response.content
    assert "passed" in response.json()["detail"]
    assert _state() == before


@pytest.mark.django_db
def test_reject_requires_a_17_3_ground_and_justification_and_carries_the_12_4_notice(dpo_client, alice):
    created = _create(dpo_client).json()
    url = f"{URL}{created['id']}/reject/"
    before = _state()
    assert "refusal_ground" in dpo_client.post(url, {"justification": "x"}, format="json").json()
    assert "refusal_ground" in dpo_client.post(url, {"refusal_ground": "17_1_a", "justification": "x"}, format="json").json()
    assert "justification" in dpo_client.post(url, {"refusal_ground": "17_3_e"}, format="json").json()
    assert _state() == before
    response = dpo_client.post(url, {"refusal_ground": "17_3_e", "justification": "Evidence in case 2025/118."}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "rejected"
    notice = body["refusal_notice"]
    assert "supervisory authority" in notice and "judicial remedy" in notice and "2025/118" in notice
    assert dpo_client.post(f"{URL}{created['id']}/execute/", {}, format="json").status_code == 409
    # The written answer: a PDF notice of refusal, its hash in the audit chain.
    assert body["certificate_available"] is True
    pdf = dpo_client.get(f"{URL}{created['id']}/certificate/")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    content = b"".join(pdf.streaming_content)
    assert f"erasure-refusal-notice-{created['id']}.pdf" in pdf["Content-Disposition"]
    text = pdf_text(content)
    assert "Notice of refusal" in text and "2025/118" in text and "supervisory authority" in text
    assert "Art. 17(3)(e)" in text
    issued = AuditEvent.objects.get(action="erasure.refusal_notice_issued", object_id=str(created["id"]))
    assert issued.details["sha256"] == hashlib.sha256(content).hexdigest() == body["certificate_sha256"]
    assert ALICE not in text and ALICE.lower() not in text
    # A rejected request no longer blocks a new one for the same person.
    assert _create(dpo_client).status_code == 201


@pytest.mark.django_db
def test_list_filters_by_status_and_overdue(dpo_client, auditor_client, db):
    h.subject_for("late@example.org")
    h.subject_for("fresh@example.org")
    late = _create(dpo_client, subject="late@example.org", received_at=(timezone.now() - timedelta(days=60)).isoformat()).json()
    fresh = _create(dpo_client, subject="fresh@example.org").json()
    overdue = auditor_client.get(URL, {"overdue": "true"}).json()["results"]
    assert [r["id"] for r in overdue] == [late["id"]]
    assert overdue[0]["overdue"] is True and overdue[0]["days_left"] < 0
    not_overdue = auditor_client.get(URL, {"overdue": "false"}).json()["results"]
    assert fresh["id"] in [r["id"] for r in not_overdue] and late["id"] not in [r["id"] for r in not_overdue]
    listed = [r["id"] for r in auditor_client.get(URL, {"status": "received"}).json()["results"]]
    assert listed == [late["id"], fresh["id"]]  # ordered by deadline
    assert auditor_client.get(URL, {"status": "nonsense"}).status_code == 400


@pytest.mark.django_db
def test_auditor_reads_but_cannot_act_and_ml_engineer_sees_nothing(auditor_client, ml_client, dpo_client, alice):
    created = _create(dpo_client).json()
    assert auditor_client.get(f"{URL}{created['id']}/").status_code == 200
    assert auditor_client.post(f"{URL}{created['id']}/verify/", {}, format="json").status_code == 403
    assert ml_client.get(URL).status_code == 403
    assert _create(auditor_client).status_code == 403


@pytest.mark.django_db
def test_impact_lists_datasets_snapshots_and_counts(dpo_client, alice):
    bob = h.subject_for("bob@example.org")
    act = h.activity()
    ds = h.dataset_with_records(act=act, rows=[
        (alice, {"x0": 1.0, "x1": 0.0}, 1), (alice, {"x0": 2.0, "x1": 1.0}, 0), (bob, {"x0": 0.5, "x1": 0.5}, 1),
    ])
    snap = h.snapshot_of(ds)
    created = _create(dpo_client).json()
    impact = dpo_client.get(f"{URL}{created['id']}/impact/").json()
    assert impact["data_held"] is True
    assert impact["datasets"] == [{"id": ds.id, "name": ds.name, "records": 2}]
    assert impact["snapshots"][0]["id"] == snap.id and impact["snapshots"][0]["records"] == 2
    assert impact["totals"]["records"] == 2


@pytest.mark.django_db
def test_consent_withdrawal_opens_a_request_when_the_activity_says_so(db):
    alice = h.subject_for(ALICE)
    act = h.activity(erasure_on_withdrawal=True)
    other = h.activity(erasure_on_withdrawal=False)
    purpose = act.purposes.first()
    now = timezone.now()
    ConsentEvent.objects.create(
        event_id="w-1", subject=alice, purpose=purpose, action="withdrawn", occurred_at=now,
        notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    ConsentEvent.objects.create(
        event_id="w-2", subject=h.subject_for("bob@example.org"), purpose=other.purposes.first(), action="withdrawn",
        occurred_at=now, notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    assert services.erasure_requests_open_for_withdrawals(consent_event_ids=["w-1", "w-2"]) == 1
    request = ErasureRequest.objects.get()
    assert request.subject_id == alice.id and request.ground == "17_1_b" and request.channel == "consent_withdrawal"
    assert request.status == ErasureStatus.RECEIVED
    # Idempotent: the open request is not duplicated.
    assert services.erasure_requests_open_for_withdrawals(consent_event_ids=["w-1"]) == 0
    assert services.erasure_request_open_for_withdrawal(subject=alice, purpose=purpose, occurred_at=now) == request
    assert services.erasure_request_open_for_withdrawal(
        subject=alice, purpose=other.purposes.first(), occurred_at=now
    ) is None
    # A request by identifier for the same person now conflicts with the one opened on withdrawal.
    with pytest.raises(services.ServiceConflict):
        services.erasure_request_receive(identifier=ALICE, ground="17_1_b")


@pytest.mark.django_db
def test_due_date_uses_configured_public_holidays(dpo_client, alice, settings):
    settings.ERASURE_PUBLIC_HOLIDAYS = ["2025-10-03"]
    body = _create(dpo_client, received_at="2025-09-03T10:00:00Z").json()
    assert date.fromisoformat(body["due_at"]) == date(2025, 10, 6)


@pytest.mark.django_db
def test_consent_ingest_with_a_withdrawal_opens_a_request(django_capture_on_commit_callbacks):
    from governance import services as governance_services

    flagged = h.activity(erasure_on_withdrawal=True)
    purpose = flagged.purposes.first()
    given = (timezone.now() - timedelta(days=10)).isoformat()
    event = {"subject": "erin@example.org", "purpose": purpose.code, "notice_version": "v1",
             "notice_sha256": "a" * 64, "method": "web"}
    governance_services.consent_events_ingest(events=[{**event, "action": "given", "occurred_at": given}])
    assert not ErasureRequest.objects.exists()
    withdrawn_at = timezone.now() - timedelta(days=1)
    with django_capture_on_commit_callbacks(execute=True) as sent:
        answer = governance_services.consent_events_ingest(
            events=[{**event, "action": "withdrawn", "occurred_at": withdrawn_at.isoformat()}]
        )
        # Nothing is opened inside the consent batch's transaction: only after its commit.
        assert not ErasureRequest.objects.exists()
    assert answer["withdrawals_under_erasure_on_withdrawal"] == 1 and len(sent) == 1
    request = ErasureRequest.objects.get()
    assert (request.ground, request.channel, request.status) == ("17_1_b", "consent_withdrawal", "received")
    assert request.subject.pseudonym == pseudonymise("erin@example.org")
    assert request.received_at == withdrawn_at
    # The catch-up sweep finds nothing left to open, also once the request is rejected.
    assert services.erasure_requests_open_for_withdrawals_sweep() == 0
    services.erasure_request_reject(erasure_request=request, refusal_ground="17_3_e", justification="litigation")
    assert services.erasure_requests_open_for_withdrawals_sweep() == 0
    assert AuditEvent.objects.filter(action="erasure_request.opened_on_withdrawal").count() == 1
