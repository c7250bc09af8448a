"""The DPO's request and person pages (issue 16): logging a request received by phone, the
workflow steps behind confirmations that restate the impact, execution in the background with
a live progress fragment, the answer documents, and the person page."""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.utils import timezone
from pypdf import PdfReader

from governance.models import AuditEvent, ConsentEvent
from rights import services
from rights.models import ErasureRequest
from tests.rights import helpers as h

BASE = "/admin/rights/erasurerequest/"


def page(response) -> str:
    text = response.content.decode()
    # No raw machine output on a workspace page: a JSON object never reaches the HTML.
    assert '{"' not in text, "raw JSON on the page"
    return text


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def pdf_text(content: bytes) -> str:
    return " ".join(p.extract_text() for p in PdfReader(io.BytesIO(content)).pages)


def person_with_data(identifier: str):
    subject = h.subject_for(identifier)
    act = h.activity()
    ds = h.dataset_with_records(act=act, rows=[(subject, {"x0": 1.0, "x1": 0.0}, 1)])
    snap = h.snapshot_of(ds)
    return subject, ds, snap


@pytest.mark.django_db
def test_a_phone_request_is_logged_with_its_pseudonym_and_never_the_identifier(admin_client):
    identifier = "caller-0412@example.org"
    subject, _, _ = person_with_data(identifier)
    response = admin_client.post(f"{BASE}add/", {
        "identifier": identifier, "channel": "phone", "received_at": "2026-11-30T10:15", "ground": "17_1_c",
        "regime": "eu", "notes": "Call taken by the front desk.",
    })
    request = ErasureRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{BASE}{request.pk}/change/"
    assert (request.channel, request.ground, request.subject_id) == ("phone", "17_1_c", subject.pk)
    assert request.identifier_receipt_hash == services.erasure_receipt_hash(pseudonym=subject.pseudonym)
    assert request.notes == "Call taken by the front desk."
    columns = [str(getattr(request, f.attname)) for f in ErasureRequest._meta.concrete_fields]
    assert not any(identifier in value for value in columns)
    assert not any(identifier in str(e.details) for e in AuditEvent.objects.all())
    text = page(admin_client.get(response["Location"]))
    assert identifier not in text and subject.pseudonym not in text
    assert "Telephone" in text and "Art. 17(1)(c) objection under Art. 21" in text


