"""One request model for every right (issue 18): POST /api/v1/requests/ for access, portability,
rectification, restriction, objection and erasure; the Art. 12(3) deadline, extension and
Art. 12(5)/17(3) refusal rules shared with erasure; access and portability answers built in a
task, downloadable until they expire (410); restriction and objection keep people out of the
next snapshot. Runs on SQLite and on PostgreSQL with a real worker."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from governance.models import AuditEvent, DataSubject, ProcessingObjection, ProcessingRestriction
from governance.pseudonymisation import pseudonymise
from mlops.models import ModelVersion
from provenance import services as provenance_services
from provenance.models import SnapshotMembership
from rights import deadlines
from rights.models import ErasureRequest, RightsRequest
from rights.services.answers import rights_answers_purge
from tests.api_routes import ROLE_POLICY, api_routes
from tests.governance.reports_helpers import pdf_text
from tests.provenance.helpers import SCHEMA, purpose, row
from tests.provenance.helpers import activity as prov_activity
from tests.rights import helpers as h

ALICE = "alice.requests@example.org"
BOB = "bob.requests@example.org"
ANALYTICS = "analytics.product"
PEOPLE = ["ann.requests@example.org", "ben.requests@example.org", "cat.requests@example.org"]


def _post(client, body: dict):
    return client.post("/api/v1/requests/", body, format="json")


def _act(client, pk: int, what: str, body: dict | None = None):
    return client.post(f"/api/v1/requests/{pk}/{what}/", body or {}, format="json")


def _written() -> tuple[int, int, int, int]:
    return (RightsRequest.objects.count(), ErasureRequest.objects.count(), ProcessingRestriction.objects.count(),
            ProcessingObjection.objects.count())


def _limits_dataset(*, lawful_basis: str = "legitimate_interests", purposes=(ANALYTICS,)):
    act = prov_activity(lawful_basis=lawful_basis, purposes=purposes)
    dataset = provenance_services.dataset_create(name=f"requests {act.pk}", owner="ml", processing_activity=act,
                                                 schema=SCHEMA)
    provenance_services.dataset_records_ingest(dataset=dataset, rows=[row(p, age=30 + i) for i, p in enumerate(PEOPLE)],
                                               actor="test")
    return dataset


def _members(dataset, code: str) -> set[str]:
    snapshot = provenance_services.snapshot_create(dataset=dataset, purpose=purpose(code), requested_by="test")
    ids = SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True)
    return set(DataSubject.objects.filter(pk__in=ids).values_list("pseudonym", flat=True))


def _wait_completed(pk: int, timeout: float = 120.0) -> RightsRequest:
    """The request once its task completed it (at once when tasks run in-process)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        obj = RightsRequest.objects.get(pk=pk)
        if obj.status != "in_progress" or time.monotonic() > deadline:
            assert obj.status == "completed", (obj.status, obj.outcome)
            return obj
        time.sleep(0.2)


def _verified(client, body: dict) -> dict:
    created = _post(client, body)
    assert created.status_code == 201, created.content
    verified = _act(client, created.json()["id"], "verify", {"method": "Reply from the e-mail address on file"})
    assert verified.status_code == 200, verified.content
    assert verified.json()["status"] == "verified"
    assert verified.json()["verification_method"] == "Reply from the e-mail address on file"
    return verified.json()


