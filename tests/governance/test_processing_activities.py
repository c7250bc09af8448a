"""Art. 30 records, purposes and Art. 6(4) assessments: the rules refuse inconsistent records."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent, ProcessingActivity, Purpose, PurposeCompatibility

URL = "/api/v1/processing-activities/"


def activity_payload(**overrides) -> dict:
    payload = {
        "name": "Clinical risk model training",
        "controller_name": "Example Hospital",
        "controller_contact": "privacy@hospital.example",
        "dpo_contact": "dpo@hospital.example",
        "purposes": ["ml.training.clinical_risk"],
        "data_subject_categories": ["patient"],
        "retention": [{"data_category": "health", "retention": "P1825D"},
                      {"data_category": "demographic", "retention": "P365D"}],
        "recipients": [{"name": "GPU cloud", "third_country": "US"}],
        "third_country_transfers": [{"country": "US", "safeguard": "Standard contractual clauses (Art. 46(2)(c))"}],
        "security_measures": "Pseudonymisation on arrival, encryption at rest, audit chain.",
        "lawful_basis": "consent",
        "special_category_condition": "9_2_a",
    }
    payload.update(overrides)
    return payload


@pytest.mark.django_db
def test_dpo_creates_a_record_with_retention_per_category_and_it_is_audited(dpo_client, ml_client):
    response = dpo_client.post(URL, activity_payload(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert {r["data_category"]: r["retention"] for r in body["retention"]} == {"health": "P1825DT00H00M00S",
                                                                                "demographic": "P365DT00H00M00S"}
    audit = AuditEvent.objects.get(action="processing_activity.created")
    assert audit.details["after"]["retention"]["health"] == 1825 * 86400
    listed = ml_client.get(URL, {"purpose": "ml.training.clinical_risk.sub"}).json()
    assert [a["name"] for a in listed["results"]] == ["Clinical risk model training"]
    assert ml_client.get(URL, {"lawful_basis": "contract"}).json()["count"] == 0
    assert ml_client.get(URL, {"special_categories": "true"}).json()["count"] == 1
    assert ml_client.post(URL, activity_payload(name="other"), format="json").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "article"),
    [
        ({"special_category_condition": ""}, "special_category_condition", "Art. 9(1)"),
        ({"lawful_basis": "legitimate_interests", "special_category_condition": "9_2_h"},
         "legitimate_interests_assessment", "Art. 6(1)(f)"),
        ({"lawful_basis": "legitimate_interests", "special_category_condition": "9_2_h",
          "legitimate_interests_assessment": "Balanced.", "controller_is_public_authority": True},
         "lawful_basis", "second subparagraph"),
        ({"lawful_basis": "contract"}, "special_category_condition", "Art. 9(2)(a)"),
        ({"retention": []}, "retention", "Art. 30(1)"),
        ({"retention": [{"data_category": "health", "retention": "P0D"}]}, "retention", "Art. 30(1)(f)"),
        ({"purposes": []}, "purposes", "Art. 30(1)(b)"),
        ({"dpo_contact": ""}, "dpo_contact", "Art. 30(1)(a)"),
        ({"security_measures": ""}, "security_measures", "Art. 30(1)(g)"),
        ({"lawful_basis": None}, "lawful_basis", ""),
    ],
)
def test_inconsistent_records_are_refused_citing_the_article(dpo_client, overrides, field, article):
    payload = activity_payload(**overrides)
    if overrides.get("lawful_basis", "x") is None:
        del payload["lawful_basis"]
    response = dpo_client.post(URL, payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert article in response.json()[field][0]
    assert not ProcessingActivity.objects.exists()


@pytest.mark.django_db
def test_non_special_data_under_legitimate_interests_with_assessment_is_accepted(dpo_client):
    payload = activity_payload(
        name="Product analytics", purposes=["analytics.product"], data_subject_categories=["customer"],
        retention=[{"data_category": "usage", "retention": "P90D"}], lawful_basis="legitimate_interests",
        special_category_condition="", legitimate_interests_assessment="Interest, necessity, balancing: documented.",
    )
    assert dpo_client.post(URL, payload, format="json").status_code == 201


@pytest.mark.django_db
def test_patch_is_audited_with_before_and_after_and_validated(dpo_client, auditor_client):
    activity_id = dpo_client.post(URL, activity_payload(), format="json").json()["id"]
    response = dpo_client.patch(
        f"{URL}{activity_id}/",
        {"dpo_contact": "new-dpo@hospital.example", "retention": [{"data_category": "health", "retention": "P730D"}]},
        format="json",
    )
    assert response.status_code == 200, response.content
    audit = AuditEvent.objects.get(action="processing_activity.updated")
    assert audit.details["changes"]["dpo_contact"] == {"before": "dpo@hospital.example", "after": "new-dpo@hospital.example"}
    assert audit.details["changes"]["retention"]["before"] == {"health": 1825 * 86400, "demographic": 365 * 86400}
    assert audit.details["changes"]["retention"]["after"] == {"health": 730 * 86400}
    refused = dpo_client.patch(f"{URL}{activity_id}/", {"special_category_condition": ""}, format="json")
    assert refused.status_code == 400
    assert ProcessingActivity.objects.get(pk=activity_id).special_category_condition == "9_2_a"
    assert auditor_client.patch(f"{URL}{activity_id}/", {"name": "x"}, format="json").status_code == 403
    assert dpo_client.put(f"{URL}{activity_id}/", activity_payload(), format="json").status_code == 405
    assert dpo_client.delete(f"{URL}{activity_id}/").status_code == 405


@pytest.mark.django_db
def test_purpose_parent_is_derived_from_the_code_and_must_exist(dpo_client):
    created = dpo_client.post("/api/v1/purposes/", {"code": "ml.training.readmission", "name": "Readmission"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["parent"] == "ml.training"
    assert Purpose.objects.get(code="ml.training.readmission").parent.code == "ml.training"
    orphan = dpo_client.post("/api/v1/purposes/", {"code": "nowhere.child", "name": "Orphan"}, format="json")
    assert orphan.status_code == 400
    assert "nowhere" in orphan.json()["code"][0]
    bad = dpo_client.post("/api/v1/purposes/", {"code": "Bad Code", "name": "x"}, format="json")
    assert bad.status_code == 400 and "code" in bad.json()
    assert dpo_client.get("/api/v1/purposes/ml.training.readmission/").json()["name"] == "Readmission"
    assert dpo_client.get("/api/v1/purposes/", {"under": "ml.training"}).json()["count"] == 3


COMPATIBILITY = {
    "original_purpose": "ml.training",
    "compatible_purpose": "ml.evaluation",
    "link_between_purposes": "Evaluation checks the trained model.",
    "context_of_collection": "Patients expect quality checks.",
    "nature_of_data": "Health data, pseudonymised.",
    "possible_consequences": "None for individuals.",
    "safeguards": "Pseudonymisation and access control.",
}


@pytest.mark.django_db
@pytest.mark.parametrize("missing", ["link_between_purposes", "context_of_collection", "nature_of_data",
                                     "possible_consequences", "safeguards"])
def test_compatibility_needs_every_art_6_4_factor(dpo_client, missing):
    response = dpo_client.post("/api/v1/purpose-compatibilities/", {**COMPATIBILITY, missing: ""}, format="json")
    assert response.status_code == 400
    assert missing in response.json()
    assert not PurposeCompatibility.objects.exists()


@pytest.mark.django_db
def test_dpo_declares_compatibility_once(dpo_client, auditor_client):
    response = dpo_client.post("/api/v1/purpose-compatibilities/", COMPATIBILITY, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["approved_by"] == "test_dpo"
    assert response.json()["approved_at"]
    assert dpo_client.post("/api/v1/purpose-compatibilities/", COMPATIBILITY, format="json").status_code == 409
    assert auditor_client.post("/api/v1/purpose-compatibilities/", COMPATIBILITY, format="json").status_code == 403
    assert AuditEvent.objects.filter(action="purpose_compatibility.declared").count() == 1


@pytest.mark.django_db
def test_default_taxonomy_flags_special_and_criminal_categories(ml_client):
    special = ml_client.get("/api/v1/data-categories/", {"is_special": "true", "limit": 100}).json()["results"]
    assert {c["code"] for c in special} == {
        "health", "genetic", "biometric", "racial_ethnic_origin", "political_opinions", "religious_beliefs",
        "trade_union", "sex_life_orientation",
    }
    criminal = ml_client.get("/api/v1/data-categories/", {"criminal_offence_data": "true"}).json()["results"]
    assert [c["code"] for c in criminal] == ["criminal_offences"]
    child = ml_client.get("/api/v1/data-subject-categories/child/").json()
    assert child["vulnerable"] is True


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"retention": [{"data_category": "health"}]}, "retention[0].retention"),
        ({"retention": [{"retention": "P30D"}]}, "retention[0].data_category"),
        ({"recipients": [{"third_country": "US"}]}, "recipients[0].name"),
        ({"third_country_transfers": [{"country": "US"}]}, "third_country_transfers[0].safeguard"),
    ],
)
def test_patch_refuses_a_list_item_missing_a_required_key(dpo_client, patch, field):
    # Found by fuzzing: PATCH made the nested keys optional, and a half rule was a server error.
    activity_id = dpo_client.post(URL, activity_payload(), format="json").json()["id"]
    before = list(ProcessingActivity.objects.filter(pk=activity_id).values())
    response = dpo_client.patch(f"{URL}{activity_id}/", patch, format="json")
    assert response.status_code == 400, response.content
    assert field in str(response.json()), response.json()
    assert list(ProcessingActivity.objects.filter(pk=activity_id).values()) == before
