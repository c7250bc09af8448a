"""Reads for the erasure workflow: request lists, deadlines and the impact of an erasure."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from mlops.services import LIVE_STATUSES
from rights.models import (
    OPEN_STATUSES,
    ErasureReceipt,
    ErasureRequest,
    ErasureStatus,
    ErasureStep,
    ErasureStepStatus,
    RemediationAction,
    RightsRequest,
)

# Model statuses whose weights are in use and must be remediated; superseded or retired
# versions only have their artifact file deleted.
# The lineage heads that hold people (the one definition is mlops's): active, awaiting their
# audit, tainted or stale versions all still have an artifact trained on the person.
LIVE_MODEL_STATUSES = tuple(str(status) for status in LIVE_STATUSES)


def today() -> date:
    return timezone.localdate()


def erasure_request_queryset() -> QuerySet[ErasureRequest]:
    return ErasureRequest.objects.annotate(effective_due=Coalesce("extended_due_at", "due_at"))


def rights_request_queryset() -> QuerySet[RightsRequest]:
    """Requests under Art. 15, 16, 18, 20 and 21, with the effective deadline to order by."""
    return RightsRequest.objects.annotate(effective_due=Coalesce("extended_due_at", "due_at"))


def rights_answer_expired(*, rights_request: RightsRequest, now: Any = None) -> bool:
    """Whether the download period of a built answer has ended (RIGHTS_ANSWER_DOWNLOAD_DAYS)."""
    expires = rights_request.answer_expires_at
    return expires is not None and expires <= (now or timezone.now())


def erasure_request_list(*, status: str | None = None, overdue: bool | None = None) -> QuerySet[ErasureRequest]:
    """Requests ordered by their effective deadline; ``overdue`` means open and past it."""
    qs = erasure_request_queryset().order_by("effective_due", "id")
    if status:
        qs = qs.filter(status=status)
    if overdue is True:
        qs = qs.filter(erasure_requests_overdue_q())
    elif overdue is False:
        qs = qs.exclude(erasure_requests_overdue_q())
    return qs


def erasure_request_is_overdue(*, erasure_request: ErasureRequest, on: date | None = None) -> bool:
    return erasure_request.is_open and erasure_request.effective_due_at < (on or today())


def erasure_request_days_left(*, erasure_request: ErasureRequest, on: date | None = None) -> int | None:
    """Days to the effective deadline (0 on the day, negative once overdue); None once closed."""
    if not erasure_request.is_open:
        return None
    return (erasure_request.effective_due_at - (on or today())).days


def erasure_previous_completed(*, receipt_hash: str) -> ErasureReceipt | None:
    """The receipt of an earlier executed erasure for the same identifier, if any."""
    return ErasureReceipt.objects.filter(identifier_receipt_hash=receipt_hash).order_by("-completed_at").first()


def proposed_remediation(*, is_sisa: bool) -> str:
    """The policy: SISA models unlearn the person's shards (none when the person was held out
    of training: the new version then only records the amended snapshot); any other model
    is retrained."""
    if is_sisa:
        return RemediationAction.SISA_UNLEARN
    return RemediationAction.RETRAIN


def erasure_request_impact(*, erasure_request: ErasureRequest) -> dict[str, Any]:
    """Everything the execution will touch, for the DPO to review before executing.

    Counts are aggregated in SQL; nothing is loaded per record.
    """
    if erasure_request.subject_id is None:
        executed = getattr(erasure_request, "receipt", None) if erasure_request.status == "completed" else None
        return {
            "data_held": False,
            "executed": executed is not None,
            "datasets": [], "snapshots": [], "training_runs": [], "model_versions": [],
            "consent_events": 0,
            "totals": {"records": 0, "datasets": 0, "snapshots": 0, "training_runs": 0, "model_versions": 0},
        }
    return subject_impact_for_erasure(subject_id=erasure_request.subject_id, erasure_request=erasure_request)


def subject_impact_for_erasure(*, subject_id: int, erasure_request: ErasureRequest | None = None) -> dict[str, Any]:
    from governance.models import ConsentEvent, DataSubject
    from mlops.models import ModelVersion, SisaAssignment, TrainingRun
    from provenance.selectors import subject_impact

    lineage = subject_impact(subject=DataSubject.objects.get(pk=subject_id))
    datasets = [{"id": d["id"], "name": d["name"], "records": d["record_count"]} for d in lineage["datasets"]]
    snapshots = [
        {"id": s["id"], "dataset_id": s["dataset"], "purpose": s["purpose"], "records": s["records"],
         "taken_for": s["taken_for"]}
        for s in lineage["snapshots"]
    ]
    runs = list(
        TrainingRun.objects.filter(pk__in=[r["id"] for r in lineage["training_runs"]])
        .order_by("id")
        .values("id", "name", "snapshot_id", "status", "sisa", "seed")
    )
    run_ids = [r["id"] for r in runs]
    # An unlearning run uses the placements of the run it came from (sisa_placements_from).
    placement_of = {
        run_id: placed_by or run_id
        for run_id, placed_by in TrainingRun.objects.filter(pk__in=run_ids).values_list("id", "sisa_placements_from_id")
    }
    placed_runs: dict[int, dict[str, Any]] = {}
    for placement_run_id, shard, slice_ in SisaAssignment.objects.filter(
        subject_id=subject_id, training_run_id__in=set(placement_of.values())
    ).values_list("training_run_id", "shard", "slice"):
        entry = placed_runs.setdefault(placement_run_id, {"shards": set(), "first_slice": {}})
        entry["shards"].add(shard)
        entry["first_slice"][shard] = min(slice_, entry["first_slice"].get(shard, slice_))
    assignments = {run_id: placed_runs[p] for run_id, p in placement_of.items() if p in placed_runs}
    overrides = {}
    if erasure_request is not None and erasure_request.pk:
        overrides = {
            o.model_version_id: o for o in erasure_request.remediation_overrides.all()
        }
    versions = []
    for mv in (
        ModelVersion.objects.filter(training_run_id__in=run_ids)
        .select_related("training_run")
        .order_by("id")
    ):
        run = mv.training_run
        is_sisa = bool(run.sisa) or mv.is_sisa_ensemble
        sisa = assignments.get(run.id)
        live = mv.status in LIVE_MODEL_STATUSES
        proposed = proposed_remediation(is_sisa=is_sisa) if live else "delete_artifact"
        override = overrides.get(mv.id)
        versions.append(
            {
                "id": mv.id, "name": mv.name, "version": mv.version, "status": mv.status,
                "training_run_id": run.id, "snapshot_id": run.snapshot_id,
                "sisa": run.sisa if is_sisa else None,
                "shards": sorted(sisa["shards"]) if sisa else [],
                "first_slice_per_shard": {str(k): v for k, v in sorted(sisa["first_slice"].items())} if sisa else {},
                "epsilon": mv.epsilon, "non_private": mv.non_private,
                "artifact_sha256": mv.artifact_sha256,
                "proposed_remediation": proposed,
                "override": (
                    {"action": override.action, "justification": override.justification,
                     "decided_at": override.decided_at.isoformat()}
                    if override else None
                ),
                "remediation": override.action if (override and live) else proposed,
            }
        )
    consent_events = ConsentEvent.objects.filter(subject_id=subject_id).count()
    return {
        "data_held": bool(datasets or consent_events),
        "executed": False,
        "datasets": datasets,
        "snapshots": snapshots,
        "training_runs": [
            {"id": r["id"], "name": r["name"], "snapshot_id": r["snapshot_id"], "status": r["status"],
             "sisa": r["sisa"]}
            for r in runs
        ],
        "model_versions": versions,
        "consent_events": consent_events,
        "totals": {
            "records": sum(d["records"] for d in datasets),
            "datasets": len(datasets),
            "snapshots": len(snapshots),
            "training_runs": len(runs),
            "model_versions": len(versions),
        },
    }


# --- What needs the DPO's attention (workspace dashboard, list filters, deadline digest) ---
# Conditions on erasure_request_queryset() (they read its effective_due annotation), so one
# aggregate can count them all and a list filter can apply them as they are.


def erasure_requests_overdue_q(*, on: date | None = None) -> Q:
    """Open and past the (extended) deadline: the one definition of overdue for lists,
    filters, the dashboard and the digest."""
    return Q(status__in=OPEN_STATUSES, effective_due__lt=on or today())


def erasure_requests_due_within_q(*, days: int, on: date | None = None) -> Q:
    """Open and due between ``on`` (today) and ``days`` days later, both included: not yet
    overdue, as the due date itself is still in time."""
    if days < 0:
        raise ValueError("days: must be 0 or more")
    start = on or today()
    return Q(status__in=OPEN_STATUSES, effective_due__gte=start, effective_due__lte=start + timedelta(days=days))


def erasure_requests_failed_q() -> Q:
    """In progress with a failed step: left for the DPO, as the redispatch sweeper does not
    retry a failure that a retry would meet again."""
    failed_step = ErasureStep.objects.filter(request=OuterRef("pk"), status=ErasureStepStatus.FAILED)
    return Q(Exists(failed_step), status=ErasureStatus.IN_PROGRESS)


def subject_processing_activities(*, subject_id: int, dataset_ids: list[int]) -> QuerySet:
    """The processing activities of ``dataset_ids`` and of the purposes the person consented to."""
    from governance.models import ConsentEvent, ProcessingActivity

    purpose_ids = ConsentEvent.objects.filter(subject_id=subject_id).values("purpose_id")
    return ProcessingActivity.objects.filter(
        Q(datasets__id__in=dataset_ids) | Q(purposes__id__in=purpose_ids)
    ).distinct().order_by("pk")


def subject_recipients(*, subject_id: int, dataset_ids: list[int]) -> list[dict[str, Any]]:
    """Art. 19: the recipients named by those activities, each once by name (the first
    activity naming it), as ``{"name", "third_country", "processing_activity"}``."""
    activities = subject_processing_activities(subject_id=subject_id, dataset_ids=dataset_ids)
    recipients: dict[str, dict[str, Any]] = {}
    for activity in activities:
        for item in activity.recipients or []:
            name = str(item.get("name") or "").strip()
            if name and name not in recipients:
                recipients[name] = {
                    "name": name, "third_country": str(item.get("third_country") or ""), "processing_activity": activity.pk,
                }
    return list(recipients.values())
