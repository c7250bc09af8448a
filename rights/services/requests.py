"""Requests under the rights other than erasure: access (Art. 15), portability (Art. 20),
rectification (Art. 16), restriction (Art. 18) and objection (Art. 21).

Keyword-only, atomic, audited (object type ``rights_request``); a refusal is a ServiceError
(400) or ServiceConflict (409) naming the field and the article, and leaves nothing written.
Intake, verification, extension and refusal follow rights.services.workflow, as erasure
does. Execution by type: access and portability build their answer files in a Celery task
under a lease (``rights_request_answer_build``); restriction and objection record the
governance limit (governance.services.limits) at once; rectification calls
``provenance.services.record_rectify``. Rectification and restriction list the recipients to
tell (Art. 19, rights.services.recipients).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.models import (
    OPEN_STATUSES,
    RIGHTS_REQUEST_ARTICLES,
    ErasureStatus,
    RightsRefusalGround,
    RightsRequest,
    RightsRequestType,
)
from rights.services import workflow
from rights.services._common import _user
from rights.services.answers import ANSWER_TYPES, OBJECT_TYPE
from rights.services.recipients import recipients_to_notify

NO_DATA_HELD_ANSWER = (
    "We hold no personal data relating to the identifier given, so there is nothing to act on. "
    "The request and this answer are recorded."
)
NOT_DOING = {
    RightsRequestType.ACCESS: "giving access to your personal data (Art. 15)",
    RightsRequestType.PORTABILITY: "exporting your personal data for portability (Art. 20)",
    RightsRequestType.RECTIFICATION: "rectifying your personal data (Art. 16)",
    RightsRequestType.RESTRICTION: "restricting the processing of your personal data (Art. 18)",
    RightsRequestType.OBJECTION: "acting on your objection (Art. 21)",
}


def _type(value: Any) -> str:
    allowed = [*RightsRequestType.values, "erasure"]
    if value in (None, ""):
        raise ServiceError(f"The request's type is required; choose one of: {', '.join(allowed)}.", field="type")
    if value not in RightsRequestType.values:
        raise ServiceError(f"{value!r} is not a type of request; choose one of: {', '.join(allowed)}.", field="type")
    return value


def _locked(rights_request: RightsRequest | int) -> RightsRequest:
    return workflow.locked(RightsRequest, rights_request, field="rights_request", what="Rights request")


def _details(request: RightsRequest) -> dict[str, Any]:
    return {
        "type": request.type, "channel": request.channel, "regime": request.regime,
        "received_at": request.received_at.isoformat(), "due_at": request.due_at.isoformat(),
        "data_held": request.data_held_at_receipt,
        **({"purpose": request.purpose.code} if request.purpose_id else {}),
        **({"restriction_ground": request.restriction_ground} if request.restriction_ground else {}),
    }


def _text(value: Any, *, field: str, required: bool, what: str) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > 5000:
        raise ServiceError("Text of at most 5,000 characters.", field=field)
    if required and not value.strip():
        raise ServiceError(f"{what} is required.", field=field)
    return value.strip()


def _objection_purpose(purpose: Any):
    """The purpose objected to, refused (400 naming ``purpose``, Art. 21) where an objection
    does not apply: a consent-based purpose is withdrawn from instead (Art. 7(3))."""
    from governance.models import Purpose
    from governance.selectors import objection_applies, purpose_lawful_bases
    from governance.services.limits import _objection_refusal

    if not isinstance(purpose, str) or not purpose:
        raise ServiceError("An objection (Art. 21) names the purpose objected to (a purpose code).", field="purpose")
    found = Purpose.objects.filter(code=purpose).first()
    if found is None:
        raise ServiceError(f"Unknown purpose code {purpose!r}.", field="purpose")
    bases = purpose_lawful_bases(purpose=found)
    if not any(objection_applies(lawful_basis=b, purpose_code=found.code) for b in bases):
        raise ServiceError(_objection_refusal(found, bases), field="purpose")
    return found


def _rectification_check(*, subject, dataset: int, corrections: list) -> None:
    """Provenance's checks of a rectification (the record is the person's, every field is in
    the schema, every value of its type; 400 naming ``corrections[i]...``), without writing."""
    from provenance.models import Dataset
    from provenance.services import record_corrections_validate  # the one home of these rules

    found = Dataset.objects.filter(pk=dataset).first()
    if found is None:
        raise ServiceError(f"No dataset {dataset}.", field="dataset")
    record_corrections_validate(corrections=corrections, dataset=found, subject=subject)


def _refuse_if_limited(*, type_: str, subject, purpose) -> None:
    """A person already restricted (Art. 18), or already objecting to the purpose (Art. 21)."""
    from governance.selectors import objections_in_force, restrictions_in_force

    if type_ == RightsRequestType.RESTRICTION:
        current = restrictions_in_force().filter(subject=subject).first()
        if current is not None:
            raise ServiceConflict(
                f"This person's processing is already restricted (Art. 18) by restriction {current.pk}; "
                "lift it before recording another.", field="subject", restriction=current.pk,
            )
    if type_ == RightsRequestType.OBJECTION:
        current = objections_in_force().filter(subject=subject, purpose=purpose).first()
        if current is not None:
            raise ServiceConflict(
                f"This person already objects to {purpose.code!r} (Art. 21) by objection {current.pk}.",
                field="purpose", objection=current.pk,
            )


@transaction.atomic
def rights_request_receive(
    *,
    type: Any,  # noqa: A002 - the API's field name
    identifier: Any,
    channel: Any = None,
    received_at: Any = None,
    regime: Any = None,
    notes: Any = "",
    purpose: Any = None,
    restriction_ground: Any = None,
    justification: Any = "",
    dataset: Any = None,
    corrections: Any = None,
    actor: Any = None,
) -> RightsRequest:
    """Record a request under Art. 15, 16, 18, 20 or 21; the identifier is pseudonymised here
    and never stored. An identifier with no subject is recorded and answered at once: no
    data held. ``justification``: the reason for a restriction, the person's grounds for an
    objection (not required against direct marketing, Art. 21(2)), the reason for a
    rectification. A rectification names ``dataset`` and ``corrections`` (``[{"record": id,
    "values": {field: value}}]``), checked here against the dataset's schema by provenance's
    own rules, so a request naming a field not in the schema is refused before it is
    recorded."""
    from governance.models import RestrictionGround, purpose_code_is_direct_marketing
    from governance.pseudonymisation import pseudonymise
    from governance.selectors import data_subject_find
    from rights.services.intake import erasure_receipt_hash

    type_ = _type(type)
    article = RIGHTS_REQUEST_ARTICLES[type_]
    identifier = workflow.intake_identifier(identifier)
    intake = workflow.intake_fields(channel=channel, regime=regime, received_at=received_at, notes=notes)
    found_purpose, ground, text, fix = None, "", "", {}
    if type_ == RightsRequestType.OBJECTION:
        found_purpose = _objection_purpose(purpose)
        text = _text(justification, field="grounds", required=not purpose_code_is_direct_marketing(found_purpose.code),
                     what="The person's grounds relating to their particular situation (Art. 21(1))")
    elif type_ == RightsRequestType.RESTRICTION:
        if restriction_ground not in RestrictionGround.values:
            raise ServiceError(
                f"Must be one of {', '.join(RestrictionGround.values)} (Art. 18(1)(a)-(d)).", field="restriction_ground"
            )
        ground = restriction_ground
        text = _text(justification, field="justification", required=True, what="Why the processing is restricted (Art. 18)")
    elif type_ == RightsRequestType.RECTIFICATION:
        if isinstance(dataset, bool) or not isinstance(dataset, int):
            raise ServiceError("A rectification (Art. 16) names the dataset (its id) whose records are corrected.",
                               field="dataset")
        if not isinstance(corrections, list) or not corrections:
            raise ServiceError('corrections: give a list of {"record": id, "values": {field: value}} (Art. 16).',
                               field="corrections")
        fix = {"dataset": dataset, "corrections": corrections}
        text = _text(justification, field="justification", required=True, what="The reason for the correction (Art. 16)")
    elif any(v not in (None, "", {}, []) for v in (purpose, restriction_ground, corrections, dataset)):
        raise ServiceError(f"A request under {article} takes no purpose, restriction ground or corrections.",
                           field="type")

    pseudonym = pseudonymise(identifier)
    receipt_hash = erasure_receipt_hash(pseudonym=pseudonym)
    subject = data_subject_find(identifier=identifier)  # earlier normalisations' subjects too
    if subject is not None:
        _refuse_if_limited(type_=type_, subject=subject, purpose=found_purpose)
        if type_ == RightsRequestType.RECTIFICATION:
            _rectification_check(subject=subject, dataset=dataset, corrections=corrections)
        if type_ != RightsRequestType.OBJECTION:
            existing = RightsRequest.objects.filter(
                identifier_receipt_hash=receipt_hash, type=type_, status__in=OPEN_STATUSES
            ).first()
            if existing is not None:
                raise ServiceConflict(
                    f"{article}: request {existing.pk} of this person is still open ({existing.status}).",
                    field="subject", open_request=existing.pk,
                )
    request = RightsRequest(
        type=type_, subject=subject, subject_ref=subject.reference if subject else None,
        identifier_receipt_hash=receipt_hash, data_held_at_receipt=subject is not None,
        channel=intake.channel, received_at=intake.received, regime=intake.regime, notes=intake.notes,
        due_at=workflow.intake_due_date(regime=intake.regime, received=intake.received),
        purpose=found_purpose, restriction_ground=ground, justification=text, corrections=fix,
        created_by=_user(actor),
    )
    if subject is None:
        request.status = ErasureStatus.COMPLETED
        request.completed_at = timezone.now()
        request.outcome = NO_DATA_HELD_ANSWER
    try:
        with transaction.atomic():
            request.save()
    except IntegrityError:
        raise ServiceConflict(f"{article}: a request of this type for this person is already open.", field="subject")
    audit_event_record(
        actor=actor, action=f"{OBJECT_TYPE}.received", object_type=OBJECT_TYPE, object_id=request.pk,
        subject_ref=request.subject_ref, details=_details(request),
    )
    if subject is None:
        audit_event_record(
            actor=actor, action=f"{OBJECT_TYPE}.answered_no_data", object_type=OBJECT_TYPE, object_id=request.pk,
            details={"answer": "no personal data held", "type": type_},
        )
    return request


@transaction.atomic
def rights_request_verify(*, rights_request: RightsRequest | int, method: Any = "", actor: Any = None) -> RightsRequest:
    """Record that the requester's identity was verified (Art. 12(6)) and how; required before execution."""
    request = _locked(rights_request)
    return workflow.request_verify(request, method=method or "", actor=actor, object_type=OBJECT_TYPE,
                                   article=request.article)