# --- Access (Art. 15) and portability (Art. 20) ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_access_answer_built_in_the_task_lists_exactly_the_models_trained_on_the_person(
    celery_worker, dpo_client, auditor_client
):
    first, second = h.activity(), h.activity(recipients=[])
    alice, bob = h.subject_for(ALICE), h.subject_for(BOB)
    ds_a = h.people_dataset(act=first, people=[alice, bob, *h.crowd(30)], seed=1)
    ds_b = h.people_dataset(act=second, people=[bob, *h.crowd(30)], seed=2)
    model_a = ModelVersion.objects.get(training_run=h.train(snapshot=h.snapshot_of(ds_a), name="req-risk-a"))
    model_b = ModelVersion.objects.get(training_run=h.train(snapshot=h.snapshot_of(ds_b), name="req-risk-b"))

    request = _verified(dpo_client, {"type": "access", "subject": ALICE, "channel": "email"})
    assert request["type_label"] == "Access (Art. 15)" and request["subject_ref"] == str(alice.reference)
    executed = _act(dpo_client, request["id"], "execute")
    assert executed.status_code == 202, executed.content
    _wait_completed(request["id"])
    done = dpo_client.get(f"/api/v1/requests/{request['id']}/").json()
    assert done["answer_available"] is True and done["answer_expires_at"]

    answer = dpo_client.get(f"/api/v1/requests/{request['id']}/answer/")
    assert answer.status_code == 200, answer.content
    body = json.loads(b"".join(answer.streaming_content))
    models = body["article_15_3_copy_of_the_data"]["models_trained_on_your_data"]
    assert [(m["model"], m["status"]) for m in models] == [(model_a.name, model_a.status)]
    assert model_b.name not in json.dumps(body) and bob.pseudonym not in json.dumps(body)
    pdf = dpo_client.get(f"/api/v1/requests/{request['id']}/answer/?format=pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    text = pdf_text(b"".join(pdf.streaming_content))
    assert "req-risk-a" in text and "req-risk-b" not in text
    # The auditor reads the request, never the answer.
    assert auditor_client.get(f"/api/v1/requests/{request['id']}/").status_code == 200
    assert auditor_client.get(f"/api/v1/requests/{request['id']}/answer/").status_code == 403
    # A redelivered task finds the answer built and changes nothing.
    from rights.tasks import build_rights_answer

    sha = RightsRequest.objects.get(pk=request["id"]).answer_sha256
    assert build_rights_answer.apply(args=[request["id"]]).get()["answer_sha256"] == sha
    assert AuditEvent.objects.filter(action="rights_request.answer_built", object_id=str(request["id"])).count() == 1


@pytest.mark.django_db(transaction=True)
def test_portability_export_is_a_zip_of_csv_and_expires_with_410_then_is_purged(celery_worker, dpo_client):
    act = h.activity()
    h.people_dataset(act=act, people=[h.subject_for(ALICE), *h.crowd(5)], seed=3)
    request = _verified(dpo_client, {"type": "portability", "subject": ALICE})
    assert _act(dpo_client, request["id"], "execute").status_code == 202
    _wait_completed(request["id"])
    obj = RightsRequest.objects.get(pk=request["id"])
    folder = Path(settings.REPORT_ROOT) / obj.answer_path
    assert obj.answer_path.startswith("rights/") and folder.is_dir()
    expected_expiry = obj.completed_at + timedelta(days=settings.RIGHTS_ANSWER_DOWNLOAD_DAYS)
    assert abs((obj.answer_expires_at - expected_expiry).total_seconds()) < 1

    zipped = dpo_client.get(f"/api/v1/requests/{obj.pk}/answer/?format=csv")
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content))).namelist()
    assert "export.json" in names and any(n.endswith(".csv") for n in names)
    assert dpo_client.get(f"/api/v1/requests/{obj.pk}/answer/?format=pdf").status_code == 400

    RightsRequest.objects.filter(pk=obj.pk).update(answer_expires_at=timezone.now() - timedelta(seconds=1))
    assert dpo_client.get(f"/api/v1/requests/{obj.pk}/answer/").status_code == 410
    assert rights_answers_purge() == 1
    assert not folder.exists() and RightsRequest.objects.get(pk=obj.pk).answer_path == ""
    assert dpo_client.get(f"/api/v1/requests/{obj.pk}/answer/").status_code == 410


@pytest.mark.django_db(transaction=True)
def test_an_answer_never_sent_to_a_worker_is_sent_again_by_the_sweep(celery_worker, dpo_client):
    from rights.services.answers import rights_requests_redispatch

    h.people_dataset(act=h.activity(), people=[h.subject_for(ALICE), *h.crowd(3)], seed=4)
    request = _verified(dpo_client, {"type": "access", "subject": ALICE})
    # As if the process died between the commit and the publish: in progress, never sent.
    RightsRequest.objects.filter(pk=request["id"]).update(
        status="in_progress", execution_started_at=timezone.now() - timedelta(hours=1), dispatched_at=None)
    assert rights_requests_redispatch() == 1
    assert _wait_completed(request["id"]).answer_sha256
    assert rights_requests_redispatch() == 0


