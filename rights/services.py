"""Services of the erasure workflow (GDPR Art. 17, 12(3), 12(4), 19). Keyword-only,
atomic, audited; every refusal is a ServiceError (400) or ServiceConflict (409) and
leaves nothing changed.

Execution lives in ``rights.execution``.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit, tasks_redispatch, unsent_cutoff, unstarted_cutoff
from governance.leases import lease_cutoff
from governance.services import ServiceConflict, ServiceError, audit_event_record, moment_for_field
from rights import deadlines
from rights.models import (
    OPEN_STATUSES,
    ErasureChannel,
    ErasureGround,
    ErasureRegime,
    ErasureRemediationOverride,
    ErasureRequest,
    ErasureStatus,
    ErasureStepStatus,
    RefusalGround,
    RemediationAction,
)

NO_DATA_HELD_ANSWER = (
    "We hold no personal data relating to the identifier given, so there is nothing to erase. "
    "The request and this answer are recorded."
)


def erasure_receipt_hash(*, pseudonym: str) -> str:
    """HMAC-SHA-256 under ERASURE_RECEIPT_SALT of the pseudonym of the normalised identifier.

    Computed from the pseudonym (itself an HMAC of the normalised identifier) so that a
    request opened from a consent withdrawal, where only the subject is known, gets the
    same receipt hash as one sent with the identifier. Under a separate key, it matches
    neither the pseudonym nor the identifier, and outlives the subject row.
    """
    return hmac.new(settings.ERASURE_RECEIPT_SALT.encode(), pseudonym.encode(), hashlib.sha256).hexdigest()


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


@transaction.atomic
def erasure_request_receive(
    *,
    identifier: Any,
    ground: Any,
    channel: Any = ErasureChannel.API,
    received_at: Any = None,
    regime: Any = ErasureRegime.EU,
    notes: Any = "",
    actor: Any = None,
) -> ErasureRequest:
    """Record a request for erasure; the identifier is pseudonymised here and never stored.

    An identifier with no subject is still recorded and answered at once: no data held.
    ``notes`` (a request logged by hand: letter, phone, in person) stays on the request and
    out of the audit chain, which must not carry free text that could name the person.
    """
    from governance.pseudonymisation import pseudonymise
    from governance.selectors import data_subject_find
    from rights.selectors import erasure_previous_completed

    if not isinstance(identifier, str) or not identifier.strip():
        raise ServiceError("The data subject's identifier is required (e.g. their e-mail or customer number).", field="subject")
    if len(identifier) > 500:
        raise ServiceError("An identifier is at most 500 characters.", field="subject")
    ground = _choice(ground, ErasureGround, "ground", "Art. 17(1) ground")
    # Absent or empty means the default; any other value must be one of the choices ({} or 0
    # are refused, not read as "absent").
    channel = _choice(ErasureChannel.API if channel in (None, "") else channel, ErasureChannel, "channel", "channel")
    regime = _choice(ErasureRegime.EU if regime in (None, "") else regime, ErasureRegime, "regime", "regime")
    received = timezone.now() if received_at in (None, "") else _moment(received_at, "received_at")
    if notes is None:
        notes = ""
    if not isinstance(notes, str) or len(notes) > 4000:
        raise ServiceError("Notes are text of at most 4,000 characters.", field="notes")

    pseudonym = pseudonymise(identifier)
    receipt_hash = erasure_receipt_hash(pseudonym=pseudonym)
    _conflict_if_open(receipt_hash)
    subject = data_subject_find(identifier=identifier)  # earlier normalisations' subjects too
    received_on = timezone.localtime(received).date()
    due = deadlines.due_date(regime=regime, received_on=received_on, holidays=deadlines.configured_holidays())
    request = ErasureRequest(
        subject=subject,
        subject_ref=subject.reference if subject else None,
        identifier_receipt_hash=receipt_hash,
        data_held_at_receipt=subject is not None,
        channel=channel, received_at=received, regime=regime, ground=ground, due_at=due,
        notes=notes.strip(), created_by=_user(actor),
    )
    previous = erasure_previous_completed(receipt_hash=receipt_hash)
    if subject is None:
        request.status = ErasureStatus.COMPLETED
        request.completed_at = timezone.now()
        request.outcome = NO_DATA_HELD_ANSWER
        if previous is not None:
            request.outcome += (
                f" Data relating to this identifier were erased on {previous.completed_at:%Y-%m-%d} "
                f"(erasure request {previous.request_id})."
            )
    try:
        with transaction.atomic():
            request.save()
    except IntegrityError:
        # A concurrent request for the same person won the race for the open slot.
        raise ServiceConflict("An erasure request for this person is already open.")
    details = _request_details(request)
    if previous is not None:
        details["repeat_of_request"] = previous.request_id
    audit_event_record(
        actor=actor, action="erasure_request.received", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref, details=details,
    )
    if subject is None:
        audit_event_record(
            actor=actor, action="erasure_request.answered_no_data", object_type="erasure_request",
            object_id=request.pk, details={"answer": "no personal data held"},
        )
    return request


def _locked(erasure_request: ErasureRequest | int) -> ErasureRequest:
    pk = erasure_request if isinstance(erasure_request, int) else erasure_request.pk
    try:
        return ErasureRequest.objects.select_for_update().get(pk=pk)
    except ErasureRequest.DoesNotExist:
        raise ServiceError(f"Erasure request {pk} does not exist.", field="erasure_request")


@transaction.atomic
def erasure_request_verify(*, erasure_request: ErasureRequest | int, method: str = "", actor: Any = None) -> ErasureRequest:
    """Record that the requester's identity was verified (Art. 12(6)); required before execution."""
    request = _locked(erasure_request)
    if request.status != ErasureStatus.RECEIVED:
        raise ServiceConflict(
            f"Only a received request can be verified; this one is {request.status}.", status=request.status
        )
    if not isinstance(method, str) or len(method) > 300:
        raise ServiceError("The verification method is text of at most 300 characters.", field="method")
    request.status = ErasureStatus.VERIFIED
    request.verified_at = timezone.now()
    request.verified_by = _user(actor)
    request.verification_method = method.strip()
    request.save(update_fields=["status", "verified_at", "verified_by", "verification_method", "updated_at"])
    audit_event_record(
        actor=actor, action="erasure_request.verified", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref, details={"method": request.verification_method},
    )
    return request


