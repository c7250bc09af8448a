"""DPIA workflow through the API: screening from evidence, risk register, sign-off, versions, review."""

from __future__ import annotations

import pytest

from assessments.models import Dpia, DpiaImmutableError, DpiaStatus, Wp248Criterion
from governance.models import AuditEvent
from tests.governance.reports_helpers import complete_payload, make_world

pytestmark = pytest.mark.django_db


def _create(client, world, **extra):
    body = {"processing_activity": world.activity.pk, "model_version_ids": [world.model_version.pk], **extra}
    response = client.post("/api/v1/dpias/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _confirm_all(client, dpia: dict) -> dict:
    answers = [{"criterion": a["criterion"], "answer": a["proposed"]} for a in dpia["screening"]]
    response = client.post(f"/api/v1/dpias/{dpia['id']}/screening/", {"answers": answers}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _add_risk(client, dpia_id: int, **overrides) -> dict:
    body = {
        "description": "Membership inference reveals that a patient's record was used.",
        "likelihood": "possible", "severity": "severe", "mitigations": "DP-SGD, ε ≤ 3",
        "residual_likelihood": "remote", "residual_severity": "significant", **overrides,
    }
    return client.post(f"/api/v1/dpias/{dpia_id}/risks/", body, format="json")


def _signable(client, world, **extra) -> dict:
    dpia = _create(client, world, **extra)
    _confirm_all(client, dpia)
    assert _add_risk(client, dpia["id"]).status_code == 201
    response = client.patch(f"/api/v1/dpias/{dpia['id']}/", complete_payload(), format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_screening_is_proposed_from_the_records(dpo_client, settings):
    settings.DPIA_LARGE_SCALE_SUBJECTS = 3
    world = make_world(n_subjects=4)
    dpia = _create(dpo_client, world, models_used_for_decisions=True)
    proposed = {a["criterion"]: a["proposed"] for a in dpia["screening"]}
    assert proposed == {
        Wp248Criterion.EVALUATION_SCORING: True,
        Wp248Criterion.AUTOMATED_DECISION: True,
        Wp248Criterion.SYSTEMATIC_MONITORING: False,
        Wp248Criterion.SENSITIVE_DATA: True,  # health is an Art. 9 category
        Wp248Criterion.LARGE_SCALE: True,  # 4 subjects over a threshold of 3
        Wp248Criterion.MATCHING_COMBINING: True,  # joined dataset has two parents
        Wp248Criterion.VULNERABLE_SUBJECTS: True,  # patients
        Wp248Criterion.INNOVATIVE_TECHNOLOGY: True,  # a training run exists
        Wp248Criterion.PREVENTS_RIGHTS: False,
    }
    sources = {a["criterion"]: a["source"] for a in dpia["screening"]}
    assert "4 data subjects" in sources["large_scale"] and "threshold 3" in sources["large_scale"]
    assert "health" in sources["sensitive_data"]
    assert dpia["dpia_required"] is True
    assert dpia["article_35_3_cases"] == ["a", "b"]
    assert "8 records of 4 data subjects" in dpia["systematic_description"]
    assert AuditEvent.objects.filter(action="dpia.created", object_id=str(dpia["id"])).count() == 1


def test_below_threshold_and_without_decisions_fewer_criteria(dpo_client, settings):
    settings.DPIA_LARGE_SCALE_SUBJECTS = 1000
    world = make_world(n_subjects=2)
    dpia = _create(dpo_client, world)
    proposed = {a["criterion"]: a["proposed"] for a in dpia["screening"]}
    assert proposed["large_scale"] is False
    assert proposed["evaluation_scoring"] is False
    assert dpia["article_35_3_cases"] == []


def test_dpo_override_of_a_criterion_needs_a_reason(dpo_client):
    world = make_world()
    dpia = _create(dpo_client, world)
    url = f"/api/v1/dpias/{dpia['id']}/screening/"
    response = dpo_client.post(url, {"answers": [{"criterion": "systematic_monitoring", "answer": True}]}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()["answers"][0]
    response = dpo_client.post(
        url, {"answers": [{"criterion": "systematic_monitoring", "answer": True, "reason": "Ward sensors stream vitals."}]}, format="json"
    )
    assert response.status_code == 200
    row = next(a for a in response.json()["screening"] if a["criterion"] == "systematic_monitoring")
    assert row["confirmed"] is True and row["answer"] is True and row["override_reason"] == "Ward sensors stream vitals."
    bad = dpo_client.post(url, {"answers": [{"criterion": "astrology", "answer": True}]}, format="json")
    assert bad.status_code == 400 and "answers" in bad.json()


def test_required_override_needs_justification(dpo_client):
    world = make_world()
    dpia = _create(dpo_client, world)
    answers = [{"criterion": "sensitive_data", "answer": True}]
    response = dpo_client.post(
        f"/api/v1/dpias/{dpia['id']}/screening/", {"answers": answers, "required_override": False}, format="json"
    )
    assert response.status_code == 400
    assert "required_override_justification" in response.json()


@pytest.mark.parametrize(
    ("field", "value"),
    [("likelihood", "certain"), ("severity", "catastrophic"), ("residual_likelihood", "often"), ("residual_severity", "")],
)
def test_risk_scales_are_validated(dpo_client, field, value):
    world = make_world()
    dpia = _create(dpo_client, world)
    response = _add_risk(dpo_client, dpia["id"], **{field: value})
    assert response.status_code == 400
    assert field in response.json()
    assert not Dpia.objects.get(pk=dpia["id"]).risks.exists()


def test_risk_levels_follow_the_matrix(dpo_client):
    world = make_world()
    dpia = _create(dpo_client, world)
    risk = _add_risk(dpo_client, dpia["id"]).json()
    assert (risk["inherent_level"], risk["residual_level"]) == ("high", "low")
    risk = _add_risk(dpo_client, dpia["id"], likelihood="probable", severity="severe", residual_likelihood="probable", residual_severity="significant").json()
    assert (risk["inherent_level"], risk["residual_level"]) == ("high", "high")


def test_signing_refuses_empty_required_sections_naming_them(dpo_client):
    world = make_world()
    dpia = _create(dpo_client, world)
    response = dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    assert response.status_code == 400
    body = response.json()
    for section in ("necessity_and_proportionality", "dpo_advice", "risks", "data_subject_views", "review_date", "screening"):
        assert section in body["missing"], section
        assert section in body["sections"][0]
    assert Dpia.objects.get(pk=dpia["id"]).status == DpiaStatus.DRAFT


def test_sign_then_signed_version_is_immutable_and_changes_start_a_new_version(dpo_client):
    world = make_world()
    dpia = _signable(dpo_client, world)
    response = dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    assert response.status_code == 200, response.content
    signed = response.json()
    assert signed["status"] == "signed" and signed["signed_by"] == "test_dpo" and signed["prior_consultation_required"] is False

    assert dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/").status_code == 409

    v1 = Dpia.objects.get(pk=dpia["id"])
    v1.dpo_advice = "rewritten"
    with pytest.raises(DpiaImmutableError):
        v1.save()

    response = dpo_client.patch(f"/api/v1/dpias/{dpia['id']}/", {"dpo_advice": "Re-assess after the new cohort."}, format="json")
    assert response.status_code == 200
    v2 = response.json()
    assert v2["version"] == 2 and v2["previous_version"] == dpia["id"] and v2["status"] == "draft"
    assert v2["dpo_advice"] == "Re-assess after the new cohort."
    assert len(v2["risks"]) == 1 and v2["model_version_ids"] == [world.model_version.pk]
    assert all(a["confirmed"] is not None for a in v2["screening"])
    v1.refresh_from_db()
    assert v1.status == DpiaStatus.SIGNED and v1.dpo_advice == "Proceed with the DP guarantee and the yearly review."
    # A change to an old version is refused: the latest version is the one to change.
    assert dpo_client.patch(f"/api/v1/dpias/{dpia['id']}/", {"measures": "x"}, format="json").status_code == 409


def test_high_residual_risk_flags_prior_consultation(dpo_client):
    world = make_world()
    dpia = _signable(dpo_client, world)
    _add_risk(dpo_client, dpia["id"], residual_likelihood="probable", residual_severity="severe")
    signed = dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/").json()
    assert signed["prior_consultation_required"] is True


def test_new_model_version_marks_signed_dpia_for_review(dpo_client):
    from mlops.models import ModelVersion

    world = make_world()
    dpia = _signable(dpo_client, world)
    assert dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/").status_code == 200
    ModelVersion.objects.create(
        training_run=world.run, name=world.model_version.name, version=2, artifact_path="y", artifact_sha256="ef" * 32,
        epsilon=2.0, delta=1e-5,
    )
    reviewed = Dpia.objects.get(pk=dpia["id"])
    assert reviewed.status == DpiaStatus.REVIEW_REQUIRED
    assert "v2" in reviewed.review_reason
    assert AuditEvent.objects.filter(action="dpia.marked_for_review").count() == 1
    # The content stays as signed; a change starts version 2.
    assert reviewed.signed_at is not None
    v2 = dpo_client.patch(f"/api/v1/dpias/{dpia['id']}/", {"measures": "Retrain on v2 data."}, format="json").json()
    assert v2["version"] == 2


def test_tainted_model_marks_covering_dpia_for_review(dpo_client):
    from mlops.models import ModelStatus

    world = make_world()
    dpia = _signable(dpo_client, world)
    dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    mv = world.model_version
    mv.status, mv.status_reason = ModelStatus.TAINTED, "erasure request 7"
    mv.save()
    reviewed = Dpia.objects.get(pk=dpia["id"])
    assert reviewed.status == DpiaStatus.REVIEW_REQUIRED and "tainted" in reviewed.review_reason


def test_create_validates_input(dpo_client):
    world = make_world()
    response = dpo_client.post("/api/v1/dpias/", {"processing_activity": 999999}, format="json")
    assert response.status_code == 400 and "processing_activity" in response.json()
    response = dpo_client.post(
        "/api/v1/dpias/", {"processing_activity": world.activity.pk, "model_version_ids": [999999]}, format="json"
    )
    assert response.status_code == 400 and "999999" in response.json()["model_version_ids"][0]
    assert not Dpia.objects.filter(processing_activity=world.activity).exists()
    _create(dpo_client, world)
    assert dpo_client.post("/api/v1/dpias/", {"processing_activity": world.activity.pk}, format="json").status_code == 409


def test_roles(auditor_client, ml_client, dpo_client):
    world = make_world()
    dpia = _create(dpo_client, world)
    assert auditor_client.get(f"/api/v1/dpias/{dpia['id']}/").status_code == 200
    assert auditor_client.patch(f"/api/v1/dpias/{dpia['id']}/", {"measures": "x"}, format="json").status_code == 403
    assert auditor_client.post(f"/api/v1/dpias/{dpia['id']}/sign/").status_code == 403
    assert ml_client.get("/api/v1/dpias/").status_code == 403


def test_budget_exceeded_marks_signed_dpia_for_review(dpo_client, django_capture_on_commit_callbacks):
    from mlops.models import PrivacyLedgerTotal

    world = make_world()
    dpia = _signable(dpo_client, world)
    dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    with django_capture_on_commit_callbacks(execute=True):
        PrivacyLedgerTotal.objects.create(dataset=world.derived, spent_runs=1, non_private_runs=0)
    assert Dpia.objects.get(pk=dpia["id"]).status == DpiaStatus.SIGNED  # nothing spent yet: within the cap
    with django_capture_on_commit_callbacks(execute=True):
        # A model trained without DP spends an unbounded ε: the cap of 8 is exceeded.
        PrivacyLedgerTotal.objects.filter(dataset=world.derived).update(non_private_runs=1)
        PrivacyLedgerTotal.objects.get(dataset=world.derived).save()
    reviewed = Dpia.objects.get(pk=dpia["id"])
    assert reviewed.status == DpiaStatus.REVIEW_REQUIRED and "budget" in reviewed.review_reason


def test_a_tainted_model_marks_dpia_for_review_after_the_commit(dpo_client, django_capture_on_commit_callbacks):
    from mlops.signals import model_version_tainted, send_on_commit

    world = make_world()
    dpia = _signable(dpo_client, world)
    dpo_client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    with django_capture_on_commit_callbacks(execute=False) as pending:
        send_on_commit(model_version_tainted, model_version_ids=[world.model_version.pk], reason="by erasure request 12")
    # Nothing happens before the commit that tainted the model.
    assert Dpia.objects.get(pk=dpia["id"]).status == DpiaStatus.SIGNED
    for callback in pending:
        callback()
    reviewed = Dpia.objects.get(pk=dpia["id"])
    assert reviewed.status == DpiaStatus.REVIEW_REQUIRED and "erasure request 12" in reviewed.review_reason


def test_create_with_dpo_override_of_the_outcome(dpo_client):
    world = make_world()
    dpia = _create(
        dpo_client, world, required_override=False,
        required_override_justification="Pilot on synthetic look-alike data only; reassessed before real use.",
    )
    assert dpia["dpia_required"] is True and dpia["effective_required"] is False
