"""Read-side queries of MLOps records: the privacy-budget ledger and model lineage."""

from __future__ import annotations

import math

from django.db.models import Q, QuerySet

from mlops import ledger
from mlops.models import (
    LedgerState,
    ModelStatus,
    ModelVersion,
    PrivacyBudget,
    PrivacyLedgerEntry,
    PrivacyLedgerTotal,
    TrainingRun,
)
from provenance.models import Dataset

DEFAULT_LEDGER_DELTA = 1e-5

# What ML engineers read instead of a status reason that names an erasure or a withdrawal
# (issue 14): that the model changed and why in neutral terms, never which request.
NEUTRAL_STATUS_REASONS = {
    ModelStatus.TAINTED: "Its training data changed after this version was trained.",
    ModelStatus.RETIRED: "Retired after its training data changed.",
    ModelStatus.STALE: "Some of its training data were corrected after this version was trained.",
}


def model_status_reason_shown(
    *, status: str, status_reason: str, supersedes_version: int | None, erasure_detail: bool
) -> str:
    """A model version's status reason as the reader's role may see it."""
    if erasure_detail:
        return status_reason
    if status in NEUTRAL_STATUS_REASONS:
        return NEUTRAL_STATUS_REASONS[status]
    if status == ModelStatus.ACTIVE:
        # "retrained to replace …", "SISA unlearning of …", "kept on DP: accepted risk of erasure …"
        return f"replaces version {supersedes_version}" if supersedes_version is not None else ""
    return status_reason  # superseded: the registry's own "superseded by version n"


def sisa_placement_run_id(*, run: TrainingRun) -> int:
    """The run whose SisaAssignment rows say where ``run`` placed each person."""
    return run.sisa_placements_from_id or run.pk


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def dataset_spent_epsilon(*, dataset_id: int, delta: float, include_reserved: bool = False) -> float:
    """ε at δ spent on a dataset by all finished runs (one row read, one vector conversion).

    ``inf`` once a non-private model was trained on it.
    """
    total = PrivacyLedgerTotal.objects.filter(dataset_id=dataset_id).only(
        "spent_rdp", "reserved_rdp", "non_private_runs"
    ).first()
    if total is None:
        return 0.0
    if total.non_private_runs:
        return math.inf
    curves = [ledger.curve_from_json(total.spent_rdp)]
    if include_reserved:
        curves.append(ledger.curve_from_json(total.reserved_rdp))
    composed = ledger.sum_curves([c for c in curves if c is not None])
    return ledger.epsilon_of_curve(composed, delta=delta)


def privacy_budget_status(*, dataset: Dataset) -> dict:
    """Cap, spent and reserved ε at the budget's δ, and the runs that spent it."""
    budget = PrivacyBudget.objects.filter(dataset=dataset).select_related("set_by").first()
    delta = budget.delta if budget else DEFAULT_LEDGER_DELTA
    spent = dataset_spent_epsilon(dataset_id=dataset.pk, delta=delta)
    committed = dataset_spent_epsilon(dataset_id=dataset.pk, delta=delta, include_reserved=True)
    entries = (
        PrivacyLedgerEntry.objects.filter(dataset=dataset)
        .exclude(state=LedgerState.RELEASED)
        .select_related("training_run")
        .order_by("id")
    )
    runs = [
        {
            "training_run": e.training_run_id,
            "name": e.training_run.name,
            "state": e.state,
            "status": e.training_run.status,
            "non_private": e.non_private,
            "planned_epsilon": _finite(e.planned_epsilon),
            "epsilon": _finite(e.epsilon),
            "delta": e.delta,
        }
        for e in entries
    ]
    return {
        "dataset": dataset.pk,
        "epsilon_cap": budget.epsilon_cap if budget else None,
        "delta": delta,
        "set_by": budget.set_by.get_username() if budget and budget.set_by else None,
        "set_at": budget.set_at if budget else None,
        "spent_epsilon": _finite(spent),
        "committed_epsilon": _finite(committed),
        "remaining_epsilon": _finite(budget.epsilon_cap - committed) if budget and math.isfinite(committed) else None,
        "non_private_training": any(r["non_private"] for r in runs),
        "runs": runs,
    }


