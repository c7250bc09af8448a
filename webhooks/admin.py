"""Admin pages of webhooks: the subscriptions (where, for what, active) and their
deliveries (status, attempts, the receiver's last answer), with "send again" for failed
deliveries and "deactivate" for subscriptions. Every write is a webhooks.services call."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from governance import display
from governance.admin_mixins import ReadOnlyAdmin
from governance.roles import DPO, has_role
from governance.services import ServiceError
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["id", "url", "scope", "events_shown", "active", "created_by", "created_shown", "deliveries_shown"]
    list_filter = ["active"]
    search_fields = ["url", "model_name"]
    fields = ["url", "scope", "events_shown", "active", "created_by", "created_shown", "deactivated_shown",
              "deliveries_shown"]
    readonly_fields = fields
    actions = ["deactivate"]

    @admin.display(description="for")
    def scope(self, obj: WebhookSubscription) -> str:
        parts = [f"dataset {obj.dataset_id}" if obj.dataset_id else "", f"model “{obj.model_name}”" if obj.model_name else ""]
        return ", ".join(p for p in parts if p) or "every model"

    @admin.display(description="events")
    def events_shown(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.events)

    @admin.display(description="registered", ordering="created_at")
    def created_shown(self, obj: WebhookSubscription) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="deactivated")
    def deactivated_shown(self, obj: WebhookSubscription) -> str:
        return display.moment(obj.deactivated_at) if obj.deactivated_at else display.DASH

    @admin.display(description="deliveries")
    def deliveries_shown(self, obj: WebhookSubscription) -> str:
        url = reverse("admin:webhooks_webhookdelivery_changelist") + f"?subscription__id__exact={obj.pk}"
        failed = obj.deliveries.filter(status=DeliveryStatus.FAILED).count()
        text = f"{obj.deliveries.count()} ({failed} failed)" if failed else str(obj.deliveries.count())
        return display.link(url, text)

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("created_by")
        return qs if has_role(request.user, DPO) else qs.filter(created_by=request.user)

    @admin.action(description="Deactivate the selected webhooks")
    def deactivate(self, request, queryset):
        done = 0
        for subscription in queryset.filter(active=True):
            try:
                services.webhook_subscription_deactivate(subscription=subscription, actor=request.user)
                done += 1
            except ServiceError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{done} webhook(s) deactivated.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "subscription", "model_version_link", "new_status", "status_shown", "attempts",
                    "last_status_code", "last_error", "created_shown", "delivered_shown"]
    list_filter = ["status", "subscription"]
    search_fields = ["delivery_id", "last_error"]
    fields = ["delivery_id", "subscription", "model_version_link", "new_status", "status_shown", "attempts",
              "last_status_code", "last_error", "last_response", "next_attempt_shown", "created_shown",
              "last_attempt_shown", "delivered_shown", "payload_shown"]
    readonly_fields = fields
    actions = ["send_again"]

    @admin.display(description="model version")
    def model_version_link(self, obj: WebhookDelivery) -> str:
        version = obj.payload.get("model_version", {})
        return display.link(reverse("admin:mlops_modelversion_change", args=[obj.model_version_id]),
                            f"{version.get('name', '')} v{version.get('version', '')}".strip())

    @admin.display(description="became")
    def new_status(self, obj: WebhookDelivery) -> str:
        version = obj.payload.get("model_version", {})
        return f"{version.get('previous_status') or 'new'} → {version.get('status')}"

    @admin.display(description="delivery", ordering="status")
    def status_shown(self, obj: WebhookDelivery) -> str:
        css = {DeliveryStatus.DELIVERED: "pl-ok", DeliveryStatus.FAILED: "pl-bad"}.get(obj.status, "")
        return format_html('<strong class="{}">{}</strong>', css, obj.get_status_display())

    @admin.display(description="created", ordering="created_at")
    def created_shown(self, obj: WebhookDelivery) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="next attempt")
    def next_attempt_shown(self, obj: WebhookDelivery) -> str:
        return display.moment(obj.next_attempt_at) if obj.status == DeliveryStatus.PENDING else display.DASH

    @admin.display(description="last attempt")
    def last_attempt_shown(self, obj: WebhookDelivery) -> str:
        return display.moment(obj.last_attempt_at) if obj.last_attempt_at else display.DASH

    @admin.display(description="delivered", ordering="delivered_at")
    def delivered_shown(self, obj: WebhookDelivery) -> str:
        return display.moment(obj.delivered_at) if obj.delivered_at else display.DASH

    @admin.display(description="body sent (without sent_at)")
    def payload_shown(self, obj: WebhookDelivery) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("subscription")
        return qs if has_role(request.user, DPO) else qs.filter(subscription__created_by=request.user)

    @admin.action(description="Send the selected failed deliveries again")
    def send_again(self, request, queryset):
        sent = 0
        for delivery in queryset.filter(status=DeliveryStatus.FAILED):
            try:
                services.webhook_delivery_resend(delivery=delivery, actor=request.user)
                sent += 1
            except ServiceError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{sent} deliver{'y' if sent == 1 else 'ies'} sent again.")
