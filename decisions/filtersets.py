"""Filters for the decision list endpoints."""

from __future__ import annotations

import django_filters

from decisions.models import Decision, DecisionInputRetention, DecisionReview, ReviewOutcome, ReviewStatus
from governance.filtersets import ApiFilterSet, IdFilter, StrictBooleanFilter
from governance.moments import UTCIsoDateTimeFilter


class DecisionFilterSet(ApiFilterSet):
    model_version = IdFilter(field_name="model_version")
    decided_after = UTCIsoDateTimeFilter(field_name="decided_at", lookup_expr="gte")
    decided_before = UTCIsoDateTimeFilter(field_name="decided_at", lookup_expr="lt")
    contested = StrictBooleanFilter(field_name="contested", help_text="Decisions a person asked to have reviewed.")

    class Meta:
        model = Decision
        fields = ["outcome", "output_policy", "attributions_withheld"]


class DecisionReviewFilterSet(ApiFilterSet):
    decision = IdFilter(field_name="decision")
    model_version = IdFilter(field_name="decision__model_version_id")
    status = django_filters.ChoiceFilter(choices=ReviewStatus.choices)
    outcome = django_filters.ChoiceFilter(choices=ReviewOutcome.choices)

    class Meta:
        model = DecisionReview
        fields = ["status", "outcome"]


class DecisionInputRetentionFilterSet(ApiFilterSet):
    processing_activity = IdFilter(field_name="processing_activity")

    class Meta:
        model = DecisionInputRetention
        fields: list[str] = []