@transaction.atomic
def erasure_request_extend(
    *,
    erasure_request: ErasureRequest | int,
    reasons: Any,
    subject_informed_at: Any,
    actor: Any = None,
    today: Any = None,
) -> ErasureRequest:
    """Extend the deadline once by two further months (Art. 12(3); CCPA: 45 days).

    Only while the first deadline has not passed, with reasons, and after telling the
    subject, which must also have happened within the first period.
    """
    request = _locked(erasure_request)
    if not request.is_open:
        raise ServiceConflict(f"Only an open request can be extended; this one is {request.status}.")
    if not isinstance(reasons, str) or not reasons.strip():
        raise ServiceError(
            "Reasons are required: Art. 12(3) allows an extension only for complex or numerous requests, "
            "and the subject must be told why.", field="reasons",
        )
    if subject_informed_at in (None, ""):
        raise ServiceError("Record when the subject was informed of the extension (Art. 12(3)).", field="subject_informed_at")
    informed = _moment(subject_informed_at, "subject_informed_at")
    on = today or timezone.localdate()
    allowed, why = deadlines.extension_allowed(
        first_due=request.due_at, today=on, already_extended=request.extended_due_at is not None
    )
    if not allowed:
        raise ServiceConflict(why)
    if timezone.localtime(informed).date() > request.due_at:
        raise ServiceError("The subject must be informed within the first period.", field="subject_informed_at")
    if informed < request.received_at:
        raise ServiceError("The subject cannot be informed before the request was received.", field="subject_informed_at")
    request.extended_due_at = deadlines.extended_due_date(
        regime=request.regime, received_on=timezone.localtime(request.received_at).date(),
        holidays=deadlines.configured_holidays(),
    )
    request.extension_reasons = reasons.strip()
    request.extended_at = timezone.now()
    request.subject_informed_of_extension_at = informed
    request.save(update_fields=[
        "extended_due_at", "extension_reasons", "extended_at", "subject_informed_of_extension_at", "updated_at",
    ])
    audit_event_record(
        actor=actor, action="erasure_request.extended", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref,
        details={
            "previous_due_at": request.due_at.isoformat(), "extended_due_at": request.extended_due_at.isoformat(),
            "reasons": request.extension_reasons, "subject_informed_at": informed.isoformat(),
        },
    )
    return request


