"""Filters for the DPIA list."""

from __future__ import annotations

import django_filters

from assessments.models import Dpia
from governance.filtersets import IdFilter


class DpiaFilterSet(django_filters.FilterSet):
    # An activity id that matches nothing lists nothing (django-filter's default answered 400).
    processing_activity = IdFilter(field_name="processing_activity")

    class Meta:
        model = Dpia
        fields = ["status"]
