"""The DPO's admin: every governance page renders, and writes go through the services' rules."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from governance.models import AuditEvent, DataCategory, DataSubjectCategory, ProcessingActivity, Purpose

PAGES = ["purpose", "purposecompatibility", "datacategory", "datasubjectcategory", "processingactivity",
         "consentevent", "datasubject", "auditevent", "apikey"]


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "pw"))
    return client


@pytest.mark.parametrize("model", PAGES)
def test_changelists_render_with_filters_and_search(admin_client, model):
    response = admin_client.get(f"/admin/governance/{model}/", {"q": "ml"})
    assert response.status_code == 200


def _activity_form(**overrides) -> dict:
    data = {
        "name": "Admin-made record",
        "controller_name": "Example Hospital",
        "controller_contact": "privacy@hospital.example",
        "dpo_contact": "dpo@hospital.example",
        "purposes": [Purpose.objects.get(code="ml.training").pk],
        "data_subject_categories": [DataSubjectCategory.objects.get(code="patient").pk],
        "retention": "health = P1825D\ndemographic = P365D",
        "recipients": "[]",
        "third_country_transfers": "[]",
        "security_measures": "Pseudonymisation.",
        "lawful_basis": "consent",
        "special_category_condition": "",
        "legitimate_interests_assessment": "",
    }
    data.update(overrides)
    return data


def test_admin_refuses_special_category_without_art_9_2_condition(admin_client):
    response = admin_client.post("/admin/governance/processingactivity/add/", _activity_form())
    assert response.status_code == 200
    assert "Art. 9(1)" in response.content.decode()
    assert not ProcessingActivity.objects.exists()


def test_admin_creates_and_changes_a_record_through_the_service(admin_client):
    response = admin_client.post(
        "/admin/governance/processingactivity/add/", _activity_form(special_category_condition="9_2_a")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    activity = ProcessingActivity.objects.get(name="Admin-made record")
    assert {r.data_category.code: r.retention.days for r in activity.retention_rules.all()} == {
        "health": 1825, "demographic": 365}
    assert AuditEvent.objects.filter(action="processing_activity.created", object_id=str(activity.pk)).exists()
    changed = admin_client.post(
        f"/admin/governance/processingactivity/{activity.pk}/change/",
        _activity_form(special_category_condition="9_2_a", retention="health = P730D", dpo_contact="new@x.org"),
    )
    assert changed.status_code == 302
    audit = AuditEvent.objects.get(action="processing_activity.updated")
    assert audit.details["changes"]["dpo_contact"]["after"] == "new@x.org"
    assert audit.details["changes"]["retention"]["after"] == {"health": 730 * 86400}


def test_admin_purpose_needs_an_existing_parent_and_is_audited(admin_client):
    refused = admin_client.post("/admin/governance/purpose/add/", {"code": "nowhere.child", "name": "x"})
    assert refused.status_code == 200
    assert not Purpose.objects.filter(code="nowhere.child").exists()
    created = admin_client.post("/admin/governance/purpose/add/", {"code": "research.genomics", "name": "Genomics"})
    assert created.status_code == 302
    assert Purpose.objects.get(code="research.genomics").parent.code == "research"
    assert AuditEvent.objects.filter(action="purpose.created").exists()


def test_admin_cannot_delete_records_others_depend_on(admin_client):
    category = DataCategory.objects.get(code="health")
    assert admin_client.post(f"/admin/governance/datacategory/{category.pk}/delete/", {"post": "yes"}).status_code == 403
    assert DataCategory.objects.filter(pk=category.pk).exists()


def test_editing_a_data_category_in_the_admin_is_saved_and_audited(admin_client):
    from governance.models import AuditEvent, DataCategory

    category = DataCategory.objects.get(code="health")
    response = admin_client.post(
        f"/admin/governance/datacategory/{category.pk}/change/",
        {"name": "Health data (clinical)", "description": "Diagnoses, lab results.",
         "special_category": "health", "criminal_offence_data": ""},
    )
    assert response.status_code == 302, response.content
    category.refresh_from_db()
    assert category.name == "Health data (clinical)" and category.code == "health"
    event = AuditEvent.objects.filter(action="data_category.updated").latest("position")
    assert event.details == {"code": "health", "changed": ["name", "description"]}
