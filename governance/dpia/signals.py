"""Mark DPIAs for review when the evidence behind them changes.

A new model version trained on an activity's data, or a model version tainted by an
erasure or a consent withdrawal, changes what a signed DPIA says about the processing.
Receivers are connected by sender label so importing this module loads no mlops code.
"""

from __future__ import annotations

from django.db.models.signals import post_save


def _model_version_saved(sender, instance, created: bool, **kwargs) -> None:
    from governance.dpia.services import dpia_mark_for_review
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
