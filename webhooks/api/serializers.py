"""Serializers of the webhooks API: the shapes of requests and answers (the service
validates the values and names the field at fault)."""

from __future__ import annotations

from rest_framework import serializers

from mlops.models import ModelStatus
from webhooks.models import WebhookDelivery, WebhookSubscription


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.CharField(
        max_length=2000, help_text="https://… (http only in development or with WEBHOOK_ALLOW_HTTP); a public host.")
    dataset = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=2**63 - 1,
        help_text="Only versions trained on this dataset; null or absent: every dataset.")
    model_name = serializers.CharField(
        required=False, allow_null=True, max_length=200, help_text="Only versions of this model name; null: every name.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=ModelStatus.choices), min_length=1,
        help_text="The statuses whose changes are sent, e.g. [\"tainted\", \"stale\", \"superseded\", \"retired\"].")


class WebhookSubscriptionSerializer(serializers.ModelSerializer):
    events = serializers.ListField(child=serializers.ChoiceField(choices=ModelStatus.choices))
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "dataset", "model_name", "events", "active", "created_by", "created_at",
                  "deactivated_at"]
        read_only_fields = fields


class WebhookCreatedSerializer(WebhookSubscriptionSerializer):
    secret = serializers.CharField(
        help_text="Signs every delivery (X-Ledger-Signature). Shown once, in this answer only: keep it.")

    class Meta(WebhookSubscriptionSerializer.Meta):
        fields = [*WebhookSubscriptionSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "delivery_id", "subscription", "event", "model_version_id", "payload", "status", "attempts",
                  "last_status_code", "last_error", "next_attempt_at", "created_at", "last_attempt_at",
                  "delivered_at"]
        read_only_fields = fields
