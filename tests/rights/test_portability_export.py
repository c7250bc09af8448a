"""The right to data portability (Art. 20): given for data processed on consent or contract,
with the person's values in a typed, schema-ordered format; refused naming Art. 20(1) when
every basis is another."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from governance.models import AuditEvent, DataSubject
from governance.selectors import audit_chain_verify
from governance.services import ServiceConflict
from provenance.models import DataRecord
from rights.portability import portability_csv, portability_export
from tests.rights import helpers as h

CONSENTING = "cora.portable@example.org"
LEGITIMATE = "liam.interest@example.org"


def _world():
    """Cora in a consent dataset and a legitimate-interests one; Liam in the second only."""
    consent = h.activity()
    interests = h.activity()
    interests.lawful_basis = "legitimate_interests"
    interests.legitimate_interests_assessment = "Fraud prevention; balancing test of 2025-01-10."
    interests.save()
    cora, liam = h.subject_for(CONSENTING), h.subject_for(LEGITIMATE)
    ds_consent = h.dataset_with_records(act=consent, rows=[
        (cora, {"x0": 0.125, "x1": -2.5}, 1), (cora, {"x0": 3.0, "x1": 0.0}, 0),
        *[(p, {"x0": 9.75, "x1": 9.25}, 1) for p in h.crowd(5)],
    ])
    ds_interests = h.dataset_with_records(act=interests, rows=[
        (cora, {"x0": 7.5, "x1": 7.25}, 0), (liam, {"x0": 1.5, "x1": 1.25}, 1),
    ])
    return {"cora": cora, "liam": liam, "consent": ds_consent, "interests": ds_interests}


@pytest.mark.django_db
def test_a_consenting_person_gets_exactly_their_consent_based_records_typed_and_in_schema_order():
    world = _world()
    export = portability_export(subject=world["cora"])
    assert export["article"] == "Art. 20" and export["subject_ref"] == str(world["cora"].reference)
    [dataset] = export["datasets"]
    assert dataset["dataset"] == world["consent"].name and dataset["lawful_basis"] == "consent"
    assert dataset["columns"] == [{"name": "x0", "type": "float", "role": "feature"},
                                  {"name": "x1", "type": "float", "role": "feature"},
                                  {"name": "y", "type": "int", "role": "label"}]
    records = DataRecord.objects.filter(subject=world["cora"], dataset=world["consent"]).order_by("ingested_at", "id")
    assert [r["values"] for r in dataset["records"]] == [{"x0": 0.125, "x1": -2.5, "y": 1}, {"x0": 3.0, "x1": 0.0, "y": 0}]
    assert [r["ingested_at"] for r in dataset["records"]] == [r.ingested_at.isoformat() for r in records]
    assert all(list(r["values"]) == ["x0", "x1", "y"] for r in dataset["records"])
    assert isinstance(dataset["records"][0]["values"]["y"], int)
    # The legitimate-interests dataset is named as left out, with the reason, and not exported.
    assert export["not_included"] == [{"dataset": world["interests"].name, "lawful_basis": "legitimate_interests",
                                       "reason": "processed on Art. 6(1)(f) legitimate interests, not on consent "
                                                 "or contract"}]
    assert "7.25" not in json.dumps(export["datasets"])
    text = json.dumps(export)
    for other in DataSubject.objects.exclude(pk=world["cora"].pk):
        assert other.pseudonym not in text and str(other.reference) not in text
    assert world["cora"].pseudonym not in text

    [(name, content)] = portability_csv(export).items()
    assert name.endswith(".csv")
    rows = list(csv.reader(io.StringIO(content)))
    assert rows[0] == ["ingested_at", "x0", "x1", "y"]
    assert [[float(a), float(b), int(c)] for _t, a, b, c in rows[1:]] == [[0.125, -2.5, 1], [3.0, 0.0, 0]]


@pytest.mark.django_db
def test_a_legitimate_interests_only_person_is_refused_naming_article_20_1():
    world = _world()
    with pytest.raises(ServiceConflict) as refused:
        portability_export(subject=world["liam"])
    assert "Art. 20(1)" in str(refused.value) and refused.value.field == "subject"
    assert refused.value.extra["lawful_bases"] == ["legitimate_interests"]


@pytest.mark.django_db
def test_the_api_exports_json_and_a_zip_of_csv_and_refuses_with_409(dpo_client):
    world = _world()
    response = dpo_client.post("/api/v1/subjects/portability/", {"subject": CONSENTING}, format="json")
    assert response.status_code == 200, response.content
    assert [d["dataset"] for d in response.json()["datasets"]] == [world["consent"].name]

    zipped = dpo_client.post("/api/v1/subjects/portability/", {"subject": CONSENTING, "format": "csv"}, format="json")
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    names = sorted(archive.namelist())
    assert names == sorted(["export.json", *portability_csv(json.loads(archive.read("export.json"))).keys()])
    csv_name = next(n for n in names if n.endswith(".csv"))
    assert archive.read(csv_name).decode().splitlines()[0] == "ingested_at,x0,x1,y"

    before = AuditEvent.objects.count()
    refused = dpo_client.post("/api/v1/subjects/portability/", {"subject": LEGITIMATE}, format="json")
    assert refused.status_code == 409, refused.content
    body = refused.json()
    assert "Art. 20(1)" in body["detail"] and body["article"] == "Art. 20(1)"
    assert body["lawful_bases"] == ["legitimate_interests"]
    # The refusal is recorded although nothing is given, and nothing else is written.
    [event] = AuditEvent.objects.filter(position__gt=before)
    assert (event.action, event.subject_ref) == ("subject_portability.refused", world["liam"].reference)
    assert event.details == {"format": "json", "article": "Art. 20(1)", "lawful_bases": ["legitimate_interests"]}
    exported = AuditEvent.objects.filter(action="subject_portability.exported").order_by("position")
    assert [e.details["format"] for e in exported] == ["json", "csv"]
    assert all(e.subject_ref == world["cora"].reference and "values" not in json.dumps(e.details) for e in exported)
    assert audit_chain_verify().ok

    unknown = dpo_client.post("/api/v1/subjects/portability/", {"subject": "nobody@example.org", "format": "csv"},
                              format="json")
    assert unknown.status_code == 200 and unknown.json()["data_held"] is False


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({}, "subject"),
    ({"subject": None}, "subject"),
    ({"subject": CONSENTING, "format": "pdf"}, "format"),
    ({"subject": CONSENTING, "format": ["csv"]}, "format"),
])
def test_bad_input_is_a_400_naming_the_field(dpo_client, body, field):
    _world()
    before = AuditEvent.objects.count()
    response = dpo_client.post("/api/v1/subjects/portability/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
def test_a_dataset_derived_by_the_controller_is_left_out_with_the_reason():
    world = _world()
    derived = h.dataset_with_records(act=world["consent"].processing_activity,
                                     rows=[(world["cora"], {"x0": 5.5, "x1": 6.5}, 1)])
    derived.parents.set([world["consent"]])
    export = portability_export(subject=world["cora"])
    assert [d["dataset"] for d in export["datasets"]] == [world["consent"].name]
    assert {"dataset": derived.name, "lawful_basis": "consent",
            "reason": "derived by the controller from other datasets: not data you provided"} in export["not_included"]
