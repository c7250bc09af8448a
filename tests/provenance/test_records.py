import hashlib
import json

import pytest

from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from provenance import services
from provenance.models import DataRecord
from tests.provenance.helpers import SCHEMA, activity, row

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(db):
    return services.dataset_create(name="records test", owner="ml", processing_activity=activity(), schema=SCHEMA)


def _url(dataset):
    return f"/api/v1/datasets/{dataset.pk}/records/"


def _nothing_written(dataset, subjects_before, audit_before):
    assert DataRecord.objects.filter(dataset=dataset).count() == 0
    assert DataSubject.objects.count() == subjects_before
    assert AuditEvent.objects.count() == audit_before


def test_json_upload_stores_pseudonymised_records_with_documented_hashes(ml_client, dataset):
    rows = [row("Alice@Example.org", 30), row("bob@example.org", 41, False), row("alice@example.org ", 31)]
    response = ml_client.post(_url(dataset), rows, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["records_created"] == 3
    assert response.json()["subjects"] == 2
    records = list(DataRecord.objects.filter(dataset=dataset).select_related("subject").order_by("id"))
    assert [r.subject.pseudonym for r in records] == [
        pseudonymise("alice@example.org"), pseudonymise("bob@example.org"), pseudonymise("alice@example.org")
    ]
    first = records[0]
    # The float feature given as an int is stored and hashed as a float.
    assert first.features == {"age": 30, "bmi": 22.5, "smoker": False, "region": "north"}
    canonical = json.dumps({"features": first.features, "label": True}, sort_keys=True, separators=(",", ":"))
    assert first.content_hash == hashlib.sha256(canonical.encode()).hexdigest()
    events = AuditEvent.objects.filter(action="dataset.records_ingested", object_id=str(dataset.pk))
    assert events.count() == 1
    assert events.get().details == {"records": 3, "subjects": 2, "format": "json"}
    dumped = json.dumps([e.details for e in AuditEvent.objects.all()]) + json.dumps([r.features for r in records])
    assert "alice" not in dumped.lower() and pseudonymise("alice@example.org") not in dumped


def test_csv_upload(dpo_client, dataset):
    body = "subject,age,bmi,smoker,region,outcome\np1,30,21.5,true,north,false\np2,44,30,0,south,1\n"
    response = dpo_client.generic("POST", _url(dataset), data=body, content_type="text/csv")
    assert response.status_code == 201, response.content
    assert response.json()["records_created"] == 2
    second = DataRecord.objects.filter(dataset=dataset).order_by("id").last()
    assert second.features == {"age": 44, "bmi": 30.0, "smoker": False, "region": "south"}
    assert second.label is True


def test_csv_with_a_broken_row_is_refused_with_its_row_number_and_nothing_written(dpo_client, dataset):
    subjects, audit = DataSubject.objects.count(), AuditEvent.objects.count()
    body = "subject,age,bmi,smoker,region,outcome\np1,30,21.5,true,north,false\np2,44,30\np3,50,22,no,north,true\n"
    response = dpo_client.generic("POST", _url(dataset), data=body, content_type="text/csv")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0]["row"] == 2 and "expected 6 columns, got 3" in errors[0]["reason"]
    assert "row 2" in response.json()["rows"][0]
    _nothing_written(dataset, subjects, audit)


def test_csv_value_of_the_wrong_type_names_row_and_field(dpo_client, dataset):
    subjects, audit = DataSubject.objects.count(), AuditEvent.objects.count()
    body = "subject,age,bmi,smoker,region,outcome\np1,30,21.5,true,north,false\np2,forty,30,1,south,true\n"
    response = dpo_client.generic("POST", _url(dataset), data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json()["errors"][0] == {"row": 2, "field": "age", "reason": "expected int, got 'forty'"}
    _nothing_written(dataset, subjects, audit)


def test_csv_with_an_unknown_column_is_refused_naming_it(dpo_client, dataset):
    body = "patient,age,bmi,smoker,region,outcome\np1,30,21.5,true,north,false\n"
    response = dpo_client.generic("POST", _url(dataset), data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json()["column"] == "patient"
    assert DataRecord.objects.count() == 0


@pytest.mark.parametrize(
    "bad, field, reason",
    [
        ({"features": {"age": 1.5, "bmi": 1.0, "smoker": False, "region": "north"}}, "age", "expected int"),
        ({"features": {"age": 1, "bmi": 1.0, "smoker": False, "region": "west"}}, "region", "not one of"),
        ({"features": {"age": 1, "bmi": 1.0, "smoker": False}}, "region", "missing"),
        ({"features": {"age": 1, "bmi": 1.0, "smoker": False, "region": "north", "email": "x@y"}}, "email", "not a feature"),
        ({"label": "yes"}, "outcome", "expected bool"),
        ({"subject": ""}, "subject", "required"),
    ],
)
def test_json_rows_not_matching_the_schema_are_refused_and_nothing_written(ml_client, dataset, bad, field, reason):
    subjects, audit = DataSubject.objects.count(), AuditEvent.objects.count()
    rows = [row("ok-1"), {**row("bad-1"), **bad}, row("ok-2")]
    response = ml_client.post(_url(dataset), rows, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert (error["row"], error["field"]) == (2, field)
    assert reason in error["reason"]
    _nothing_written(dataset, subjects, audit)


def test_too_many_rows_are_refused(ml_client, dataset, settings):
    settings.PROVENANCE_MAX_ROWS_PER_REQUEST = 2
    response = ml_client.post(_url(dataset), [row("a"), row("b"), row("c")], format="json")
    assert response.status_code == 400
    assert "At most 2 rows" in response.json()["rows"][0]


def test_csv_exported_with_a_byte_order_mark(dpo_client, dataset):
    body = "\ufeffsubject,age,bmi,smoker,region,outcome\np1,30,21.5,true,north,false\n"
    response = dpo_client.generic("POST", _url(dataset), data=body.encode("utf-8"), content_type="text/csv; charset=utf-8")
    assert response.status_code == 201, response.content
