"""Issue 14, item 8: the API answers in its own words and as its schema says. A value the
database cannot hold is a 400 naming the field, never the database's text; OPTIONS offers only
methods the route answers; a filter on an id that matches nothing lists nothing, as the
schema (an integer) promises."""

from __future__ import annotations

import pytest
from django.db import DataError

from governance.api.exceptions import exception_handler
from tests.api_routes import api_routes
from tests.governance.reports_helpers import make_world

ID_FILTERS = [
    "/api/v1/training-runs/?snapshot={}",
    "/api/v1/training-runs/?dataset={}",
    "/api/v1/models/?training_run={}",
    "/api/v1/models/?dataset={}",
    "/api/v1/datasets/?processing_activity={}",
    "/api/v1/snapshots/?dataset={}",
    "/api/v1/dpias/?processing_activity={}",
]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ID_FILTERS)
@pytest.mark.parametrize("value", ["999999", str(2**63 - 1), "-5"])
def test_a_filter_on_an_id_that_matches_nothing_lists_nothing(dpo_client, url, value):
    make_world(n_subjects=2, records_per_subject=1)
    response = dpo_client.get(url.format(value))
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []


@pytest.mark.django_db
@pytest.mark.parametrize("url", [*ID_FILTERS, "/api/v1/reports/?object_id={}"])
@pytest.mark.parametrize("value", [str(2**63), str(2**70), "0.5"])
def test_a_filter_on_an_id_beyond_the_schemas_int64_is_a_400_naming_it(dpo_client, url, value):
    """Schemathesis as each role: an id the schema's int64 cannot hold was accepted."""
    param = url.split("?")[1].split("=")[0]
    response = dpo_client.get(url.format(value))
    assert response.status_code == 400 and param in response.json(), (value, response.content)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ID_FILTERS)
def test_a_filter_on_an_existing_id_still_filters_and_a_non_integer_is_400_naming_it(dpo_client, url):
    world = make_world(n_subjects=2, records_per_subject=1)
    param = url.split("?")[1].split("=")[0]
    ids = {
        ("training-runs", "snapshot"): world.snapshot.pk, ("training-runs", "dataset"): world.snapshot.dataset_id,
        ("models", "training_run"): world.run.pk, ("models", "dataset"): world.snapshot.dataset_id,
        ("datasets", "processing_activity"): world.activity.pk, ("snapshots", "dataset"): world.snapshot.dataset_id,
    }
    resource = url.split("/")[3]
    if (resource, param) in ids:
        assert dpo_client.get(url.format(ids[(resource, param)])).json()["count"] >= 1
    bad = dpo_client.get(url.format("1.5"))
    assert bad.status_code == 400 and param in bad.json(), bad.content


def test_the_schema_documents_id_filters_as_integers():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for url in ID_FILTERS:
        path, param = url.split("?")[0].removeprefix("/api/v1"), url.split("?")[1].split("=")[0]
        operation = next(op for p, item in schema["paths"].items() if p.endswith(path) for m, op in item.items() if m == "get")
        [documented] = [p for p in operation["parameters"] if p["name"] == param]
        assert documented["schema"]["type"] == "integer", (url, documented)


def _allowed(response) -> list[str]:
    return [m.strip() for m in response.get("Allow", "").split(",") if m.strip() and m.strip() not in ("OPTIONS", "HEAD")]


ROUTES = sorted({r.path for r in api_routes()})


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ROUTES,
)
def test_options_offers_only_methods_the_route_answers(dpo_client, path):
    response = dpo_client.options(path)
    assert response.status_code in (200, 404), response.content
    for method in _allowed(response):
        answered = getattr(dpo_client, method.lower())(path, {}, format="json")
        assert answered.status_code != 405, (method, path, answered.content)


def test_a_database_refusal_is_answered_in_the_api_words_naming_the_field(rf):
    from rest_framework.parsers import JSONParser
    from rest_framework.request import Request

    request = Request(
        rf.post("/api/v1/training-runs/?page=1", data={"seed": 2**40, "name": "x"}, content_type="application/json"),
        parsers=[JSONParser()],
    )
    response = exception_handler(DataError("integer out of range\n"), {"request": request})
    assert response.status_code == 400
    assert "integer out of range" not in str(response.data)
    assert "cannot be stored" in response.data["seed"][0]


def test_a_database_refusal_without_a_suspect_field_does_not_echo_the_database(rf):
    from rest_framework.request import Request

    request = Request(rf.get("/api/v1/datasets/?limit=5"))
    response = exception_handler(DataError("value too long for type character varying(200)\n"), {"request": request})
    assert response.status_code == 400
    assert "character varying" not in str(response.data) and "detail" in response.data


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "/api/v1/data-subject-categories/?vulnerable={}",
    "/api/v1/processing-activities/?special_categories={}",
    "/api/v1/erasure-requests/?overdue={}",
    "/api/v1/models/?non_private={}",
    "/api/v1/data-categories/?is_special={}",
])
def test_a_boolean_filter_takes_true_or_false_and_refuses_anything_else(dpo_client, url):
    """django-filter's default served the whole, unfiltered list for ?vulnerable=yes."""
    for value in ("true", "false", "True", "FALSE"):
        assert dpo_client.get(url.format(value)).status_code == 200, value
    name = url.split("?")[1].split("=")[0]
    for value in ("yes", "null", "1", "unknown"):
        answer = dpo_client.get(url.format(value))
        assert answer.status_code == 400, (value, answer.content)
        assert "true or false" in answer.json()[name][0]
    schema = dpo_client.get("/api/schema/?format=json").json()
    path = url.split("?")[0]
    [parameter] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
    assert parameter["schema"]["type"] == "boolean"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["auditor", "ml_engineer"])
def test_options_is_answered_to_every_role_that_may_read_the_route(role_client, role):
    """The auditor reads snapshots but was answered 403 to OPTIONS on one (found fuzzing)."""
    client = role_client(role)
    for path in ROUTES:
        if client.get(path).status_code in (401, 403, 405):
            continue
        response = client.options(path)
        assert response.status_code in (200, 404), (path, response.status_code, response.content)
        if response.status_code == 200:
            assert "GET" in response["Allow"], (path, response["Allow"])
