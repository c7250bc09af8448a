"""Output policies (issue 19): what a model's decisions reveal. The DPO sets one per model
name (append-only, the latest in force) through the API or the admin; others read them;
bad input is a 400 naming the field. Without one, a model trained on Art. 9 data shows
the label with a confidence band, any other probabilities rounded to 2 digits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from governance.models import AuditEvent, DataCategory, ProcessingActivityDataCategory
from mlops import selectors, services
from mlops.models import (
    ModelExplanationSummary,
    ModelOutputPolicy,
    ModelVersion,
    OutputPolicyKind,
    TrainingRun,
)
from tests.conftest import make_role_client
from tests.mlops.factories import make_snapshot


def registered(*, name: str = "credit-risk", **snapshot_options) -> ModelVersion:
    """A version as the registry holds it, without training (the policy reads its lineage only)."""
    snapshot = make_snapshot(n=20, d=2, **snapshot_options)
    run = TrainingRun.objects.create(name=name, snapshot=snapshot, target_delta=1e-5, status="succeeded")
    return ModelVersion.objects.create(training_run=run, name=name, version=1, artifact_path="none",
                                       artifact_sha256="0" * 64)


@pytest.mark.django_db
def test_the_defaults_round_to_two_digits_and_show_a_band_for_art9_data():
    plain = selectors.output_policy_for(model_version=registered(name="plain"))
    assert (plain.kind, plain.digits, plain.source) == ("rounded_probabilities", 2, "default")
    assert not plain.attributions_withheld and not plain.withhold_attributions
    assert plain.text() == "Probabilities rounded to 2 digits; per-decision attributions given (default)"

    # Art. 9 through the dataset schema: a feature marked special_category.
    health = selectors.output_policy_for(model_version=registered(name="health", health_condition=True))
    assert (health.kind, health.source) == ("label_with_band", "default for models trained on Art. 9 data")
    assert health.withhold_attributions and not health.attributions_withheld  # no audit ceiling in force

    # Art. 9 through the processing activity: its Art. 9(2) condition, or a special-category data category.
    version = registered(name="condition")
    activity = version.training_run.snapshot.dataset.processing_activity
    activity.special_category_condition = "9_2_a"
    activity.save(update_fields=["special_category_condition"])
    assert selectors.output_policy_for(model_version=version).kind == "label_with_band"
    version = registered(name="category")
    category = DataCategory.objects.create(code="health-records", name="Health records", special_category="health")
    ProcessingActivityDataCategory.objects.create(
        processing_activity=version.training_run.snapshot.dataset.processing_activity, data_category=category,
        retention=timedelta(days=365))
    assert selectors.output_policy_for(model_version=version).kind == "label_with_band"


@pytest.mark.django_db
def test_the_dpo_sets_a_policy_others_read_it_and_the_latest_is_in_force():
    version = registered(name="credit-risk")
    dpo, engineer, auditor = (make_role_client(r) for r in ("dpo", "ml_engineer", "auditor"))
    body = {"name": "credit-risk", "kind": "label_only", "withhold_attributions": True, "reason": "inversion risk"}
    assert engineer.post("/api/v1/output-policies/", body, format="json").status_code == 403
    assert auditor.post("/api/v1/output-policies/", body, format="json").status_code == 403
    created = dpo.post("/api/v1/output-policies/", body, format="json")
    assert created.status_code == 201, created.content
    first = created.json()
    assert first["kind"] == "label_only" and first["digits"] == 2 and first["set_by"] == "test_dpo"
    policy = selectors.output_policy_for(model_version=version)
    assert policy.kind == "label_only" and policy.policy_id == first["id"]
    assert policy.source.startswith("set by test_dpo on ")
    assert AuditEvent.objects.filter(action="output_policy.set", object_id=str(first["id"])).exists()

    second = dpo.post("/api/v1/output-policies/", {"name": "credit-risk", "kind": "rounded_probabilities",
                                                   "digits": 3}, format="json").json()
    policy = selectors.output_policy_for(model_version=version)
    assert (policy.kind, policy.digits, policy.policy_id) == ("rounded_probabilities", 3, second["id"])
    for client in (dpo, engineer, auditor):
        listing = client.get("/api/v1/output-policies/?name=credit-risk")
        assert listing.status_code == 200
        assert [p["id"] for p in listing.json()["results"]] == [second["id"], first["id"]]
        assert client.get(f"/api/v1/output-policies/{first['id']}/").status_code == 200
    detail = engineer.get(f"/api/v1/models/{version.pk}/").json()
    assert detail["output_policy"]["kind"] == "rounded_probabilities" and detail["output_policy"]["digits"] == 3
    assert detail["output_policy"]["text"].startswith("Probabilities rounded to 3 digits")
    assert detail["logic_summary"] is None  # not computed (this version was never trained)

    # Append-only: the first row stays as it was.
    row = ModelOutputPolicy.objects.get(pk=first["id"])
    with pytest.raises(ValueError, match="append-only"):
        row.save()
    with pytest.raises(ValueError, match="append-only"):
        row.delete()


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({"name": "credit-risk", "kind": "everything"}, "kind"),
    ({"name": "credit-risk", "kind": "rounded_probabilities", "digits": 7}, "digits"),
    ({"name": "credit-risk", "kind": "rounded_probabilities", "digits": -1}, "digits"),
    ({"name": "no-such-model", "kind": "label_only"}, "name"),
    ({"kind": "label_only"}, "name"),
    ({"name": "credit-risk", "kind": "label_only", "withhold_attributions": "maybe"}, "withhold_attributions"),
])
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(body, field):
    registered(name="credit-risk")
    answer = make_role_client("dpo").post("/api/v1/output-policies/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json(), answer.json()
    assert not ModelOutputPolicy.objects.exists()


@pytest.mark.django_db
def test_the_service_refuses_what_the_api_cannot_send():
    registered(name="credit-risk")
    dpo = make_role_client("dpo").user
    engineer = make_role_client("ml_engineer").user
    from django.core.exceptions import PermissionDenied

    from governance.services import ServiceError

    with pytest.raises(PermissionDenied):
        services.output_policy_set(actor=engineer, name="credit-risk", kind="label_only")
    for kwargs, field in (({"digits": True}, "digits"), ({"digits": 2.5}, "digits"),
                          ({"withhold_attributions": 1}, "withhold_attributions"), ({"name": "  "}, "name")):
        with pytest.raises(ServiceError) as refused:
            services.output_policy_set(actor=dpo, **{"name": "credit-risk", "kind": "label_only", **kwargs})
        assert refused.value.field == field
    assert not ModelOutputPolicy.objects.exists()


@pytest.mark.django_db
def test_the_admin_sets_a_policy_through_the_service_and_shows_it_on_the_version(admin_client):
    version = registered(name="credit-risk", health_condition=True)
    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "Output policy and explanation leakage" in page and "Top label with a confidence band" in page
    assert "default for models trained on Art. 9 data" in page
    assert "Logic involved (Art. 15(1)(h))" in page and "Not computed yet" in page

    assert admin_client.get("/admin/mlops/modeloutputpolicy/add/").status_code == 200
    answer = admin_client.post("/admin/mlops/modeloutputpolicy/add/", {
        "name": "credit-risk", "kind": OutputPolicyKind.FULL, "digits": 2, "reason": "published scores"})
    assert answer.status_code == 302, answer.content.decode()[:2000]
    policy = ModelOutputPolicy.objects.get()
    assert policy.kind == "full_probabilities" and policy.set_by is not None
    assert AuditEvent.objects.filter(action="output_policy.set", object_id=str(policy.pk)).exists()
    listing = admin_client.get("/admin/mlops/modeloutputpolicy/").content.decode()
    assert "Full probabilities" in listing
    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "Full probabilities" in page and "set by admin on" in page

    ModelExplanationSummary.objects.create(
        model_version=version, method="integrated_gradients", baseline_rule="the schema's middle",
        features_used=["x0", "x1", "condition"], n_rows=12, notes=["Averaged over 12 records."],
        global_attributions=[{"feature": "condition", "mean_abs": 0.3, "mean_signed": -0.1},
                             {"feature": "x0", "mean_abs": 0.1, "mean_signed": 0.05}],
    )
    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "x0, x1, condition" in page and "lowers" in page and "Averaged over 12 records." in page
    logic = selectors.model_logic_summary(model_version=version)
    assert logic["top_features"] == [{"feature": "condition", "mean_abs": 0.3, "direction": "lowers"},
                                     {"feature": "x0", "mean_abs": 0.1, "direction": "raises"}]
    assert logic["output_policy"].startswith("Full probabilities; ")


@pytest.mark.django_db
def test_the_model_card_and_the_dpia_show_the_policy_the_attack_beside_it_and_the_logic(tmp_path):
    from assessments import services as dpia_services
    from assessments.reports.dpia import dpia_report_render
    from assessments.reports.model_lineage import model_lineage_report_render
    from mlops.models import MembershipInferenceAudit
    from tests.governance.reports_helpers import pdf_text

    version = registered(name="clinical-risk", health_condition=True)
    MembershipInferenceAudit.objects.create(
        model_version=version, attack="explanation", auc=0.6712, auc_low=0.6012, auc_high=0.7423, advantage=0.3,
        n_members=120, n_nonmembers=127, bootstrap_resamples=1000)
    services.audit_policy_set(actor=make_role_client("dpo").user, dataset=version.training_run.snapshot.dataset,
                              max_auc=0.6)
    ModelExplanationSummary.objects.create(
        model_version=version, method="integrated_gradients", baseline_rule="the middle of the published bounds",
        features_used=["x0", "x1", "condition"], n_rows=12,
        global_attributions=[{"feature": "condition", "mean_abs": 0.31, "mean_signed": 0.2}])
    policy = selectors.output_policy_for(model_version=version)
    assert policy.attributions_withheld and policy.ceiling == 0.6

    card = tmp_path / "card.pdf"
    model_lineage_report_render(object_id=version.pk, path=card)
    text = pdf_text(card.read_bytes())
    assert "Top label with a confidence band" in text and "default for models trained on Art. 9 data" in text
    assert "AUC 0.67 (95% CI 0.60–0.74, 127 non-members)" in text
    assert "exceeds the audit ceiling of 0.60" in text
    assert "x0, x1, condition" in text and "raises the decided class's probability" in text

    dpia = dpia_services.dpia_create(
        processing_activity=version.training_run.snapshot.dataset.processing_activity, actor="dpo",
        model_version_ids=[version.pk])
    path = tmp_path / "dpia.pdf"
    dpia_report_render(object_id=dpia.pk, path=path)
    text = pdf_text(path.read_bytes())
    assert "Decisions: output policy and explanation leakage" in text
    assert "AUC 0.67 (95% CI 0.60–0.74, 127 non-members)" in text and "AUC 0.60" in text
    assert "Logic involved in clinical-risk v1 (Art. 15(1)(h))" in text and "condition (raises, 0.310)" in text