def refusal_notice_text(*, request: ErasureRequest, ground: str, justification: str) -> str:
    """The Art. 12(4) notice: reasons, the right to complain and to a judicial remedy."""
    return (
        f"We are not erasing your personal data in response to your request received on "
        f"{timezone.localtime(request.received_at):%d %B %Y}. Reason: {RefusalGround(ground).label}. "
        f"{justification.strip()} "
        "You have the right to lodge a complaint with a supervisory authority (Art. 77 GDPR), in particular "
        "in the Member State of your habitual residence, place of work or place of the alleged infringement, "
        "and the right to an effective judicial remedy (Art. 79 GDPR)."
    )


@transaction.atomic
def erasure_request_reject(
    *, erasure_request: ErasureRequest | int, refusal_ground: Any, justification: Any, actor: Any = None
) -> ErasureRequest:
    """Refuse under an Art. 17(3) exemption, with a justification and the Art. 12(4) notice."""
    request = _locked(erasure_request)
    if request.status not in (ErasureStatus.RECEIVED, ErasureStatus.VERIFIED):
        raise ServiceConflict(f"Only a received or verified request can be rejected; this one is {request.status}.")
    ground = _choice(refusal_ground, RefusalGround, "refusal_ground", "Art. 17(3) exemption")
    if not isinstance(justification, str) or not justification.strip():
        raise ServiceError("A justification is required for a refusal under Art. 17(3).", field="justification")
    request.status = ErasureStatus.REJECTED
    request.refusal_ground = ground
    request.refusal_justification = justification.strip()
    request.refusal_notice = refusal_notice_text(request=request, ground=ground, justification=justification)
    request.rejected_at = timezone.now()
    request.outcome = request.refusal_notice
    request.save(update_fields=[
        "status", "refusal_ground", "refusal_justification", "refusal_notice", "rejected_at", "outcome", "updated_at",
    ])
    audit_event_record(
        actor=actor, action="erasure_request.rejected", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref,
        details={"refusal_ground": ground, "justification": request.refusal_justification},
    )
    # The written answer the person is owed within the deadline (Art. 12(4)): a one-page
    # PDF, small enough to write here rather than in a task. It is served where a completed
    # request serves its certificate, and its hash goes to the audit chain.
    from rights.certificate import refusal_notice_write

    request.certificate_path, request.certificate_sha256 = refusal_notice_write(request=request)
    request.save(update_fields=["certificate_path", "certificate_sha256", "updated_at"])
    audit_event_record(
        actor=actor, action="erasure.refusal_notice_issued", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref,
        details={"sha256": request.certificate_sha256, "path": request.certificate_path},
    )
    return request


