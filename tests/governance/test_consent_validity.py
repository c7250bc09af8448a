"""Point-in-time consent: the latest event on the purpose or an ancestor decides (Art. 7(3))."""

from __future__ import annotations

from datetime import timedelta

import pytest

from governance import selectors, services
from governance.models import DataSubject, Purpose
from governance.pseudonymisation import pseudonymise, pseudonymise_many
from tests.governance.consent_helpers import at, consent_activity, event

CLINICAL = "ml.training.clinical_risk"


def _subject(identifier: str) -> DataSubject:
    return DataSubject.objects.get(pseudonym=pseudonymise(identifier))


def _valid(identifier: str, code: str, when) -> tuple[bool, str]:
    return selectors.consent_valid_at(subject=_subject(identifier), purpose=Purpose.objects.get(code=code), at=when)


@pytest.mark.django_db
def test_given_withdrawn_given_again_each_moment_keeps_its_answer():
    services.consent_events_ingest(
        events=[
            event("ann@example.org", CLINICAL, "given", at(0)),
            event("ann@example.org", CLINICAL, "withdrawn", at(10)),
            event("ann@example.org", CLINICAL, "given", at(20)),
        ],
        actor="test",
    )
    assert _valid("ann@example.org", CLINICAL, at(-1)) == (False, "no_consent")
    assert _valid("ann@example.org", CLINICAL, at(0)) == (True, "valid")
    assert _valid("ann@example.org", CLINICAL, at(9.9)) == (True, "valid")
    assert _valid("ann@example.org", CLINICAL, at(10)) == (False, "withdrawn")
    assert _valid("ann@example.org", CLINICAL, at(19)) == (False, "withdrawn")
    assert _valid("ann@example.org", CLINICAL, at(25)) == (True, "valid")


@pytest.mark.django_db
def test_withdrawal_recorded_later_does_not_rewrite_the_past():
    services.consent_events_ingest(events=[event("bo@example.org", CLINICAL, "given", at(0))], actor="test")
    assert _valid("bo@example.org", CLINICAL, at(5)) == (True, "valid")
    services.consent_events_ingest(events=[event("bo@example.org", CLINICAL, "withdrawn", at(10))], actor="test")
    assert _valid("bo@example.org", CLINICAL, at(5)) == (True, "valid")
    assert _valid("bo@example.org", CLINICAL, at(11)) == (False, "withdrawn")


@pytest.mark.django_db
def test_consent_expires_at_its_expiry_and_renewal_restores_it():
    services.consent_events_ingest(
        events=[
            event("cy@example.org", CLINICAL, "given", at(0), expires_at=at(30).isoformat()),
            event("cy@example.org", CLINICAL, "given", at(40)),
        ],
        actor="test",
    )
    assert _valid("cy@example.org", CLINICAL, at(29)) == (True, "valid")
    assert _valid("cy@example.org", CLINICAL, at(30)) == (False, "expired")
    assert _valid("cy@example.org", CLINICAL, at(39)) == (False, "expired")
    assert _valid("cy@example.org", CLINICAL, at(41)) == (True, "valid")


@pytest.mark.django_db
def test_consent_for_a_parent_purpose_covers_its_descendants_but_not_the_reverse():
    services.consent_events_ingest(events=[event("di@example.org", "ml.training", "given", at(0))], actor="test")
    assert _valid("di@example.org", CLINICAL, at(1)) == (True, "valid")
    assert _valid("di@example.org", "ml.training", at(1)) == (True, "valid")
    assert _valid("di@example.org", "ml", at(1)) == (False, "no_consent")
    assert _valid("di@example.org", "ml.evaluation", at(1)) == (False, "no_consent")
    # Withdrawing the broader purpose withdraws the narrower one too.
    services.consent_events_ingest(events=[event("di@example.org", "ml", "withdrawn", at(5))], actor="test")
    assert _valid("di@example.org", CLINICAL, at(6)) == (False, "withdrawn")
    # A later, specific consent decides for the specific purpose only.
    services.consent_events_ingest(events=[event("di@example.org", CLINICAL, "given", at(7))], actor="test")
    assert _valid("di@example.org", CLINICAL, at(8)) == (True, "valid")
    assert _valid("di@example.org", "ml.training", at(8)) == (False, "withdrawn")


def _population():
    """Nine people in every state the rule distinguishes, at time at(50)."""
    return [
        event("p1@x.org", CLINICAL, "given", at(0)),  # valid
        event("p2@x.org", CLINICAL, "given", at(0)),
        event("p2@x.org", CLINICAL, "withdrawn", at(10)),  # withdrawn
        event("p3@x.org", CLINICAL, "given", at(0), expires_at=at(20).isoformat()),  # expired
        event("p4@x.org", "ml", "given", at(0)),  # valid through the ancestor
        event("p5@x.org", "ml.evaluation", "given", at(0)),  # a sibling purpose: no consent
        event("p6@x.org", CLINICAL, "withdrawn", at(0)),
        event("p6@x.org", CLINICAL, "given", at(30)),  # valid again
        event("p7@x.org", CLINICAL, "given", at(60)),  # only after the moment asked: no consent
        event("p8@x.org", CLINICAL, "given", at(0)),
        event("p8@x.org", "ml.training", "withdrawn", at(40)),  # withdrawn through the ancestor
    ]


