"""Every operation of the OpenAPI schema, fuzzed (Schemathesis): no input is a server error,
every status is documented, and every answer has the shape the schema documents.

The schema is generated in-process and the requests go through the WSGI application, as a DPO
(the role that reaches the most code). Path ids are pointed at real objects, so the fuzzed bodies
reach the services instead of stopping at a 404. Examples are derandomised: a failure here is
reproducible, and CI runs the very same cases. A new endpoint is fuzzed without further work.
"""

from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import DatabaseError, close_old_connections, transaction
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from assessments import services as dpia_services
from governance import services as governance_services
from governance.roles import DPO
from rights import services as erasure_services
from tests.rights.helpers import activity, dataset_with_records, snapshot_of, subject_for

EXAMPLES = 6


def _schema() -> dict:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


schema = schemathesis.openapi.from_dict(_schema())
schema.app = get_wsgi_application()


@pytest.fixture
def _test_transaction_kept_open():
    # The WSGI handler closes the database connection after each request, as it should in
    # production; here that connection holds the test's transaction. Django's test client
    # disconnects the same handler for the same reason.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_world(db, _test_transaction_kept_open) -> tuple[str, dict[str, int]]:
    """A DPO's API key, and real ids for each collection whose path takes one."""
    user = governance_services.user_ensure_with_role(username="fuzz_dpo", role=DPO)
    _, key = governance_services.api_key_create(user=user, name="fuzz")
    act = activity()
    people = [subject_for(f"fuzz-{uuid.uuid4().hex[:6]}-{i}@example.org") for i in range(3)]
    dataset = dataset_with_records(act=act, rows=[(p, {"x0": 0.1 * i, "x1": 1.0}, i % 2) for i, p in enumerate(people)])
    snapshot = snapshot_of(dataset)
    request = erasure_services.erasure_request_receive(identifier=f"fuzz-{uuid.uuid4().hex}@example.org",
                                                       ground="17_1_a", actor=user)
    dpia = dpia_services.dpia_create(processing_activity=act, actor=user, title="Fuzzed DPIA")
    ids = {
        "/api/v1/processing-activities/": act.pk,
        "/api/v1/datasets/": dataset.pk,
        "/api/v1/snapshots/": snapshot.pk,
        "/api/v1/erasure-requests/": request.pk,
        "/api/v1/dpias/": dpia.pk,
        "/api/v1/purposes/": act.purposes.first().pk,
    }
    return key, ids


def _point_at_real_objects(case, ids: dict[str, int]) -> None:
    for name in list(case.path_parameters or {}):
        if name not in ("id", "dataset_id"):
            continue
        for prefix, real_id in ids.items():
            if case.path.startswith(prefix):
                case.path_parameters[name] = real_id


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_is_a_server_error(case, fuzz_world):
    key, ids = fuzz_world
    _point_at_real_objects(case, ids)
    # In production each request runs in autocommit; here all share the test's transaction, so
    # each gets a savepoint of its own, as a failed statement would otherwise poison the next.
    savepoint = transaction.savepoint()
    response = case.call(headers={"Authorization": f"Token {key}"})
    try:
        transaction.savepoint_commit(savepoint)
    except DatabaseError:
        transaction.savepoint_rollback(savepoint)
    reproduce = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
    assert response.status_code < 500, f"{reproduce} -> {response.status_code}: {response.text[:500]}"
    # What a client generated from the schema relies on: every status it can receive is
    # documented, and every answer, errors included, has the documented shape.
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])
    if 400 <= response.status_code < 500:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/json"), f"{reproduce} -> {content_type}"
        assert response.json(), f"{reproduce} -> an empty error body"
