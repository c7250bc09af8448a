"""The right of access (Art. 15): the answer lists exactly the person's models, every item of
Art. 15(1)(a)–(h) and 15(2), the copy of the data, and nobody else."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent, ConsentEvent, DataCategory, DataSubject, ProcessingActivityDataCategory
from governance.selectors import audit_chain_verify
from mlops.models import ModelVersion
from provenance.models import DataRecord
from rights.access import access_answer
from tests.api_routes import ROLE_POLICY
from tests.governance.reports_helpers import pdf_text
from tests.rights import helpers as h

ALICE = "alice.access@example.org"
BOB = "bob.access@example.org"

ARTICLE_KEYS = {
    "article_15_1_a_purposes": "Art. 15(1)(a)",
    "article_15_1_b_categories_of_personal_data": "Art. 15(1)(b)",
    "article_15_1_c_recipients": "Art. 15(1)(c) and 15(2)",
    "article_15_1_d_retention": "Art. 15(1)(d)",
    "article_15_1_e_rights": "Art. 15(1)(e)",
    "article_15_1_f_complaint": "Art. 15(1)(f)",
    "article_15_1_g_source": "Art. 15(1)(g)",
    "article_15_1_h_automated_decision_making": "Art. 15(1)(h)",
    "article_15_3_copy_of_the_data": "Art. 15(3)",
}


def _world(*, train: bool):
    """Two activities with a dataset each: Alice is in the first only, Bob in both, a crowd in
    each. A model is trained on each dataset when ``train``."""
    first = h.activity(recipients=[{"name": "Acme Analytics", "third_country": "India"}])
    first.third_country_transfers = [{"country": "India", "safeguard": "Standard contractual clauses (Art. 46(2)(c))"}]
    first.save()
    health, _ = DataCategory.objects.get_or_create(code="access-health", defaults={"name": "Health measurements",
                                                                                 "special_category": "health"})
    ProcessingActivityDataCategory.objects.create(processing_activity=first, data_category=health,
                                                  retention=timedelta(days=730))
    second = h.activity(recipients=[])
    alice, bob = h.subject_for(ALICE), h.subject_for(BOB)
    crowd_a, crowd_b = h.crowd(30), h.crowd(30)
    ds_a = h.people_dataset(act=first, people=[alice, bob, *crowd_a], seed=1)
    ds_a.source_system = "clinic-ehr"
    ds_a.save(update_fields=["source_system"])
    ds_b = h.people_dataset(act=second, people=[bob, *crowd_b], seed=2)
    snap_a, snap_b = h.snapshot_of(ds_a), h.snapshot_of(ds_b)
    models = {}
    if train:
        models["a"] = ModelVersion.objects.get(training_run=h.train(snapshot=snap_a, name="risk-a"))
        models["b"] = ModelVersion.objects.get(training_run=h.train(snapshot=snap_b, name="risk-b"))
    return {"alice": alice, "bob": bob, "crowd": crowd_a + crowd_b, "ds_a": ds_a, "ds_b": ds_b, "first": first,
            "second": second, "models": models}


def _others(world, *, but: DataSubject) -> list[str]:
    """Every other person's pseudonym and reference, and the person's own pseudonym."""
    others = [s for s in DataSubject.objects.all() if s.pk != but.pk]
    assert len(others) >= 60
    return [but.pseudonym] + [s.pseudonym for s in others] + [str(s.reference) for s in others]


@pytest.mark.django_db(transaction=True)
def test_the_answer_lists_exactly_the_models_trained_on_the_person_and_names_no_one_else(celery_worker, dpo_client):
    world = _world(train=True)
    alice, bob, model_a, model_b = world["alice"], world["bob"], world["models"]["a"], world["models"]["b"]

    answer = access_answer(subject=alice)
    text = json.dumps(answer)
    assert answer["data_held"] is True and answer["subject_ref"] == str(alice.reference)
    for key, article in ARTICLE_KEYS.items():
        assert answer[key]["article"] == article, key
    h_items = answer["article_15_1_h_automated_decision_making"]["items"]
    assert [(m["model"], m["version"]) for m in h_items] == [(model_a.name, model_a.version)]
    logic = h_items[0]
    assert logic["features_used"] == ["x0", "x1", "x2", "x3"] and logic["predicts"] == "y"
    assert logic["differential_privacy"]["epsilon"] == pytest.approx(model_a.epsilon)
    assert logic["differential_privacy"]["delta"] == model_a.delta
    # Alice has one record in its training data: her bound is the record-level one.
    assert logic["differential_privacy"]["for_you"] == {
        "your_records_in_its_training_data": 1, "epsilon": pytest.approx(model_a.epsilon), "delta": model_a.delta}
    assert logic["status"] == model_a.status and logic["model_spec"] == model_a.training_run.model_spec
    assert logic["model_spec"]["hidden_sizes"] == [8]
    assert logic["purpose"]["code"] == world["first"].purposes.get().code
    copy = answer["article_15_3_copy_of_the_data"]
    assert [(m["model"], m["epsilon"], m["delta"], m["status"]) for m in copy["models_trained_on_your_data"]] == [
        (model_a.name, pytest.approx(model_a.epsilon), model_a.delta, model_a.status)]
    assert model_b.name not in text
    # Bob is in both datasets: both models.
    bob_models = access_answer(subject=bob)["article_15_1_h_automated_decision_making"]["items"]
    assert sorted(m["model"] for m in bob_models) == ["risk-a", "risk-b"]
    for value in _others(world, but=alice):
        assert value not in text

    response = dpo_client.post("/api/v1/subjects/access/", {"subject": ALICE, "format": "pdf"}, format="json")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/pdf"
    pdf = pdf_text(response.content)
    assert str(alice.reference) in pdf and "risk-a" in pdf and "risk-b" not in pdf
    assert "Art. 15(1)(h)" in pdf and "Art. 15(3)" in pdf and "clinic-ehr" in pdf
    for value in _others(world, but=alice):
        assert value not in pdf
    assert audit_chain_verify().ok


@pytest.mark.django_db
def test_every_article_15_item_is_answered_from_the_records():
    world = _world(train=False)
    alice, first = world["alice"], world["first"]
    ConsentEvent.objects.create(
        event_id="access-test-withdrawal", subject=alice, purpose=first.purposes.get(), action="withdrawn",
        occurred_at=timezone.now(), notice_version="v2", notice_sha256="1" * 64, method="web_form",
        evidence={"witness": "someone.else@example.org"},
    )
    answer = access_answer(subject=alice)
    text = json.dumps(answer)

    purposes = answer["article_15_1_a_purposes"]["items"]
    assert [p["code"] for p in purposes] == [first.purposes.get().code]
    assert purposes[0]["lawful_bases"] == [{"code": "consent", "label": "Art. 6(1)(a) consent"}]
    categories = answer["article_15_1_b_categories_of_personal_data"]
    assert [c["code"] for c in categories["items"]] == ["access-health"]
    assert categories["items"][0]["special_category"] == "Health data"
    assert categories["fields_per_dataset"] == [{"dataset": world["ds_a"].name, "fields": ["x0", "x1", "x2", "x3", "y"],
                                                 "special_category_fields": []}]
    [recipients] = answer["article_15_1_c_recipients"]["items"]
    assert recipients["recipients"] == [{"name": "Acme Analytics", "third_country": "India"}]
    assert recipients["third_country_transfers"] == [
        {"country": "India", "safeguard": "Standard contractual clauses (Art. 46(2)(c))"}]
    assert [(r["data_category"], r["retention_days"]) for r in answer["article_15_1_d_retention"]["items"]] == [
        ("access-health", 730)]
    rights = {r["right"]: r for r in answer["article_15_1_e_rights"]["items"]}
    assert {"rectification", "erasure", "restriction", "objection"} <= set(rights)
    assert rights["objection"]["applies_to_processing_activities"] == []  # consent: withdrawal is the route
    assert rights["data_portability"]["applies_to_processing_activities"] == [first.name]
    [complaint] = answer["article_15_1_f_complaint"]["items"]
    assert complaint["article"] == "Art. 77" and "supervisory authority" in complaint["text"]
    sources = answer["article_15_1_g_source"]["items"]
    assert sources[0] == {"dataset": world["ds_a"].name, "source_system": "clinic-ehr", "derived_from": [],
                          "transformation": None}
    assert answer["article_15_1_h_automated_decision_making"]["items"] == []

    copy = answer["article_15_3_copy_of_the_data"]
    record = DataRecord.objects.get(subject=alice)
    assert copy["records"] == [{"dataset": world["ds_a"].name, "ingested_at": record.ingested_at.isoformat(),
                                "values": {**record.features, "y": record.label}}]
    assert list(copy["records"][0]["values"]) == ["x0", "x1", "x2", "x3", "y"]  # schema order
    assert [(e["action"], e["notice_version"]) for e in copy["consent_history"]] == [("given", "v1"), ("withdrawn", "v2")]
    # The evidence blob (here naming a witness) is not part of the answer.
    assert "someone.else" not in text and "evidence" not in text
    for value in _others(world, but=alice):
        assert value not in text


@pytest.mark.django_db
def test_the_api_answers_audits_and_says_no_data_held_for_an_unknown_person(dpo_client):
    world = _world(train=False)
    response = dpo_client.post("/api/v1/subjects/access/", {"subject": ALICE}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["subject_ref"] == str(world["alice"].reference)
    event = AuditEvent.objects.filter(action="subject_access.answered").get()
    assert event.actor == dpo_client.user.get_username()
    assert event.subject_ref == world["alice"].reference
    assert event.details == {"format": "json", "data_held": True}

    unknown = dpo_client.post("/api/v1/subjects/access/", {"subject": "nobody@example.org"}, format="json")
    assert unknown.status_code == 200
    assert unknown.json()["data_held"] is False and unknown.json()["subject_ref"] is None
    assert AuditEvent.objects.filter(action="subject_access.answered_no_data", subject_ref=None).count() == 1
    pdf = dpo_client.post("/api/v1/subjects/access/", {"subject": "nobody@example.org", "format": "pdf"}, format="json")
    assert pdf.status_code == 200 and "We hold no personal data" in pdf_text(pdf.content)


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({}, "subject"),
    ({"subject": ""}, "subject"),
    ({"subject": 12}, "subject"),
    ({"subject": "x" * 501}, "subject"),
    ({"subject": ALICE, "format": "xml"}, "format"),
    ({"subject": ALICE, "format": "csv"}, "format"),  # CSV is the portability export's, not the access answer's
    (["not", "an", "object"], "non_field_errors"),
])
def test_bad_input_is_a_400_naming_the_field_and_is_not_audited(dpo_client, body, field):
    before = AuditEvent.objects.count()
    response = dpo_client.post("/api/v1/subjects/access/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert AuditEvent.objects.count() == before


# The role policy of these routes, written apart from the views' role_permissions
# (tests/api_routes.py ROLE_POLICY): the answers hold a person's own data, DPO only.
MY_ROUTES = [("POST", "/api/v1/subjects/access/"), ("POST", "/api/v1/subjects/portability/")]
POLICY = {route: set(ROLE_POLICY[route]) for route in MY_ROUTES}


def test_the_routes_declare_the_policy():
    from tests.api_routes import api_routes

    declared = {(r.method, r.path): set(r.allowed) for r in api_routes() if (r.method, r.path) in POLICY}
    assert declared == POLICY


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(POLICY))
def test_the_policy_is_enforced(route, anon_client):
    from governance.roles import ALL_ROLES
    from tests.conftest import make_role_client

    method, path = route
    assert anon_client.generic(method, path, data="{}", content_type="application/json").status_code == 401
    for role in ALL_ROLES:
        response = make_role_client(role).generic(method, path, data=json.dumps({"subject": ALICE}),
                                                  content_type="application/json")
        if role in POLICY[route]:
            assert response.status_code == 200, (role, response.content)
        else:
            assert response.status_code == 403, (role, response.content)
