"""Reads behind the reports, each with a fixed number of queries whatever the data size.

Counts come from aggregates, related rows from prefetches; nothing loops over records,
subjects or consents in Python.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from django.db.models import Count, Prefetch, Q

from governance.dpia.models import Dpia, DpiaRisk, DpiaScreeningAnswer
from governance.models import ProcessingActivity, ProcessingActivityDataCategory


def format_retention(duration) -> str:
    days = duration.days
    if days and days % 365 == 0:
        return f"{days // 365} year(s)"
    if days and days % 30 == 0:
        return f"{days // 30} month(s)"
    return f"{days} day(s)" if days else str(duration)


def _activities_queryset():
    return ProcessingActivity.objects.order_by("name").prefetch_related(
        "purposes",
        "data_subject_categories",
        Prefetch(
            "retention_rules",
            queryset=ProcessingActivityDataCategory.objects.select_related("data_category").order_by("data_category__code"),
        ),
    )


def _activity_entry(activity: ProcessingActivity) -> dict[str, Any]:
    retention = list(activity.retention_rules.all())
    return {
        "id": activity.pk,
        "name": activity.name,
        "description": activity.description,
        # 30(1)(a)
        "controller_name": activity.controller_name,
        "controller_contact": activity.controller_contact,
        "joint_controller": activity.joint_controller,
        "representative": activity.representative,
        "dpo_contact": activity.dpo_contact,
        # 30(1)(b)
        "purposes": [{"code": p.code, "name": p.name} for p in sorted(activity.purposes.all(), key=lambda p: p.code)],
        "lawful_basis": activity.get_lawful_basis_display(),
        "special_category_condition": activity.get_special_category_condition_display() if activity.special_category_condition else "",
        # 30(1)(c)
        "data_subject_categories": [
            {"code": c.code, "name": c.name, "vulnerable": c.vulnerable}
            for c in sorted(activity.data_subject_categories.all(), key=lambda c: c.code)
        ],
        "data_categories": [
            {
                "code": r.data_category.code,
                "name": r.data_category.name,
                "special_category": r.data_category.get_special_category_display() if r.data_category.special_category else "",
                "criminal_offence_data": r.data_category.criminal_offence_data,
            }
            for r in retention
        ],
        # 30(1)(d)
        "recipients": [
            {"name": str(r.get("name", "")), "third_country": str(r.get("third_country", ""))}
            for r in (activity.recipients or [])
            if isinstance(r, dict)
        ],
        # 30(1)(e)
        "third_country_transfers": [
            {"country": str(t.get("country", "")), "safeguard": str(t.get("safeguard", ""))}
            for t in (activity.third_country_transfers or [])
            if isinstance(t, dict)
        ],
        # 30(1)(f)
        "retention": [{"data_category": r.data_category.code, "retention": format_retention(r.retention)} for r in retention],
        # 30(1)(g)
        "security_measures": activity.security_measures,
        "updated_at": activity.updated_at,
    }


def ropa_entries(*, activity_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Every Art. 30(1) field of every processing activity (four queries in all)."""
    qs = _activities_queryset()
    if activity_ids is not None:
        qs = qs.filter(pk__in=activity_ids)
    return [_activity_entry(a) for a in qs]


ROPA_CSV_COLUMNS = [
    "id", "name", "description", "controller_name", "controller_contact", "joint_controller", "representative",
    "dpo_contact", "purposes", "lawful_basis", "special_category_condition", "data_subject_categories",
    "data_categories", "special_categories", "recipients", "third_country_transfers", "retention",
    "security_measures", "updated_at",
]


def ropa_csv_rows(*, entries: list[dict[str, Any]] | None = None) -> list[list[str]]:
    """The record of processing as flat rows (lists joined with "; "), header first."""
    rows: list[list[str]] = [ROPA_CSV_COLUMNS]
    for e in entries if entries is not None else ropa_entries():
        rows.append(
            [
                str(e["id"]), e["name"], e["description"], e["controller_name"], e["controller_contact"],
                e["joint_controller"], e["representative"], e["dpo_contact"],
                "; ".join(p["code"] for p in e["purposes"]), e["lawful_basis"], e["special_category_condition"],
                "; ".join(c["code"] for c in e["data_subject_categories"]),
                "; ".join(c["code"] for c in e["data_categories"]),
                "; ".join(f"{c['code']} ({c['special_category']})" for c in e["data_categories"] if c["special_category"]),
                "; ".join(f"{r['name']} ({r['third_country']})" if r["third_country"] else r["name"] for r in e["recipients"]),
                "; ".join(f"{t['country']}: {t['safeguard']}" for t in e["third_country_transfers"]),
                "; ".join(f"{r['data_category']}: {r['retention']}" for r in e["retention"]),
                e["security_measures"], e["updated_at"].isoformat(),
            ]
        )
    return rows