@transaction.atomic
def erasure_request_override_remediation(
    *,
    erasure_request: ErasureRequest | int,
    model_version_id: Any,
    action: Any,
    justification: Any,
    actor: Any = None,
) -> ErasureRemediationOverride:
    """A DPO's per-model decision against the policy, with the reason, before execution.

    ``rely_on_dp`` keeps the model on the strength of its DP guarantee: allowed only for a
    model trained with DP, and recorded as an accepted risk, since a DP model is not
    anonymous by default (EDPB Opinion 28/2024).
    """
    from rights.selectors import erasure_request_impact

    request = _locked(erasure_request)
    if request.status not in (ErasureStatus.RECEIVED, ErasureStatus.VERIFIED):
        raise ServiceConflict(f"Remediation can be decided only before execution; this request is {request.status}.")
    action = _choice(action, RemediationAction, "action", "remediation")
    if not isinstance(justification, str) or not justification.strip():
        raise ServiceError("A written justification is required for a remediation override.", field="justification")
    try:
        model_version_id = int(model_version_id)
    except (TypeError, ValueError):
        raise ServiceError("model_version must be the id of a model version.", field="model_version")
    impact = erasure_request_impact(erasure_request=request)
    version = next((v for v in impact["model_versions"] if v["id"] == model_version_id), None)
    if version is None:
        raise ServiceError(
            f"Model version {model_version_id} was not trained on this person's data.", field="model_version"
        )
    if version["status"] not in ("active", "tainted"):
        raise ServiceError(
            f"Model version {model_version_id} is {version['status']}: its artifact is deleted, nothing to decide.",
            field="model_version",
        )
    if action == RemediationAction.RELY_ON_DP and (version["non_private"] or version["epsilon"] is None):
        raise ServiceError("This model was trained without differential privacy; there is no DP guarantee to rely on.", field="action")
    if action == RemediationAction.SISA_UNLEARN and not version["shards"]:
        raise ServiceError("Unlearning applies to SISA models trained on this person's data.", field="action")
    override, _ = ErasureRemediationOverride.objects.update_or_create(
        request=request, model_version_id=model_version_id,
        defaults={"action": action, "justification": justification.strip(), "decided_by": _user(actor),
                  "decided_at": timezone.now()},
    )
    details = {
        "model_version": model_version_id, "proposed": version["proposed_remediation"], "action": action,
        "justification": override.justification,
    }
    if action == RemediationAction.RELY_ON_DP:
        details["accepted_risk"] = (
            f"Model kept on its DP guarantee (ε={version['epsilon']}); a DP-trained model is not anonymous "
            "by default (EDPB Opinion 28/2024)."
        )
    audit_event_record(
        actor=actor, action="erasure_request.remediation_overridden", object_type="erasure_request",
        object_id=request.pk, subject_ref=request.subject_ref, details=details,
    )
    return override


@transaction.atomic
def erasure_request_execute_start(*, erasure_request: ErasureRequest | int, actor: Any = None) -> ErasureRequest:
    """Move a verified request to in progress and enqueue its execution after the commit.

    A request already in progress is enqueued again: execution resumes from its first
    step not done, so a worker that died half way is recovered by executing again.
    """

    request = _locked(erasure_request)
    if request.status == ErasureStatus.RECEIVED:
        raise ServiceConflict("The requester's identity is not verified yet; verify the request before executing it.")
    if request.status not in (ErasureStatus.VERIFIED, ErasureStatus.IN_PROGRESS):
        raise ServiceConflict(f"A {request.status} request cannot be executed.")
    resumed = request.status == ErasureStatus.IN_PROGRESS
    if not resumed:
        request.status = ErasureStatus.IN_PROGRESS
        request.execution_started_at = timezone.now()
        request.save(update_fields=["status", "execution_started_at", "updated_at"])
    audit_event_record(
        actor=actor, action="erasure_request.execution_resumed" if resumed else "erasure_request.execution_started",
        object_type="erasure_request", object_id=request.pk, subject_ref=request.subject_ref, details={},
    )
    erasure_request_dispatch_on_commit(request_id=request.pk)
    return request


def erasure_request_dispatch_on_commit(*, request_id: int) -> None:
    from rights import tasks

    task_dispatch_on_commit(
        tasks.execute_erasure_request, args=[request_id],
        outbox=ErasureRequest.objects.filter(pk=request_id),
    )


def erasure_requests_redispatch() -> int:
    """The outbox sweep of erasures in progress: execution never sent, sent long ago and
    never started, or left by a worker that died (lease lapsed and not re-sent since).
    A request with a failed step is left for the DPO: it failed for a reason a retry
    would meet again (it is listed as failed in the admin and the API)."""
    from rights import tasks

    now = timezone.now()
    stalled = (
        ErasureRequest.objects.filter(status=ErasureStatus.IN_PROGRESS)
        .filter(
            Q(dispatched_at__isnull=True, execution_started_at__lt=unsent_cutoff(now))
            | Q(heartbeat_at__isnull=True, dispatched_at__lt=unstarted_cutoff(now))
            | Q(heartbeat_at__lt=lease_cutoff(now))
            & (Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("heartbeat_at")))
        )
        .exclude(steps__status=ErasureStepStatus.FAILED)
        .values_list("pk", flat=True)
        .distinct()
    )
    return tasks_redispatch(
        tasks.execute_erasure_request, outbox=ErasureRequest.objects, stalled=[(pk, None, None) for pk in stalled]
    )