@pytest.mark.django_db
def test_an_unknown_person_is_recorded_and_answered_no_data_held(dpo_client):
    created = _post(dpo_client, {"type": "access", "subject": "nobody.requests@example.org"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "completed" and body["data_held"] is False and "no personal data" in body["outcome"]
    assert "nobody.requests" not in json.dumps(body)
    assert AuditEvent.objects.filter(action="rights_request.answered_no_data").count() == 1


# --- Restriction (Art. 18) and objection (Art. 21) ------------------------------------


@pytest.mark.django_db
def test_restricted_person_is_absent_from_the_next_snapshot_and_present_again_after_lifting(dpo_client):
    dataset = _limits_dataset()
    everyone = {pseudonymise(p) for p in PEOPLE}
    request = _verified(dpo_client, {"type": "restriction", "subject": PEOPLE[0], "restriction_ground": "18_1_a",
                                      "justification": "Accuracy contested."})
    done = _act(dpo_client, request["id"], "execute")
    assert done.status_code == 202 and done.json()["status"] == "completed", done.content
    restriction = ProcessingRestriction.objects.get(pk=done.json()["limit_id"])
    assert restriction.subject.pseudonym == pseudonymise(PEOPLE[0])
    assert _members(dataset, ANALYTICS) == everyone - {pseudonymise(PEOPLE[0])}

    # Restricting a restricted person: 409 naming the field and Art. 18, nothing written.
    before = _written()
    again = _post(dpo_client, {"type": "restriction", "subject": PEOPLE[0], "restriction_ground": "18_1_a",
                               "justification": "Again."})
    # (A 409 body carries the detail and the conflicting row, as governance's own refusal does.)
    assert again.status_code == 409 and "Art. 18" in again.json()["detail"] and again.json()["restriction"]
    assert _written() == before

    no_inform = _act(dpo_client, request["id"], "lift", {"reason": "Verified accurate."})
    assert no_inform.status_code == 400 and "informed_at" in json.dumps(no_inform.json())
    lifted = _act(dpo_client, request["id"], "lift", {"reason": "Verified accurate.",
                                                     "informed_at": timezone.now().isoformat()})
    assert lifted.status_code == 200, lifted.content
    assert _members(dataset, ANALYTICS) == everyone


@pytest.mark.django_db
def test_objecting_person_is_absent_for_that_purpose_only(dpo_client):
    dataset = _limits_dataset(purposes=(ANALYTICS, "analytics.quality"))
    everyone = {pseudonymise(p) for p in PEOPLE}
    request = _verified(dpo_client, {"type": "objection", "subject": PEOPLE[1], "purpose": ANALYTICS,
                                      "grounds": "My particular situation."})
    done = _act(dpo_client, request["id"], "execute")
    assert done.status_code == 202 and done.json()["status"] == "completed", done.content
    assert ProcessingObjection.objects.get(pk=done.json()["limit_id"]).purpose.code == ANALYTICS
    assert _members(dataset, ANALYTICS) == everyone - {pseudonymise(PEOPLE[1])}
    assert _members(dataset, "analytics.quality") == everyone


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "field", "article"),
    [
        ({"type": "deletion"}, 400, "type", ""),
        ({"type": ""}, 400, "type", ""),
        ({"type": "objection", "purpose": "ml.training.clinical_risk", "grounds": "x"}, 400, "purpose", "Art. 7(3)"),
        ({"type": "objection", "purpose": "no.such.purpose", "grounds": "x"}, 400, "purpose", ""),
        ({"type": "objection", "purpose": ANALYTICS}, 400, "grounds", "Art. 21(1)"),
        ({"type": "restriction", "restriction_ground": "18_9_z", "justification": "x"}, 400, "restriction_ground",
         "Art. 18(1)"),
        ({"type": "access", "purpose": ANALYTICS}, 400, "type", "Art. 15"),
    ],
)
def test_bad_input_names_the_field_and_the_article_and_writes_nothing(dpo_client, body, status, field, article):
    _limits_dataset()
    prov_activity(lawful_basis="consent", purposes=("ml.training.clinical_risk",))
    before = _written()
    response = _post(dpo_client, {"subject": PEOPLE[0], **body})
    assert response.status_code == status, response.content
    text = json.dumps(response.json())
    assert field in response.json() or field in text, text
    assert article in text
    assert _written() == before


