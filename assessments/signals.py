"""Mark DPIAs for review when the evidence behind them changes.

A new model version trained on an activity's data, a model version tainted by an erasure
or a consent withdrawal, or a dataset's privacy budget exceeded (a non-private run, or a
cap lowered below what was spent) changes what a signed DPIA says about the processing.
Receivers are connected by sender label so importing this module loads no mlops code.
Work deferred to after the commit is "robust": a failure there is logged and never fails
the training run or erasure that triggered it.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save


def _model_version_saved(sender, instance, created: bool, **kwargs) -> None:
    from assessments.services import dpia_mark_for_review
    from mlops.models import ModelStatus, TrainingRun

    if kwargs.get("raw"):
        return
    if created:
        reason = f"New model version {instance.name} v{instance.version} released."
    elif instance.status == ModelStatus.TAINTED:
        reason = f"Model version {instance.name} v{instance.version} tainted: {instance.status_reason or 'no reason given'}"
    else:
        return
    activity_id = (
        TrainingRun.objects.filter(pk=instance.training_run_id)
        .values_list("snapshot__dataset__processing_activity_id", flat=True)
        .first()
    )
    dpia_mark_for_review(
        reason=reason,
        processing_activity_ids=[activity_id] if activity_id else None,
        model_version_ids=[instance.pk],
    )


post_save.connect(_model_version_saved, sender="mlops.ModelVersion", dispatch_uid="dpia_review_on_model_version")


def _budget_check_on_commit(dataset_id: int) -> None:
    from assessments.services import dpia_mark_for_review
    from mlops.models import PrivacyBudget
    from mlops.selectors import dataset_spent_epsilon

    budget = PrivacyBudget.objects.filter(dataset_id=dataset_id).select_related("dataset").first()
    if budget is None:
        return
    spent = dataset_spent_epsilon(dataset_id=dataset_id, delta=budget.delta)
    if spent > budget.epsilon_cap:
        dpia_mark_for_review(
            reason=f"Privacy budget of dataset {budget.dataset.name} exceeded: ε spent {spent:.4g} > cap {budget.epsilon_cap:g}.",
            processing_activity_ids=[budget.dataset.processing_activity_id],
        )


def _ledger_or_budget_saved(sender, instance, **kwargs) -> None:
    # After the commit: the ledger is recomputed under a row lock that should not wait on us.
    if kwargs.get("raw"):
        return
    dataset_id = instance.dataset_id
    transaction.on_commit(lambda: _budget_check_on_commit(dataset_id), robust=True)


def _audit_event_saved(sender, instance, created: bool, **kwargs) -> None:
    # The erasure workflow taints models with a queryset UPDATE (no model signal) and records
    # "erasure.models_tainted"; react after the commit, never inside the audit chain's write.
    if not created or instance.action != "erasure.models_tainted":
        return
    ids = [i for i in (instance.details or {}).get("model_versions", []) if isinstance(i, int)]
    if not ids:
        return
    reason = f"Model version(s) {', '.join(map(str, ids))} tainted by erasure request {instance.object_id}."

    def mark() -> None:
        from assessments.services import dpia_mark_for_review

        dpia_mark_for_review(reason=reason, model_version_ids=ids)

    transaction.on_commit(mark, robust=True)


post_save.connect(_ledger_or_budget_saved, sender="mlops.PrivacyLedgerTotal", dispatch_uid="dpia_review_on_ledger_total")
post_save.connect(_ledger_or_budget_saved, sender="mlops.PrivacyBudget", dispatch_uid="dpia_review_on_budget")
post_save.connect(_audit_event_saved, sender="governance.AuditEvent", dispatch_uid="dpia_review_on_erasure_taint")
