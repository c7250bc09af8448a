"""Small helpers the erasure services share: the acting user, choice and moment checks, the
row lock on a request, the open-request conflict, the audit details of a request."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, moment_for_field
from rights.models import OPEN_STATUSES, ErasureRequest


def _user(actor: Any):
    return actor if getattr(actor, "is_authenticated", False) else None


def _choice(value: Any, choices, field: str, label: str) -> str:
    if value in (None, ""):
        raise ServiceError(f"{label} is required; choose one of: {', '.join(choices.values)}.", field=field)
    if value not in choices.values:
        raise ServiceError(f"{value!r} is not a valid {label}; choose one of: {', '.join(choices.values)}.", field=field)
    return value


def _moment(value: Any, field: str) -> datetime:
    value = moment_for_field(value, field=field, require_timezone=False)
    if value > timezone.now() + timedelta(minutes=5):
        raise ServiceError("This moment is in the future.", field=field)
    return value


def _conflict_if_open(receipt_hash: str) -> None:
    existing = ErasureRequest.objects.filter(
        identifier_receipt_hash=receipt_hash, status__in=OPEN_STATUSES
    ).first()
    if existing is not None:
        raise ServiceConflict(
            f"Erasure request {existing.pk} for this person is still open ({existing.status}); "
            "a second request is not opened while one is in progress.",
            open_request=existing.pk,
        )


def _request_details(request: ErasureRequest) -> dict[str, Any]:
    return {
        "ground": request.ground, "channel": request.channel, "regime": request.regime,
        "received_at": request.received_at.isoformat(), "due_at": request.due_at.isoformat(),
        "data_held": request.data_held_at_receipt,
    }


def _locked(erasure_request: ErasureRequest | int) -> ErasureRequest:
    pk = erasure_request if isinstance(erasure_request, int) else erasure_request.pk
    try:
        return ErasureRequest.objects.select_for_update().get(pk=pk)
    except ErasureRequest.DoesNotExist:
        raise ServiceError(f"Erasure request {pk} does not exist.", field="erasure_request")
