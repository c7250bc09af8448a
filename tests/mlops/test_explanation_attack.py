"""The explanation-based membership attack and the logic summary, with a real worker
(issue 19): the loss attack's audit job also attacks the version through its explanations,
on the same people and with the same figures; the output policy withholds per-decision
attributions when that attack exceeds the audit ceiling (and only then); the logic
summary is computed once after registration."""

from __future__ import annotations

import pytest

from governance import services as governance_services
from governance.models import AuditEvent
from mlops import selectors, services
from mlops.models import (
    AuditJobStatus,
    MembershipInferenceAudit,
    ModelExplanationSummary,
    ModelVersion,
    PrivacyAuditJob,
    RunStatus,
)
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run

# Few records, many features, noisy labels, no DP: a model that memorises its members.
LEAKY = {"epochs": 60, "batch_size": 32, "allow_non_private": True, "seed": 4, "holdout_fraction": 0.45,
         "validation_split": 0.1, "optimizer": "adam", "learning_rate": 0.01, "model_spec": {"hidden_sizes": [128]}}


def _dpo():
    return governance_services.user_ensure_with_role(username="explanations-dpo", role="dpo")


@pytest.mark.django_db(transaction=True)
def test_an_audit_job_attacks_the_explanations_and_the_policy_withholds_attributions_above_the_ceiling(
    celery_worker,
):
    snapshot = make_snapshot(n=300, d=20, seed=9, label_noise=0.4)
    run = services.training_run_queue(snapshot=snapshot, name="leaky-explained", **LEAKY)
    assert wait_for_run(run.pk, timeout=300).status == RunStatus.SUCCEEDED
    version = ModelVersion.objects.get(training_run_id=run.pk)
    wait_for(lambda: PrivacyAuditJob.objects.filter(model_version=version, kind="loss",
                                                    status=AuditJobStatus.COMPLETED).exists(),
             timeout=300, what="the loss and explanation attacks")
    job = PrivacyAuditJob.objects.get(model_version=version, kind="loss")
    assert job.notes == ""
    loss = MembershipInferenceAudit.objects.get(model_version=version, attack="loss")
    attack = MembershipInferenceAudit.objects.get(model_version=version, attack="explanation")
    # The same people as the loss attack, the same figures and intervals.
    assert (attack.n_members, attack.n_nonmembers, attack.sampling_rule, attack.sampling_seed) == (
        loss.n_members, loss.n_nonmembers, loss.sampling_rule, loss.sampling_seed)
    assert attack.n_nonmembers == run.n_holdout > 100
    assert attack.bootstrap_resamples == 1000
    assert attack.auc_low <= attack.auc <= attack.auc_high
    assert attack.advantage_low <= attack.advantage <= attack.advantage_high
    assert attack.roc[0] == [0.0, 0.0] and attack.roc[-1] == [1.0, 1.0]
    # The over-fitted model's explanations give its members away.
    assert attack.auc_low > 0.5, attack.auc_text()
    assert str(attack).startswith("Explanation-based membership-inference audit of")

    # The logic summary was computed by the worker after registration.
    wait_for(lambda: ModelExplanationSummary.objects.filter(model_version=version).exists(), what="logic summary")
    summary = ModelExplanationSummary.objects.get(model_version=version)
    assert summary.error == "" and summary.n_rows == run.n_validation > 0
    assert summary.features_used == [f"x{j}" for j in range(20)]
    assert sorted(r["feature"] for r in summary.global_attributions) == sorted(summary.features_used)
    means = [r["mean_abs"] for r in summary.global_attributions]
    assert means == sorted(means, reverse=True) and means[0] > 0
    logic = selectors.model_logic_summary(model_version=version)
    assert logic["method"] == "integrated_gradients" and "never by the data" in logic["baseline_rule"]
    assert logic["top_features"][0]["feature"] == summary.global_attributions[0]["feature"]
    assert logic["purpose"].startswith("ML training (test)")
    # A redelivered task finds the summary and writes nothing.
    from mlops.tasks import model_explanation_summary

    events = AuditEvent.objects.filter(action="model_explanation_summary.computed", object_id=str(version.pk))
    assert events.count() == 1
    assert model_explanation_summary(version.pk)["summary_id"] == summary.pk
    assert ModelExplanationSummary.objects.filter(model_version=version).count() == 1 and events.count() == 1

    # Withholding: only when the DPO asked for it AND the attack exceeds the audit ceiling.
    dpo = _dpo()
    services.output_policy_set(actor=dpo, name="leaky-explained", kind="full_probabilities",
                               withhold_attributions=True, reason="explanations leak on this model")
    assert not selectors.output_policy_for(model_version=version).attributions_withheld  # no ceiling in force
    services.audit_policy_set(actor=dpo, dataset=snapshot.dataset, max_auc=0.5, reason="DPIA 19")
    policy = selectors.output_policy_for(model_version=version)
    assert policy.attributions_withheld and policy.kind == "full_probabilities"
    assert f"AUC {attack.auc:.2f} exceeds the audit ceiling of 0.50" in policy.withheld_because
    assert policy.source.startswith("set by explanations-dpo on ")
    services.audit_policy_set(actor=dpo, dataset=snapshot.dataset, max_auc=1.0, reason="DPIA 19, revised")
    assert not selectors.output_policy_for(model_version=version).attributions_withheld  # below the ceiling
    services.audit_policy_set(actor=dpo, dataset=snapshot.dataset, max_auc=0.5, reason="DPIA 19, again")
    services.output_policy_set(actor=dpo, name="leaky-explained", kind="full_probabilities",
                               withhold_attributions=False)
    assert not selectors.output_policy_for(model_version=version).attributions_withheld  # not asked for