@transaction.atomic
def rights_request_extend(
    *, rights_request: RightsRequest | int, reasons: Any, subject_informed_at: Any, actor: Any = None, today: Any = None,
) -> RightsRequest:
    """Extend the deadline once (Art. 12(3)), by the rules erasure follows."""
    request = _locked(rights_request)
    return workflow.request_extend(request, reasons=reasons, subject_informed_at=subject_informed_at, actor=actor,
                                   today=today, object_type=OBJECT_TYPE, article=request.article)


@transaction.atomic
def rights_request_reject(
    *, rights_request: RightsRequest | int, refusal_ground: Any, justification: Any, actor: Any = None
) -> RightsRequest:
    """Refuse a manifestly unfounded or excessive request (Art. 12(5)), with the Art. 12(4) notice."""
    from rights.certificate import refusal_notice_write

    request = _locked(rights_request)
    workflow.request_refuse(
        request, refusal_ground=refusal_ground, grounds=RightsRefusalGround, grounds_label="Art. 12(5) ground",
        grounds_article="Art. 12(5)", justification=justification, not_doing=NOT_DOING[request.type], actor=actor,
        object_type=OBJECT_TYPE, article=request.article,
    )
    # The written answer owed within the deadline (Art. 12(4)), as erasure writes its own:
    # one page, written here; downloaded as the request's answer (format=pdf), hash audited.
    relative, digest = refusal_notice_write(request=request)
    request.answer_path = str(Path(relative).parent)
    request.answer_sha256 = digest
    request.answer_expires_at = timezone.now() + timedelta(days=settings.RIGHTS_ANSWER_DOWNLOAD_DAYS)
    request.save(update_fields=["answer_path", "answer_sha256", "answer_expires_at", "updated_at"])
    audit_event_record(
        actor=actor, action=f"{OBJECT_TYPE}.refusal_notice_issued", object_type=OBJECT_TYPE, object_id=request.pk,
        subject_ref=request.subject_ref, details={"sha256": digest, "path": relative},
    )
    return request


