"""The DPO's decisions on a request before execution: verify the requester's identity,
extend the deadline, refuse under an Art. 17(3) exemption (with the Art. 12(4) notice),
override the remediation proposed for a model."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights import deadlines
from rights.models import ErasureRemediationOverride, ErasureRequest, ErasureStatus, RefusalGround, RemediationAction
from rights.services._common import _choice, _locked, _moment, _user


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
