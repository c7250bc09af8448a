"""Filters for the webhook list endpoints."""

from __future__ import annotations

import django_filters

from governance.filtersets import ApiFilterSet, IdFilter
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription


class WebhookSubscriptionFilterSet(ApiFilterSet):
    dataset = IdFilter(field_name="dataset")

    class Meta:
        model = WebhookSubscription
        fields = ["active", "model_name"]


class WebhookDeliveryFilterSet(ApiFilterSet):
    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    model_version = IdFilter(field_name="model_version_id", foreign_key=False)

    class Meta:
        model = WebhookDelivery
        fields = ["status"]