@pytest.mark.django_db
def test_a_refused_log_form_is_a_400_naming_the_field_and_does_not_echo_the_identifier(admin_client):
    identifier = "letter-writer@example.org"
    response = admin_client.post(f"{BASE}add/", {
        "identifier": identifier, "channel": "letter", "received_at": "", "ground": "", "regime": "eu",
    })
    text = page(response)
    assert response.status_code == 400 and "This field is required" in text
    assert identifier not in text
    # The service's own refusal lands on the field it names: a receipt date in the future.
    future = (timezone.now() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    response = admin_client.post(f"{BASE}add/", {
        "identifier": identifier, "channel": "letter", "received_at": future, "ground": "17_1_a", "regime": "eu",
    })
    text = page(response)
    assert response.status_code == 400 and "This moment is in the future." in text and identifier not in text
    assert ErasureRequest.objects.count() == 0


@pytest.mark.django_db
def test_verify_extend_and_reject_by_label_each_behind_a_page_restating_the_impact(admin_client, settings, tmp_path):
    settings.REPORT_ROOT = tmp_path
    _, ds, snap = person_with_data("alice@example.org")
    request = services.erasure_request_receive(
        identifier="alice@example.org", ground="17_1_a", received_at=timezone.now() - timedelta(days=2))
    change = page(admin_client.get(f"{BASE}{request.pk}/change/"))
    # The next steps of a received request, on the page; no Save, no bulk actions.
    assert f"{BASE}{request.pk}/verify/" in change and f"{BASE}{request.pk}/reject/" in change
    assert f"{BASE}{request.pk}/execute/" not in change
    assert 'name="_save"' not in change and 'name="_continue"' not in change
    # A Save posted anyway (an old tab) changes nothing and says so, instead of reporting a change.
    saved = admin_client.post(f"{BASE}{request.pk}/change/", {"_save": "Save", "status": "completed"}, follow=True)
    assert "Nothing was changed" in page(saved)
    assert ErasureRequest.objects.get(pk=request.pk).status == "received"
    assert not LogEntry.objects.filter(object_id=str(request.pk)).exists()
    assert f'href="/admin/provenance/dataset/{ds.pk}/change/"' in change
    assert f'href="/admin/provenance/snapshot/{snap.pk}/change/"' in change

    confirm = page(admin_client.get(f"{BASE}{request.pk}/verify/"))
    assert ds.name in confirm and f"Snapshot #{snap.pk}" in confirm and "records" in confirm
    method = "Identity document seen in person"
    response = admin_client.post(f"{BASE}{request.pk}/verify/", {"method": method})
    assert response.status_code == 302
    request.refresh_from_db()
    assert (request.status, request.verification_method) == ("verified", method)
    # The step is in the admin's "Recent actions".
    assert LogEntry.objects.get(object_id=str(request.pk)).get_change_message().startswith(
        f"Request {request.pk}: identity verified")
    # Verifying twice is refused by the service: a message on the form, not a 500.
    again = admin_client.post(f"{BASE}{request.pk}/verify/", {"method": method})
    assert again.status_code == 400 and "Only a received request can be verified" in page(again)

    informed = timezone.localtime().strftime("%Y-%m-%dT%H:%M")
    refused = admin_client.post(f"{BASE}{request.pk}/extend/", {"reasons": "", "subject_informed_at": informed})
    assert refused.status_code == 400 and "This field is required" in page(refused)
    response = admin_client.post(f"{BASE}{request.pk}/extend/", {
        "reasons": "Numerous datasets and a SISA model to unlearn.", "subject_informed_at": informed})
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.extended_due_at is not None and request.extension_reasons.startswith("Numerous")

    reject = page(admin_client.get(f"{BASE}{request.pk}/reject/"))
    assert "Art. 17(3)(e) establishment, exercise or defence of legal claims" in reject and ds.name in reject
    response = admin_client.post(f"{BASE}{request.pk}/reject/", {
        "refusal_ground": "17_3_e", "justification": "Evidence in pending litigation."}, follow=True)
    request.refresh_from_db()
    assert request.status == "rejected" and request.refusal_ground == "17_3_e"
    text = page(response)
    assert "Art. 17(3)(e) establishment" in text and "17_3_e" not in text
    notice = admin_client.get(f"{BASE}{request.pk}/certificate/")
    content = b"".join(notice.streaming_content)
    assert notice["Content-Type"] == "application/pdf" and content.startswith(b"%PDF")
    assert "In time" in pdf_text(content)


@pytest.mark.django_db
def test_an_overdue_request_is_flagged_in_the_list_on_its_page_and_on_its_notice(admin_client, settings, tmp_path):
    settings.REPORT_ROOT = tmp_path
    h.subject_for("late@example.org")
    late = services.erasure_request_receive(
        identifier="late@example.org", ground="17_1_a", received_at=timezone.now() - timedelta(days=50))
    overdue_by = (timezone.localdate() - late.due_at).days
    assert f"OVERDUE by {overdue_by} day(s)" in page(admin_client.get(BASE))
    assert f"OVERDUE by {overdue_by} day(s)" in page(admin_client.get(f"{BASE}{late.pk}/change/"))
    services.erasure_request_reject(erasure_request=late, refusal_ground="17_3_b", justification="Tax law.")
    notice = admin_client.get(f"{BASE}{late.pk}/certificate/")
    text = pdf_text(b"".join(notice.streaming_content))
    assert f"LATE: answered {overdue_by} day(s) after the deadline" in text
    assert f"answered {overdue_by} day(s) late" in page(admin_client.get(BASE))


@pytest.mark.django_db
def test_unknown_ids_and_missing_documents_are_404s_or_messages(admin_client, settings, tmp_path):
    settings.REPORT_ROOT = tmp_path
    for suffix in ("certificate/", "progress/", "verify/", "execute/", "extend/", "reject/", "override/", "change/"):
        for object_id in ("99999", "abc", "-1"):
            response = admin_client.get(f"{BASE}{object_id}/{suffix}")
            assert response.status_code == 404, f"{object_id}/{suffix} -> {response.status_code}"
    assert admin_client.get(f"{BASE}person/{uuid.uuid4()}/").status_code == 404
    h.subject_for("bob@example.org")
    request = services.erasure_request_receive(identifier="bob@example.org", ground="17_1_a")
    response = admin_client.get(f"{BASE}{request.pk}/certificate/", follow=True)
    assert response.status_code == 200 and "no answer document yet" in page(response)
    ErasureRequest.objects.filter(pk=request.pk).update(certificate_path="erasure/gone.pdf")
    response = admin_client.get(f"{BASE}{request.pk}/certificate/", follow=True)
    assert response.status_code == 200 and "is missing from the report store" in page(response)


@pytest.mark.django_db
def test_a_person_page_shows_consent_holdings_and_requests_and_never_the_identifier(admin_client):
    identifier = "carol@example.org"
    subject, ds, snap = person_with_data(identifier)
    request = services.erasure_request_receive(identifier=identifier, ground="17_1_a")
    response = admin_client.post(f"{BASE}person/", {"identifier": identifier})
    assert response.status_code == 302 and identifier not in response["Location"]
    assert response["Location"] == f"{BASE}person/{subject.reference}/"
    text = page(admin_client.get(response["Location"]))
    assert identifier not in text and subject.pseudonym not in text
    purpose = ConsentEvent.objects.get(subject=subject).purpose
    assert purpose.name in text and "Given" in text and "consent valid now" in text
    assert f'href="/admin/provenance/dataset/{ds.pk}/change/"' in text
    assert f'href="/admin/provenance/snapshot/{snap.pk}/change/"' in text
    assert f'href="{BASE}{request.pk}/change/"' in text
    # ... and back: the request page links to the person page.
    assert f'href="{BASE}person/{subject.reference}/"' in page(admin_client.get(f"{BASE}{request.pk}/change/"))
    # Someone unknown: said so, and the identifier is not echoed.
    unknown = admin_client.post(f"{BASE}person/", {"identifier": "nobody@example.org"})
    assert unknown.status_code == 200 and "No personal data are held" in page(unknown)
    assert "nobody@example.org" not in unknown.content.decode()


def _wait_until_completed(client, request_id: int, *, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        fragment = page(client.get(f"{BASE}{request_id}/progress/"))
        if "hx-trigger" not in fragment:
            return fragment
        assert time.monotonic() < deadline, "the erasure did not finish"
        time.sleep(0.5)


@pytest.mark.django_db(transaction=True)
def test_execute_answers_at_once_and_the_progress_fragment_follows_the_steps(client, celery_worker, settings, tmp_path):
    from django.contrib.auth import get_user_model

    settings.REPORT_ROOT = tmp_path
    dpo = get_user_model().objects.create_superuser("dpo-exec", "dpo@example.org", "pw-exec-123456")
    client.force_login(dpo)
    people = h.crowd(40, tag="exec")
    act = h.activity()
    snap = h.snapshot_of(h.people_dataset(act=act, people=people))
    run = h.train(snapshot=snap, name="exec-model")
    version = run.model_versions.get()
    request = services.erasure_request_receive(identifier="person-exec-0@example.org", ground="17_1_a")
    assert client.post(f"{BASE}{request.pk}/verify/", {"method": "Identity document seen in person"}).status_code == 302

    confirm = page(client.get(f"{BASE}{request.pk}/execute/"))
    assert f'href="/admin/mlops/modelversion/{version.pk}/change/"' in confirm
    assert "Retrain from scratch on the amended snapshot" in confirm and "This cannot be undone" in confirm
    assert client.post(f"{BASE}{request.pk}/execute/", {}).status_code == 400  # the box must be ticked

    response = client.post(f"{BASE}{request.pk}/execute/", {"confirm": "on"})
    assert response.status_code == 302
    said = " ".join(message_texts(response))
    if settings.CELERY_EMBEDDED:  # no broker: the task ran in this process at the commit
        request.refresh_from_db()
        assert request.status == "completed" and "completed" in said and "queued" not in said
    else:  # a worker executes it (a retraining takes seconds): the page answered at once
        assert "queued" in said and "completed" not in said
        assert 'hx-trigger="every 2s"' in page(client.get(f"{BASE}{request.pk}/progress/"))
    fragment = _wait_until_completed(client, request.pk)
    for label in ("Plan what the erasure touches", "Delete the person&#x27;s records",
                  "Remediate the model “exec-model”", "Issue the certificate"):
        assert label in fragment
    assert "Completed" in fragment and "Waiting" not in fragment
    change = page(client.get(f"{BASE}{request.pk}/change/"))
    assert "Download the certificate (PDF)" in change and f"{BASE}{request.pk}/execute/" not in change
    certificate = client.get(f"{BASE}{request.pk}/certificate/")
    content = b"".join(certificate.streaming_content)
    assert certificate["Content-Type"] == "application/pdf" and content.startswith(b"%PDF")
    text = pdf_text(content)
    assert "Certificate of erasure" in text and "exec-model" in text and "In time" in text
    # The person is gone: looking them up says when their data were erased, and by which request.
    lookup = page(client.post(f"{BASE}person/", {"identifier": "person-exec-0@example.org"}))
    assert "were erased on" in lookup and f'href="{BASE}{request.pk}/change/"' in lookup
    after = page(client.get(f"{BASE}person/{request.subject_ref}/"))
    assert "subject row was deleted" in after and f'href="{BASE}{request.pk}/change/"' in after
