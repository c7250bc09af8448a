"""Serving a model version: each row decided, shaped by the output policy, explained in the
dataset's own feature names, recorded; bad rows refused naming the field; versions not
active refused (issue 19 items 1-4)."""

from __future__ import annotations

import numpy as np
import pytest

from decisions.models import Decision
from decisions.services import decisions_make
from governance.models import AuditEvent
from governance.services import ServiceConflict, ServiceError
from mlops.models import AuditPolicy, ModelOutputPolicy, ModelStatus, ModelVersion
from tests.decisions.helpers import row, trained_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def version() -> ModelVersion:
    return trained_version()


def _predict(client, version, body, status=200):
    response = client.post(f"/api/v1/models/{version.pk}/predict/", body, format="json")
    assert response.status_code == status, response.content
    return response.json()


def test_each_row_is_decided_explained_and_recorded(ml_client, version):
    before = AuditEvent.objects.count()
    answer = _predict(ml_client, version, {"rows": [row(0), row(1), row(2)]})
    assert answer["model_version"] == version.pk
    # Not Art. 9 data and no policy set: probabilities rounded to 2 digits.
    assert answer["output_policy"]["kind"] == "rounded_probabilities" and answer["output_policy"]["source"] == "default"
    assert len(answer["decisions"]) == 3
    classes = version.training_run.encoding["classes"]
    for item in answer["decisions"]:
        output = item["output"]
        assert output["label"] in classes
        assert set(output["probabilities"]) == {str(c) for c in classes}
        assert all(p == round(p, 2) for p in output["probabilities"].values())
        explanation = item["explanation"]
        assert explanation["method"] == "integrated_gradients"
        assert {c["feature"] for c in explanation["top_contributions"]} <= {"x0", "x1", "x2", "x3"}
        assert all(c["direction"] == ("raises" if c["contribution"] >= 0 else "lowers")
                   for c in explanation["top_contributions"])
        assert "baseline" in explanation["baseline_rule"]
        # Completeness: the attributions sum to the difference from the baseline within Captum's delta.
        total = sum(c["contribution"] for c in explanation["top_contributions"])  # 4 features: all of them
        difference = explanation["output"] - explanation["baseline_output"]
        assert abs(total - difference - explanation["convergence_delta"]) < 1e-4
        hint = explanation["counterfactual"]
        if hint is not None:  # only x0 has bounds: the only feature a hint may move
            assert hint["feature"] == "x0" and -3.0 <= hint["to"] <= 3.0 and hint["new_label"] != output["label"]
    decisions = {d.pk: d for d in Decision.objects.filter(pk__in=[i["decision"] for i in answer["decisions"]])}
    assert len(decisions) == 3
    for item in answer["decisions"]:
        d = decisions[item["decision"]]
        assert d.model_version_id == version.pk and d.output == item["output"]
        assert d.outcome == str(item["output"]["label"]) and len(d.input_hash) == 64
        assert [t["feature"] for t in d.explanation["top_features"]] == [
            c["feature"] for c in item["explanation"]["top_contributions"]]
        assert "from" not in str(d.explanation) and d.subject_pseudonym == ""
    event = AuditEvent.objects.order_by("-position").first()
    assert AuditEvent.objects.count() == before + 1
    assert event.action == "decisions.made" and event.details["decisions"] == 3 and event.details["explained"]


def test_the_same_input_has_the_same_keyed_hash_and_a_subject_only_its_pseudonym(dpo_client, version):
    from governance.pseudonymisation import pseudonymise

    answer = _predict(dpo_client, version, {"rows": [row(5), row(5), row(6)],
                                            "subjects": ["Alice@Example.org", None, "bob@example.org"]})
    d = [Decision.objects.get(pk=i["decision"]) for i in answer["decisions"]]
    assert d[0].input_hash == d[1].input_hash != d[2].input_hash
    assert d[0].subject_pseudonym == pseudonymise("alice@example.org") and d[1].subject_pseudonym == ""


def test_attributions_sum_to_the_difference_from_the_baseline_for_a_sisa_ensemble():
    version = trained_version(sisa={"shards": 2, "slices": 1}, d=3)
    answer = decisions_make(model_version=version, rows=[row(i, d=3) for i in range(4)], explain=True)
    for item in answer["decisions"]:
        e = item["explanation"]
        total = sum(c["contribution"] for c in e["top_contributions"])
        assert abs(total - (e["output"] - e["baseline_output"]) - e["convergence_delta"]) < 1e-4


