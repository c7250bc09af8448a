"""Filters for the DPIA list."""

from __future__ import annotations

from assessments.models import Dpia
from governance.filtersets import ApiFilterSet, IdFilter


class DpiaFilterSet(ApiFilterSet):
    # An activity id that matches nothing lists nothing (django-filter's default answered 400).
    processing_activity = IdFilter(field_name="processing_activity")

    class Meta:
        model = Dpia
        fields = ["status"]
