"""Writes of the webhooks app: subscriptions (created, deactivated: each an audit event),
the deliveries a status change makes, one attempt at sending a delivery, sending a failed
one again, and the sweep that re-sends deliveries a dead worker left behind.

A delivery is attempted at least once and delivered at most once as far as the ledger
knows: an attempt is claimed under the row's lock (``next_attempt_at`` pushed past the
timeout, so a second copy of the task finds it not due), the POST is made outside any
transaction, and its outcome is recorded only if no later attempt took the delivery over.
A delivered delivery is never sent again. Receivers deduplicate on ``X-Ledger-Delivery``:
a worker killed after the receiver answered but before the answer was recorded makes the
sweep send the same delivery id again.
"""

from __future__ import annotations

import http.client
import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.roles import DPO, has_role
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops.models import ModelStatus, ModelVersion
from mlops.selectors import model_status_reason_shown
from provenance.models import Dataset
from webhooks import crypto, netguard
from webhooks.models import EVENT_STATUS_CHANGED, DeliveryStatus, WebhookDelivery, WebhookSubscription

logger = logging.getLogger(__name__)

# --- Subscriptions ------------------------------------------------------------------


def _events_clean(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ServiceError(
            f"events: a non-empty list of model statuses, among {', '.join(ModelStatus.values)}.", field="events")
    unknown = [e for e in events if not isinstance(e, str) or e not in ModelStatus.values]
    if unknown:
        raise ServiceError(
            f"events: unknown event {unknown[0]!r}; the events are the model statuses "
            f"{', '.join(ModelStatus.values)}.", field="events")
    return sorted(set(events))


def _model_name_clean(model_name: Any) -> str | None:
    if model_name is None:
        return None
    if not isinstance(model_name, str) or not model_name.strip() or len(model_name) > 200:
        raise ServiceError("model_name: a model name of 1 to 200 characters, or null for every model.",
                           field="model_name")
    return model_name.strip()


def _dataset_clean(dataset: Any) -> Dataset | None:
    if dataset is None:
        return None
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, bool) or not isinstance(dataset, int) or not 0 < dataset < 2**63:
        raise ServiceError("dataset: a dataset id (a whole number), or null for every dataset.", field="dataset")
    found = Dataset.objects.filter(pk=dataset).first()
    if found is None:
        raise ServiceError(f"dataset: no dataset {dataset}.", field="dataset")
    return found


@transaction.atomic
def webhook_subscription_create(
    *, url: Any, dataset: Any, model_name: Any, events: Any, actor: Any,
) -> tuple[WebhookSubscription, str]:
    """Register a webhook; returns it and its signing secret, which is never shown again."""
    if isinstance(url, str) and len(url) > 2000:
        raise ServiceError("url: at most 2,000 characters.", field="url")
    netguard.webhook_target(url)
    events = _events_clean(events)
    model_name = _model_name_clean(model_name)
    dataset = _dataset_clean(dataset)
    # A hostile key could otherwise multiply every status change into thousands of requests.
    limit = settings.WEBHOOK_MAX_ACTIVE_PER_USER
    if WebhookSubscription.objects.filter(created_by=actor, active=True).count() >= limit:
        raise ServiceConflict(f"You already have {limit} active webhooks; deactivate one first.")
    secret = crypto.secret_new()
    subscription = WebhookSubscription.objects.create(
        url=url.strip(), dataset=dataset, model_name=model_name, events=events,
        secret_encrypted=crypto.secret_encrypt(secret), created_by=actor,
    )
    audit_event_record(
        actor=actor, action="webhook.subscription_created", object_type="webhook_subscription",
        object_id=subscription.pk,
        details={"url": subscription.url, "dataset": dataset.pk if dataset else None, "model_name": model_name,
                 "events": events},
    )
    return subscription, secret


@transaction.atomic
def webhook_subscription_deactivate(*, subscription: WebhookSubscription, actor: Any) -> WebhookSubscription:
    """Stop sending to a webhook (its record and deliveries stay); pending deliveries fail."""
    locked = WebhookSubscription.objects.select_for_update().get(pk=subscription.pk)
    if not locked.active:
        raise ServiceConflict(f"Webhook {locked.pk} is already deactivated.")
    locked.active = False
    locked.deactivated_at = timezone.now()
    locked.save(update_fields=["active", "deactivated_at"])
    dropped = WebhookDelivery.objects.filter(subscription=locked, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED, last_error="the webhook was deactivated")
    audit_event_record(
        actor=actor, action="webhook.subscription_deactivated", object_type="webhook_subscription",
        object_id=locked.pk, details={"url": locked.url, "pending_deliveries_dropped": dropped},
    )
    return locked


