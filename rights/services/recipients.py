"""Art. 19: telling the recipients of a person's data about an erasure, a rectification or
a restriction.

Executing the request lists, as ``RecipientNotification`` rows with no date, the recipients
the processing activities name (an erasure in its ``notify_recipients`` step, see
rights.execution); the DPO then records when and how each was told. Nothing claims a
recipient was told before the DPO says so: the ledger sends no message itself, so a date is
only ever the DPO's record.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.models import ErasureRequest, ErasureStatus, RecipientNotification, RightsRequest, RightsRequestType
from rights.services._common import _moment, _user
from rights.services.answers import OBJECT_TYPE

# The rights whose exercise recipients must hear of (Art. 19 names 16, 17(1) and 18).
NOTIFIED_TYPES = (RightsRequestType.RECTIFICATION, RightsRequestType.RESTRICTION)


def recipients_to_notify(*, request: RightsRequest, recipients: list[dict[str, Any]], actor: Any = None) -> list[str]:
    """Record the recipients to tell of ``request`` (inside the execution's transaction)."""
    names = []
    rows = []
    for item in recipients:
        name = str(item.get("name") or "").strip()
        if name and name not in names:
            names.append(name)
            rows.append(RecipientNotification(
                rights_request=request, recipient=name[:300], third_country=str(item.get("third_country") or "")[:100],
                processing_activity_id=item.get("processing_activity"),
            ))
    RecipientNotification.objects.bulk_create(rows, ignore_conflicts=True)
    if names:
        audit_event_record(
            actor=actor, action=f"{OBJECT_TYPE}.recipients_to_notify", object_type=OBJECT_TYPE, object_id=request.pk,
            subject_ref=request.subject_ref, details={"recipients": names, "article": "19"},
        )
    return names


@transaction.atomic
def rights_request_recipient_notified(
    *, rights_request: RightsRequest | int, recipient: Any, notified_at: Any = None, method: Any = "", actor: Any = None,
) -> RecipientNotification:
    """Record that ``recipient`` was told of the rectification or restriction (Art. 19), when
    and how. Once only: a second record for the same recipient is refused (409)."""
    pk = rights_request if isinstance(rights_request, int) else rights_request.pk
    request = RightsRequest.objects.select_for_update().filter(pk=pk).first()
    if request is None:
        raise ServiceError(f"Request {pk} does not exist.", field="rights_request")
    if request.type not in NOTIFIED_TYPES:
        raise ServiceConflict(f"{request.article}: Art. 19 notifications follow a rectification or a restriction only.",
                              field="type")
    return _record(request, OBJECT_TYPE, recipient=recipient, notified_at=notified_at, method=method, actor=actor)


@transaction.atomic
def erasure_request_recipient_notified(
    *, erasure_request: ErasureRequest | int, recipient: Any, notified_at: Any = None, method: Any = "",
    actor: Any = None,
) -> RecipientNotification:
    """Record that ``recipient`` was told of the erasure (Art. 19), when and how; once only."""
    pk = erasure_request if isinstance(erasure_request, int) else erasure_request.pk
    request = ErasureRequest.objects.select_for_update().filter(pk=pk).first()
    if request is None:
        raise ServiceError(f"Erasure request {pk} does not exist.", field="erasure_request")
    return _record(request, "erasure_request", recipient=recipient, notified_at=notified_at, method=method, actor=actor)


def _record(request: ErasureRequest | RightsRequest, object_type: str, *, recipient: Any, notified_at: Any,
            method: Any, actor: Any) -> RecipientNotification:
    """The one rule for both kinds of request, the request's row locked by the caller."""
    if request.status != ErasureStatus.COMPLETED:
        raise ServiceConflict("Art. 19: recipients are told once the request is executed.", status=request.status)
    if not isinstance(recipient, str) or not recipient.strip():
        raise ServiceError("Name the recipient told (one of the request's recipients).", field="recipient")
    if not isinstance(method, str) or not method.strip():
        raise ServiceError("Say how the recipient was told (e.g. 'e-mail to the processor's privacy contact').",
                           field="method")
    notifications = request.recipient_notifications.select_for_update()
    notification = notifications.filter(recipient=recipient.strip()).first()
    if notification is None:
        listed = ", ".join(request.recipient_notifications.values_list("recipient", flat=True)) or "none"
        raise ServiceError(f"{recipient.strip()!r} is not a recipient of this request (listed: {listed}).",
                           field="recipient")
    if notification.notified_at is not None:
        raise ServiceConflict(f"Art. 19: {notification.recipient} was already recorded as told on "
                              f"{timezone.localtime(notification.notified_at):%Y-%m-%d %H:%M}.", field="recipient")
    when = _moment(notified_at, "notified_at") if notified_at not in (None, "") else timezone.now()
    if request.completed_at and when < request.completed_at:
        raise ServiceError("A recipient is told after the request was executed, not before.", field="notified_at")
    notification.notified_at = when
    notification.method = method.strip()[:300]
    notification.notified_by = _user(actor)
    notification.save(update_fields=["notified_at", "method", "notified_by"])
    audit_event_record(
        actor=actor, action=f"{object_type}.recipient_notified", object_type=object_type, object_id=request.pk,
        subject_ref=request.subject_ref,
        details={"recipient": notification.recipient, "notified_at": when.isoformat(), "method": notification.method,
                 "article": "19"},
    )
    return notification
