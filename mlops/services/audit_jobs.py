"""Privacy audits as work: which audits a model version gets, running one, and the audit
policy a version must pass before it becomes active.

Every registered version (trained, retrained or unlearned for an erasure) gets one job per
audit kind, created in the registering transaction and sent to Celery after the commit
(the job row is the outbox, as training runs are). A job runs under a lease, so a
redelivered message waits for a live worker and takes over a dead one's; a finished job
is never redone, and the result tables are unique per version, so two deliveries racing
each other leave one result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit, tasks_redispatch, unsent_cutoff, unstarted_cutoff
from governance.leases import lease_cutoff, lease_heartbeat, lease_refuse_if_held
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops.models import (
    AuditJobStatus,
    AuditKind,
    AuditPolicy,
    CanaryAudit,
    ModelStatus,
    ModelVersion,
    PrivacyAuditJob,
)
from mlops.services.status import model_versions_status_set

logger = logging.getLogger(__name__)

FINISHED = (AuditJobStatus.COMPLETED, AuditJobStatus.SKIPPED, AuditJobStatus.FAILED)


class AuditNotApplicable(Exception):
    """The audit cannot say anything about this version (the message says why)."""


def _runners() -> dict[str, Callable[..., Any]]:
    from mlops.services.audit_attribute import attribute_inference_audits_run
    from mlops.services.audit_canary import canary_audit_run
    from mlops.services.audit_lira import lira_audit_run

    return {
        AuditKind.LOSS: _loss_and_explanation_attacks,
        AuditKind.LIRA: lira_audit_run,
        AuditKind.CANARY: canary_audit_run,
        AuditKind.ATTRIBUTE: attribute_inference_audits_run,
    }


def _loss_and_explanation_attacks(*, model_version_id: int, on_progress: Callable[..., None]) -> str:
    """The loss attack, then the explanation-based attack on the same sample (both cheap:
    one forward pass, and one IG pass, over the audit's records). The explanation attack
    failing does not fail the loss audit: its absence withholds attributions where the
    output policy asks for it (``selectors.output_policy_for``), and the note says why."""
    from mlops.services import DATABASE_FAULTS
    from mlops.services.audits import membership_inference_audit_run
    from mlops.services.explanations import explanation_attack_run

    membership_inference_audit_run(model_version_id=model_version_id)
    try:
        explanation_attack_run(model_version_id=model_version_id, on_progress=on_progress)
    except DATABASE_FAULTS:
        raise
    except Exception as exc:
        logger.exception("explanation attack against model version %s failed", model_version_id)
        return f"The explanation-based attack could not run: {type(exc).__name__}: {exc}"[:2000]
    return ""


def audit_kinds_enabled() -> list[str]:
    """The audits every new version gets; LiRA and the canary run cost trainings, so
    settings can turn them off (``MLOPS_LIRA_REFERENCES=0``, ``MLOPS_CANARY_COUNT=0``)."""
    kinds = [AuditKind.LOSS, AuditKind.ATTRIBUTE]
    if settings.MLOPS_LIRA_REFERENCES > 0:
        kinds.append(AuditKind.LIRA)
    if settings.MLOPS_CANARY_COUNT > 0:
        kinds.append(AuditKind.CANARY)
    return kinds


def model_version_audits_plan(*, model_version: ModelVersion, kinds: list[str] | None = None) -> list[PrivacyAuditJob]:
    """Create the version's audit jobs (those not there yet) and send them after the commit.

    Call inside the registering transaction. Kinds a policy requires are always planned,
    whatever the settings turn off, so a version under a policy cannot wait forever.
    """
    wanted = set(kinds or audit_kinds_enabled()) | set(policy_required_kinds(policies=audit_policies_for(
        model_version=model_version)))
    existing = set(PrivacyAuditJob.objects.filter(model_version=model_version).values_list("kind", flat=True))
    jobs = [
        PrivacyAuditJob.objects.create(model_version=model_version, kind=kind)
        for kind in AuditKind.values if kind in wanted and kind not in existing
    ]
    from mlops.tasks import privacy_audit

    for job in jobs:
        task_dispatch_on_commit(privacy_audit, args=[job.pk], outbox=PrivacyAuditJob.objects.filter(pk=job.pk))
    if jobs:
        # The logic summary (issue 19) goes with a new version's first audits: computed once.
        from mlops.services.explanations import model_explanation_summary_queue

        model_explanation_summary_queue(model_version=model_version)
    return jobs


def privacy_audit_job_run(
    *, job_id: int, on_progress: Callable[[dict], None] | None = None,
) -> PrivacyAuditJob | None:
    """Run one audit job; a finished job is returned as it is, a deleted one (its version
    went with its lineage's files) is None.

    Raises ``LeaseHeld`` while another live worker runs it. The audit's own service stores
    its result (idempotently); this records the job's state and then applies the audit
    policy to the version.
    """
    with transaction.atomic():
        # of=self: a select_related row must not be locked too (lock order: version, then
        # the audit-chain head, as registration takes them).
        job = PrivacyAuditJob.objects.select_for_update(of=("self",)).select_related("model_version").filter(
            pk=job_id).first()
        if job is None:
            return None
        if job.status in FINISHED:
            return job
        lease_refuse_if_held(job.heartbeat_at, what=f"privacy audit job {job.pk}")
        job.status, job.attempts = AuditJobStatus.RUNNING, job.attempts + 1
        job.started_at = job.heartbeat_at = timezone.now()
        job.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
    rows = PrivacyAuditJob.objects.filter(pk=job.pk)

    def progress(done: int, total: int, stage: str = "") -> None:
        meta = {"done": int(done), "total": int(total), "stage": stage}
        rows.update(progress=meta, heartbeat_at=timezone.now())
        if on_progress is not None:
            on_progress({"job": job.pk, "kind": job.kind, **meta})

    status, notes = AuditJobStatus.COMPLETED, ""
    try:
        with lease_heartbeat(rows):
            outcome = _runners()[job.kind](model_version_id=job.model_version_id, on_progress=progress)
        # A runner may answer a note for the DPO (e.g. "no feature is marked sensitive").
        notes = outcome if isinstance(outcome, str) else ""
    except (AuditNotApplicable, ServiceConflict) as exc:
        status, notes = AuditJobStatus.SKIPPED, str(exc)
    except Exception as exc:
        from mlops.services import DATABASE_FAULTS

        if isinstance(exc, DATABASE_FAULTS):
            # Retried by the task; the lease lapses so the retry takes the job over.
            rows.update(heartbeat_at=None)
            raise
        logger.exception("privacy audit job %s (%s) failed", job.pk, job.kind)
        status, notes = AuditJobStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
    with transaction.atomic():
        # The version first, then the job, then the audit chain: the order registration and
        # the policy take them in, so two transactions never wait on each other in a cycle.
        version_id = job.model_version_id
        ModelVersion.objects.select_for_update(of=("self",), no_key=True).filter(pk=version_id).first()
        job = PrivacyAuditJob.objects.select_for_update().get(pk=job.pk)
        if job.status not in FINISHED:
            job.status, job.notes, job.finished_at, job.heartbeat_at = status, notes, timezone.now(), None
            job.save(update_fields=["status", "notes", "finished_at", "heartbeat_at"])
            audit_event_record(
                actor=None, action=f"privacy_audit.{status}", object_type="model_version",
                object_id=version_id, details={"job": job.pk, "kind": job.kind, "notes": notes},
            )
        model_version_audit_policy_apply(model_version_id=version_id)
    return job


def privacy_audit_jobs_redispatch() -> int:
    """The outbox sweep of audit jobs: queued and never sent, sent long ago and never
    started, or running with a lapsed lease (its worker died)."""
    from mlops.tasks import privacy_audit

    now = timezone.now()
    lapsed = Q(status=AuditJobStatus.RUNNING) & (Q(heartbeat_at__lt=lease_cutoff(now)) | Q(
        heartbeat_at__isnull=True, started_at__lt=lease_cutoff(now)))
    stalled = PrivacyAuditJob.objects.filter(
        Q(status=AuditJobStatus.QUEUED, dispatched_at__isnull=True, created_at__lt=unsent_cutoff(now))
        | Q(status=AuditJobStatus.QUEUED, dispatched_at__lt=unstarted_cutoff(now))
        | (lapsed & (Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("heartbeat_at"))
                     | Q(dispatched_at__lt=unstarted_cutoff(now))))
    ).values_list("pk", flat=True)
    sent = tasks_redispatch(privacy_audit, outbox=PrivacyAuditJob.objects, stalled=[(pk, None, None) for pk in stalled])
    # The logic summaries sent with the audits ride this sweep (their message has no outbox row).
    from mlops.services.explanations import model_explanation_summaries_redispatch

    return sent + model_explanation_summaries_redispatch(now=now)


# --- Audit policy ---------------------------------------------------------------------


def audit_policies_for(*, model_version: ModelVersion) -> list[AuditPolicy]:
    """The policies in force for a version (see ``audit_policies_for_run``)."""
    return audit_policies_for_run(run=model_version.training_run)


def audit_policies_for_run(*, run) -> list[AuditPolicy]:
    """The policies in force for a run's versions: the latest of its dataset and the latest
    of the dataset's processing activity, each only if it sets a ceiling."""
    dataset = run.snapshot.dataset
    found = []
    for scope in (Q(dataset_id=dataset.pk), Q(processing_activity_id=dataset.processing_activity_id)):
        policy = AuditPolicy.objects.filter(scope).order_by("-created_at", "-id").first()
        if policy is not None and not policy.is_empty:
            found.append(policy)
    return found


def policy_required_kinds(*, policies: list[AuditPolicy]) -> list[str]:
    kinds = set()
    for policy in policies:
        if policy.max_tpr_at_1pct_fpr is not None or policy.max_auc is not None:
            kinds.add(AuditKind.LIRA)
        if policy.epsilon_lower_bound_within_claim:
            kinds.add(AuditKind.CANARY)
        if policy.max_attribute_gain is not None:
            kinds.add(AuditKind.ATTRIBUTE)
    return sorted(kinds)


def audit_policy_verdict(*, model_version: ModelVersion, policies: list[AuditPolicy] | None = None) -> dict[str, Any]:
    """``{"state": "none" | "waiting" | "passed" | "failed", "reasons": [...]}`` for a version
    against the policies in force (or those given)."""
    policies = audit_policies_for(model_version=model_version) if policies is None else policies
    if not policies:
        return {"state": "none", "reasons": []}
    jobs = {j.kind: j for j in PrivacyAuditJob.objects.filter(model_version=model_version)}
    reasons: list[str] = []
    waiting = False
    for kind in policy_required_kinds(policies=policies):
        job = jobs.get(kind)
        if job is None or job.status in (AuditJobStatus.QUEUED, AuditJobStatus.RUNNING):
            waiting = True
        elif job.status == AuditJobStatus.FAILED:
            reasons.append(f"{AuditKind(kind).label}: the audit failed ({job.notes})")
        elif job.status == AuditJobStatus.SKIPPED and kind != AuditKind.CANARY:
            reasons.append(f"{AuditKind(kind).label}: the audit could not run ({job.notes})")
    if waiting:
        return {"state": "waiting", "reasons": reasons}
    lira = model_version.membership_inference_audits.filter(attack="lira").first()
    canary = CanaryAudit.objects.filter(model_version=model_version).first()
    gains = list(model_version.attribute_inference_audits.all())
    for policy in policies:
        scope = "dataset" if policy.dataset_id else "processing activity"
        if lira is not None and policy.max_tpr_at_1pct_fpr is not None:
            if lira.tpr_at_1pct_fpr is None:
                reasons.append(f"{scope} policy: LiRA's TPR at 1% FPR could not be measured "
                               f"({lira.n_nonmembers:,} non-members; it needs ≥ 100)")
            elif lira.tpr_at_1pct_fpr > policy.max_tpr_at_1pct_fpr:
                reasons.append(f"{scope} policy: LiRA's TPR at 1% FPR is {lira.tpr_at_1pct_fpr:.1%}, "
                               f"above the ceiling of {policy.max_tpr_at_1pct_fpr:.1%}")
        if lira is not None and policy.max_auc is not None and lira.auc > policy.max_auc:
            reasons.append(f"{scope} policy: LiRA's AUC is {lira.auc:.2f}, above the ceiling of {policy.max_auc:.2f}")
        if policy.epsilon_lower_bound_within_claim and canary is not None and canary.flagged:
            reasons.append(f"{scope} policy: the canary audit's lower bound {canary.bound_text()} exceeds the claim")
        if policy.max_attribute_gain is not None:
            for audit in gains:
                if audit.gain > policy.max_attribute_gain:
                    reasons.append(f"{scope} policy: attribute inference of {audit.feature} gains {audit.gain:.1%} "
                                   f"over imputation, above the ceiling of {policy.max_attribute_gain:.1%}")
    return {"state": "failed" if reasons else "passed", "reasons": reasons}


def model_version_audit_policy_apply(*, model_version_id: int) -> str:
    """Move a version waiting for its audits to ``active`` or ``audit_failed`` once every
    audit its policy needs has finished; any other version is left as it is."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update(of=("self",), no_key=True).select_related(
            "training_run__snapshot__dataset").get(pk=model_version_id)
        if version.status != ModelStatus.PENDING_AUDIT:
            return version.status
        verdict = audit_policy_verdict(model_version=version)
        if verdict["state"] == "waiting":
            return version.status
        if verdict["state"] == "failed":
            model_versions_status_set(
                ids=[version.pk], status=ModelStatus.AUDIT_FAILED, reason="; ".join(verdict["reasons"]))
        else:
            model_versions_status_set(
                ids=[version.pk], status=ModelStatus.ACTIVE,
                reason="passed its audit policy" if verdict["state"] == "passed" else "")
        version.refresh_from_db(fields=["status", "status_reason", "status_changed_at"])
        audit_event_record(
            actor=None, action=f"model_version.audit_policy_{verdict['state']}", object_type="model_version",
            object_id=version.pk, details={"status": version.status, "reasons": verdict["reasons"]},
        )
        return version.status


def audit_policy_set(
    *, actor: Any, dataset=None, processing_activity=None, max_tpr_at_1pct_fpr: float | None = None,
    max_auc: float | None = None, epsilon_lower_bound_within_claim: bool = False,
    max_attribute_gain: float | None = None, reason: str = "",
) -> AuditPolicy:
    """Set the audit policy of a dataset or a processing activity (DPO only).

    A new row every time (the previous policy stays readable); all ceilings empty lifts the
    policy. Applies to versions registered from now on: a version already active stays so.
    """
    from governance.roles import DPO, has_role
    from mlops.services.config import _check_number

    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may set an audit policy.")
    if (dataset is None) == (processing_activity is None):
        raise ServiceError("dataset: give either a dataset or a processing activity, not both or neither", field="dataset")
    if max_tpr_at_1pct_fpr is not None:
        _check_number(max_tpr_at_1pct_fpr, "max_tpr_at_1pct_fpr", low=0.0, high=1.0, high_inclusive=True)
    if max_auc is not None:
        _check_number(max_auc, "max_auc", low=0.5, high=1.0, high_inclusive=True)
    if max_attribute_gain is not None:
        _check_number(max_attribute_gain, "max_attribute_gain", low=0.0, high=1.0, high_inclusive=True)
    if not isinstance(epsilon_lower_bound_within_claim, bool):
        raise ServiceError("epsilon_lower_bound_within_claim: must be true or false",
                           field="epsilon_lower_bound_within_claim")
    with transaction.atomic():
        policy = AuditPolicy.objects.create(
            dataset=dataset, processing_activity=processing_activity, max_tpr_at_1pct_fpr=max_tpr_at_1pct_fpr,
            max_auc=max_auc, epsilon_lower_bound_within_claim=epsilon_lower_bound_within_claim,
            max_attribute_gain=max_attribute_gain, set_by=actor if getattr(actor, "pk", None) else None,
            reason=str(reason or "")[:2000],
        )
        audit_event_record(
            actor=actor, action="audit_policy.set",
            object_type="dataset" if dataset is not None else "processing_activity",
            object_id=(dataset or processing_activity).pk,
            details={"policy": policy.pk, "max_tpr_at_1pct_fpr": max_tpr_at_1pct_fpr, "max_auc": max_auc,
                     "epsilon_lower_bound_within_claim": epsilon_lower_bound_within_claim,
                     "max_attribute_gain": max_attribute_gain, "reason": policy.reason},
        )
    return policy