@transaction.atomic
def rights_request_execute(*, rights_request: RightsRequest | int, actor: Any = None) -> RightsRequest:
    """Act on a verified request: access and portability are built by a task after the
    commit (in progress until then); restriction, objection and rectification are recorded
    now and the request completes."""
    from governance.dispatch import task_dispatch_on_commit
    from governance.services import processing_objection_create, processing_restriction_create

    request = _locked(rights_request)
    article = request.article
    if request.status == ErasureStatus.RECEIVED:
        raise ServiceConflict(f"{article}: the requester's identity is not verified yet (Art. 12(6)); verify the "
                              "request before executing it.", status=request.status)
    if request.status not in (ErasureStatus.VERIFIED, ErasureStatus.IN_PROGRESS):
        raise ServiceConflict(f"{article}: a {request.status} request cannot be executed.", status=request.status)
    if request.subject_id is None:
        raise ServiceConflict(f"{article}: the person's data were erased since the request was received.")
    now = timezone.now()
    if request.type in ANSWER_TYPES:
        if request.type == RightsRequestType.PORTABILITY:
            from rights.portability import portability_export

            portability_export(subject=request.subject)  # refuses (409, Art. 20(1)) before any work is queued
        resumed = request.status == ErasureStatus.IN_PROGRESS
        if not resumed:
            request.status = ErasureStatus.IN_PROGRESS
            request.execution_started_at = now
            request.save(update_fields=["status", "execution_started_at", "updated_at"])
        audit_event_record(
            actor=actor, action=f"{OBJECT_TYPE}.execution_{'resumed' if resumed else 'started'}",
            object_type=OBJECT_TYPE, object_id=request.pk, subject_ref=request.subject_ref, details={"type": request.type},
        )
        from rights import tasks

        task_dispatch_on_commit(tasks.build_rights_answer, args=[request.pk],
                                outbox=RightsRequest.objects.filter(pk=request.pk))
        return request
    if request.type == RightsRequestType.RESTRICTION:
        from provenance.models import DataRecord
        from rights.selectors import subject_recipients

        limit = processing_restriction_create(subject=request.subject, ground=request.restriction_ground,
                                              justification=request.justification, actor=actor)
        datasets = list(DataRecord.objects.filter(subject=request.subject, superseded_at__isnull=True)
                        .values_list("dataset_id", flat=True).distinct())
        told = recipients_to_notify(request=request, actor=actor,
                                    recipients=subject_recipients(subject_id=request.subject_id, dataset_ids=datasets))
        outcome = (f"Processing restricted to storage from {limit.restricted_at:%Y-%m-%d %H:%M} (Art. 18(1)). "
                   f"Recipients to be told (Art. 19): {', '.join(told) or 'none'}.")
    elif request.type == RightsRequestType.OBJECTION:
        limit = processing_objection_create(subject=request.subject, purpose=request.purpose,
                                            grounds=request.justification, actor=actor)
        outcome = (f"Processing for {request.purpose.code!r} stopped for this person from "
                   f"{limit.objected_at:%Y-%m-%d %H:%M} (Art. 21).")
    else:
        from provenance.services import record_rectify

        fix = request.corrections
        result = record_rectify(subject=request.subject, dataset=fix.get("dataset"), corrections=fix.get("corrections"),
                         reason=request.justification, actor=actor)
        told = recipients_to_notify(request=request, actor=actor, recipients=[
            {**r, "processing_activity": result["processing_activity"]}
            for r in result.get("recipients", []) if isinstance(r, dict)
        ])
        limit, outcome = None, (
            f"{len(result['records'])} record(s) rectified (Art. 16): {', '.join(result['fields'])}. "
            f"Recipients to be told (Art. 19): {', '.join(told) or 'none'}."
        )
    request.limit_id = limit.pk if limit is not None else None
    request.status = ErasureStatus.COMPLETED
    request.execution_started_at = request.completed_at = now
    request.outcome = outcome
    request.save(update_fields=["limit_id", "status", "execution_started_at", "completed_at", "outcome", "updated_at"])
    audit_event_record(
        actor=actor, action=f"{OBJECT_TYPE}.completed", object_type=OBJECT_TYPE, object_id=request.pk,
        subject_ref=request.subject_ref, details={"type": request.type, "limit_id": request.limit_id},
    )
    return request


@transaction.atomic
def rights_request_restriction_lift(
    *, rights_request: RightsRequest | int, informed_at: Any, reason: Any, actor: Any = None
) -> RightsRequest:
    """Lift the restriction a completed restriction request recorded (governance's rules:
    the person is told before, Art. 18(3))."""
    from governance.services import processing_restriction_lift

    request = _locked(rights_request)
    if request.type != RightsRequestType.RESTRICTION:
        raise ServiceConflict(f"{request.article}: only a restriction (Art. 18) is lifted.", field="type")
    if request.status != ErasureStatus.COMPLETED or request.limit_id is None:
        raise ServiceConflict("Art. 18(3): no restriction was recorded for this request yet.", status=request.status)
    lifting = processing_restriction_lift(restriction=request.limit_id, reason=reason, informed_at=informed_at,
                                          actor=actor)
    audit_event_record(
        actor=actor, action=f"{OBJECT_TYPE}.restriction_lifted", object_type=OBJECT_TYPE, object_id=request.pk,
        subject_ref=request.subject_ref, details={"restriction": request.limit_id, "lifting": lifting.pk},
    )
    return request