@pytest.mark.parametrize(("rows", "field", "reason"), [
    ([row(0), {"x0": 1.0, "x1": 2.0, "x3": 0.5}], "rows[1].x2", "missing"),
    ([{**row(0), "age": 3}], "rows[0].age", "not a feature"),
    ([{**row(0), "x1": "high"}], "rows[0].x1", "expected float"),
    ([{**row(0), "x3": None}], "rows[0].x3", "required"),
    ([row(0), 7], "rows[1]", "object"),
    ([], "rows", "1 to"),
    ("x0=1", "rows", "1 to"),
])
def test_a_bad_row_is_refused_naming_the_field_and_nothing_is_recorded(ml_client, version, rows, field, reason):
    before = (Decision.objects.count(), AuditEvent.objects.count())
    body = _predict(ml_client, version, {"rows": rows}, status=400)
    assert field in body and reason in body[field][0], body
    assert (Decision.objects.count(), AuditEvent.objects.count()) == before


def test_a_category_outside_the_schema_and_bad_subjects_are_refused(ml_client):
    version = trained_version(health_condition=True)
    body = _predict(ml_client, version, {"rows": [row(0, condition="asthma")]}, status=400)
    assert "rows[0].condition" in body and "not one of none, diabetes" in body["rows[0].condition"][0]
    body = _predict(ml_client, version, {"rows": [row(0, condition="none")], "subjects": ["a", "b"]}, status=400)
    assert "subjects" in body
    body = _predict(ml_client, version, {"rows": [row(0, condition="none"), row(1, condition="none")],
                                         "subjects": [None, "\u200b "]}, status=400)
    assert "subjects[1]" in body
    body = _predict(ml_client, version, {"rows": [row(0, condition="none")], "explain": "yes"}, status=400)
    assert "explain" in body
    assert not Decision.objects.filter(model_version=version).exists()


def test_row_and_explanation_limits(ml_client, version, settings):
    settings.DECISION_MAX_ROWS = 5
    settings.DECISION_EXPLAIN_MAX_ROWS = 3
    settings.DECISION_EXPLAIN_DEFAULT_ROWS = 2
    body = _predict(ml_client, version, {"rows": [row(i) for i in range(6)]}, status=400)
    assert "at most 5 rows" in body["rows"][0]
    body = _predict(ml_client, version, {"rows": [row(i) for i in range(4)], "explain": True}, status=400)
    assert "at most 3 rows are explained" in body["explain"][0]
    # Above the default, rows are not explained unless asked; at or below, they are.
    assert all(d["explanation"] is None for d in _predict(ml_client, version, {"rows": [row(i) for i in range(3)]})["decisions"])
    assert all(d["explanation"] for d in _predict(ml_client, version, {"rows": [row(i) for i in range(2)]})["decisions"])
    assert all(d["explanation"] is None for d in _predict(
        ml_client, version, {"rows": [row(0)], "explain": False})["decisions"])


@pytest.mark.parametrize("status", [ModelStatus.TAINTED, ModelStatus.STALE, ModelStatus.RETIRED,
                                    ModelStatus.SUPERSEDED, ModelStatus.PENDING_AUDIT, ModelStatus.AUDIT_FAILED])
def test_a_version_not_active_is_refused_with_409_naming_its_status(ml_client, version, status):
    ModelVersion.objects.filter(pk=version.pk).update(status=status)
    body = _predict(ml_client, version, {"rows": [row(0)]}, status=409)
    assert f"status '{status}'" in body["detail"]
    assert not Decision.objects.filter(model_version=version).exists()


def test_an_unknown_version_is_404_and_an_auditor_may_not_predict(ml_client, auditor_client, version):
    assert ml_client.post("/api/v1/models/999999999/predict/", {"rows": [row(0)]}, format="json").status_code == 404
    response = auditor_client.post(f"/api/v1/models/{version.pk}/predict/", {"rows": [row(0)]}, format="json")
    assert response.status_code == 403


def _policy(version, kind, digits=2, withhold=False):
    ModelOutputPolicy.objects.create(name=version.name, kind=kind, digits=digits, withhold_attributions=withhold,
                                     reason="test")