# --- Deliveries made by a status change ---------------------------------------------


def _matches(subscription: WebhookSubscription, *, status: str, name: str, dataset_id: int | None) -> bool:
    return (
        status in subscription.events
        and (subscription.model_name is None or subscription.model_name == name)
        and (subscription.dataset_id is None or subscription.dataset_id == dataset_id)
    )


def _payload(*, subscription: WebhookSubscription, version: ModelVersion, status: str, previous: str,
             reason: str, dataset_id: int | None, delivery_id: str) -> dict[str, Any]:
    # What ML engineers are told (issue 14): that the model changed and when, never which
    # erasure request or why; a DPO's webhook carries the registry's own reason.
    shown = model_status_reason_shown(
        status=status, status_reason=reason,
        supersedes_version=version.supersedes.version if version.supersedes_id else None,
        erasure_detail=has_role(subscription.created_by, DPO) if subscription.created_by_id else False,
    )
    return {
        "event": EVENT_STATUS_CHANGED,
        "delivery_id": delivery_id,
        "model_version": {
            "id": version.pk, "name": version.name, "version": version.version, "status": status,
            "previous_status": previous or None, "reason": shown,
            "status_changed_at": version.status_changed_at.isoformat(), "external": version.external,
        },
        "dataset": dataset_id,
    }


@transaction.atomic
def webhook_deliveries_create(
    *, model_version_ids: list[int], status: str, reason: str, previous: dict[int, str],
) -> list[int]:
    """One delivery per matching active subscription and version, sent after the commit."""
    subscriptions = [s for s in WebhookSubscription.objects.filter(active=True).select_related("created_by")
                     if status in s.events]
    if not subscriptions:
        return []
    versions = ModelVersion.objects.filter(pk__in=model_version_ids).select_related(
        "training_run__snapshot", "supersedes").order_by("pk")
    made = []
    for version in versions:
        run = version.training_run
        dataset_id = run.snapshot.dataset_id if run.snapshot_id else None
        for subscription in subscriptions:
            if not _matches(subscription, status=status, name=version.name, dataset_id=dataset_id):
                continue
            delivery = WebhookDelivery(subscription=subscription, model_version_id=version.pk, payload={})
            delivery.payload = _payload(
                subscription=subscription, version=version, status=status,
                previous=previous.get(version.pk, previous.get(str(version.pk), "")), reason=reason,
                dataset_id=dataset_id, delivery_id=str(delivery.delivery_id),
            )
            delivery.save()
            made.append(delivery.pk)
    for pk in made:
        _send_on_commit(pk)
    return made


def _send_on_commit(pk: int, countdown: float | None = None) -> None:
    from webhooks.tasks import deliver

    if countdown and settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode runs a task at once, before it is due: the retry waits for the sweep.
        return

    def publish() -> None:
        try:
            deliver.apply_async(args=[pk], countdown=countdown)
        except Exception:
            # The delivery row is its own outbox entry: the sweep sends it once the broker is back.
            logger.warning("broker unreachable: webhook delivery %s not sent; the sweep sends it again", pk,
                           exc_info=True)

    transaction.on_commit(publish)


# --- One attempt -----------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the attempt after ``attempts`` failed ones: doubling, capped."""
    return min(settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempts - 1), settings.WEBHOOK_RETRY_MAX_SECONDS)


def _claim(pk: int) -> WebhookDelivery | None:
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update(of=("self",)).select_related("subscription").filter(
            pk=pk).first()
        now = timezone.now()
        # A second copy of the task (the sweep, a redelivery) finds the delivery done or not due.
        if delivery is None or delivery.status != DeliveryStatus.PENDING or delivery.next_attempt_at > now:
            return None
        if not delivery.subscription.active:
            delivery.status, delivery.last_error = DeliveryStatus.FAILED, "the webhook was deactivated"
            delivery.save(update_fields=["status", "last_error"])
            return None
        delivery.attempts += 1
        delivery.last_attempt_at = now
        # While in flight: counts as lost (its worker died) once the timeout is well past.
        delivery.next_attempt_at = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 30)
        delivery.save(update_fields=["attempts", "last_attempt_at", "next_attempt_at"])
        return delivery


