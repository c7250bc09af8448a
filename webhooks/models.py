"""Webhook subscriptions (who is told of which model version status changes, where) and
their deliveries (one per subscription and change, with its attempts).

A subscription's secret signs every delivery (HMAC-SHA-256); it is shown once at creation
and stored encrypted (``webhooks.crypto``), never in clear. A delivery is its own outbox
entry: written in the transaction that noticed the change, sent by a Celery task after the
commit, retried with backoff, and re-sent by a beat sweep when its worker died.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from provenance.models import Dataset

EVENT_STATUS_CHANGED = "model_version.status_changed"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending (being sent or waiting for a retry)"
    DELIVERED = "delivered", "Delivered (the receiver answered 2xx)"
    FAILED = "failed", "Failed (every attempt refused or unanswered)"


class WebhookSubscription(models.Model):
    url = models.URLField(max_length=2000)
    # Null: every dataset / every model name. Both set: a version must match both.
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    model_name = models.CharField(max_length=200, null=True, blank=True)
    # The model statuses (ModelStatus values) whose changes are sent: ["tainted", "stale", ...].
    events = models.JSONField(default=list)
    secret_encrypted = models.TextField(help_text="The signing secret, Fernet-encrypted (webhooks.crypto).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    active = models.BooleanField(default=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook subscription"

    def __str__(self) -> str:
        scope = " ".join(filter(None, [
            f"dataset {self.dataset_id}" if self.dataset_id else "", f"model {self.model_name}" if self.model_name else "",
        ])) or "every model"
        return f"Webhook {self.pk} to {self.url} ({scope})"


class WebhookDelivery(models.Model):
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.PROTECT, related_name="deliveries")
    # The receiver's idempotency key (X-Ledger-Delivery): the same on every attempt.
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event = models.CharField(max_length=64, default=EVENT_STATUS_CHANGED)
    model_version_id = models.BigIntegerField(db_index=True)
    # The body without ``sent_at`` (stamped at each attempt, inside the signed body).
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_response = models.CharField(max_length=500, blank=True, help_text="The receiver's answer, first 500 characters.")
    # When the next attempt is due; while an attempt is in flight, when it counts as lost
    # (its worker died) and the sweep may send it again.
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhooks_delivery_due")]

    def __str__(self) -> str:
        return f"Delivery {self.pk} of webhook {self.subscription_id} (model version {self.model_version_id})"
