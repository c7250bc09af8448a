"""Executing an erasure, step by step, so that a run killed half way can be run again.

Each step is one transaction that does its work and marks its ErasureStep row done; a
step already done is skipped. The request row is locked at the start of every step, so
two executions of the same request (a redelivered task and a manual retry) queue behind
each other and the second only finds done steps. Files (old artifacts, the certificate)
are written or removed in steps whose repetition is harmless.

Order: plan (what the erasure touches, captured before anything is deleted) → taint the
models → amend the snapshots → delete the records → remediate each model → delete the
old artifacts → delete consent events → record Art. 19 notifications → delete the
subject row (keeping the receipt) → certificate, which completes the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

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

logger = logging.getLogger(__name__)

ACTOR = "erasure-worker"
PLAN = "plan"
TAINT = "taint_models"
AMEND = "amend_snapshots"
DELETE_RECORDS = "delete_records"
REMEDIATE_PREFIX = "remediate_model_"
DELETE_ARTIFACTS = "delete_old_artifacts"
DELETE_CONSENT = "delete_consent_events"
NOTIFY = "notify_recipients"
DELETE_SUBJECT = "delete_subject"
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
        _record_failure(request_id, name, f"{type(exc).__name__}: {exc}")
        raise


# --- Steps ---------------------------------------------------------------------------


def _plan(request: ErasureRequest) -> dict:
    """Everything later steps need, captured while the subject row still exists."""
    from governance.models import ConsentEvent, ProcessingActivity
    from mlops.models import ModelVersion
    from rights.selectors import erasure_request_impact

    if request.subject_id is None:
        raise ServiceConflict("The request has no subject left to erase and no plan was recorded.")
    impact = erasure_request_impact(erasure_request=request)
    paths = dict(
        ModelVersion.objects.filter(pk__in=[m["id"] for m in impact["model_versions"]]).values_list("pk", "artifact_path")
    )
    purpose_ids = ConsentEvent.objects.filter(subject_id=request.subject_id).values("purpose_id")
    activities = ProcessingActivity.objects.filter(
        Q(datasets__id__in=[d["id"] for d in impact["datasets"]]) | Q(purposes__id__in=purpose_ids)
    ).distinct().order_by("pk")
    recipients: dict[str, dict] = {}
    for activity in activities:
        for item in activity.recipients or []:
            name = str(item.get("name") or "").strip()
            if name and name not in recipients:
                recipients[name] = {
                    "name": name, "third_country": str(item.get("third_country") or ""), "processing_activity": activity.pk,
                }
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
        "recipients": list(recipients.values()),
        "processing_activities": [a.pk for a in activities],
        "totals": impact["totals"],
    }


def _taint(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from mlops.models import ModelStatus, ModelVersion, TrainingRun
        from mlops.services import training_run_cancel

        live = [m["id"] for m in plan["model_versions"] if m["status"] in ("active", "tainted")]
        count = ModelVersion.objects.filter(pk__in=live).update(
            status=ModelStatus.TAINTED, status_reason=f"trained on data erased under erasure request {request.pk}"
        )
        # A run queued or running on the person's snapshots may already have loaded their data.
        cancelled = []
        for run in TrainingRun.objects.filter(
            snapshot_id__in=[s["id"] for s in plan["snapshots"]], status__in=("queued", "running")
        ).order_by("pk"):
            training_run_cancel(run=run, actor=ACTOR)
            cancelled.append(run.pk)
        position = _audit(request, "erasure.models_tainted", {
            "model_versions": live, "count": count, "training_runs_cancelled": cancelled,
        })
        return {"tainted": live, "training_runs_cancelled": cancelled, "audit_positions": [position]}

    return work


def _amend(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from provenance.models import AmendmentReason, DataRecord
        from provenance.services import snapshot_records_remove

        amendments = snapshot_records_remove(
            records=DataRecord.objects.filter(subject_id=plan["subject_id"]), reason=AmendmentReason.ERASURE,
            erasure_request_id=request.pk, details={"erasure_request": request.pk},
        )
        rows = [
            {"snapshot": a.snapshot_id, "records_removed": a.records_removed, "previous_root": a.previous_root,
             "new_root": a.new_root, "amendment": a.pk}
            for a in amendments
        ]
        position = _audit(request, "erasure.snapshots_amended", {
            "snapshots": len(rows), "membership_rows_removed": sum(r["records_removed"] for r in rows),
            "amendments": [{"snapshot": r["snapshot"], "new_root": r["new_root"]} for r in rows],
        })
        return {"amendments": rows, "audit_positions": [position]}

    return work


def _delete_records(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from provenance.models import DataRecord

        per_dataset = {
            row["dataset_id"]: row["n"]
            for row in DataRecord.objects.filter(subject_id=plan["subject_id"]).values("dataset_id")
            .annotate(n=Count("id")).order_by()
        }
        deleted = DataRecord.objects.filter(subject_id=plan["subject_id"])._raw_delete(DataRecord.objects.db)
        position = _audit(request, "erasure.records_deleted", {
            "records": deleted, "datasets": [{"dataset": k, "records": v} for k, v in sorted(per_dataset.items())],
        })
        return {"records_deleted": deleted, "per_dataset": {str(k): v for k, v in per_dataset.items()},
                "audit_positions": [position]}

    return work


MAX_RETRAIN_ATTEMPTS = 3


def _queue_retrain(model: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from mlops.models import ModelVersion
        from rights import remediation

        version = ModelVersion.objects.select_related("training_run").get(pk=model["id"])
        return {"new_training_run": remediation.retrain_queue(model_version=version, erasure_request_id=request.pk)}

    return work


def _retrain_run(request_id: int, name: str, model: dict) -> int:
    """The run retraining ``model``: registered in a step of its own, then trained outside
    any transaction (a long training must not hold the audit chain's head or a database
    transaction). A run that failed or was cancelled is registered again, up to a limit."""
    from mlops.models import RunStatus, TrainingRun
    from rights import remediation

    for attempt in range(1, MAX_RETRAIN_ATTEMPTS + 1):
        step_name = f"{name}_queue" if attempt == 1 else f"{name}_queue_{attempt}"
        run_id = _run_step(request_id, step_name, _queue_retrain(model))["new_training_run"]
        status = TrainingRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        if status not in (RunStatus.FAILED, RunStatus.CANCELLED) or attempt == MAX_RETRAIN_ATTEMPTS:
            break
    remediation.retrain_train(run_id=run_id)
    return run_id


def _remediate_model(request_id: int, plan: dict, model: dict) -> dict:
    name = f"{REMEDIATE_PREFIX}{model['id']}"
    done = ErasureStep.objects.filter(request_id=request_id, name=name, status=ErasureStepStatus.DONE).first()
    if done is not None:
        return done.details
    if model["remediation"] == RemediationAction.RETRAIN:
        model = {**model, "retrain_run": _retrain_run(request_id, name, model)}
    return _run_step(request_id, name, _remediate(plan, model))


def _remediate(plan: dict, model: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from mlops.models import ModelStatus, ModelVersion
        from rights import remediation

        action = model["remediation"]
        version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model["id"])
        result: dict[str, Any] = {
            "model_version": model["id"], "name": model["name"], "version": model["version"], "action": action,
            "old_artifact_sha256": model["artifact_sha256"], "override": model["override"],
        }
        if action == RemediationAction.SISA_UNLEARN:
            result.update(remediation.sisa_unlearn(
                model_version=version, subject_id=plan["subject_id"],
                shards={int(k): v for k, v in model["first_slice_per_shard"].items()},
                erased_rows=model["erased_rows"], erasure_request_id=request.pk,
            ))
        elif action == RemediationAction.RETRAIN:
            result.update(remediation.retrain_register(
                model_version=version, run_id=model["retrain_run"], erasure_request_id=request.pk
            ))
        elif action == RemediationAction.RELY_ON_DP:
            reason = (model["override"] or {}).get("justification", "")
            ModelVersion.objects.filter(pk=version.pk).update(
                status=ModelStatus.ACTIVE,
                status_reason=f"kept on its DP guarantee after erasure request {request.pk} (accepted risk): {reason}",
            )
            result["accepted_risk"] = (
                f"Model kept on its DP guarantee (ε={version.epsilon}); a DP-trained model is not anonymous by "
                "default (EDPB Opinion 28/2024)."
            )
            result["epsilon"] = version.epsilon
        elif action == RemediationAction.RETIRE:
            ModelVersion.objects.filter(pk=version.pk).update(
                status=ModelStatus.RETIRED, status_reason=f"retired after erasure request {request.pk}"
            )
        elif action != "delete_artifact":
            raise ServiceError(f"Unknown remediation {action!r} for model version {version.pk}.")
        position = _audit(request, f"erasure.model_{action}", {
            k: v for k, v in result.items() if k in (
                "model_version", "action", "old_artifact_sha256", "new_model_version", "new_training_run", "epsilon",
                "retrained_shards", "accepted_risk")
        })
        result["audit_positions"] = [position]
        return result

    return work


def _delete_artifacts(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from mlops import artifacts

        removed = []
        for model in plan["model_versions"]:
            if model["remediation"] == RemediationAction.RELY_ON_DP:
                continue
            # The whole run folder goes: the model and, for SISA, every shard checkpoint.
            files = artifacts.remove_run_files(model["training_run_id"])
            removed.append({"model_version": model["id"], "artifact_sha256": model["artifact_sha256"], "files": files})
        position = _audit(request, "erasure.artifacts_deleted", {"artifacts": removed})
        return {"artifacts": removed, "audit_positions": [position]}

    return work


def _delete_consent(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from governance.models import ConsentEvent

        deleted = ConsentEvent.objects.filter(subject_id=plan["subject_id"])._erasure_delete()
        position = _audit(request, "erasure.consent_events_deleted", {"count": deleted})
        return {"consent_events_deleted": deleted, "audit_positions": [position]}

    return work


def _notify(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        now = timezone.now()
        RecipientNotification.objects.bulk_create([
            RecipientNotification(
                request=request, recipient=r["name"], third_country=r["third_country"],
                processing_activity_id=r["processing_activity"], notified_at=now,
            )
            for r in plan["recipients"]
        ], ignore_conflicts=True)
        names = [r["name"] for r in plan["recipients"]]
        position = _audit(request, "erasure.recipients_notified", {"recipients": names, "article": "19"})
        return {"recipients": names, "notified_at": now.isoformat(), "audit_positions": [position]}

    return work


def _delete_subject(plan: dict, counts: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from governance.models import DataSubject

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
                "recipients_notified": len(plan["recipients"]), "completed_at": timezone.now(),
            },
        )
        # The ORM delete follows the foreign keys: SISA placements go with the row, this
        # request's link is cleared, and any row still protecting the subject stops it here.
        deleted, by_model = DataSubject.objects.filter(pk=plan["subject_id"]).delete()
        return {"deleted": by_model, "audit_positions": [position]}

    return work


def _certificate(plan: dict) -> Callable[[ErasureRequest], dict]:
    def work(request: ErasureRequest) -> dict:
        from rights.certificate import certificate_write

        request.completed_at = timezone.now()
        relative, digest = certificate_write(request=request, plan=plan)
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
        position = _audit(request, "erasure.certificate_issued", {"sha256": digest, "path": relative})
        _audit(request, "erasure_request.completed", {})
        return {"path": relative, "sha256": digest, "audit_positions": [position]}

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
    plan = _run_step(request_id, PLAN, _plan)
    _run_step(request_id, TAINT, _taint(plan))
    amended = _run_step(request_id, AMEND, _amend(plan))
    deleted = _run_step(request_id, DELETE_RECORDS, _delete_records(plan))
    remediated = [_remediate_model(request_id, plan, model) for model in plan["model_versions"]]
    _run_step(request_id, DELETE_ARTIFACTS, _delete_artifacts(plan))
    consent = _run_step(request_id, DELETE_CONSENT, _delete_consent(plan))
    _run_step(request_id, NOTIFY, _notify(plan))
    counts = {
        "records_deleted": deleted["records_deleted"],
        "snapshots_amended": len(amended["amendments"]),
        "membership_rows_removed": sum(a["records_removed"] for a in amended["amendments"]),
        "models_remediated": sum(1 for r in remediated if r["action"] != "delete_artifact"),
        "consent_events_deleted": consent["consent_events_deleted"],
    }
    _run_step(request_id, DELETE_SUBJECT, _delete_subject(plan, counts))
    cert = _run_step(request_id, CERTIFICATE, _certificate(plan))
    return {"request": request_id, "status": ErasureStatus.COMPLETED, "certificate_sha256": cert["sha256"], **counts}
