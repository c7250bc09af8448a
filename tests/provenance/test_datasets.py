import pytest

from governance.models import AuditEvent
from provenance.models import Dataset
from tests.provenance.helpers import SCHEMA, activity

pytestmark = pytest.mark.django_db


def _body(act, **overrides):
    return {"name": "clinical risk v1", "owner": "ml-team", "processing_activity": act.pk, "schema": SCHEMA, **overrides}


def test_ml_engineer_creates_a_dataset_and_it_is_audited(ml_client):
    act = activity()
    response = ml_client.post("/api/v1/datasets/", _body(act, source_system="ehr"), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["schema"]["label"] == {"name": "outcome", "type": "bool"}
    assert body["record_count"] == 0
    assert body["created_by"] == "test_ml_engineer"
    assert AuditEvent.objects.filter(action="dataset.created", object_id=str(body["id"])).count() == 1
    assert ml_client.get(f"/api/v1/datasets/{body['id']}/").json()["processing_activity"] == act.pk


@pytest.mark.parametrize(
    "feature",
    [
        {"name": "email", "type": "category"},
        {"name": "Patient ID", "type": "int"},
        {"name": "ip_address", "type": "category"},
        {"name": "mrn_code", "type": "int", "identifier": True},
    ],
)
def test_direct_identifiers_are_refused_citing_data_minimisation(dpo_client, feature):
    act = activity()
    schema = {**SCHEMA, "features": [*SCHEMA["features"], feature]}
    response = dpo_client.post("/api/v1/datasets/", _body(act, schema=schema), format="json")
    assert response.status_code == 400
    assert "Art. 5(1)(c)" in response.json()["schema"][0]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"features": [{"name": "age", "type": "integer"}], "label": {"name": "y", "type": "bool"}}, "'type' must be one of"),
        ({"features": [], "label": {"name": "y", "type": "bool"}}, "non-empty 'features'"),
        ({"features": [{"name": "age", "type": "int"}]}, "'label'"),
        ({"features": [{"name": "y", "type": "int"}], "label": {"name": "y", "type": "bool"}}, "repeated: y"),
        ({"features": [{"name": "subject", "type": "int"}], "label": {"name": "y", "type": "bool"}}, "reserved"),
    ],
)
def test_malformed_schemas_are_refused_with_the_reason(dpo_client, schema, reason):
    response = dpo_client.post("/api/v1/datasets/", _body(activity(), schema=schema), format="json")
    assert response.status_code == 400
    assert reason in response.json()["schema"][0]


def test_derived_dataset_needs_its_transformation(dpo_client):
    act = activity()
    parent = dpo_client.post("/api/v1/datasets/", _body(act), format="json").json()
    refused = dpo_client.post("/api/v1/datasets/", _body(act, name="derived", parents=[parent["id"]]), format="json")
    assert refused.status_code == 400
    assert "transformation" in refused.json()
    created = dpo_client.post(
        "/api/v1/datasets/", _body(act, name="derived", parents=[parent["id"]], transformation="dropped rows with bmi > 60"),
        format="json",
    )
    assert created.status_code == 201
    lineage = dpo_client.get(f"/api/v1/datasets/{created.json()['id']}/lineage/").json()
    assert [a["id"] for a in lineage["ancestors"]] == [parent["id"]]
    assert lineage["processing_activities"][0]["lawful_basis"] == "consent"


def test_duplicate_name_is_a_400_naming_the_field(dpo_client):
    act = activity()
    assert dpo_client.post("/api/v1/datasets/", _body(act), format="json").status_code == 201
    response = dpo_client.post("/api/v1/datasets/", _body(act), format="json")
    assert response.status_code == 400
    assert "name" in response.json()