def _record_of(dataset, identifier: str):
    from provenance.models import DataRecord

    return DataRecord.objects.get(dataset=dataset, subject__pseudonym=pseudonymise(identifier), superseded_at__isnull=True)


@pytest.mark.django_db
def test_rectified_value_appears_in_the_next_snapshot(dpo_client):
    dataset = _limits_dataset()
    old = _record_of(dataset, PEOPLE[0])
    request = _verified(dpo_client, {"type": "rectification", "subject": PEOPLE[0], "dataset": dataset.pk,
                                      "corrections": [{"record": old.pk, "values": {"age": 52}}],
                                      "justification": "The age was mistyped at the clinic."})
    done = _act(dpo_client, request["id"], "execute")
    assert done.status_code == 202 and done.json()["status"] == "completed", done.content
    assert "age" in done.json()["outcome"] and "Art. 19" in done.json()["outcome"]
    new = _record_of(dataset, PEOPLE[0])
    assert new.pk != old.pk and new.features["age"] == 52
    snapshot = provenance_services.snapshot_create(dataset=dataset, purpose=purpose(ANALYTICS), requested_by="test")
    members = set(SnapshotMembership.objects.filter(snapshot=snapshot).values_list("record_id", flat=True))
    assert new.pk in members and old.pk not in members


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("values", "field"),
    [({"bmi_typo": 1.0}, "corrections[0].values.bmi_typo"), ({"age": "forty"}, "corrections[0].values.age")],
)
def test_rectification_naming_a_field_not_in_the_schema_or_a_wrong_type_is_refused_at_intake(dpo_client, values, field):
    dataset = _limits_dataset()
    old = _record_of(dataset, PEOPLE[0])
    before = _written()
    response = _post(dpo_client, {"type": "rectification", "subject": PEOPLE[0], "dataset": dataset.pk,
                                  "corrections": [{"record": old.pk, "values": values}], "justification": "Wrong."})
    assert response.status_code == 400 and field in response.json(), response.content
    assert _written() == before
    other = _record_of(dataset, PEOPLE[1])
    response = _post(dpo_client, {"type": "rectification", "subject": PEOPLE[0], "dataset": dataset.pk,
                                  "corrections": [{"record": other.pk, "values": {"age": 50}}], "justification": "x"})
    assert response.status_code == 400 and "corrections[0].record" in response.json(), response.content
    assert _written() == before


# --- The deadline, extension and refusal rules, the same for every type ---------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["access", "portability", "rectification", "restriction", "objection", "erasure"])
def test_deadline_extension_and_refusal_follow_the_same_rules_for_every_type(dpo_client, kind):
    _limits_dataset()
    received = timezone.make_aware(datetime(2026, 1, 31, 10, 0))
    extra = {"restriction": {"restriction_ground": "18_1_a", "justification": "Contested."},
             "objection": {"purpose": ANALYTICS, "grounds": "My situation."},
             "erasure": {"ground": "17_1_a"}}.get(kind, {})
    if kind == "rectification":
        dataset = provenance_services.dataset_create(name="requests rectify", owner="ml", schema=SCHEMA,
                                                     processing_activity=prov_activity(lawful_basis="consent"))
        provenance_services.dataset_records_ingest(dataset=dataset, rows=[row(PEOPLE[2])], actor="test")
        extra = {"dataset": dataset.pk, "justification": "Mistyped.",
                 "corrections": [{"record": _record_of(dataset, PEOPLE[2]).pk, "values": {"age": 61}}]}
    created = _post(dpo_client, {"type": kind, "subject": PEOPLE[2], "received_at": received.isoformat(), **extra})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["type"] == kind
    # Art. 12(3) under Reg. 1182/71: 28 Feb 2026 is a Saturday, so Monday 2 March.
    assert body["due_at"] == deadlines.due_date(regime="eu", received_on=received.date()).isoformat() == "2026-03-02"
    base = "/api/v1/erasure-requests" if kind == "erasure" else "/api/v1/requests"
    informed = (received + timedelta(days=2)).isoformat()
    extend = {"reasons": "Numerous requests.", "subject_informed_at": informed}
    on_time = timezone.make_aware(datetime(2026, 2, 10, 9, 0))
    from unittest import mock

    with mock.patch("django.utils.timezone.localdate", return_value=on_time.date()):
        first = dpo_client.post(f"{base}/{body['id']}/extend/", extend, format="json")
        assert first.status_code == 200, first.content
        assert first.json()["extended_due_at"] == deadlines.extended_due_date(
            regime="eu", received_on=received.date()).isoformat()
        second = dpo_client.post(f"{base}/{body['id']}/extend/", extend, format="json")
        assert second.status_code == 409 and "Art. 12(3)" in json.dumps(second.json())
    no_reasons = dpo_client.post(f"{base}/{body['id']}/reject/", {"refusal_ground": "12_5_unf"}, format="json")
    assert no_reasons.status_code == 400
    ground = "17_3_e" if kind == "erasure" else "12_5_exc"
    rejected = dpo_client.post(f"{base}/{body['id']}/reject/", {"refusal_ground": ground,
                                                                "justification": "The fifth identical request."},
                               format="json")
    assert rejected.status_code == 200, rejected.content
    notice = rejected.json()["refusal_notice"]
    assert rejected.json()["status"] == "rejected" and "Art. 77" in notice and "The fifth identical request." in notice
    assert ("Art. 17(3)(e)" if kind == "erasure" else "Art. 12(5)") in notice
    again = dpo_client.post(f"{base}/{body['id']}/verify/", {}, format="json")
    assert again.status_code == 409
    if kind != "erasure":
        assert RightsRequest.objects.get(pk=body["id"]).refusal_ground == ground
        assert f"Art. {RightsRequest.objects.get(pk=body['id']).article.split()[-1]}" in json.dumps(again.json())
        executed = dpo_client.post(f"{base}/{body['id']}/execute/", {}, format="json")
        assert executed.status_code == 409


