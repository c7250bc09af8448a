"""Art. 17(1)(c): an objection (Art. 21) opens an erasure request, as a withdrawal opens one
under Art. 17(1)(b), when a processing activity it stops is configured to erase when the
processing stops (``erasure_on_consent_withdrawal``, the same switch: for an activity under
Art. 6(1)(e) or (f) an objection is what ends the processing, as a withdrawal does under
consent). The request then goes through the existing erasure machinery, which amends the
snapshots and remediates the live models trained on the person.

The request is only *received*: for an objection under Art. 21(1) the DPO may still record
compelling legitimate grounds, and then rejects the request instead of executing it; an
objection to direct marketing (Art. 21(2)-(3)) leaves no such choice.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.services import audit_event_record
from rights import deadlines
from rights.models import OPEN_STATUSES, ErasureChannel, ErasureGround, ErasureRegime, ErasureRequest
from rights.services._common import _request_details
from rights.services.intake import erasure_receipt_hash


def _activities_erasing_on_objection(purpose_code: str) -> list[str]:
    """Names of the activities covering the purpose that an objection stops and that erase
    when their processing stops."""
    from governance.models import ProcessingActivity, Purpose
    from governance.selectors import objection_applies

    purpose = Purpose(code=purpose_code)
    rows = (
        ProcessingActivity.objects.filter(erasure_on_consent_withdrawal=True, purposes__code__in=purpose.ancestor_codes())
        .values_list("name", "lawful_basis").distinct()
    )
    return sorted(name for name, basis in rows if objection_applies(lawful_basis=basis, purpose_code=purpose_code))


@transaction.atomic
def erasure_request_open_for_objection(
    *, objection_id: int, actor: Any = None
) -> ErasureRequest | None:
    """Open an Art. 17(1)(c) request for one objection, if an activity it stops erases when
    processing stops. Returns the request opened, the one already open for the person, or
    None (no such activity, or the objection or its person is gone). Idempotent."""
    from governance.models import ProcessingObjection

    objection = ProcessingObjection.objects.select_related("subject", "purpose").filter(pk=objection_id).first()
    if objection is None:
        return None
    activities = _activities_erasing_on_objection(objection.purpose.code)
    if not activities:
        return None
    subject = objection.subject
    receipt_hash = erasure_receipt_hash(pseudonym=subject.pseudonym)
    existing = ErasureRequest.objects.filter(identifier_receipt_hash=receipt_hash, status__in=OPEN_STATUSES).first()
    if existing is not None:
        return existing
    received_at = objection.objected_at
    request = ErasureRequest.objects.create(
        subject=subject, subject_ref=subject.reference, identifier_receipt_hash=receipt_hash,
        # The objection reached us through the DPO's API (POST /api/v1/objections/).
        channel=ErasureChannel.API, received_at=received_at, regime=ErasureRegime.EU,
        ground=ErasureGround.OBJECTION, purpose=objection.purpose,
        notes=f"Opened on objection {objection.pk} (Art. 21) to {objection.purpose.code}.",
        due_at=deadlines.due_date(
            regime=ErasureRegime.EU, received_on=timezone.localtime(received_at).date(),
            holidays=deadlines.configured_holidays(),
        ),
    )
    audit_event_record(
        actor=actor, action="erasure_request.opened_on_objection", object_type="erasure_request",
        object_id=request.pk, subject_ref=request.subject_ref,
        details={**_request_details(request), "purpose": objection.purpose.code, "objection": objection.pk,
                 "activities": activities},
    )
    return request