@pytest.mark.django_db
def test_attributions_are_withheld_while_the_explanation_attack_has_not_been_measured():
    """Failing closed: the rule asks for the attack's figure; without one the attributions wait."""
    snapshot = make_snapshot(n=120, d=4, seed=2)
    run = services.training_run_queue(snapshot=snapshot, name="unmeasured", epochs=1, batch_size=16,
                                      noise_multiplier=1.0, seed=3, holdout_fraction=0.3,
                                      model_spec={"hidden_sizes": [8]})
    run = services.training_run_execute(run_id=run.pk)
    version = ModelVersion.objects.get(training_run=run)
    MembershipInferenceAudit.objects.filter(model_version=version).delete()  # the embedded task's audits
    dpo = _dpo()
    services.audit_policy_set(actor=dpo, dataset=snapshot.dataset, max_auc=0.9)
    services.output_policy_set(actor=dpo, name="unmeasured", kind="label_only", withhold_attributions=True)
    policy = selectors.output_policy_for(model_version=version)
    assert policy.attributions_withheld and "not been measured yet" in policy.withheld_because

    attack = services.explanation_attack_run(model_version_id=version.pk)
    assert attack.attack == "explanation" and 0.0 <= attack.auc <= 1.0
    assert services.explanation_attack_run(model_version_id=version.pk).pk == attack.pk  # idempotent
    # A DP model at σ = 1 after one epoch: its explanations tell next to nobody apart.
    assert attack.auc < 0.75, attack.auc_text()  # measured 0.48 (95% CI 0.36–0.59)
    assert not selectors.output_policy_for(model_version=version).attributions_withheld


@pytest.mark.django_db
def test_a_lost_summary_message_is_sent_again_by_the_sweep_and_computed_once(monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from governance import dispatch
    from mlops.services import explanations

    sent: list[list] = []
    monkeypatch.setattr(explanations, "task_publish", lambda task, *, args: sent.append(list(args)) or True)
    monkeypatch.setattr(dispatch, "task_publish", lambda task, *, args, task_id=None, queue=None: True)
    run = services.training_run_queue(snapshot=make_snapshot(n=100, d=3, seed=1), name="swept", epochs=1,
                                      batch_size=16, noise_multiplier=1.0, seed=2, holdout_fraction=0.3,
                                      model_spec={"hidden_sizes": [4]})
    version = ModelVersion.objects.get(training_run=services.training_run_execute(run_id=run.pk))
    loss = version.audit_jobs.get(kind="loss")
    # Its audits ran long ago; the summary's message was lost (on_commit never ran here).
    PrivacyAuditJob.objects.filter(pk=loss.pk).update(
        status=AuditJobStatus.COMPLETED, finished_at=timezone.now() - timedelta(hours=2),
        dispatched_at=timezone.now() - timedelta(hours=2))
    PrivacyAuditJob.objects.exclude(pk=loss.pk).update(status=AuditJobStatus.COMPLETED)
    assert services.privacy_audit_jobs_redispatch() == 1 and sent == [[version.pk]]
    summary = services.model_explanation_summary_compute(model_version_id=version.pk)
    assert summary.error == "" and summary.n_rows == run.n_validation
    sent.clear()
    assert services.privacy_audit_jobs_redispatch() == 0 and sent == []
    # A version whose weights are gone gets a summary with the error, and is not sent again.
    other = services.training_run_queue(snapshot=make_snapshot(n=100, d=3, seed=3), name="gone", epochs=1,
                                        batch_size=16, noise_multiplier=1.0, seed=2, holdout_fraction=0.3,
                                        model_spec={"hidden_sizes": [4]})
    gone = ModelVersion.objects.get(training_run=services.training_run_execute(run_id=other.pk))
    ModelVersion.objects.filter(pk=gone.pk).update(artifact_sha256="f" * 64)
    failed = services.model_explanation_summary_compute(model_version_id=gone.pk)
    assert failed.error and failed.global_attributions == []
    assert selectors.model_logic_summary(model_version=ModelVersion.objects.get(pk=gone.pk)) is None
    assert services.model_explanation_summary_compute(model_version_id=gone.pk).pk == failed.pk
