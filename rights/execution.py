"""Executing an erasure, step by step, so that a run killed half way can be run again.

Each step is one transaction that does its work and marks its ErasureStep row done; a
step already done is skipped. The request row is locked at the start of every step, so
two executions of the same request (a redelivered task and a manual retry) queue behind
each other and the second only finds done steps.

Order: plan (what the erasure touches, captured before anything is deleted) → amend the
snapshots → delete the records → taint the models trained before the amendments →
remediate each model lineage (through mlops: serialised per lineage, starting from the
version live now, coalesced with other erasures) → delete consent events → record Art. 19
notifications → delete the subject row (keeping the receipt) → verify every claim against
the database → certificate, which completes the request.

Any number of requests may execute at once: the amendments of one snapshot queue on its
row (provenance), and a lineage is remediated by one worker at a time (mlops), so the
last version of every model holds none of the people whose requests executed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from governance.leases import lease_heartbeat, lease_refuse_if_held
from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.models import (
    ErasureReceipt,
    ErasureRequest,
    ErasureStatus,
    ErasureStep,
    ErasureStepStatus,
    RecipientNotification,
    RemediationAction,
)
from rights.selectors import LIVE_MODEL_STATUSES

logger = logging.getLogger(__name__)

ACTOR = "erasure-worker"
PLAN = "plan"
TAINT = "taint_models"
AMEND = "amend_snapshots"
DELETE_RECORDS = "delete_records"
REMEDIATE_PREFIX = "remediate_lineage_"
MAX_REMEDIATION_ROUNDS = 5
DELETE_ARTIFACTS = "delete_old_artifacts"
DELETE_CONSENT = "delete_consent_events"
NOTIFY = "notify_recipients"
DELETE_SUBJECT = "delete_subject"
VERIFY = "verify_claims"
CERTIFICATE = "certificate"


def _audit(request: ErasureRequest, action: str, details: dict) -> int:
    event = audit_event_record(
        actor=ACTOR, action=action, object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref, details=details,
    )
    return event.position


def _record_failure(request_id: int, name: str, error: str) -> None:
    with transaction.atomic():
        step, _ = ErasureStep.objects.get_or_create(
            request_id=request_id, name=name, defaults={"started_at": timezone.now()}
        )
        if step.status != ErasureStepStatus.DONE:
            step.status = ErasureStepStatus.FAILED
            step.error = error[:4000]
            step.attempts += 1
            step.save(update_fields=["status", "error", "attempts"])


def _run_step(request_id: int, name: str, work: Callable[[ErasureRequest], dict]) -> dict:
    """Run ``work`` once: skipped if its step is done, otherwise done atomically with it."""
    try:
        with transaction.atomic():
            request = ErasureRequest.objects.select_for_update().get(pk=request_id)
            step = ErasureStep.objects.filter(request=request, name=name).first()
            if step is not None and step.status == ErasureStepStatus.DONE:
                return step.details
            started = timezone.now()
            details = work(request)
            ErasureStep.objects.update_or_create(
                request=request, name=name,
                defaults={
                    "status": ErasureStepStatus.DONE, "started_at": step.started_at if step else started,
                    "finished_at": timezone.now(), "details": details, "error": "",
                    "attempts": (step.attempts if step else 0) + 1,
                },
            )
            return details
    except Exception as exc:
        _record_failure(request_id, name, _error_text(exc))
        raise


# --- Steps ---------------------------------------------------------------------------


def _plan(request: ErasureRequest) -> dict:
    """Everything later steps need, captured while the subject row still exists."""
    from mlops.models import ModelVersion
    from rights.selectors import erasure_request_impact, subject_processing_activities, subject_recipients

    if request.subject_id is None:
        raise ServiceConflict("The request has no subject left to erase and no plan was recorded.")
    impact = erasure_request_impact(erasure_request=request)
    paths = dict(
        ModelVersion.objects.filter(pk__in=[m["id"] for m in impact["model_versions"]]).values_list("pk", "artifact_path")
    )
    dataset_ids = [d["id"] for d in impact["datasets"]]
    recipients = subject_recipients(subject_id=request.subject_id, dataset_ids=dataset_ids)
    snapshot_records = {s["id"]: s["records"] for s in impact["snapshots"]}
    models = []
    for m in impact["model_versions"]:
        models.append({
            **m, "artifact_path": paths.get(m["id"], ""),
            "erased_rows": snapshot_records.get(m["snapshot_id"], 0),
        })
    return {
        "subject_id": request.subject_id,
        "datasets": impact["datasets"],
        "snapshots": impact["snapshots"],
        "training_runs": impact["training_runs"],
        "model_versions": models,
        "consent_events": impact["consent_events"],
        "recipients": recipients,
        "processing_activities": list(
            subject_processing_activities(subject_id=request.subject_id, dataset_ids=dataset_ids).values_list("pk", flat=True)
        ),
        "totals": impact["totals"],
    }


def _amend(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from provenance.models import AmendmentReason, DataRecord
        from provenance.services import snapshot_records_remove

        amendments = snapshot_records_remove(
            records=DataRecord.objects.filter(subject_id=plan["subject_id"]), reason=AmendmentReason.ERASURE,
            erasure_request_id=request.pk, details={"erasure_request": request.pk}, subject_ids=[plan["subject_id"]],
        )
        rows = [
            {"snapshot": a.snapshot_id, "sequence": a.sequence, "records_removed": a.records_removed,
             "previous_root": a.previous_root, "new_root": a.new_root, "amendment": a.pk}
            for a in amendments
        ]
        position = _audit(request, "erasure.snapshots_amended", {
            "snapshots": len(rows), "membership_rows_removed": sum(r["records_removed"] for r in rows),
            "amendments": [{"snapshot": r["snapshot"], "sequence": r["sequence"], "new_root": r["new_root"]}
                           for r in rows],
        })
        return {"amendments": rows, "audit_positions": [position]}

    return work


def _delete_records(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from provenance.services import subject_records_delete

        deleted = subject_records_delete(subject_id=plan["subject_id"])
        position = _audit(request, "erasure.records_deleted", {
            "records": deleted["records_deleted"],
            "datasets": [{"dataset": int(k), "records": v} for k, v in deleted["per_dataset"].items()],
        })
        return {**deleted, "audit_positions": [position]}

    return work


def _amendment_keys(amended: dict) -> list[dict[str, int]]:
    return [{"snapshot": a["snapshot"], "sequence": a["sequence"]} for a in amended["amendments"]]


def _taint(amended: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from mlops.services import model_versions_taint_trained_before

        result = model_versions_taint_trained_before(
            amendments=_amendment_keys(amended), reason=f"by erasure request {request.pk}: trained on data since erased (Art. 17)",
        )
        position = _audit(request, "erasure.models_tainted", {
            "model_versions": result["tainted"], "count": len(result["newly_tainted"]),
            "training_runs_cancelled": result["training_runs_cancelled"],
        })
        return {**result, "audit_positions": [position]}

    return work


def _lineage_actions(plan: dict) -> dict[str, str]:
    """The remediation the DPO's policy (or override) sets for each lineage of the plan:
    that of its live version; lineages with none live only have files to delete.

    Without an override a SISA lineage is unlearned even when the person was held out of
    its shards (nothing is retrained then, but a version that has seen the amended snapshot
    replaces it); mlops retrains a head that is not SISA whatever is asked."""
    actions: dict[str, str] = {}
    for model in plan["model_versions"]:
        if model["status"] in LIVE_MODEL_STATUSES:
            action = model["remediation"]
            if model.get("sisa") and not model.get("override"):
                action = RemediationAction.SISA_UNLEARN
            actions[model["name"]] = action
        else:
            actions.setdefault(model["name"], "")
    return actions


def _erased_records(request_id: int, subject_id: int) -> list[dict]:
    """The person's records, read just before they are deleted and then held only in this
    worker's memory, so the unlearning check can score them against the remediated models.
    Empty once deleted (a worker that restarts after the deletion has nothing to score)."""
    from provenance.models import DataRecord

    if ErasureStep.objects.filter(request_id=request_id, name=DELETE_RECORDS, status=ErasureStepStatus.DONE).exists():
        return []
    return [
        {"dataset_id": d, "features": f, "label": lab}
        for d, f, lab in DataRecord.objects.filter(subject_id=subject_id).values_list("dataset_id", "features", "label")
    ]


def _unlearning_check(request_id: int, result: dict, erased: list[dict]) -> dict:
    """The figures of the check, or why it was not made; never the records."""
    from mlops.services import unlearning_check_record

    if result.get("outcome") not in ("unlearned", "retrained"):
        return {}
    if not erased:
        return {"unlearning_check": {"status": "not_run", "reason": (
            "the person's records were deleted before this worker reached the check (a worker restarted "
            "in between), and they are kept nowhere to score")}}
    try:
        check = unlearning_check_record(
            model_version_id=result["model_version"], previous_version_id=result.get("replaced_model_version"),
            erasure_request_id=request_id, records=erased,
        )
    except Exception as exc:
        # The erasure itself must complete; a check that could not be computed says so.
        logger.exception("unlearning check of erasure request %s failed", request_id)
        return {"unlearning_check": {"status": "not_run", "reason": _error_text(exc)}}
    if check is None:
        return {"unlearning_check": {"status": "not_run", "reason": "none of the person's records was a labelled "
                                                                   "record of this model's dataset"}}
    return {"unlearning_check": {
        "status": "passed" if check.passed else "failed", "check": check.pk, "records": check.n_records,
        "new_score": check.new_score, "reference_score": check.reference_score,
        "previous_score": check.previous_score, "threshold": check.threshold, "reference": check.reference,
        "text": check.summary_text(),
    }}


class ErasureWaiting(Exception):
    """Raised out of the lineage steps when a lineage trained outside the ledger waits for
    its owner: the request stays in progress, nothing later runs (no certificate), and the
    execution resumes when the owner reports a retrained version or the lineage is retired."""

    def __init__(self, lineages: list[dict]):
        super().__init__(", ".join(item["name"] for item in lineages))
        self.lineages = lineages


# How a lineage that waited for its owner ended, for the step and the certificate.
AFTER_WAITING = {"clean": "retrained_by_owner", "no_live_version": "retired_while_waiting"}


def _lineage_waiting(request_id: int, step_name: str, result: dict) -> dict:
    """Record (once) that ``result``'s lineage waits for its owner; the step stays open."""
    with transaction.atomic():
        request = ErasureRequest.objects.select_for_update().get(pk=request_id)
        step = ErasureStep.objects.select_for_update().get(request=request, name=step_name)
        if step.status == ErasureStepStatus.WAITING:
            return step.details
        details = {
            **{k: v for k, v in result.items() if k in ("name", "action", "outcome", "model_version", "version",
                                                         "owner", "executor")},
            "waiting_since": timezone.now().isoformat(),
        }
        position = _audit(request, "erasure.lineage_awaiting_owner", details)
        step.status = ErasureStepStatus.WAITING
        step.details = {**details, "audit_positions": [position]}
        step.error = ""
        step.save(update_fields=["status", "details", "error"])
        return step.details


