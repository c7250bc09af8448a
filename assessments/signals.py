"""Mark DPIAs for review when the evidence behind them changes.

A new model version trained on an activity's data, a model version tainted by an erasure
or a consent withdrawal, or a dataset's privacy budget exceeded (a non-private run, or a
cap lowered below what was spent) changes what a signed DPIA says about the processing.
Model saves are received by sender label; taints arrive through mlops's named signal
``model_version_tainted``, sent after the commit that tainted the versions. Work deferred to after the commit is "robust": a failure there is logged and never fails
the training run or erasure that triggered it.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from mlops.signals import model_version_tainted


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


@receiver(model_version_tainted, dispatch_uid="dpia_review_on_taint")
def _model_versions_tainted(sender, *, model_version_ids: list[int], reason: str, **kwargs) -> None:
    # Sent by mlops after the commit that tainted them (an erasure, a late registration).
    from assessments.services import dpia_mark_for_review

    ids = [i for i in model_version_ids if isinstance(i, int)]
    if ids:
        dpia_mark_for_review(reason=f"Model version(s) {', '.join(map(str, ids))} tainted {reason}", model_version_ids=ids)


post_save.connect(_ledger_or_budget_saved, sender="mlops.PrivacyLedgerTotal", dispatch_uid="dpia_review_on_ledger_total")
post_save.connect(_ledger_or_budget_saved, sender="mlops.PrivacyBudget", dispatch_uid="dpia_review_on_budget")
