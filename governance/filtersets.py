"""Filters for the governance API lists."""

from __future__ import annotations

import django_filters
from django import forms
from django.db import models
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from governance.models import (
    ConsentAction,
    ConsentEvent,
    DataCategory,
    DataSubjectCategory,
    LawfulBasis,
    ProcessingActivity,
    Purpose,
    PurposeCompatibility,
)
from governance.moments import UTCIsoDateTimeFilter


class StrictBooleanField(forms.Field):
    """``true`` or ``false`` (any case), or absent. django-filter's default reads any other
    value ("yes", "null", "1") as "not filtered" and serves the whole list, which a client
    asking for ?vulnerable=yes would take for the vulnerable ones."""

    widget = forms.TextInput  # the raw text, not NullBooleanSelect's silent fallback

    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text not in ("true", "false"):
            raise forms.ValidationError(f"Give true or false; got {str(value)[:40]!r}.", code="invalid")
        return text == "true"


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class ApiFilterSet(django_filters.FilterSet):
    """The base of every API filterset: boolean model fields filter strictly."""

    FILTER_DEFAULTS = {
        **django_filters.filterset.FILTER_FOR_DBFIELD_DEFAULTS,
        models.BooleanField: {"filter_class": StrictBooleanFilter},
    }


@extend_schema_field(OpenApiTypes.INT64)
class IdFilter(django_filters.NumberFilter):
    """A filter on an object's id: an id that matches nothing gives an empty list, not the
    400 "Select a valid choice" of django-filter's default ModelChoiceFilter, while the
    schema documents an integer (issue 14). Whole numbers only; an id beyond what a bigint
    holds is a 400 naming the filter, as the schema's int64 says (SQLite raised OverflowError on it)."""

    field_class = forms.IntegerField

    def __init__(self, *args, foreign_key: bool = True, **kwargs):
        field_name = kwargs.get("field_name")
        if foreign_key and field_name and "__" not in field_name:
            # "snapshot" → "snapshot__id": the local column, compared as the target's integer.
            kwargs["field_name"] = f"{field_name}__id"
        # The schema's int64, enforced: a larger id is a 400 naming the filter, not a query.
        kwargs.setdefault("min_value", -(2**63))
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


def _code_or_descendants(queryset, field: str, code: str):
    return queryset.filter(Q(**{field: code}) | Q(**{f"{field}__startswith": code + "."}))


class PurposeFilterSet(ApiFilterSet):
    parent = django_filters.CharFilter(field_name="parent__code")
    under = django_filters.CharFilter(method="filter_under", help_text="This purpose code and its descendants.")
    search = django_filters.CharFilter(method="filter_search")

    class Meta:
        model = Purpose
        fields = ["code"]

    def filter_under(self, queryset, name, value):
        return _code_or_descendants(queryset, "code", value)

    def filter_search(self, queryset, name, value):
        return queryset.filter(Q(code__icontains=value) | Q(name__icontains=value))


class PurposeCompatibilityFilterSet(ApiFilterSet):
    original_purpose = django_filters.CharFilter(field_name="original_purpose__code")
    compatible_purpose = django_filters.CharFilter(field_name="compatible_purpose__code")

    class Meta:
        model = PurposeCompatibility
        fields: list[str] = []


class DataCategoryFilterSet(ApiFilterSet):
    is_special = StrictBooleanFilter(method="filter_is_special", help_text="Art. 9(1) special categories.")

    class Meta:
        model = DataCategory
        fields = ["code", "special_category", "criminal_offence_data"]

    def filter_is_special(self, queryset, name, value):
        return queryset.exclude(special_category="") if value else queryset.filter(special_category="")


class DataSubjectCategoryFilterSet(ApiFilterSet):
    class Meta:
        model = DataSubjectCategory
        fields = ["code", "vulnerable"]


class ProcessingActivityFilterSet(ApiFilterSet):
    lawful_basis = django_filters.ChoiceFilter(choices=LawfulBasis.choices)
    purpose = django_filters.CharFilter(
        method="filter_purpose", help_text="Activities whose purposes cover this purpose code."
    )
    data_category = django_filters.CharFilter(field_name="data_categories__code", distinct=True)
    data_subject_category = django_filters.CharFilter(field_name="data_subject_categories__code", distinct=True)
    special_categories = StrictBooleanFilter(
        method="filter_special", help_text="Activities processing Art. 9(1) special categories."
    )
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = ProcessingActivity
        fields = ["special_category_condition", "controller_is_public_authority", "erasure_on_consent_withdrawal"]

    def filter_purpose(self, queryset, name, value):
        parts = value.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        return queryset.filter(purposes__code__in=ancestors).distinct()

    def filter_special(self, queryset, name, value):
        special = queryset.filter(data_categories__special_category__gt="").values("pk")
        return queryset.filter(pk__in=special) if value else queryset.exclude(pk__in=special)


class ConsentEventFilterSet(ApiFilterSet):
    purpose = django_filters.CharFilter(field_name="purpose__code", help_text="Exact purpose code.")
    purpose_under = django_filters.CharFilter(method="filter_purpose_under", help_text="Code and its descendants.")
    action = django_filters.ChoiceFilter(choices=ConsentAction.choices)
    occurred_after = UTCIsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_before = UTCIsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")
    recorded_after = UTCIsoDateTimeFilter(field_name="recorded_at", lookup_expr="gte")
    recorded_before = UTCIsoDateTimeFilter(field_name="recorded_at", lookup_expr="lt")
    subject = django_filters.CharFilter(field_name="subject__pseudonym", help_text="The subject's pseudonym.")

    class Meta:
        model = ConsentEvent
        fields = ["event_id", "method"]

    def filter_purpose_under(self, queryset, name, value):
        return _code_or_descendants(queryset, "purpose__code", value)