def test_each_output_policy_is_enforced(ml_client, version):
    rows = {"rows": [row(i) for i in range(3)], "explain": False}
    _policy(version, "full_probabilities")
    full = _predict(ml_client, version, rows)["decisions"]
    assert all(abs(sum(d["output"]["probabilities"].values()) - 1) < 1e-6 for d in full)
    _policy(version, "rounded_probabilities", digits=1)
    for d in _predict(ml_client, version, rows)["decisions"]:
        assert set(d["output"]) == {"label", "probabilities"}
        assert all(p == round(p, 1) for p in d["output"]["probabilities"].values())
    _policy(version, "label_with_band")
    for d in _predict(ml_client, version, rows)["decisions"]:
        assert set(d["output"]) == {"label", "confidence_band"} and d["output"]["confidence_band"] in {"high", "medium", "low"}
    _policy(version, "label_only")
    answer = _predict(ml_client, version, rows)
    assert answer["output_policy"]["kind"] == "label_only"
    assert all(set(d["output"]) == {"label"} for d in answer["decisions"])
    # What is recorded is what was presented: no probability under the last two policies.
    recorded = Decision.objects.filter(model_version=version).order_by("-id")[:3]
    assert all(set(d.output) == {"label"} and d.output_policy == "label_only" for d in recorded)


def test_art9_data_default_to_a_label_with_a_band(ml_client):
    version = trained_version(health_condition=True)
    answer = _predict(ml_client, version, {"rows": [row(0, condition="diabetes")]})
    assert answer["output_policy"]["kind"] == "label_with_band"
    assert "Art. 9" in answer["output_policy"]["source"]
    assert set(answer["decisions"][0]["output"]) == {"label", "confidence_band"}
    # A special-category feature is explained but never suggested as something to change.
    hint = answer["decisions"][0]["explanation"]["counterfactual"]
    assert hint is None or hint["feature"] != "condition"


def test_attributions_are_withheld_while_the_explanation_attack_is_unmeasured_or_above_the_ceiling(ml_client, version):
    _policy(version, "label_with_band", withhold=True)
    AuditPolicy.objects.create(processing_activity=version.training_run.snapshot.dataset.processing_activity,
                               max_auc=0.6, reason="test")
    answer = _predict(ml_client, version, {"rows": [row(0)]})
    assert answer["output_policy"]["attributions_withheld"]
    item = answer["decisions"][0]
    assert item["explanation"]["withheld"] and "not been measured" in item["explanation"]["reason"]
    assert "top_contributions" not in item["explanation"]
    d = Decision.objects.get(pk=item["decision"])
    assert d.attributions_withheld and d.explanation["withheld"] and "top_features" not in d.explanation


def test_ten_thousand_rows_are_decided_in_one_insert(ml_client, version):
    rng = np.random.default_rng(0)
    rows = [{f"x{j}": float(v) for j, v in enumerate(r)} for r in rng.normal(size=(10_000, 4))]
    answer = _predict(ml_client, version, {"rows": rows})
    assert len(answer["decisions"]) == 10_000
    assert all(d["explanation"] is None for d in answer["decisions"][:5])
    ids = [d["decision"] for d in answer["decisions"]]
    assert len(set(ids)) == 10_000
    assert Decision.objects.filter(model_version=version, batch=answer["batch"]).count() == 10_000


def test_service_errors_are_service_errors(version):
    with pytest.raises(ServiceError):
        decisions_make(model_version=version, rows=None)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelStatus.TAINTED)
    version.refresh_from_db()
    with pytest.raises(ServiceConflict):
        decisions_make(model_version=version, rows=[row(0)])


def test_shapley_methods_explain_small_inputs_and_are_refused_for_large_ones(ml_client, version, settings):
    answer = _predict(ml_client, version, {"rows": [row(0), row(1)], "explain_method": "shapley_value_sampling"})
    for item in answer["decisions"]:
        explanation = item["explanation"]
        assert explanation["method"] == "shapley_value_sampling" and explanation["convergence_delta"] is None
        # Efficiency: every sampled permutation's marginal contributions add up to the difference.
        total = sum(c["contribution"] for c in explanation["top_contributions"])
        assert total == pytest.approx(explanation["output"] - explanation["baseline_output"], abs=1e-5)
    kernel = _predict(ml_client, version, {"rows": [row(2)], "explain_method": "kernel_shap"})
    assert kernel["decisions"][0]["explanation"]["method"] == "kernel_shap"
    stored = Decision.objects.get(pk=kernel["decisions"][0]["decision"])
    assert stored.explanation["method"] == "kernel_shap"

    before = Decision.objects.count()
    unknown = _predict(ml_client, version, {"rows": [row(0)], "explain_method": "lime"}, status=400)
    assert "explain_method" in unknown
    many = _predict(ml_client, version, {"rows": [row(i) for i in range(101)], "explain": True,
                                         "explain_method": "kernel_shap"}, status=400)
    assert "small inputs" in str(many["explain_method"])
    assert Decision.objects.count() == before
