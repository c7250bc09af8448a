"""Requests under Art. 15, 16, 18, 20 and 21 through the admin (the DPO's workflow: log,
verify, execute, refuse with a notice, lift, record the Art. 19 notifications) and the
Art. 19 and refusal-notice rules through the API."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from governance.models import AuditEvent, ProcessingRestriction
from governance.pseudonymisation import pseudonymise
from provenance import services as provenance_services
from provenance.models import DataRecord, SnapshotMembership
from rights.models import RecipientNotification, RightsRequest
from tests.governance.reports_helpers import pdf_text
from tests.provenance.helpers import SCHEMA, purpose, row
from tests.provenance.helpers import activity as prov_activity

ADMIN = "/admin/rights/rightsrequest/"
PEOPLE = ["dora.workflow@example.org", "eli.workflow@example.org", "fay.workflow@example.org"]
ANALYTICS = "analytics.product"
RECIPIENTS = [{"name": "Cloud provider", "third_country": ""}, {"name": "Lab partner", "third_country": "US"}]


def _dataset():
    act = prov_activity(lawful_basis="legitimate_interests", purposes=(ANALYTICS,))
    act.recipients = RECIPIENTS
    act.save(update_fields=["recipients"])
    dataset = provenance_services.dataset_create(name=f"workflow {act.pk}", owner="ml", processing_activity=act,
                                                 schema=SCHEMA)
    provenance_services.dataset_records_ingest(dataset=dataset, rows=[row(p, age=40 + i) for i, p in enumerate(PEOPLE)],
                                               actor="test")
    return dataset


def _record_of(dataset, identifier: str) -> DataRecord:
    return DataRecord.objects.get(dataset=dataset, subject__pseudonym=pseudonymise(identifier), superseded_at__isnull=True)


def _members(dataset) -> set[int]:
    snapshot = provenance_services.snapshot_create(dataset=dataset, purpose=purpose(ANALYTICS), requested_by="test")
    return set(SnapshotMembership.objects.filter(snapshot=snapshot).values_list("record_id", flat=True))


def _log(admin_client, **fields) -> RightsRequest:
    before = set(RightsRequest.objects.values_list("pk", flat=True))
    response = admin_client.post(f"{ADMIN}add/", {"channel": "letter", "regime": "eu", **fields})
    assert response.status_code == 302, response.content.decode()[-3000:]
    (pk,) = set(RightsRequest.objects.values_list("pk", flat=True)) - before
    return RightsRequest.objects.get(pk=pk)


def _step(admin_client, request: RightsRequest, step: str, data: dict) -> str:
    response = admin_client.post(f"{ADMIN}{request.pk}/{step}/", data, follow=True)
    page = response.content.decode()
    assert response.status_code == 200, (response.context or {}).get("form") and response.context["form"].errors
    return page


@pytest.mark.django_db
def test_a_rectification_logged_in_the_admin_is_executed_and_its_recipients_recorded_as_told(admin_client):
    dataset = _dataset()
    old = _record_of(dataset, PEOPLE[0])
    request = _log(admin_client, type="rectification", identifier=PEOPLE[0], dataset=dataset.pk,
                   corrections=f"{old.pk}: age = 57", justification="Mistyped at intake.")
    page = admin_client.get(f"{ADMIN}{request.pk}/change/").content.decode()
    assert PEOPLE[0] not in page and "Verify the identity" in page and "Execute" not in page.split("Verify")[0]
    _step(admin_client, request, "verify", {"method": "Identity document seen in person"})
    page = _step(admin_client, request, "execute", {"confirm": "on"})
    assert f"Request {request.pk}: executed." in page
    new = _record_of(dataset, PEOPLE[0])
    assert new.features["age"] == 57 and new.pk in _members(dataset) and old.pk not in _members(dataset)

    # Art. 19: the recipients are listed as still to be told; the ledger claims nothing more.
    rows = RecipientNotification.objects.filter(rights_request=request).order_by("recipient")
    assert [(n.recipient, n.third_country, n.notified_at) for n in rows] == [
        ("Cloud provider", "", None), ("Lab partner", "US", None)]
    page = admin_client.get(f"{ADMIN}{request.pk}/change/").content.decode()
    assert "Recipients to tell (Art. 19)" in page and page.count("<td>to be told</td>") == 2
    assert "Record a recipient told" in page
    page = _step(admin_client, request, "notified", {"recipient": "Lab partner", "method": "E-mail to privacy@lab"})
    assert "recipient recorded as told" in page
    told = RecipientNotification.objects.get(rights_request=request, recipient="Lab partner")
    assert told.method == "E-mail to privacy@lab" and told.notified_at is not None
    assert AuditEvent.objects.filter(action="rights_request.recipient_notified", object_id=str(request.pk)).count() == 1


@pytest.mark.django_db
def test_the_admin_log_form_refuses_a_field_not_in_the_schema_and_writes_nothing(admin_client):
    dataset = _dataset()
    old = _record_of(dataset, PEOPLE[1])
    before = RightsRequest.objects.count()
    response = admin_client.post(f"{ADMIN}add/", {
        "type": "rectification", "identifier": PEOPLE[1], "channel": "letter", "regime": "eu", "dataset": dataset.pk,
        "corrections": f"{old.pk}: bmi_typo = 1.0", "justification": "Wrong."})
    page = response.content.decode()
    assert response.status_code == 400 and "bmi_typo" in page and PEOPLE[1] not in page
    malformed = admin_client.post(f"{ADMIN}add/", {
        "type": "rectification", "identifier": PEOPLE[1], "channel": "letter", "regime": "eu", "dataset": dataset.pk,
        "corrections": "age is 50", "justification": "Wrong."})
    assert malformed.status_code == 400 and "Line 1" in malformed.content.decode()
    assert RightsRequest.objects.count() == before


@pytest.mark.django_db
def test_a_restriction_from_the_admin_leaves_the_person_out_until_it_is_lifted_there(admin_client):
    dataset = _dataset()
    record = _record_of(dataset, PEOPLE[2])
    request = _log(admin_client, type="restriction", identifier=PEOPLE[2], restriction_ground="18_1_a",
                   justification="The person contests the accuracy.")
    _step(admin_client, request, "verify", {"method": "Identity document seen in person"})
    _step(admin_client, request, "execute", {"confirm": "on"})
    assert record.pk not in _members(dataset)
    assert set(RecipientNotification.objects.filter(rights_request=request).values_list("recipient", flat=True)) == {
        "Cloud provider", "Lab partner"}
    page = admin_client.get(f"{ADMIN}{request.pk}/change/").content.decode()
    assert "Lift the restriction" in page
    time.sleep(1.1)  # the form takes whole seconds: "informed" must fall after the restriction, before now
    informed = timezone.localtime().strftime("%Y-%m-%dT%H:%M:%S")
    refused = admin_client.post(f"{ADMIN}{request.pk}/lift/", {"informed_at": informed})
    limit = RightsRequest.objects.get(pk=request.pk).limit_id
    assert refused.status_code == 400 and not ProcessingRestriction.objects.filter(pk=limit, lifting__isnull=False).exists()
    _step(admin_client, request, "lift", {"informed_at": informed, "reason": "Accuracy verified."})
    assert record.pk in _members(dataset)
    assert "Lift the restriction" not in admin_client.get(f"{ADMIN}{request.pk}/change/").content.decode()


@pytest.mark.django_db
def test_a_refusal_writes_the_art_12_4_notice_as_a_pdf_with_its_hash_audited(admin_client, dpo_client, auditor_client):
    _dataset()
    request = _log(admin_client, type="access", identifier=PEOPLE[0])
    page = _step(admin_client, request, "reject", {"refusal_ground": "12_5_exc",
                                                   "justification": "The sixth identical request this month."})
    assert "the Art. 12(4) notice is ready to download" in page
    request.refresh_from_db()
    assert request.status == "rejected" and request.answer_path
    download = dpo_client.get(f"/api/v1/requests/{request.pk}/answer/?format=pdf")
    assert download.status_code == 200
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == request.answer_sha256
    event = AuditEvent.objects.get(action="rights_request.refusal_notice_issued", object_id=str(request.pk))
    assert event.details["sha256"] == request.answer_sha256
    text = pdf_text(content)
    assert "Art. 12(5) manifestly excessive" in text and "sixth identical request" in text and "Art. 77" in text
    # The admin offers the same file to the DPO; an auditor reads the request but not the answer.
    admin_page = admin_client.get(f"{ADMIN}{request.pk}/change/").content.decode()
    assert f"{ADMIN}{request.pk}/answer/pdf/" in admin_page
    assert auditor_client.get(f"/api/v1/requests/{request.pk}/answer/?format=pdf").status_code == 403


@pytest.mark.django_db
def test_art_19_records_refuse_the_wrong_request_recipient_or_a_second_record(dpo_client):
    dataset = _dataset()
    old = _record_of(dataset, PEOPLE[1])
    created = dpo_client.post("/api/v1/requests/", {
        "type": "rectification", "subject": PEOPLE[1], "dataset": dataset.pk, "justification": "Typo.",
        "corrections": [{"record": old.pk, "values": {"age": 61}}]}, format="json").json()
    base = f"/api/v1/requests/{created['id']}"
    early = dpo_client.post(f"{base}/notified/", {"recipient": "Lab partner", "method": "e-mail"}, format="json")
    assert early.status_code == 409 and "executed" in early.json()["detail"]
    dpo_client.post(f"{base}/verify/", {"method": "Reply from the address on file"}, format="json")
    executed = dpo_client.post(f"{base}/execute/", format="json").json()
    assert [n["recipient"] for n in executed["recipient_notifications"]] == ["Cloud provider", "Lab partner"]
    assert all(n["notified_at"] is None for n in executed["recipient_notifications"])
    unknown = dpo_client.post(f"{base}/notified/", {"recipient": "Someone else", "method": "e-mail"}, format="json")
    assert unknown.status_code == 400 and "recipient" in unknown.json()
    no_method = dpo_client.post(f"{base}/notified/", {"recipient": "Lab partner"}, format="json")
    assert no_method.status_code == 400 and "method" in no_method.json()
    future = (timezone.now() + timedelta(days=2)).isoformat()
    assert dpo_client.post(f"{base}/notified/", {"recipient": "Lab partner", "method": "e-mail",
                                                 "notified_at": future}, format="json").status_code == 400
    told = dpo_client.post(f"{base}/notified/", {"recipient": "Lab partner", "method": "e-mail"}, format="json")
    assert told.status_code == 200
    lab = next(n for n in told.json()["recipient_notifications"] if n["recipient"] == "Lab partner")
    assert lab["notified_at"] and lab["method"] == "e-mail"
    again = dpo_client.post(f"{base}/notified/", {"recipient": "Lab partner", "method": "e-mail"}, format="json")
    assert again.status_code == 409 and "already recorded" in again.json()["detail"]

    access = dpo_client.post("/api/v1/requests/", {"type": "access", "subject": PEOPLE[2]}, format="json").json()
    wrong = dpo_client.post(f"/api/v1/requests/{access['id']}/notified/", {"recipient": "Lab partner",
                                                                         "method": "e-mail"}, format="json")
    assert wrong.status_code == 409 and "Art. 19" in wrong.json()["detail"]


@pytest.mark.django_db
def test_an_erasure_lists_its_recipients_to_be_told_and_the_certificate_claims_no_notification(admin_client, dpo_client):
    from rights import execution, services
    from rights.models import ErasureRequest
    from tests.governance.reports_helpers import pdf_text as text_of
    from tests.rights import helpers as h

    alice = h.subject_for("alice.art19@example.org")
    act = h.activity(recipients=RECIPIENTS)
    h.dataset_with_records(act=act, rows=[(alice, {"x0": 1.0, "x1": 0.0}, 1)])
    request = services.erasure_request_receive(identifier="alice.art19@example.org", ground="17_1_a")
    services.erasure_request_verify(erasure_request=request, method="Identity document seen in person")
    services.erasure_request_execute_start(erasure_request=request)
    execution.erasure_request_execute(request_id=request.pk)  # the task's work, run here (no commit to wait for)
    request = ErasureRequest.objects.get(pk=request.pk)
    assert request.status == "completed"
    assert list(request.recipient_notifications.values_list("recipient", "notified_at").order_by("recipient")) == [
        ("Cloud provider", None), ("Lab partner", None)]
    certificate = text_of((Path(settings.REPORT_ROOT) / request.certificate_path).read_bytes())
    assert "Recipients to tell (Art. 19)" in certificate and "to be told" in certificate
    assert "Notified at" not in certificate

    page = admin_client.get(f"/admin/rights/erasurerequest/{request.pk}/change/").content.decode()
    assert "Record a recipient told" in page and page.count("<td>to be told</td>") == 2
    response = admin_client.post(f"/admin/rights/erasurerequest/{request.pk}/notified/",
                                 {"recipient": "Cloud provider", "method": "E-mail to privacy@cloud"}, follow=True)
    assert "recipient recorded as told" in response.content.decode()
    told = dpo_client.post(f"/api/v1/erasure-requests/{request.pk}/notified/",
                           {"recipient": "Lab partner", "method": "Registered letter"}, format="json")
    assert told.status_code == 200, told.content
    assert all(n["notified_at"] for n in told.json()["recipient_notifications"])
    again = dpo_client.post(f"/api/v1/erasure-requests/{request.pk}/notified/",
                            {"recipient": "Lab partner", "method": "Registered letter"}, format="json")
    assert again.status_code == 409
    assert AuditEvent.objects.filter(action="erasure_request.recipient_notified", object_id=str(request.pk)).count() == 2
    assert "Record a recipient told" not in admin_client.get(
        f"/admin/rights/erasurerequest/{request.pk}/change/").content.decode()
