"""Restriction (Art. 18) and objection (Art. 21) through the DPO's API: what is recorded,
what is refused (400/409 naming the field and the article, nothing written), who may
read and write them, that no answer holds a raw identifier, and that an objection opens an
Art. 17(1)(c) erasure request where the activity erases when processing stops.
Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from governance import selectors
from governance.models import (
    AuditEvent,
    CompellingGrounds,
    DataSubject,
    ProcessingObjection,
    ProcessingRestriction,
    RestrictionLifting,
)
from governance.pseudonymisation import pseudonymise
from provenance import services as provenance_services
from rights.models import ErasureChannel, ErasureGround, ErasureRequest
from tests.api_routes import ROLE_POLICY, api_routes
from tests.provenance.helpers import SCHEMA, activity, purpose, row

pytestmark = pytest.mark.django_db

PERSON = "limits-person@example.org"
ANALYTICS = "analytics.product"
MARKETING = "marketing.email"
CLINICAL = "ml.training.clinical_risk"


def _person_held(identifier: str = PERSON, *, lawful_basis: str = "legitimate_interests", purposes=(ANALYTICS,)):
    """A dataset holding one record of the person, under an activity for ``purposes``."""
    act = activity(lawful_basis=lawful_basis, purposes=purposes)
    dataset = provenance_services.dataset_create(
        name=f"limits {identifier} {act.pk}", owner="ml", processing_activity=act, schema=SCHEMA
    )
    provenance_services.dataset_records_ingest(dataset=dataset, rows=[row(identifier)], actor="test")
    return act


def _written() -> tuple[int, int, int, int, int]:
    return (ProcessingRestriction.objects.count(), RestrictionLifting.objects.count(),
            ProcessingObjection.objects.count(), CompellingGrounds.objects.count(), AuditEvent.objects.count())


def _restrict(client, identifier: str = PERSON, **extra):
    body = {"subject": identifier, "ground": "18_1_a", "justification": "Accuracy contested.", **extra}
    return client.post("/api/v1/restrictions/", body, format="json")


# --- Role policy -----------------------------------------------------------------------


def test_the_new_routes_enforce_the_policy_written_apart_from_the_code():
    routes = {(r.method, r.path): r.allowed for r in api_routes()}
    for key, allowed in ROLE_POLICY.items():
        assert key in routes, f"{key} is not routed"
        assert routes[key] == allowed, (key, sorted(routes[key]), sorted(allowed))


def test_an_ml_engineer_may_neither_read_nor_record_limits(ml_client, auditor_client, dpo_client):
    _person_held()
    assert _restrict(dpo_client).status_code == 201
    assert ml_client.get("/api/v1/restrictions/").status_code == 403
    assert _restrict(ml_client).status_code == 403
    assert auditor_client.get("/api/v1/restrictions/").json()["count"] == 1
    assert _restrict(auditor_client).status_code == 403


# --- Restriction -----------------------------------------------------------------------


def test_a_restriction_is_recorded_pseudonymised_and_audited(dpo_client):
    _person_held()
    response = _restrict(dpo_client)
    assert response.status_code == 201, response.content
    body = response.json()
    subject = DataSubject.objects.get(pseudonym=pseudonymise(PERSON))
    assert body["subject"] == subject.pseudonym and body["subject_ref"] == str(subject.reference)
    assert body["in_force"] is True and body["lifting"] is None and body["ground"] == "18_1_a"
    assert body["restricted_by"] == "test_dpo"
    assert PERSON not in json.dumps(body)
    assert PERSON not in json.dumps(dpo_client.get("/api/v1/restrictions/").json())
    event = AuditEvent.objects.get(action="processing.restricted")
    assert event.subject_ref == subject.reference and PERSON not in json.dumps(event.details)
    assert set(selectors.restricted_subject_ids().values_list("subject_id", flat=True)) == {subject.pk}


def test_restricting_a_person_already_restricted_is_409_naming_art_18_and_writes_nothing(dpo_client):
    _person_held()
    assert _restrict(dpo_client).status_code == 201
    before = _written()
    again = _restrict(dpo_client, ground="18_1_d")
    assert again.status_code == 409
    assert "Art. 18" in again.json()["detail"]
    assert _written() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ground": "18_1_a", "justification": "x"}, "subject"),
        ({"subject": "nobody-held@example.org", "ground": "18_1_a", "justification": "x"}, "subject"),
        ({"subject": PERSON, "ground": "18_1_z", "justification": "x"}, "ground"),
        ({"subject": PERSON, "ground": "18_1_a", "justification": "  "}, "justification"),
        ({"subject": PERSON, "ground": "18_1_a", "justification": 7}, "justification"),
    ],
)
def test_bad_restriction_input_is_400_naming_the_field_and_writes_nothing(dpo_client, body, field):
    _person_held()
    before = _written()
    response = dpo_client.post("/api/v1/restrictions/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert _written() == before
    assert not DataSubject.objects.filter(pseudonym=pseudonymise("nobody-held@example.org")).exists()


def test_lifting_records_who_why_when_and_when_the_person_was_informed(dpo_client):
    _person_held()
    restriction = _restrict(dpo_client).json()
    informed = timezone.now()
    response = dpo_client.post(
        f"/api/v1/restrictions/{restriction['id']}/lift/",
        {"reason": "Verified.", "informed_at": informed.isoformat()}, format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["in_force"] is False
    assert body["lifting"]["reason"] == "Verified." and body["lifting"]["lifted_by"] == "test_dpo"
    assert AuditEvent.objects.filter(action="processing.restriction_lifted").count() == 1
    assert not selectors.restricted_subject_ids().exists()
    # The restriction is still there: lifting is a new record, never a change (append-only).
    assert ProcessingRestriction.objects.filter(pk=restriction["id"]).exists()
    # ... and a restriction held before the lifting is still found for that moment.
    restricted_at = ProcessingRestriction.objects.get().restricted_at
    assert selectors.restricted_subject_ids(at=restricted_at).exists()
    # Restricted again after the lifting: allowed.
    assert _restrict(dpo_client).status_code == 201


@pytest.mark.parametrize(
    ("body", "field", "article"),
    [
        ({"reason": "Verified."}, "informed_at", "Art. 18(3)"),
        ({"reason": "Verified.", "informed_at": "2999-01-01T00:00:00Z"}, "informed_at", "Art. 18(3)"),
        ({"reason": "Verified.", "informed_at": "2020-01-01T00:00:00Z"}, "informed_at", "Art. 18(3)"),
        ({"reason": "Verified.", "informed_at": "yesterday"}, "informed_at", ""),
        ({"informed_at": "now"}, "reason", ""),
    ],
)
def test_bad_lifting_is_400_naming_the_field_and_writes_nothing(dpo_client, body, field, article):
    _person_held()
    restriction = _restrict(dpo_client).json()
    before = _written()
    response = dpo_client.post(f"/api/v1/restrictions/{restriction['id']}/lift/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert article in response.json()[field][0]
    assert _written() == before
    assert selectors.restricted_subject_ids().exists()


def test_lifting_twice_is_409_and_an_unknown_restriction_404(dpo_client):
    _person_held()
    restriction = _restrict(dpo_client).json()
    lift = {"reason": "Verified.", "informed_at": timezone.now().isoformat()}
    assert dpo_client.post(f"/api/v1/restrictions/{restriction['id']}/lift/", lift, format="json").status_code == 200
    before = _written()
    again = dpo_client.post(f"/api/v1/restrictions/{restriction['id']}/lift/", lift, format="json")
    assert again.status_code == 409 and "Art. 18(3)" in again.json()["detail"]
    assert _written() == before
    assert dpo_client.post("/api/v1/restrictions/999999/lift/", lift, format="json").status_code == 404


# --- Objection -------------------------------------------------------------------------


def _object(client, purpose_code: str = ANALYTICS, identifier: str = PERSON, **extra):
    body = {"subject": identifier, "purpose": purpose_code, "grounds": "My particular situation.", **extra}
    return client.post("/api/v1/objections/", body, format="json")


def test_an_objection_under_legitimate_interests_is_recorded_and_selected(dpo_client):
    _person_held()
    response = _object(dpo_client)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["purpose"] == ANALYTICS and body["in_force"] is True and body["direct_marketing"] is False
    assert PERSON not in json.dumps(body)
    subject = DataSubject.objects.get(pseudonym=pseudonymise(PERSON))
    # A purpose the objected one covers is covered too; another purpose is not.
    assert set(selectors.objecting_subject_ids(purpose=purpose(ANALYTICS + ".weekly")).values_list(
        "subject_id", flat=True)) == {subject.pk}
    assert not selectors.objecting_subject_ids(purpose=purpose("analytics.quality")).exists()
    assert AuditEvent.objects.get(action="processing.objected").details["activities"]


def test_an_objection_to_a_consent_based_purpose_is_400_naming_purpose_and_pointing_at_withdrawal(dpo_client):
    _person_held(lawful_basis="consent", purposes=(CLINICAL,))
    before = _written()
    response = _object(dpo_client, CLINICAL)
    assert response.status_code == 400
    message = response.json()["purpose"][0]
    assert "Art. 7(3)" in message and "withdraw" in message
    assert _written() == before


@pytest.mark.parametrize(
    ("lawful_basis", "purposes", "code", "field"),
    [
        ("contract", ("service_delivery.care",), "service_delivery.care", "purpose"),  # Art. 21 covers (e), (f) only
        ("legitimate_interests", (ANALYTICS,), "analytics.unknown_code", "purpose"),
        ("legitimate_interests", (ANALYTICS,), "research.clinical", "purpose"),  # no activity covers it
    ],
)
def test_objections_art_21_does_not_cover_are_400_naming_the_field(dpo_client, lawful_basis, purposes, code, field):
    _person_held(lawful_basis=lawful_basis, purposes=purposes)
    purpose("research.clinical")
    before = _written()
    response = _object(dpo_client, code)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert _written() == before


def test_an_objection_needs_grounds_except_against_direct_marketing(dpo_client):
    _person_held(purposes=(ANALYTICS, MARKETING))
    before = _written()
    response = _object(dpo_client, ANALYTICS, grounds="")
    assert response.status_code == 400 and "Art. 21(1)" in response.json()["grounds"][0]
    assert _written() == before
    marketing = _object(dpo_client, MARKETING, grounds="")
    assert marketing.status_code == 201, marketing.content
    assert marketing.json()["direct_marketing"] is True


def test_objecting_twice_to_the_same_purpose_is_409_naming_art_21(dpo_client):
    _person_held()
    assert _object(dpo_client).status_code == 201
    before = _written()
    again = _object(dpo_client)
    assert again.status_code == 409 and "Art. 21" in again.json()["detail"]
    assert _written() == before


def test_compelling_grounds_lift_the_exclusion_but_never_for_direct_marketing(dpo_client):
    _person_held(purposes=(ANALYTICS, MARKETING))
    objection = _object(dpo_client).json()
    grounds = {"justification": "Fraud detection protects other customers."}
    response = dpo_client.post(f"/api/v1/objections/{objection['id']}/compelling-grounds/", grounds, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["in_force"] is False
    assert response.json()["compelling_grounds"]["justification"] == grounds["justification"]
    assert not selectors.objecting_subject_ids(purpose=purpose(ANALYTICS)).exists()
    before = _written()
    twice = dpo_client.post(f"/api/v1/objections/{objection['id']}/compelling-grounds/", grounds, format="json")
    assert twice.status_code == 409
    assert _written() == before

    marketing = _object(dpo_client, MARKETING, grounds="").json()
    before = _written()
    refused = dpo_client.post(f"/api/v1/objections/{marketing['id']}/compelling-grounds/", grounds, format="json")
    assert refused.status_code == 409 and "Art. 21(3)" in refused.json()["detail"]
    assert _written() == before
    assert selectors.objecting_subject_ids(purpose=purpose(MARKETING)).exists()


def test_compelling_grounds_without_a_justification_are_400(dpo_client):
    _person_held()
    objection = _object(dpo_client).json()
    before = _written()
    response = dpo_client.post(f"/api/v1/objections/{objection['id']}/compelling-grounds/", {}, format="json")
    assert response.status_code == 400 and "justification" in response.json()
    assert _written() == before


def test_the_lists_filter_by_state(dpo_client, auditor_client):
    _person_held(purposes=(ANALYTICS, MARKETING))
    _person_held("other@example.org", purposes=(ANALYTICS,))
    first = _object(dpo_client).json()
    _object(dpo_client, ANALYTICS, identifier="other@example.org")
    _object(dpo_client, MARKETING, grounds="")
    dpo_client.post(f"/api/v1/objections/{first['id']}/compelling-grounds/", {"justification": "x"}, format="json")
    in_force = auditor_client.get("/api/v1/objections/?in_force=true").json()
    assert in_force["count"] == 2
    assert auditor_client.get("/api/v1/objections/?in_force=false").json()["count"] == 1
    assert auditor_client.get("/api/v1/objections/?in_force=maybe").status_code == 400
    assert auditor_client.get(f"/api/v1/objections/?purpose={MARKETING}").json()["count"] == 1


# --- Objection opens an Art. 17(1)(c) erasure request ----------------------------------


def test_an_objection_opens_an_erasure_request_where_the_activity_erases(dpo_client, django_capture_on_commit_callbacks):
    act = _person_held()
    act.erasure_on_consent_withdrawal = True
    act.save()
    with django_capture_on_commit_callbacks(execute=True):
        objection = _object(dpo_client).json()
    request = ErasureRequest.objects.get()
    assert request.ground == ErasureGround.OBJECTION and request.channel == ErasureChannel.API
    assert request.purpose.code == ANALYTICS
    assert request.subject == DataSubject.objects.get(pseudonym=pseudonymise(PERSON))
    assert f"objection {objection['id']}" in request.notes
    assert AuditEvent.objects.filter(action="erasure_request.opened_on_objection").count() == 1
    # One open request per person: a second objection opens none.
    with django_capture_on_commit_callbacks(execute=True):
        _object(dpo_client, ANALYTICS + ".weekly")
    assert ErasureRequest.objects.count() == 1


def test_an_objection_under_an_activity_that_keeps_data_opens_no_erasure(dpo_client, django_capture_on_commit_callbacks):
    _person_held()
    with django_capture_on_commit_callbacks(execute=True):
        assert _object(dpo_client).status_code == 201
    assert not ErasureRequest.objects.exists()


def test_the_limits_go_with_the_person_on_erasure(dpo_client):
    # Art. 17: the rows are about the person, so erasing the subject row takes them along
    # (append-only everywhere else) instead of stopping the erasure.
    from governance.services import data_subject_ensure_many, data_subject_erase

    _person_held(purposes=(ANALYTICS,))
    subject_id = data_subject_ensure_many(pseudonyms=[pseudonymise("only-limits@example.org")])[
        pseudonymise("only-limits@example.org")]
    restriction = _restrict(dpo_client, "only-limits@example.org").json()
    dpo_client.post(f"/api/v1/restrictions/{restriction['id']}/lift/",
                    {"reason": "Verified.", "informed_at": timezone.now().isoformat()}, format="json")
    objection = _object(dpo_client, identifier="only-limits@example.org").json()
    dpo_client.post(f"/api/v1/objections/{objection['id']}/compelling-grounds/", {"justification": "x"}, format="json")
    assert _written()[:4] == (1, 1, 1, 1)
    data_subject_erase(subject_id=subject_id)
    assert _written()[:4] == (0, 0, 0, 0)
    assert not DataSubject.objects.filter(pk=subject_id).exists()


def test_the_admin_shows_the_limits_read_only_with_readable_labels(dpo_client, client):
    from django.contrib.auth import get_user_model

    _person_held(purposes=(ANALYTICS, MARKETING))
    restriction = _restrict(dpo_client).json()
    dpo_client.post(f"/api/v1/restrictions/{restriction['id']}/lift/",
                    {"reason": "Verified.", "informed_at": timezone.now().isoformat()}, format="json")
    objection = _object(dpo_client, MARKETING, grounds="").json()
    client.force_login(get_user_model().objects.create_superuser("limits-admin", "a@example.org", "pw"))
    pages = {
        f"/admin/governance/processingrestriction/{restriction['id']}/change/": "Art. 18(1)(a) accuracy contested",
        f"/admin/governance/processingobjection/{objection['id']}/change/": "direct marketing: absolute",
        "/admin/governance/processingrestriction/": "lifted",
        "/admin/governance/processingobjection/": "marketing.email",
        "/admin/governance/restrictionlifting/": "Art. 18(1)(a) accuracy contested",
        "/admin/governance/compellinggrounds/": "compelling legitimate grounds",
    }
    for url, text in pages.items():
        page = client.get(url)
        assert page.status_code == 200, url
        content = page.content.decode()
        assert text in content, (url, text)
        assert PERSON not in content and 'name="_save"' not in content
    found = client.get("/admin/governance/processingrestriction/", {"q": PERSON})
    assert found.status_code == 200 and found.context["cl"].result_count == 1
    assert client.get("/admin/governance/processingrestriction/", {"q": "x@y.z"}).context["cl"].result_count == 0
    assert client.get("/admin/governance/processingrestriction/add/").status_code == 403
