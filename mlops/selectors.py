"""Read-side queries of MLOps records: the privacy-budget ledger and model lineage."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Q, QuerySet

from mlops import ledger
from mlops.models import (
    LedgerState,
    MembershipAttack,
    ModelOutputPolicy,
    ModelStatus,
    ModelVersion,
    OutputPolicyKind,
    PrivacyBudget,
    PrivacyLedgerEntry,
    PrivacyLedgerTotal,
    TrainingRun,
)
from provenance.models import Dataset

DEFAULT_LEDGER_DELTA = 1e-5
# On what the ε of a version trained outside the ledger rests (issue 20): the one wording the
# admin and the model-lineage report show, so neither can claim more than the other.
EXTERNAL_EPSILON_BASIS = (
    "recomputed by the ledger from the accountant history its owner reported (any ε the owner sent is "
    "ignored); the ledger did not run or observe the training, so the guarantee holds if the training "
    "followed that history"
)

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
        "explanation_summary",
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


# --- Output policies and the logic involved (issue 19) --------------------------------

DEFAULT_SOURCE = "default"
ART9_SOURCE = "default for models trained on Art. 9 data"


@dataclass(frozen=True)
class OutputPolicy:
    """The output policy in force for a model version (``output_policy_for``)."""

    kind: str
    digits: int
    attributions_withheld: bool
    withheld_because: str
    source: str
    withhold_attributions: bool = False  # the policy's rule, whether or not it applies now
    policy_id: int | None = None
    ceiling: float | None = None  # the audit policies' lowest AUC ceiling in force, if any

    def text(self) -> str:
        """One line for people: what a decision shows and where the rule comes from."""
        shown = OutputPolicyKind(self.kind).label
        if self.kind == OutputPolicyKind.ROUNDED:
            shown = f"Probabilities rounded to {self.digits} digit{'s' if self.digits != 1 else ''}"
        attributions = (
            f"per-decision attributions withheld ({self.withheld_because})" if self.attributions_withheld
            else "per-decision attributions withheld while the explanation attack exceeds the audit ceiling"
            if self.withhold_attributions else "per-decision attributions given"
        )
        return f"{shown}; {attributions} ({self.source})"


def _special_schema(dataset) -> bool:
    return any((f or {}).get("special_category") for f in (dataset.schema or {}).get("features") or [])


def trained_on_special_category(*, run: TrainingRun) -> bool:
    """Art. 9: the run's dataset schema marks a feature ``special_category``, or its
    processing activity names an Art. 9 condition or a special-category data category."""
    dataset = run.snapshot.dataset
    if _special_schema(dataset) or dataset.processing_activity.special_category_condition:
        return True
    return dataset.processing_activity.data_categories.exclude(special_category="").exists()


def _policy_facts(*, model_version: ModelVersion) -> dict:
    """In one query: the id of the latest output policy of the version's name, whether its
    activity lists a special-category data category, and the AUC ceiling (``max_auc``) of
    the latest audit policy of its dataset and of its activity (the policies in force, as
    ``audit_jobs.audit_policies_for`` reads them)."""
    from django.db.models import Exists, OuterRef, Subquery

    from governance.models import ProcessingActivity, ProcessingActivityDataCategory
    from mlops.models import AuditPolicy

    dataset = model_version.training_run.snapshot.dataset

    def latest_auc(**scope):
        return Subquery(AuditPolicy.objects.filter(**scope).order_by("-created_at", "-id").values("max_auc")[:1])

    return ProcessingActivity.objects.filter(pk=dataset.processing_activity_id).annotate(
        art9_category=Exists(ProcessingActivityDataCategory.objects.filter(
            processing_activity=OuterRef("pk")).exclude(data_category__special_category="")),
        policy_pk=Subquery(ModelOutputPolicy.objects.filter(name=model_version.name).order_by("-id").values("pk")[:1]),
        dataset_auc=latest_auc(dataset_id=dataset.pk),
        activity_auc=latest_auc(processing_activity_id=OuterRef("pk")),
    ).values("art9_category", "policy_pk", "dataset_auc", "activity_auc").get()


def _ceiling(facts: dict) -> float | None:
    ceilings = [c for c in (facts["dataset_auc"], facts["activity_auc"]) if c is not None]
    return min(ceilings) if ceilings else None


def explanation_attack_ceiling(*, model_version: ModelVersion) -> float | None:
    """The lowest AUC ceiling (``max_auc``) of the audit policies in force for the version."""
    return _ceiling(_policy_facts(model_version=model_version))


def explanation_attack_of(*, model_version: ModelVersion):
    """The version's explanation-based membership-inference audit, or None."""
    cached = getattr(model_version, "_prefetched_objects_cache", {}).get("membership_inference_audits")
    if cached is not None:
        return next((a for a in cached if a.attack == MembershipAttack.EXPLANATION), None)
    return model_version.membership_inference_audits.filter(attack=MembershipAttack.EXPLANATION).first()