def _model_epochs(run) -> list[tuple[float, float]]:
    points = []
    for item in run.epoch_metrics or []:
        if isinstance(item, dict) and item.get("epsilon") is not None and item.get("epoch") is not None and "shard" not in item:
            points.append((float(item["epoch"]), float(item["epsilon"])))
    if not points:
        # SISA runs record per-shard epochs: chart the worst shard per epoch.
        worst: dict[float, float] = {}
        for item in run.epoch_metrics or []:
            if isinstance(item, dict) and item.get("epsilon") is not None and item.get("epoch") is not None:
                e = float(item["epoch"])
                worst[e] = max(worst.get(e, 0.0), float(item["epsilon"]))
        points = sorted(worst.items())
    return points


def model_versions_evidence(model_versions) -> list[dict[str, Any]]:
    """DP guarantee and membership-inference results of model versions already prefetched."""
    result = []
    for mv in model_versions:
        run = mv.training_run
        audits = list(mv.membership_inference_audits.all())
        latest = audits[0] if audits else None
        result.append(
            {
                "id": mv.pk,
                "label": f"{mv.name} v{mv.version}",
                "status": mv.get_status_display(),
                "status_reason": mv.status_reason,
                "created_at": mv.created_at,
                "epsilon": mv.epsilon,
                "delta": mv.delta,
                "non_private": mv.non_private,
                "accountant": run.get_accountant_display(),
                "max_grad_norm": run.max_grad_norm,
                "noise_multiplier": run.noise_multiplier,
                "sample_rate": run.sample_rate,
                "steps": run.steps,
                "epochs": run.epochs,
                "n_train": run.n_train,
                "is_sisa": mv.is_sisa_ensemble,
                "metrics": mv.metrics or {},
                "epsilon_per_epoch": _model_epochs(run),
                "mia": None
                if latest is None
                else {
                    "auc": latest.auc,
                    "advantage": latest.advantage,
                    "tpr_at_1pct_fpr": latest.tpr_at_1pct_fpr,
                    "tpr_at_01pct_fpr": latest.tpr_at_01pct_fpr,
                    "n_members": latest.n_members,
                    "n_nonmembers": latest.n_nonmembers,
                    "roc": [(float(p[0]), float(p[1])) for p in (latest.roc or []) if len(p) == 2],
                    "created_at": latest.created_at,
                },
                "mia_audits": len(audits),
                "training_run": run.pk,
                "snapshot": run.snapshot_id,
                "dataset": run.snapshot.dataset.name,
                "merkle_root": run.snapshot.merkle_root,
            }
        )
    return result


def model_versions_prefetch(qs):
    from mlops.models import MembershipInferenceAudit

    return qs.select_related("training_run__snapshot__dataset").prefetch_related(
        Prefetch("membership_inference_audits", queryset=MembershipInferenceAudit.objects.order_by("-created_at", "-id"))
    )


def privacy_budgets(*, dataset_ids: list[int]) -> list[dict[str, Any]]:
    """Per dataset: the ε cap set by the DPO and the ε spent by composing the ledger's RDP curves."""
    from mlops.ledger import epsilon_of_curve
    from mlops.models import PrivacyBudget, PrivacyLedgerTotal

    budgets = {b.dataset_id: b for b in PrivacyBudget.objects.filter(dataset_id__in=dataset_ids).select_related("dataset")}
    totals = {t.dataset_id: t for t in PrivacyLedgerTotal.objects.filter(dataset_id__in=dataset_ids).select_related("dataset")}
    rows = []
    for dataset_id in sorted(set(budgets) | set(totals)):
        budget, total = budgets.get(dataset_id), totals.get(dataset_id)
        delta = budget.delta if budget else None
        if total and total.non_private_runs:
            spent = math.inf  # a model trained without DP spends an unbounded ε
        else:
            spent = epsilon_of_curve(total.spent_rdp, delta=delta) if (total and delta and total.spent_rdp) else 0.0
        rows.append(
            {
                "dataset": (budget or total).dataset.name,
                "epsilon_cap": budget.epsilon_cap if budget else None,
                "delta": delta,
                "epsilon_spent": spent,
                "spent_runs": total.spent_runs if total else 0,
                "reserved_runs": total.reserved_runs if total else 0,
                "non_private_runs": total.non_private_runs if total else 0,
                "exceeded": bool(budget and spent > budget.epsilon_cap),
            }
        )
    return rows


