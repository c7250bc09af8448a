"""Filters for the MLOps list endpoints."""

from __future__ import annotations

from governance.filtersets import ApiFilterSet, IdFilter
from governance.moments import UTCIsoDateTimeFilter
from mlops.models import ModelVersion, TrainingRun


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

    class Meta:
        model = ModelVersion
        fields = ["status", "name", "non_private", "is_sisa_ensemble"]