@pytest.mark.django_db
def test_execution_waits_for_verification(dpo_client):
    _limits_dataset()
    created = _post(dpo_client, {"type": "restriction", "subject": PEOPLE[0], "restriction_ground": "18_1_a",
                                 "justification": "Contested."}).json()
    response = _act(dpo_client, created["id"], "execute")
    assert response.status_code == 409 and "Art. 12(6)" in json.dumps(response.json())
    assert ProcessingRestriction.objects.count() == 0


# --- Role policy ----------------------------------------------------------------------


def test_the_request_routes_enforce_the_policy_written_apart_from_the_code():
    routes = {(r.method, r.path): r.allowed for r in api_routes()}
    mine = {k: v for k, v in ROLE_POLICY.items() if k[1].startswith("/api/v1/requests/")}
    assert len(mine) == 10
    for key, allowed in mine.items():
        assert key in routes, f"{key} is not routed"
        assert routes[key] == allowed, (key, sorted(routes[key]), sorted(allowed))


@pytest.mark.django_db
def test_an_ml_engineer_may_not_read_or_create_requests(ml_client, auditor_client):
    assert ml_client.get("/api/v1/requests/").status_code == 403
    assert _post(ml_client, {"type": "access", "subject": ALICE}).status_code == 403
    assert _post(auditor_client, {"type": "access", "subject": ALICE}).status_code == 403
    assert auditor_client.get("/api/v1/requests/?type=access").status_code == 200


# --- Admin ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_lists_requests_in_words_and_links_the_limit(admin_client, dpo_client):
    _limits_dataset()
    request = _verified(dpo_client, {"type": "restriction", "subject": PEOPLE[0], "restriction_ground": "18_1_a",
                                      "justification": "Contested."})
    limit_id = _act(dpo_client, request["id"], "execute").json()["limit_id"]
    _post(dpo_client, {"type": "access", "subject": PEOPLE[1]})
    page = admin_client.get("/admin/rights/rightsrequest/").content.decode()
    assert "Restriction of processing (Art. 18)" in page and "Access (Art. 15)" in page
    assert "day(s) left" in page
    assert f"/admin/governance/processingrestriction/{limit_id}/change/" in page
    detail = admin_client.get(f"/admin/rights/rightsrequest/{request['id']}/change/")
    assert detail.status_code == 200
    text = detail.content.decode()
    assert "Art. 18(1)(a) accuracy contested" in text and "Reply from the e-mail address on file" in text
    # Read-only: nothing is saved from the page.
    assert admin_client.post(f"/admin/rights/rightsrequest/{request['id']}/change/", {"type": "access"}).status_code \
        in (200, 302, 403)
    assert RightsRequest.objects.get(pk=request["id"]).type == "restriction"