EXPECTED = {
    "p1@x.org": "valid", "p2@x.org": "withdrawn", "p3@x.org": "expired", "p4@x.org": "valid",
    "p5@x.org": "no_consent", "p6@x.org": "valid", "p7@x.org": "no_consent", "p8@x.org": "withdrawn",
    "never-seen@x.org": "no_consent",
}


@pytest.mark.django_db
def test_bulk_status_matches_the_single_subject_rule_on_a_mixed_population():
    consent_activity()
    services.consent_events_ingest(events=_population(), actor="test")
    identifiers = list(EXPECTED)
    result = selectors.consent_status_bulk(
        purpose=Purpose.objects.get(code=CLINICAL), pseudonyms=pseudonymise_many(identifiers), at=at(50)
    )
    assert result.consent_required
    got = {identifiers[i]: state for state, indices in result.indices_by_state.items() for i in indices}
    assert got == EXPECTED
    purpose = Purpose.objects.get(code=CLINICAL)
    for identifier, state in EXPECTED.items():
        subject = DataSubject.objects.filter(pseudonym=pseudonymise(identifier)).first()
        if subject is not None:
            assert selectors.consent_valid_at(subject=subject, purpose=purpose, at=at(50)) == (state == "valid", state)


@pytest.mark.django_db
def test_consent_status_api_answers_by_position_without_echoing_identifiers(dpo_client):
    # The DPO's answer (reasons, a past moment); other roles: tests/governance/test_consent_status_roles.py.
    consent_activity()
    services.consent_events_ingest(events=_population(), actor="test")
    identifiers = list(EXPECTED)
    response = dpo_client.post(
        "/api/v1/consent-status/",
        {"purpose": CLINICAL, "at": at(50).isoformat(), "subjects": identifiers},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert sorted(identifiers[i] for i in body["allowed"]) == ["p1@x.org", "p4@x.org", "p6@x.org"]
    assert sorted(identifiers[i] for i in body["refused"]["withdrawn"]) == ["p2@x.org", "p8@x.org"]
    assert [identifiers[i] for i in body["refused"]["expired"]] == ["p3@x.org"]
    assert body["counts"] == {"valid": 3, "withdrawn": 2, "expired": 1, "no_consent": 3}
    assert body["lawful_bases"] == {"consent": ["activity for ml.training.clinical_risk"]}
    assert "@x.org" not in response.content.decode()


@pytest.mark.django_db
def test_consent_status_says_when_consent_is_not_the_basis(ml_client):
    consent_activity(
        purpose_code="analytics.product", name="Product analytics", lawful_basis="legitimate_interests",
        special_category_condition="9_2_j",
        legitimate_interests_assessment="Interest: improve the service. Necessary: no less intrusive means. Balanced.",
    )
    response = ml_client.post(
        "/api/v1/consent-status/", {"purpose": "analytics.product", "subjects": ["a@x.org"]}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["consent_required"] is False
    assert body["lawful_bases"] == {"legitimate_interests": ["Product analytics"]}
    assert "not the lawful basis" in body["detail"]
    assert "allowed" not in body


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"purpose": "no.such.purpose", "subjects": ["a"]}, "purpose"),
        ({"subjects": ["a"]}, "purpose"),
        ({"purpose": CLINICAL, "subjects": "a"}, "subjects"),
        ({"purpose": CLINICAL, "subjects": ["a", ""]}, "subjects[1]"),
        ({"purpose": CLINICAL, "subjects": ["a"], "at": "yesterday"}, "at"),
        ({"purpose": CLINICAL, "subjects": ["a"], "at": "2025-01-01T00:00:00"}, "at"),
    ],
)
def test_consent_status_bad_input_names_the_field(ml_client, payload, field):
    response = ml_client.post("/api/v1/consent-status/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()


@pytest.mark.django_db
def test_consent_history_lists_state_now_and_timeline_per_purpose():
    services.consent_events_ingest(
        events=[
            event("eve@x.org", CLINICAL, "given", at(0)),
            event("eve@x.org", CLINICAL, "withdrawn", at(3)),
            event("eve@x.org", "marketing.email", "given", at(1), expires_at=(at(1) + timedelta(days=3650)).isoformat()),
        ],
        actor="test",
    )
    history = selectors.consent_history(subject=_subject("eve@x.org"))
    assert [(h["purpose"].code, h["state"], len(h["events"])) for h in history] == [
        ("marketing.email", "valid", 1),
        (CLINICAL, "withdrawn", 2),
    ]