def webhook_delivery_attempt(*, delivery_pk: int) -> str:
    """Send delivery ``delivery_pk`` once if it is pending and due; returns its status after."""
    delivery = _claim(delivery_pk)
    if delivery is None:
        found = WebhookDelivery.objects.filter(pk=delivery_pk).values_list("status", flat=True).first()
        return found or "missing"
    body = json.dumps({**delivery.payload, "sent_at": timezone.now().isoformat()}, separators=(",", ":")).encode()
    code, text, error = None, "", ""
    try:
        secret = crypto.secret_decrypt(delivery.subscription.secret_encrypted)
        target = netguard.webhook_target(delivery.subscription.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "PrivacyLedger-Webhooks/1",
            "X-Ledger-Event": delivery.event,
            "X-Ledger-Delivery": str(delivery.delivery_id),
            crypto.SIGNATURE_HEADER: crypto.signature_header(
                secret=secret, timestamp=int(timezone.now().timestamp()), body=body),
        }
        answer = netguard.post(target=target, body=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
        code, text = answer.status, answer.body
        if not 200 <= code < 300:
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
    except ServiceError as exc:  # the URL now resolves to an address refused
        error = str(exc)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except Exception as exc:  # a secret no longer decryptable (the key changed), anything else
        logger.exception("webhook delivery %s failed unexpectedly", delivery_pk)
        error = f"{type(exc).__name__}: {exc}"
    return _record(delivery=delivery, code=code, text=text, error=error)


def _record(*, delivery: WebhookDelivery, code: int | None, text: str, error: str) -> str:
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.status != DeliveryStatus.PENDING or locked.attempts != delivery.attempts:
            return locked.status  # taken over by a later attempt (this worker was presumed dead)
        now = timezone.now()
        locked.last_status_code, locked.last_response, locked.last_error = code, text[:500], error[:500]
        if not error:
            locked.status, locked.delivered_at = DeliveryStatus.DELIVERED, now
        elif locked.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
            locked.status = DeliveryStatus.FAILED
        else:
            delay = retry_delay(locked.attempts)
            locked.next_attempt_at = now + timedelta(seconds=delay)
            _send_on_commit(locked.pk, countdown=delay)
        locked.save(update_fields=["last_status_code", "last_response", "last_error", "status", "delivered_at",
                                   "next_attempt_at"])
        return locked.status


@transaction.atomic
def webhook_delivery_resend(*, delivery: WebhookDelivery, actor: Any) -> WebhookDelivery:
    """Send a failed delivery again (same delivery id, a fresh round of attempts)."""
    locked = WebhookDelivery.objects.select_for_update(of=("self",)).select_related("subscription").get(pk=delivery.pk)
    if locked.status != DeliveryStatus.FAILED:
        raise ServiceConflict(f"Delivery {locked.pk} is {locked.status}; only a failed delivery is sent again.")
    if not locked.subscription.active:
        raise ServiceConflict(f"Webhook {locked.subscription_id} is deactivated; its deliveries are not sent.")
    audit_event_record(
        actor=actor, action="webhook.delivery_resent", object_type="webhook_delivery", object_id=locked.pk,
        details={"subscription": locked.subscription_id, "previous_attempts": locked.attempts,
                 "last_error": locked.last_error, "last_status_code": locked.last_status_code},
    )
    locked.status, locked.attempts, locked.next_attempt_at = DeliveryStatus.PENDING, 0, timezone.now()
    locked.save(update_fields=["status", "attempts", "next_attempt_at"])
    _send_on_commit(locked.pk)
    return locked


def webhook_deliveries_sweep() -> int:
    """Re-send pending deliveries whose attempt is overdue (a worker died mid-attempt, a
    retry's message was lost, the broker was down); a copy still queued is harmless."""
    from webhooks.tasks import deliver

    due = list(WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now(),
    ).order_by("next_attempt_at").values_list("pk", flat=True)[: settings.WEBHOOK_SWEEP_BATCH])
    sent = 0
    for pk in due:
        try:
            deliver.apply_async(args=[pk])
            sent += 1
        except Exception:
            logger.warning("broker unreachable: webhook delivery %s not re-sent", pk, exc_info=True)
            break
    return sent
