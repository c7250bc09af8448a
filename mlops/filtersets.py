"""Filters for the MLOps list endpoints."""

from __future__ import annotations

from governance.filtersets import ApiFilterSet, IdFilter, StrictBooleanFilter
from governance.moments import UTCIsoDateTimeFilter
from mlops.models import AuditPolicy, ModelOutputPolicy, ModelVersion, RectificationPolicy, TrainingRun


class TrainingRunFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="snapshot__dataset_id")
    snapshot = IdFilter(field_name="snapshot")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = TrainingRun
        fields = ["status", "name", "task", "allow_non_private"]


class ModelVersionFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="training_run__snapshot__dataset_id")
    training_run = IdFilter(field_name="training_run")
    privacy_bug = StrictBooleanFilter(field_name="canary_audit__flagged", help_text="Versions whose canary audit flagged a privacy bug.")

    class Meta:
        model = ModelVersion
        fields = ["status", "name", "non_private", "is_sisa_ensemble"]


class AuditPolicyFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="dataset")
    processing_activity = IdFilter(field_name="processing_activity")

    class Meta:
        model = AuditPolicy
        fields: list[str] = []


class OutputPolicyFilterSet(ApiFilterSet):
    class Meta:
        model = ModelOutputPolicy
        fields = ["name", "kind"]


class RectificationPolicyFilterSet(ApiFilterSet):
    processing_activity = IdFilter(field_name="processing_activity")

    class Meta:
        model = RectificationPolicy
        fields = ["action"]
