"""The decision operations fuzzed (Schemathesis) with their path ids pointed at a real active
model version, decision and review, so generated bodies reach the services: no input is a
server error, every status is documented, every answer has its documented shape.
(tests/test_api_fuzz.py fuzzes every operation, but its world has no model to serve.)"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.db import DatabaseError, transaction
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from decisions.models import Decision
from decisions.services import decision_contest, decisions_make
from governance import services as governance_services
from governance.roles import DPO
from tests.decisions.helpers import row, trained_version
from tests.test_api_fuzz import _schema

schema = schemathesis.openapi.from_dict(_schema()).include(
    path_regex=r"^/api/v1/(models/\{id\}/predict/|decisions/|reviews/|decision-input-retentions/)")
schema.app = get_wsgi_application()


@pytest.fixture
def decision_world(db, _test_transaction_kept_open):
    user = governance_services.user_ensure_with_role(username="fuzz_decisions_dpo", role=DPO)
    _, key = governance_services.api_key_create(user=user, name="fuzz")
    version = trained_version(n=80, d=2)
    answer = decisions_make(model_version=version, rows=[row(0, d=2), row(1, d=2)], explain=True)
    decision = Decision.objects.get(pk=answer["decisions"][0]["decision"])
    review = decision_contest(decision=decision, reason="fuzz", channel="email")
    ids = {"/api/v1/models/": version.pk, "/api/v1/decisions/": answer["decisions"][1]["decision"],
           "/api/v1/reviews/": review.pk}
    return key, ids


@pytest.fixture
def _test_transaction_kept_open():
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_decision_input_is_a_server_error(case, decision_world):
    key, ids = decision_world
    for name in list(case.path_parameters or {}):
        for prefix, real_id in ids.items():
            if name == "id" and case.path.startswith(prefix):
                case.path_parameters[name] = real_id
    savepoint = transaction.savepoint()
    response = case.call(headers={"Authorization": f"Token {key}"})
    try:
        transaction.savepoint_commit(savepoint)
    except DatabaseError:
        transaction.savepoint_rollback(savepoint)
    reproduce = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
    assert response.status_code < 500, f"{reproduce} -> {response.status_code}: {response.text[:500]}"
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])
    if 400 <= response.status_code < 500:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/json"), f"{reproduce} -> {content_type}"