def training_runs_visible() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("snapshot", "snapshot__dataset", "requested_by")


def model_versions_visible() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related(
        "training_run", "training_run__snapshot", "training_run__snapshot__dataset",
        "training_run__snapshot__dataset__processing_activity", "training_run__snapshot__purpose", "canary_audit",
    ).prefetch_related(
        "membership_inference_audits", "audit_jobs", "attribute_inference_audits", "unlearning_checks",
    )


def model_lineage_summary(*, model_version: ModelVersion) -> dict:
    """Snapshot → dataset → processing activity, from the registry's own foreign keys."""
    run = model_version.training_run
    snapshot = run.snapshot
    dataset = snapshot.dataset
    activity = dataset.processing_activity
    return {
        "training_run": run.pk,
        "snapshot": {
            "id": snapshot.pk, "taken_for": snapshot.taken_for, "purpose": snapshot.purpose.code,
            "lawful_basis": snapshot.lawful_basis, "included_count": snapshot.included_count,
            "included_subjects": snapshot.included_subjects, "merkle_root": snapshot.merkle_root,
        },
        "dataset": {"id": dataset.pk, "name": dataset.name},
        "processing_activity": {"id": activity.pk, "name": activity.name, "lawful_basis": activity.lawful_basis},
    }


def model_lineage(*, model_version: ModelVersion) -> dict:
    """The full upstream of a model (provenance's lineage walk over our foreign keys)."""
    from provenance.selectors import model_lineage as provenance_model_lineage

    return provenance_model_lineage(model_version=model_version)


def read_before(*, amendments: list[dict[str, int]], run: str = "") -> Q:
    """Runs (through ``run``, e.g. "training_run__") that read their snapshot before one of
    ``amendments`` ([{"snapshot": id, "sequence": n}]): a run that never recorded what it
    read counts as having read before."""
    condition = Q(pk__in=[])
    for a in amendments:
        condition |= Q(**{f"{run}snapshot_id": a["snapshot"]}) & (
            Q(**{f"{run}trained_on_amendment__isnull": True}) | Q(**{f"{run}trained_on_amendment__lt": a["sequence"]})
        )
    return condition


def live_versions_trained_before(*, amendments: list[dict[str, int]]) -> list[dict]:
    """Live (active, tainted or stale) versions whose run read its snapshot before one of
    ``amendments`` removed people from it."""
    from mlops.models import ModelStatus

    return list(
        ModelVersion.objects.filter(read_before(amendments=amendments, run="training_run__"),
                                    status__in=(ModelStatus.ACTIVE, ModelStatus.TAINTED, ModelStatus.STALE))
        .order_by("pk").values("id", "name", "version", "status", "training_run_id")
    )


def trained_on_snapshots(snapshot_ids) -> tuple[list[TrainingRun], list[ModelVersion]]:
    """Training runs on ``snapshot_ids`` and their model versions, in id order (two queries);
    registered as provenance's downstream reader."""
    runs = list(TrainingRun.objects.filter(snapshot_id__in=snapshot_ids).order_by("pk"))
    models = list(ModelVersion.objects.filter(training_run_id__in=[r.pk for r in runs]).order_by("pk"))
    return runs, models


def model_version_reproducibility(*, model_version: ModelVersion, include_audit_records: bool) -> dict:
    """What an outsider needs to rebuild a version's inputs and re-run its audit from the raw
    records: feature order, encoding (scaling bounds, one-hot categories), class order, the
    keyed person-split rule (rule and thresholds, never the key) and the seed, as
    ``mlops.data.reproducibility_record``; with ``include_audit_records`` (DPO, auditor) also
    the DataRecord ids the membership-inference audit attacks as members and non-members.

    For a detail view: reads the version's run and snapshot (select_related by
    ``model_versions_visible``), and with audit records one query over the snapshot's
    memberships (plus the audits, prefetched by ``model_versions_visible``). Read-only.
    """
    from mlops import data
    from mlops.services.audits import audit_record_ids

    record = data.reproducibility_record(run=model_version.training_run)
    if include_audit_records:
        record["membership_inference_audit"] = audit_record_ids(model_version=model_version)
    return record
