"""What the DPIA and model lineage reports show: the DP guarantee, audits and budgets of
model versions and the DPIA's evidence, read across governance, provenance and mlops."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from django.db.models import Count, Prefetch, Q

from assessments.models import Dpia, DpiaRisk, DpiaScreeningAnswer
from governance.reports.selectors import ropa_entries
from governance.reports.toolkit import hash_cell, rich
from mlops import display as mlops_display


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
    """DP guarantee and privacy-audit results of model versions already prefetched
    (``model_versions_prefetch``): the strongest membership attack with its ROC and
    interval band, the loss baseline, the canary ε lower bound, attribute-inference gains."""
    result = []
    for mv in model_versions:
        run = mv.training_run
        audits = list(mv.membership_inference_audits.all())
        by_attack = {}
        for audit in audits:
            by_attack.setdefault(audit.attack, audit)  # newest first: the latest of each attack
        # The strongest attack stands for the model: LiRA when it ran, else the loss baseline.
        latest = by_attack.get("lira") or by_attack.get("loss")
        canary = getattr(mv, "canary_audit", None)
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
                "max_records_per_person": run.max_records_per_person,
                # What the record-level ε means for a person (group privacy over their records).
                "person_guarantee_text": mlops_display.person_guarantee_words(
                    epsilon=mv.epsilon, delta=mv.delta, max_records_per_person=run.max_records_per_person,
                    non_private=mv.non_private),
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
                    # Rounded, with 95% intervals, for people ("AUC 0.52 (95% CI 0.44–0.60, 65 non-members)").
                    "auc_text": latest.auc_text(),
                    "figures_text": latest.figures_text(),
                    "sizes_text": latest.sizes_text(),
                    "notes": list(latest.notes or []),
                    "roc": [(float(p[0]), float(p[1])) for p in (latest.roc or []) if len(p) == 2],
                    "roc_band": [tuple(float(v) for v in p) for p in (latest.roc_band or []) if len(p) == 3],
                    "attack": latest.get_attack_display(),
                    "n_references": latest.n_references,
                    "created_at": latest.created_at,
                },
                "mia_baseline": None if "loss" not in by_attack or latest.attack == "loss" else {
                    "auc_text": by_attack["loss"].auc_text(), "figures_text": by_attack["loss"].figures_text(),
                },
                "mia_audits": len(audits),
                "canary": None if canary is None else {
                    "bound_text": canary.bound_text(), "flagged": canary.flagged,
                    "epsilon_lower_bound": canary.epsilon_lower_bound, "claimed_epsilon": canary.claimed_epsilon,
                    "n_canaries": canary.n_canaries, "n_guesses": canary.n_guesses, "n_correct": canary.n_correct,
                },
                "privacy_bug": bool(canary is not None and canary.flagged),
                "attribute_inference": [
                    {"feature": a.feature, "special_category": a.special_category, "gain": a.gain,
                     "gain_text": a.gain_text(), "attack_accuracy": a.attack_accuracy,
                     "imputation_accuracy": a.imputation_accuracy, "n_members": a.n_members}
                    for a in mv.attribute_inference_audits.all()
                ],
                "explanations": _explanations_evidence(mv, by_attack.get("explanation")),
                "training_run": run.pk,
                "snapshot": run.snapshot_id,
                "dataset": run.snapshot.dataset.name,
                "merkle_root": run.snapshot.merkle_root,
            }
        )
    return result


def _explanations_evidence(mv, attack) -> dict[str, Any]:
    """Issue 19: what the version's decisions reveal (its output policy), how much its
    explanations leak (the explanation-based membership attack beside the policy), and the
    logic involved (Art. 15(1)(h)) when the worker has computed it."""
    from mlops.selectors import model_logic_summary, output_policy_for

    policy = output_policy_for(model_version=mv)
    ceiling = policy.ceiling
    return {
        "output_policy": policy.text(),
        "output_policy_kind": policy.kind,
        "output_policy_source": policy.source,
        "attributions_withheld": policy.attributions_withheld,
        "withheld_because": policy.withheld_because,
        "attack_text": None if attack is None else attack.auc_text(),
        "attack_auc": None if attack is None else attack.auc,
        "ceiling": ceiling,
        "logic": model_logic_summary(model_version=mv, output_policy=policy),
    }


def roc_curves_with_band(m: dict[str, Any]) -> list:
    """A model's ROC and, when recorded, its pointwise 95% band as two more curves (for tk.roc_curve)."""
    mia = m["mia"]
    if not mia:
        return [(m["label"], [])]
    curves = [(m["label"], mia["roc"])]
    band = mia.get("roc_band") or []
    if band:
        curves.append(("95% band, lower", [(f, lo) for f, lo, _ in band]))
        curves.append(("95% band, upper", [(f, hi) for f, _, hi in band]))
    return curves


def model_versions_prefetch(qs):
    from mlops.models import MembershipInferenceAudit

    return qs.select_related(
        "training_run__snapshot__dataset__processing_activity", "training_run__snapshot__purpose", "canary_audit",
        "explanation_summary",
    ).prefetch_related(
        Prefetch("membership_inference_audits", queryset=MembershipInferenceAudit.objects.order_by("-created_at", "-id")),
        "attribute_inference_audits",
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


def _schema_features(schema: Any) -> tuple[list[str], str | None]:
    """A dataset schema's feature names and label name ({"features": [{"name"}], "label": {"name"}})."""
    schema = schema if isinstance(schema, dict) else {}
    names = [f.get("name", "?") for f in schema.get("features", []) if isinstance(f, dict)]
    label = schema.get("label", {}).get("name") if isinstance(schema.get("label"), dict) else None
    return names, label


def data_minimisation_statement(*, processing_activity_id: int) -> str:
    """What training uses, in words, from the schemas of the activity's datasets: a DPIA's
    necessity text drafted from the records it describes rather than typed beside them."""
    from provenance.models import Dataset

    parts = []
    for name, schema in Dataset.objects.filter(processing_activity_id=processing_activity_id).order_by("name").values_list(
        "name", "schema"
    ):
        features, label = _schema_features(schema)
        if features:
            parts.append(f"{name}: {', '.join(features)}" + (f" (label {label})" if label else ""))
    used = "; ".join(parts) if parts else "no feature recorded in the datasets' schemas yet"
    return (
        f"Training uses only the features in the datasets' schemas ({used}); identifiers are pseudonymised on "
        "arrival and never reach the training data. Records are kept no longer than the retention period of their category."
    )


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
                    rich(
                        f"#{snap.pk} ({snap.included_count} records, {snap.included_subjects} subjects) root ",
                        hash_cell(snap.merkle_root, label=f"Merkle root of snapshot #{snap.pk} at creation"),
                    ),
                    f"run #{mv.training_run_id}" if mv else "—",
                    f"{mv.name} v{mv.version} [{mv.status}]" + (" (covered)" if mv.pk in covered_ids else "") if mv else "—",
                ]
            )
    features = []
    for ds in datasets:
        names, label = _schema_features(ds.schema)
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
