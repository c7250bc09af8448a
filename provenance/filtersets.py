from __future__ import annotations

import django_filters

from governance.moments import UTCIsoDateTimeFilter
from provenance.models import Dataset, Snapshot


class DatasetFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    owner = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Dataset
        fields = ["name", "owner", "processing_activity", "source_system"]


class SnapshotFilterSet(django_filters.FilterSet):
    purpose = django_filters.CharFilter(field_name="purpose__code")
    taken_after = UTCIsoDateTimeFilter(field_name="taken_for", lookup_expr="gte")
    taken_before = UTCIsoDateTimeFilter(field_name="taken_for", lookup_expr="lt")

    class Meta:
        model = Snapshot
        fields = ["dataset", "purpose", "lawful_basis"]
