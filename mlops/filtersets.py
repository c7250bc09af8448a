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
        fields = ["status", "name", "task", "allow_non_private", "executor"]


class ModelVersionFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="training_run__snapshot__dataset_id")
    training_run = IdFilter(field_name="training_run")
    privacy_bug = StrictBooleanFilter(field_name="canary_audit__flagged", help_text="Versions whose canary audit flagged a privacy bug.")
    changed_since = UTCIsoDateTimeFilter(
        field_name="status_changed_at", lookup_expr="gte",
        help_text="Versions whose status changed at or after this moment (ISO 8601 with a time zone): what a "
        "serving system polls to stop serving tainted or retired models.",
    )
    external = StrictBooleanFilter(field_name="external", help_text="Versions trained outside the ledger.")

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