def dpia_report_data(*, dpia_id: int) -> dict[str, Any]:
    """Everything the DPIA report shows, in a bounded number of queries."""
    from governance.selectors import audit_chain_verify
    from mlops.models import ModelVersion
    from provenance.models import DataRecord, Dataset, Snapshot, SnapshotAmendment

    dpia = (
        Dpia.objects.select_related("processing_activity", "signed_by", "created_by", "previous_version")
        .prefetch_related(
            Prefetch("screening", queryset=DpiaScreeningAnswer.objects.order_by("id")),
            Prefetch("risks", queryset=DpiaRisk.objects.order_by("id")),
        )
        .get(pk=dpia_id)
    )
    activity = dpia.processing_activity
    entry = ropa_entries(activity_ids=[activity.pk])[0]
    datasets = list(
        Dataset.objects.filter(processing_activity=activity)
        .annotate(n_records=Count("records", distinct=True), n_subjects=Count("records__subject", distinct=True))
        .prefetch_related("parents")
        .order_by("name")
    )
    totals = DataRecord.objects.filter(dataset__processing_activity=activity).aggregate(
        records=Count("id"), subjects=Count("subject", distinct=True)
    )
    snapshots = list(
        Snapshot.objects.filter(dataset__processing_activity=activity)
        .select_related("dataset", "purpose")
        .order_by("created_at", "id")
    )
    amendments = dict(
        SnapshotAmendment.objects.filter(snapshot__dataset__processing_activity=activity)
        .values_list("reason")
        .annotate(n=Count("id"))
        .values_list("reason", "n")
    )
    covered_ids = set(dpia.model_versions.values_list("pk", flat=True))
    all_models = list(
        model_versions_prefetch(
            ModelVersion.objects.filter(
                Q(training_run__snapshot__dataset__processing_activity=activity) | Q(pk__in=covered_ids)
            ).order_by("name", "version")
        )
    )
    lineage = defaultdict(list)
    for mv in all_models:
        lineage[mv.training_run.snapshot_id].append(mv)
    lineage_rows = []
    for snap in snapshots:
        for mv in lineage.get(snap.pk, []) or [None]:
            lineage_rows.append(
                [
                    activity.name,
                    snap.dataset.name,
                    f"#{snap.pk} ({snap.included_count} records, {snap.included_subjects} subjects) root {snap.merkle_root[:12]}…",
                    f"run #{mv.training_run_id}" if mv else "—",
                    f"{mv.name} v{mv.version} [{mv.status}]" + (" (covered)" if mv.pk in covered_ids else "") if mv else "—",
                ]
            )
    features = []
    for ds in datasets:
        schema = ds.schema if isinstance(ds.schema, dict) else {}
        names = [f.get("name", "?") for f in schema.get("features", []) if isinstance(f, dict)]
        label = schema.get("label", {}).get("name") if isinstance(schema.get("label"), dict) else None
        features.append({"dataset": ds.name, "features": names, "label": label})
    chain = audit_chain_verify()
    return {
        "dpia": dpia,
        "activity": entry,
        "screening": list(dpia.screening.all()),
        "risks": list(dpia.risks.all()),
        "datasets": [
            {
                "id": ds.pk,
                "name": ds.name,
                "records": ds.n_records,
                "subjects": ds.n_subjects,
                "parents": [p.name for p in ds.parents.all()],
                "source_system": ds.source_system,
            }
            for ds in datasets
        ],
        "totals": {"records": totals["records"] or 0, "subjects": totals["subjects"] or 0},
        "features": features,
        "snapshots": snapshots,
        "amendments": amendments,
        "models": model_versions_evidence([mv for mv in all_models if mv.pk in covered_ids]),
        "lineage_rows": lineage_rows,
        "budgets": privacy_budgets(dataset_ids=[ds.pk for ds in datasets]),
        "audit_chain": asdict(chain),
    }
