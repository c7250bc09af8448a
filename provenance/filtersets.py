from __future__ import annotations

import django_filters

from governance.filtersets import ApiFilterSet, IdFilter
from governance.moments import UTCIsoDateTimeFilter
from provenance.models import Dataset, Snapshot


class DatasetFilterSet(ApiFilterSet):
    processing_activity = IdFilter(field_name="processing_activity")
    name = django_filters.CharFilter(lookup_expr="icontains")
    owner = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Dataset
        fields = ["name", "owner", "source_system"]


class SnapshotFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="dataset")
    purpose = django_filters.CharFilter(field_name="purpose__code")
    taken_after = UTCIsoDateTimeFilter(field_name="taken_for", lookup_expr="gte")
    taken_before = UTCIsoDateTimeFilter(field_name="taken_for", lookup_expr="lt")

    class Meta:
        model = Snapshot
        fields = ["purpose", "lawful_basis", "kind"]