# --- Art. 17(1)(b): consent withdrawal opens a request ------------------------------


def _activity_purpose_codes_erasing_on_withdrawal() -> list[str]:
    from governance.models import ProcessingActivity

    return list(
        ProcessingActivity.objects.filter(erasure_on_consent_withdrawal=True, purposes__isnull=False)
        .values_list("purposes__code", flat=True)
        .distinct()
    )


def _related(code: str, activity_codes: list[str]) -> bool:
    return any(code == c or code.startswith(c + ".") or c.startswith(code + ".") for c in activity_codes)


def _open_for_withdrawals(rows, *, actor: Any) -> int:
    """Open one 17(1)(b) request per person from ``rows`` of (subject_id, pseudonym,
    reference, purpose_id, occurred_at), skipping people with a request already open."""
    first_per_subject: dict[int, tuple] = {}
    for subject_id, pseudonym, reference, purpose_id, occurred_at in rows:
        first_per_subject.setdefault(subject_id, (pseudonym, reference, purpose_id, occurred_at))
    if not first_per_subject:
        return 0
    hashes = {sid: erasure_receipt_hash(pseudonym=v[0]) for sid, v in first_per_subject.items()}
    already_open = set(
        ErasureRequest.objects.filter(identifier_receipt_hash__in=hashes.values(), status__in=OPEN_STATUSES)
        .values_list("identifier_receipt_hash", flat=True)
    )
    holidays = deadlines.configured_holidays()
    new = []
    for subject_id, (_, reference, purpose_id, occurred_at) in first_per_subject.items():
        if hashes[subject_id] in already_open:
            continue
        new.append(
            ErasureRequest(
                subject_id=subject_id, subject_ref=reference, identifier_receipt_hash=hashes[subject_id],
                channel=ErasureChannel.CONSENT_WITHDRAWAL, received_at=occurred_at, regime=ErasureRegime.EU,
                ground=ErasureGround.CONSENT_WITHDRAWN, purpose_id=purpose_id,
                due_at=deadlines.due_date(
                    regime=ErasureRegime.EU, received_on=timezone.localtime(occurred_at).date(), holidays=holidays
                ),
            )
        )
    # Two batches withdrawing the same people at once both reach this insert; the one
    # open request per person (unique_open_erasure_request) makes the later one a no-op
    # instead of an IntegrityError that would fail its batch.
    ErasureRequest.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    if new:
        opened = ErasureRequest.objects.filter(
            identifier_receipt_hash__in=[r.identifier_receipt_hash for r in new], status__in=OPEN_STATUSES
        ).count()
        audit_event_record(
            actor=actor, action="erasure_request.opened_on_withdrawal", object_type="erasure_request_batch",
            subject_ref=new[0].subject_ref if len(new) == 1 else None,
            details={"open_for_people": opened, "skipped_already_open": len(first_per_subject) - len(new),
                     "ground": ErasureGround.CONSENT_WITHDRAWN},
        )
    return len(new)


@transaction.atomic
def erasure_requests_open_for_withdrawals(*, consent_event_ids: list[str], actor: Any = None) -> int:
    """Open Art. 17(1)(b) requests for the withdrawals among ``consent_event_ids`` whose
    purpose belongs to a processing activity configured to erase on withdrawal.

    Set-based: one query for the withdrawals, one for the open requests, one bulk insert
    and one audit event for the batch. A person with a request already open is skipped.
    Returns how many requests were opened.
    """
    from governance.models import ConsentEvent

    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not activity_codes or not consent_event_ids:
        return 0
    rows = (
        ConsentEvent.objects.filter(event_id__in=consent_event_ids, action="withdrawn")
        .order_by("subject_id", "occurred_at")
        .values_list("subject_id", "subject__pseudonym", "subject__reference", "purpose_id", "purpose__code", "occurred_at")
    )
    return _open_for_withdrawals(
        [(sid, p, ref, pid, at) for sid, p, ref, pid, code, at in rows if _related(code, activity_codes)], actor=actor
    )