def _remediate_lineage(request_id: int, step_name: str, name: str, action: str, erased: list[dict]) -> dict:
    """One lineage, outside any transaction (mlops holds the lineage while it trains), then
    recorded in a step of its own. A worker killed in between finds, on retry, the lineage
    clean and records the version that stands for it. A lineage trained outside the ledger
    that must be retrained leaves its step waiting for the owner (``ErasureWaiting``)."""
    from mlops.services import model_lineage_remediate

    step, _ = ErasureStep.objects.get_or_create(
        request_id=request_id, name=step_name, defaults={"started_at": timezone.now()}
    )
    if step.status == ErasureStepStatus.DONE:
        return step.details
    waited = step.details if step.status == ErasureStepStatus.WAITING else None
    try:
        result = model_lineage_remediate(
            name=name, action=action or RemediationAction.SISA_UNLEARN, erasure_request_id=request_id,
            reason=f"erasure request {request_id}",
        )
    except Exception as exc:
        _record_failure(request_id, step_name, _error_text(exc))
        raise
    if result.get("outcome") == "awaiting_owner":
        return _lineage_waiting(request_id, step_name, result)
    if waited is not None:
        result = {**result, "outcome": AFTER_WAITING.get(result["outcome"], result["outcome"]),
                  "waited_for_owner": {k: waited.get(k) for k in ("model_version", "version", "owner",
                                                                  "waiting_since")}}
    check = _unlearning_check(request_id, result, erased)

    def work(request: ErasureRequest) -> dict:
        position = _audit(request, f"erasure.lineage_{result['outcome']}", {
            **{k: v for k, v in result.items() if k in (
                "name", "action", "outcome", "model_version", "version", "replaced_model_version", "new_training_run",
                "epsilon", "retrained_shards", "waited_for_owner")},
            **{k: {f: v for f, v in c.items() if f != "text"} for k, c in check.items()},
        })
        return {**result, **check, "planned_action": action, "audit_positions": [position]}

    return _run_step(request_id, step_name, work)