def _withheld(*, model_version: ModelVersion, ceiling: float | None) -> tuple[bool, str]:
    if ceiling is None:
        return False, ""
    audit = explanation_attack_of(model_version=model_version)
    if audit is None:
        # Not measured yet: withheld until it is (the rule protects people, so it fails closed).
        return True, f"the explanation attack has not been measured yet (audit ceiling AUC {ceiling:.2f})"
    if audit.auc > ceiling:
        return True, f"the explanation attack's AUC {audit.auc:.2f} exceeds the audit ceiling of {ceiling:.2f}"
    return False, ""


def output_policy_for(*, model_version: ModelVersion) -> OutputPolicy:
    """The output policy in force for ``model_version``: the latest ``ModelOutputPolicy``
    of its name, else the default (label with a confidence band, attributions withheld
    while the explanation attack exceeds the ceiling, for a model trained on Art. 9 data;
    probabilities rounded to 2 digits otherwise). One query, two with a policy row."""
    facts = _policy_facts(model_version=model_version)
    dataset = model_version.training_run.snapshot.dataset
    row = None
    if facts["policy_pk"] is not None:
        row = ModelOutputPolicy.objects.select_related("set_by").get(pk=facts["policy_pk"])
        who = row.set_by.get_username() if row.set_by else "an unknown user"
        kind, digits, withhold = row.kind, row.digits, row.withhold_attributions
        source = f"set by {who} on {row.created_at:%Y-%m-%d}"
    elif _special_schema(dataset) or dataset.processing_activity.special_category_condition or facts["art9_category"]:
        kind, digits, withhold, source = OutputPolicyKind.BAND, 2, True, ART9_SOURCE
    else:
        kind, digits, withhold, source = OutputPolicyKind.ROUNDED, 2, False, DEFAULT_SOURCE
    ceiling = _ceiling(facts)
    withheld, because = _withheld(model_version=model_version, ceiling=ceiling) if withhold else (False, "")
    return OutputPolicy(kind=str(kind), digits=int(digits), attributions_withheld=withheld, withheld_because=because,
                        source=source, withhold_attributions=withhold, policy_id=row.pk if row else None,
                        ceiling=ceiling)


def model_logic_summary(*, model_version: ModelVersion, output_policy: OutputPolicy | None = None) -> dict | None:
    """The "logic involved" (Art. 15(1)(h), the DPIA) of a version, from its stored
    ``ModelExplanationSummary`` (read through ``select_related("explanation_summary")``
    when the caller selected it); None until the worker has computed it, or when it could
    not be. ``output_policy``: the version's, when the caller has it already."""
    try:
        summary = model_version.explanation_summary
    except ObjectDoesNotExist:
        return None
    if summary.error:
        return None
    run = model_version.training_run
    purpose = run.snapshot.purpose
    top = [
        {"feature": r["feature"], "mean_abs": r["mean_abs"],
         "direction": "raises" if r["mean_signed"] >= 0 else "lowers"}
        for r in summary.global_attributions[:5]
    ]
    return {
        "purpose": f"{purpose.name} ({purpose.code})" if purpose.name else purpose.code,
        "features_used": list(summary.features_used),
        "top_features": top,
        "method": summary.method,
        "baseline_rule": summary.baseline_rule,
        "output_policy": (output_policy or output_policy_for(model_version=model_version)).text(),
        "computed_at": summary.computed_at,
    }
