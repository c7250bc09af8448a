"""Issue 14 items 2 and 6: consent-status by role, and a bounded bulk request.

Bisecting ``at`` placed one person's withdrawal within 60 s. Roles other than the DPO are
told only who may be processed now (allowed positions and one refused list), never why
or when; the DPO keeps the reasons, past moments and ``known_at``.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from governance import services
from governance.api import views
from tests.conftest import make_role_client
from tests.governance.consent_helpers import consent_activity, event

pytestmark = pytest.mark.django_db

CODE = "ml.training.clinical_risk"
PEOPLE = ["given@x.org", "withdrew@x.org", "never@x.org", "expired@x.org"]


def _ledger() -> None:
    consent_activity()
    now = timezone.now()
    services.consent_events_ingest(events=[
        event(PEOPLE[0], CODE, "given", now - timedelta(days=30)),
        event(PEOPLE[1], CODE, "given", now - timedelta(days=30)),
        event(PEOPLE[1], CODE, "withdrawn", now - timedelta(days=1)),
        event(PEOPLE[3], CODE, "given", now - timedelta(days=30), expires_at=(now - timedelta(days=2)).isoformat()),
    ], actor="test")


def _ask(client, **extra):
    return client.post("/api/v1/consent-status/", {"purpose": CODE, "subjects": PEOPLE, **extra}, format="json")


@pytest.mark.parametrize("role", ["ml_engineer", "auditor"])
def test_other_roles_learn_who_may_be_processed_and_nothing_about_why(role):
    _ledger()
    response = _ask(make_role_client(role))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["allowed"] == [0]
    assert body["refused"] == [1, 2, 3]  # one list, in submission order, no reason
    assert body["counts"] == {"allowed": 1, "refused": 3}
    text = response.content.decode()
    for word in ("withdrawn", "expired", "no_consent"):
        assert word not in text
    assert "known_at" not in body


@pytest.mark.parametrize("role", ["ml_engineer", "auditor"])
def test_other_roles_cannot_ask_about_the_past_or_the_ledger_as_it_stood(role):
    _ledger()
    client = make_role_client(role)
    past = _ask(client, at=(timezone.now() - timedelta(days=2)).isoformat())
    assert past.status_code == 400 and "at" in past.json(), past.content
    assert "dpo" in past.json()["at"][0].lower()
    known = _ask(client, known_at=timezone.now().isoformat())
    assert known.status_code == 400 and "known_at" in known.json(), known.content
    # Now, give or take the clock skew, is answered, and answered as of the server's now.
    near = _ask(client, at=(timezone.now() - timedelta(seconds=30)).isoformat())
    assert near.status_code == 200 and near.json()["allowed"] == [0]


def test_the_dpo_keeps_the_reasons_and_the_past(dpo_client):
    _ledger()
    body = _ask(dpo_client).json()
    assert body["refused"] == {"withdrawn": [1], "no_consent": [2], "expired": [3]}
    assert body["counts"] == {"valid": 1, "withdrawn": 1, "expired": 1, "no_consent": 1}
    before = _ask(dpo_client, at=(timezone.now() - timedelta(days=3)).isoformat()).json()
    assert before["allowed"] == [0, 1, 3]
    known = _ask(dpo_client, known_at=timezone.now().isoformat())
    assert known.status_code == 200 and "known_at" in known.json()


def test_a_request_over_the_documented_limit_is_refused_naming_it(ml_client, settings):
    consent_activity()
    limit = views.MAX_STATUS_SUBJECTS
    assert limit == 100_000
    response = ml_client.post(
        "/api/v1/consent-status/", {"purpose": CODE, "subjects": [f"p{i}" for i in range(limit + 1)]}, format="json"
    )
    assert response.status_code == 400
    assert "100,000" in response.json()["subjects"][0]


def test_a_large_request_is_answered_in_chunks_with_positions_across_them(dpo_client, monkeypatch):
    from governance import selectors

    _ledger()
    monkeypatch.setattr(selectors, "CONSENT_STATUS_CHUNK", 3)
    subjects = PEOPLE * 3  # 12 positions over four chunks
    body = dpo_client.post("/api/v1/consent-status/", {"purpose": CODE, "subjects": subjects}, format="json").json()
    assert body["allowed"] == [0, 4, 8]
    assert body["refused"]["withdrawn"] == [1, 5, 9]
    assert body["refused"]["no_consent"] == [2, 6, 10]
    assert body["refused"]["expired"] == [3, 7, 11]


def test_an_oversized_body_is_refused_before_it_is_parsed(ml_client):
    consent_activity()
    body = json.dumps({"purpose": CODE, "subjects": ["x" * (views.MAX_STATUS_BODY_BYTES + 1)]})
    response = ml_client.generic("POST", "/api/v1/consent-status/", body, content_type="application/json")
    assert response.status_code == 400
    assert "16,777,216 bytes" in response.json()["subjects"][0]
