"""Input that once reached the database and came back as a server error (found by fuzzing the
OpenAPI schema): every such request is now a 400 naming the field, and nothing is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from governance.api.parsers import first_unstorable
from governance.models import AuditEvent, ConsentEvent, DataSubject
from governance.moments import moment_parse
from provenance import services as provenance_services
from provenance.models import DataRecord
from tests.governance.consent_helpers import at, consent_activity, event
from tests.provenance.helpers import SCHEMA, activity

CLINICAL = "ml.training.clinical_risk"


def _written():
    return ConsentEvent.objects.count(), DataSubject.objects.count(), AuditEvent.objects.count()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T10:15:00Z", datetime(2025, 3, 1, 10, 15, tzinfo=UTC)),
        # PostgreSQL stores offsets up to ±15:59 only; converted to UTC it never sees this one.
        ("2025-03-01T10:15:00+18:38", datetime(2025, 2, 28, 15, 37, tzinfo=UTC)),
        (" 2025-03-01 10:15:00+01:00 ", datetime(2025, 3, 1, 9, 15, tzinfo=UTC)),
    ],
)
def test_moments_are_converted_to_utc(text, expected):
    moment = moment_parse(text)
    assert moment == expected
    assert moment.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-01-01T12:99:00Z", "minute must be in 0..59"),
        ("0001-01-01T00:30:00+01:00", "out of range"),
        ("9999-12-31T23:30:00-01:00", "out of range"),
        ("2024-01-01T12:00:00", "time zone"),
        ("yesterday", "ISO 8601"),
        (1700000000, "ISO 8601"),
    ],
)
def test_impossible_moments_are_refused_with_the_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        moment_parse(value)


def test_the_first_unstorable_string_is_named_by_its_json_path():
    assert first_unstorable({"events": [{"subject": "ok"}, {"subject": "a\x00b"}]}) == (
        "events[1].subject", "contains a NUL character (\\u0000), which cannot be stored",
    )
    assert first_unstorable(["ok", "\udaf0"])[0] == "[1]"
    assert first_unstorable({"ok": ["fine", {"x": 1}]}) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"purpose": "ml\\u0000x", "subjects": ["a"]}', "purpose"),
        ('{"purpose": "ml.training", "subjects": ["a", "b\\udaf0"]}', "subjects[1]"),
    ],
)
def test_consent_status_refuses_strings_the_database_cannot_hold(dpo_client, body, field):
    response = dpo_client.post("/api/v1/consent-status/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()


@pytest.mark.django_db
def test_consent_ingest_refuses_a_nul_character_and_writes_nothing(dpo_client):
    consent_activity()
    batch = [event("a@x.org", CLINICAL, "given", at(0)), event("b\x00@x.org", CLINICAL, "given", at(1))]
    before = _written()
    response = dpo_client.post("/api/v1/consent-events/", json.dumps(batch), content_type="application/json")
    assert response.status_code == 400, response.content
    assert "[1].subject" in response.json(), response.json()
    assert _written() == before


@pytest.mark.django_db
def test_consent_ingest_stores_a_far_offset_in_utc(dpo_client):
    consent_activity()
    payload = event("far@x.org", CLINICAL, "given", at(0), event_id="far-offset")
    payload["occurred_at"] = "2025-01-01T09:00:00+18:38"
    response = dpo_client.post("/api/v1/consent-events/", payload, format="json")
    assert response.status_code == 201, response.content
    assert ConsentEvent.objects.get(event_id="far-offset").occurred_at == datetime(2024, 12, 31, 14, 22, tzinfo=UTC)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [("0001-01-01T00:00:00+01:00", "out of range"), ("0025-03-01T10:00:00Z", "check the year")],
)
def test_consent_ingest_refuses_impossible_and_mistyped_years(dpo_client, occurred_at, reason):
    consent_activity()
    payload = event("early@x.org", CLINICAL, "given", at(0))
    payload["occurred_at"] = occurred_at
    before = _written()
    response = dpo_client.post("/api/v1/consent-events/", payload, format="json")
    assert response.status_code == 400, response.content
    assert reason in response.json()["events[0].occurred_at"][0], response.json()
    assert _written() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/consent-events/?occurred_before=0632-08-19T12:06:29%2B18:38", None),
        ("/api/v1/consent-events/?occurred_after=0001-01-01T00:00:00%2B01:00", "occurred_after"),
        ("/api/v1/consent-events/?recorded_before=2024-13-01T00:00:00Z", "recorded_before"),
        ("/api/v1/audit-events/?occurred_after=0001-01-01T00:00:00%2B01:00", "occurred_after"),
        ("/api/v1/snapshots/?taken_after=9999-12-31T23:59:59-01:00", "taken_after"),
        ("/api/v1/training-runs/?created_after=2024-01-01T25:00:00Z", "created_after"),
    ],
)
def test_date_filters_take_any_offset_and_refuse_impossible_moments(dpo_client, url, field):
    response = dpo_client.get(url)
    if field is None:
        assert response.status_code == 200, response.content
    else:
        assert response.status_code == 400, response.content
        assert field in response.json(), response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"subject,age,smoker,label\n\xff\xfe,30,false,1\n", "not valid utf-8"),
        (b"subject,age,smoker,label\na\x00b@x.org,30,false,1\n", "NUL"),
    ],
)
def test_record_upload_refuses_csv_the_database_cannot_hold(ml_client, body, reason):
    dataset = provenance_services.dataset_create(
        name="bad csv", owner="ml", processing_activity=activity(), schema=SCHEMA
    )
    response = ml_client.post(f"/api/v1/datasets/{dataset.pk}/records/", body, content_type="text/csv")
    assert response.status_code == 400, response.content
    assert reason in response.json()["detail"]
    assert not DataRecord.objects.filter(dataset=dataset).exists()


@pytest.mark.django_db
def test_pages_are_bounded_so_no_query_string_overflows_the_database(dpo_client):
    consent_activity()
    assert len(dpo_client.get("/api/v1/processing-activities/?limit=1000").json()["results"]) >= 1
    assert dpo_client.get("/api/v1/processing-activities/?offset=1000000000000").json()["results"] == []
    # Out of range, not a whole number or given twice: a 400 naming the parameter, never a
    # silently served first page that a client paging through a ledger would take for all of it.
    for query, name in (
        ("limit=9223372036854775808", "limit"), ("limit=0", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
        ("limit=5&limit=6", "limit"), ("offset=9223372036854775808", "offset"), ("offset=-5", "offset"),
        ("offset=1.5", "offset"), ("offset=%EF%BC%91", "offset"),
    ):
        response = dpo_client.get(f"/api/v1/processing-activities/?{query}")
        assert response.status_code == 400, (query, response.content)
        assert name in response.json(), (query, response.json())
    # The schema states the same bounds, so a generated client never sends what is refused.
    schema = dpo_client.get("/api/schema/?format=json").json()
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/processing-activities/"]["get"]["parameters"]}
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 1000)
    assert parameters["offset"]["minimum"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/models/0.5/lineage/", "/api/v1/no-such-thing/", "/api/v2/"])
def test_a_path_no_endpoint_matches_is_a_json_404(dpo_client, path):
    response = dpo_client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "No endpoint at" in response.json()["detail"]


@pytest.mark.django_db
def test_a_missing_trailing_slash_is_redirected_for_get_and_explained_otherwise(dpo_client):
    response = dpo_client.get("/api/v1/datasets?limit=1")
    assert response.status_code == 301
    assert response["Location"] == "/api/v1/datasets/?limit=1"
    refused = dpo_client.post("/api/v1/datasets", {}, format="json")
    assert refused.status_code == 404
    assert "/api/v1/datasets/ (with a trailing slash)" in refused.json()["detail"]


@pytest.mark.django_db
def test_a_status_question_about_the_distant_past_is_answered(dpo_client):
    consent_activity()
    status = dpo_client.post("/api/v1/consent-status/", {"purpose": CLINICAL, "at": "1500-01-01T00:00:00Z",
                                                         "subjects": ["typo@x.org"]}, format="json")
    assert status.status_code == 200, status.content
    assert status.json()["counts"]["no_consent"] == 1


@pytest.mark.django_db
def test_a_dpia_naming_a_model_id_beyond_the_database_integer_is_a_400(dpo_client):
    act = consent_activity()
    response = dpo_client.post("/api/v1/dpias/", {"processing_activity": act.pk, "model_version_ids": [2**63]},
                               format="json")
    assert response.status_code == 400, response.content
    assert "model_version_ids" in response.json(), response.json()


@pytest.mark.django_db
@pytest.mark.parametrize("field,value", [("regime", {}), ("regime", 0), ("channel", []), ("channel", False), ("regime", "mars")])
def test_an_erasure_request_refuses_a_channel_or_regime_it_does_not_know_rather_than_defaulting(dpo_client, field, value):
    """Found fuzzing as the DPO: {"regime": {}} was read as "absent" and the request recorded under EU rules."""
    from rights.models import ErasureRequest

    body = {"subject": "fuzzed@example.org", "ground": "17_1_b", field: value}
    answer = dpo_client.post("/api/v1/erasure-requests/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json() and "choose one of" in answer.json()[field][0]
    assert not ErasureRequest.objects.exists()
    # Absent or empty still means the default.
    assert dpo_client.post("/api/v1/erasure-requests/", {**body, field: ""}, format="json").status_code == 201