def _remediate_all(request_id: int, plan: dict, amended: dict, tainted: dict, erased: list[dict]) -> list[dict]:
    """Every lineage holding the person: the plan's and those tainted; then, in further
    rounds, any whose live version still reads as trained before the amendments (a run
    that finished meanwhile on data read earlier), until none is left. Lineages waiting
    for their owner end the execution here (``ErasureWaiting``) once the others are done."""
    from mlops.selectors import live_versions_trained_before

    actions = _lineage_actions(plan)
    for name in tainted.get("lineages", []):
        # Not in the plan (registered since): the cheapest exact remediation of its head.
        actions.setdefault(name, RemediationAction.SISA_UNLEARN)
    results: dict[str, dict] = {}
    todo = sorted(actions)
    for round_ in range(MAX_REMEDIATION_ROUNDS):
        for name in todo:
            step_name = f"{REMEDIATE_PREFIX}{name}" if round_ == 0 else f"{REMEDIATE_PREFIX}{round_}:{name}"
            results[name] = _remediate_lineage(request_id, step_name[:100], name, actions.get(name, ""), erased)
        waiting = [r for r in results.values() if r.get("outcome") == "awaiting_owner"]
        if waiting:
            raise ErasureWaiting(waiting)
        kept = {n for n, r in results.items() if str(r.get("outcome", "")).startswith("kept_on_dp")}
        todo = sorted({v["name"] for v in live_versions_trained_before(amendments=_amendment_keys(amended))} - kept)
        if not todo:
            break
    return [results[name] for name in sorted(results)]