@transaction.atomic
def erasure_requests_open_for_withdrawals_sweep(*, actor: Any = None) -> int:
    """Open Art. 17(1)(b) requests for every person whose latest consent event for a purpose
    of an activity that erases on withdrawal is a withdrawal not yet answered by a request.

    The consent ingest opens requests for its own new withdrawals
    (``erasure_requests_open_for_withdrawals``); this sweep catches up withdrawals recorded
    before an activity was configured to erase on withdrawal. Idempotent: a withdrawal
    counts as answered once any erasure request for the person was received at or after
    it (opened from it, sent by the person, rejected or executed). One window query, one
    bulk insert.
    """
    from governance.models import ConsentEvent, Purpose

    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not activity_codes:
        return 0
    purpose_ids = [pid for pid, code in Purpose.objects.values_list("id", "code") if _related(code, activity_codes)]
    if not purpose_ids:
        return 0
    events, requests = ConsentEvent._meta.db_table, ErasureRequest._meta.db_table
    placeholders = ", ".join(["%s"] * len(purpose_ids))
    sql = f"""
        SELECT e.id FROM (
            SELECT id, subject_id, action, occurred_at,
                   ROW_NUMBER() OVER (PARTITION BY subject_id, purpose_id ORDER BY occurred_at DESC, id DESC) AS rn
            FROM {events} WHERE purpose_id IN ({placeholders})
        ) e
        WHERE e.rn = 1 AND e.action = 'withdrawn'
          AND NOT EXISTS (SELECT 1 FROM {requests} r WHERE r.subject_id = e.subject_id AND r.received_at >= e.occurred_at)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, purpose_ids)
        event_ids = [row[0] for row in cursor.fetchall()]
    rows: list[tuple] = []
    for start in range(0, len(event_ids), 5000):  # bounded IN lists (SQLite's variable limit)
        rows += ConsentEvent.objects.filter(pk__in=event_ids[start : start + 5000]).values_list(
            "subject_id", "subject__pseudonym", "subject__reference", "purpose_id", "occurred_at"
        )
    rows.sort(key=lambda r: (r[0], r[4]))
    return _open_for_withdrawals(rows, actor=actor)


@transaction.atomic
def erasure_request_open_for_withdrawal(
    *, subject: Any, purpose: Any, occurred_at: datetime, actor: Any = None
) -> ErasureRequest | None:
    """Open an Art. 17(1)(b) request for one withdrawal, if the purpose's activity erases
    on withdrawal. Returns the request opened, the one already open, or None."""
    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not _related(purpose.code, activity_codes):
        return None
    receipt_hash = erasure_receipt_hash(pseudonym=subject.pseudonym)
    existing = ErasureRequest.objects.filter(identifier_receipt_hash=receipt_hash, status__in=OPEN_STATUSES).first()
    if existing is not None:
        return existing
    request = ErasureRequest.objects.create(
        subject=subject, subject_ref=subject.reference, identifier_receipt_hash=receipt_hash,
        channel=ErasureChannel.CONSENT_WITHDRAWAL, received_at=occurred_at, regime=ErasureRegime.EU,
        ground=ErasureGround.CONSENT_WITHDRAWN, purpose=purpose,
        due_at=deadlines.due_date(
            regime=ErasureRegime.EU, received_on=timezone.localtime(occurred_at).date(),
            holidays=deadlines.configured_holidays(),
        ),
    )
    audit_event_record(
        actor=actor, action="erasure_request.opened_on_withdrawal", object_type="erasure_request",
        object_id=request.pk, subject_ref=request.subject_ref,
        details={**_request_details(request), "purpose": purpose.code},
    )
    return request
