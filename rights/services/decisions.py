"""The DPO's decisions on a request before execution: verify the requester's identity,
extend the deadline, refuse under an Art. 17(3) exemption (with the Art. 12(4) notice),
override the remediation proposed for a model. Verification, extension and refusal follow
the rules every right shares (rights.services.workflow)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.models import ErasureRemediationOverride, ErasureRequest, ErasureStatus, RefusalGround, RemediationAction
from rights.selectors import LIVE_MODEL_STATUSES
from rights.services import workflow
from rights.services._common import _choice, _locked, _user


@transaction.atomic
def erasure_request_verify(*, erasure_request: ErasureRequest | int, method: str = "", actor: Any = None) -> ErasureRequest:
    """Record that the requester's identity was verified (Art. 12(6)); required before execution."""
    return workflow.request_verify(_locked(erasure_request), method=method, actor=actor, object_type="erasure_request")


@transaction.atomic
def erasure_request_extend(
    *,
    erasure_request: ErasureRequest | int,
    reasons: Any,
    subject_informed_at: Any,
    actor: Any = None,
    today: Any = None,
) -> ErasureRequest:
    """Extend the deadline once by two further months (Art. 12(3); CCPA: 45 days); the
    rules are rights.services.workflow.request_extend's, the same for every right."""
    return workflow.request_extend(
        _locked(erasure_request), reasons=reasons, subject_informed_at=subject_informed_at, actor=actor, today=today,
        object_type="erasure_request",
    )


ERASURE_NOT_DOING = "erasing your personal data"


def refusal_notice_text(*, request: ErasureRequest, ground: str, justification: str) -> str:
    """The Art. 12(4) notice: reasons, the right to complain and to a judicial remedy."""
    return workflow.refusal_notice(
        received_at=request.received_at, not_doing=ERASURE_NOT_DOING, ground_label=RefusalGround(ground).label,
        justification=justification,
    )


@transaction.atomic
def erasure_request_reject(
    *, erasure_request: ErasureRequest | int, refusal_ground: Any, justification: Any, actor: Any = None
) -> ErasureRequest:
    """Refuse under an Art. 17(3) exemption, with a justification and the Art. 12(4) notice."""
    request = workflow.request_refuse(
        _locked(erasure_request), refusal_ground=refusal_ground, grounds=RefusalGround,
        grounds_label="Art. 17(3) exemption", grounds_article="Art. 17(3)", justification=justification,
        not_doing=ERASURE_NOT_DOING, actor=actor, object_type="erasure_request",
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
    if version["status"] not in LIVE_MODEL_STATUSES:
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