def _error_text(exc: Exception) -> str:
    """The failure as the DPO sees it: its kind and message, never a server path."""
    import re

    from django.conf import settings

    text = f"{type(exc).__name__}: {exc}"
    for root in {str(settings.BASE_DIR), str(getattr(settings, "STORAGE_ROOT", "")), str(settings.REPORT_ROOT)}:
        if root and root != ".":
            text = text.replace(root, "…")
    return re.sub(r"(/[\w.\-]+){2,}", "…", text)


def _delete_consent(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from governance.services import consent_events_erase

        deleted = consent_events_erase(subject_id=plan["subject_id"])
        position = _audit(request, "erasure.consent_events_deleted", {"count": deleted})
        return {"consent_events_deleted": deleted, "audit_positions": [position]}

    return work


def _notify(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        # Art. 19: the recipients are listed to be told. The ledger sends no message, so it
        # records no moment of telling: the DPO records each (rights.services.recipients).
        RecipientNotification.objects.bulk_create([
            RecipientNotification(
                request=request, recipient=r["name"], third_country=r["third_country"],
                processing_activity_id=r["processing_activity"],
            )
            for r in plan["recipients"]
        ], ignore_conflicts=True)
        names = [r["name"] for r in plan["recipients"]]
        position = _audit(request, "erasure.recipients_to_notify", {"recipients": names, "article": "19"})
        return {"recipients": names, "audit_positions": [position]}

    return work


def _delete_subject(plan: dict, counts: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from governance.services import data_subject_erase

        position = _audit(request, "erasure.subject_deleted", {
            "records_deleted": counts["records_deleted"], "consent_events_deleted": counts["consent_events_deleted"],
        })
        ErasureReceipt.objects.get_or_create(
            request=request,
            defaults={
                "identifier_receipt_hash": request.identifier_receipt_hash,
                "records_deleted": counts["records_deleted"], "datasets": len(plan["datasets"]),
                "snapshots_amended": counts["snapshots_amended"],
                "membership_rows_removed": counts["membership_rows_removed"],
                "models_remediated": counts["models_remediated"],
                "consent_events_deleted": counts["consent_events_deleted"],
                "recipients_to_tell": len(plan["recipients"]), "completed_at": timezone.now(),
            },
        )
        by_model = data_subject_erase(subject_id=plan["subject_id"])
        return {"deleted": by_model, "audit_positions": [position]}

    return work


def _certificate(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from rights.certificate import certificate_write

        request.completed_at = timezone.now()
        relative, digest, checkpoint = certificate_write(request=request, plan=plan)
        request.certificate_path = relative
        request.certificate_sha256 = digest
        request.status = ErasureStatus.COMPLETED
        request.outcome = (
            "Your personal data were erased from every dataset, snapshot and model that held them; "
            "the certificate lists what was done."
        )
        request.save(update_fields=[
            "certificate_path", "certificate_sha256", "status", "completed_at", "outcome", "updated_at",
        ])
        position = _audit(request, "erasure.certificate_issued", {
            "sha256": digest, "path": relative,
            "checkpoint": {"position": checkpoint["position"], "key_id": checkpoint["key_id"]},
        })
        _audit(request, "erasure_request.completed", {})
        # The JSON form of the certificate (the request's steps) carries the same checkpoint.
        return {"path": relative, "sha256": digest, "audit_positions": [position], "checkpoint": checkpoint}

    return work


# --- The runner -----------------------------------------------------------------------


def _delete_artifacts(remediated: list[dict]) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        # The files were removed by mlops under each lineage's lock, once no live version
        # pointed at them; this step records them for the certificate.
        removed = [item for r in remediated for item in r.get("files_removed", [])]
        position = _audit(request, "erasure.artifacts_deleted", {"artifacts": removed})
        return {"artifacts": removed, "audit_positions": [position]}

    return work


def _verify(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from rights.verification import erasure_claims_verify

        checks = erasure_claims_verify(request=request, plan=plan)
        failed = [c for c in checks if not c["ok"]]
        position = _audit(request, "erasure.claims_verified" if not failed else "erasure.claims_failed", {
            "checks": len(checks), "failed": [c["claim"] for c in failed][:20],
        })
        if failed:
            # The step's transaction (and its audit event) rolls back; _run_step records the
            # failure on the step, and the request stays in progress for the DPO to see
            # and to retry once the cause is fixed.
            raise ServiceConflict(
                "The certificate is withheld: " + "; ".join(f"{c['claim']}: {c['detail']}" for c in failed[:5])
            )
        return {"checks": checks, "audit_positions": [position]}

    return work


# --- The runner -----------------------------------------------------------------------


def erasure_request_execute(*, request_id: int) -> dict:
    """Run (or resume) every step of an erasure; returns the request's final state."""
    request = ErasureRequest.objects.filter(pk=request_id).first()
    if request is None:
        raise ServiceError(f"Erasure request {request_id} does not exist.", field="erasure_request")
    if request.status == ErasureStatus.COMPLETED:
        return {"request": request_id, "status": request.status, "certificate_sha256": request.certificate_sha256}
    if request.status != ErasureStatus.IN_PROGRESS:
        raise ServiceConflict(f"Erasure request {request_id} is {request.status}; only a request in progress executes.")
    _lease_take(request_id)
    try:
        with lease_heartbeat(ErasureRequest.objects.filter(pk=request_id, status=ErasureStatus.IN_PROGRESS)):
            return _execute_steps(request_id)
    except ErasureWaiting as waiting:
        return {"request": request_id, "status": ErasureStatus.IN_PROGRESS,
                "waiting_for_owner": [{k: item.get(k) for k in ("name", "model_version", "version", "owner")}
                                      for item in waiting.lineages]}
    finally:
        # Released on every way out but death, so a retry after a failure starts at once;
        # a worker that dies leaves it to lapse, and the redispatch sweeper takes over.
        try:
            ErasureRequest.objects.filter(pk=request_id).update(heartbeat_at=None)
        except Exception:
            logger.warning("lease of erasure request %s not released; it lapses", request_id, exc_info=True)


def _lease_take(request_id: int) -> None:
    """One execution at a time: a second one (a manual retry, a redelivered or re-sent task)
    waits for the first's lease instead of blocking a worker behind its locks."""
    with transaction.atomic():
        request = ErasureRequest.objects.select_for_update().get(pk=request_id)
        lease_refuse_if_held(request.heartbeat_at, what=f"erasure request {request_id}")
        ErasureRequest.objects.filter(pk=request_id).update(heartbeat_at=timezone.now())


def _execute_steps(request_id: int) -> dict:
    plan = _run_step(request_id, PLAN, _plan)
    amended = _run_step(request_id, AMEND, _amend(plan))
    erased = _erased_records(request_id, plan["subject_id"])
    deleted = _run_step(request_id, DELETE_RECORDS, _delete_records(plan))
    tainted = _run_step(request_id, TAINT, _taint(amended))
    remediated = _remediate_all(request_id, plan, amended, tainted, erased)
    del erased  # the last copy of the person's records goes with it
    _run_step(request_id, DELETE_ARTIFACTS, _delete_artifacts(remediated))
    consent = _run_step(request_id, DELETE_CONSENT, _delete_consent(plan))
    _run_step(request_id, NOTIFY, _notify(plan))
    counts = {
        "records_deleted": deleted["records_deleted"],
        "snapshots_amended": len(amended["amendments"]),
        "membership_rows_removed": sum(a["records_removed"] for a in amended["amendments"]),
        "models_remediated": sum(1 for r in remediated if r["outcome"] != "no_live_version"),
        "consent_events_deleted": consent["consent_events_deleted"],
    }
    _run_step(request_id, DELETE_SUBJECT, _delete_subject(plan, counts))
    _run_step(request_id, VERIFY, _verify(plan))
    cert = _run_step(request_id, CERTIFICATE, _certificate(plan))
    return {"request": request_id, "status": ErasureStatus.COMPLETED, "certificate_sha256": cert["sha256"], **counts}
