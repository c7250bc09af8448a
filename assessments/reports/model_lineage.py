"""The model lineage report: a model card for auditors.

A model version's full upstream (processing activities, ancestor datasets, the snapshot
with its Merkle roots and amendments), its DP guarantee, its membership-inference
results and its remediation history, read in a fixed number of queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.db import connection
from django.db.models import Count

from assessments.reports.evidence import (
    model_versions_evidence,
    model_versions_prefetch,
    privacy_budgets,
    roc_curves_with_band,
)
from governance import display
from governance.reports import toolkit as tk
from mlops import display as mlops_display
from provenance import display as provenance_display


def _ancestor_depths(dataset_id: int) -> dict[int, int]:
    """Every dataset upstream of ``dataset_id`` with its distance, in one recursive query."""
    from provenance.models import Dataset

    through = Dataset.parents.through._meta.db_table
    sql = (
        f"WITH RECURSIVE up(id, depth) AS ("
        f" SELECT to_dataset_id, 1 FROM {through} WHERE from_dataset_id = %s"
        f" UNION SELECT p.to_dataset_id, up.depth + 1 FROM {through} p JOIN up ON p.from_dataset_id = up.id"
        f" WHERE up.depth < 50)"
        f" SELECT id, MIN(depth) FROM up GROUP BY id"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [dataset_id])
        return {row[0]: row[1] for row in cur.fetchall()}


def model_lineage_report_data(*, model_version_id: int) -> dict[str, Any]:
    from assessments.models import Dpia
    from governance.models import AuditEvent
    from mlops.models import ModelVersion, PrivacyLedgerEntry
    from provenance.models import Dataset, SnapshotAmendment

    mv = model_versions_prefetch(
        ModelVersion.objects.select_related(
            "training_run__snapshot__dataset__processing_activity", "training_run__snapshot__purpose",
            "training_run__snapshot__compatibility",
        )
    ).get(pk=model_version_id)
    run = mv.training_run
    snapshot = run.snapshot
    depths = _ancestor_depths(snapshot.dataset_id)
    datasets = {
        d.pk: d
        for d in Dataset.objects.filter(pk__in=[snapshot.dataset_id, *depths])
        .select_related("processing_activity")
        .annotate(n_records=Count("records", distinct=True), n_subjects=Count("records__subject", distinct=True))
    }
    amendments = list(SnapshotAmendment.objects.filter(snapshot_id=snapshot.pk).order_by("created_at", "id"))
    history = list(ModelVersion.objects.filter(name=mv.name).order_by("version").values(
        "pk", "version", "status", "status_reason", "epsilon", "created_at", "supersedes_id"
    ))
    ledger = PrivacyLedgerEntry.objects.filter(training_run_id=run.pk).values("state", "epsilon", "delta", "non_private").first()
    events = list(
        AuditEvent.objects.filter(object_type="model_version", object_id=str(mv.pk)).order_by("position").values(
            "position", "occurred_at", "actor", "action", "details"
        )
    )
    dpias = list(Dpia.objects.filter(model_versions=mv).order_by("processing_activity_id", "version").values(
        "pk", "title", "version", "status", "signed_at", "review_date"
    ))
    return {
        "model": model_versions_evidence([mv])[0],
        "model_version": mv,
        "run": run,
        "snapshot": snapshot,
        "dataset": datasets[snapshot.dataset_id],
        "ancestors": sorted(((depths[i], datasets[i]) for i in depths if i in datasets), key=lambda t: (t[0], t[1].name)),
        "amendments": amendments,
        "history": history,
        "ledger": ledger,
        "budgets": privacy_budgets(dataset_ids=[snapshot.dataset_id]),
        "events": events,
        "remediations": _erasure_remediations(mv),
        "dpias": dpias,
    }


def _external_rows(data: dict) -> list[tuple[str, str]]:
    """For a version trained outside the ledger: on what its ε rests. The ledger recomputed ε
    from the accountant history the owner reported and never saw the training, so the
    report says the guarantee is the owner's account, checked for arithmetic only."""
    from mlops.selectors import EXTERNAL_EPSILON_BASIS

    mv, run = data["model_version"], data["run"]
    if not mv.external:
        return []
    owner = run.requested_by.get_username() if run.requested_by_id else "its owner"
    segments = "; ".join(
        f"σ = {float(s):.4g}, q = {float(q):.4g}, {int(n):,} steps" for s, q, n in (run.accountant_history or [])
    ) or "none reported"
    return [
        ("Trained", f"outside the ledger by {owner}, reported {tk.text(run.reported_at)}"),
        ("Basis of ε", EXTERNAL_EPSILON_BASIS),
        ("Reported history", segments),
    ]


def _erasure_remediations(mv) -> list[dict[str, Any]]:
    """The erasure remediation decisions that concern version ``mv``: each erasure request's
    remediation of its lineage that replaced it (retrained, unlearned, retired) or kept it
    (on its DP guarantee), with the DPO's override of the policy where one was made.

    rights sits beside assessments (no import either way): its models are looked up by name.
    The erasure's lineage step (rights.execution) records ``replaced_model_version`` and
    ``model_version`` (the version standing after it); an override names the version it
    concerns."""
    try:
        step_model = apps.get_model("rights", "ErasureStep")
        override_model = apps.get_model("rights", "ErasureRemediationOverride")
    except LookupError:
        return []
    overrides = {
        o["request_id"]: o
        for o in override_model.objects.filter(model_version_id=mv.pk).values("request_id", "action", "justification", "decided_at")
    }
    decisions: dict[int, dict[str, Any]] = {}
    steps = step_model.objects.filter(
        name__startswith="remediate_lineage_", status="done", details__name=mv.name
    ).order_by("finished_at", "id")
    for request_id, details, finished_at in steps.values_list("request_id", "details", "finished_at"):
        if not isinstance(details, dict) or details.get("name") != mv.name:
            continue
        replaced = details.get("replaced_model_version") == mv.pk
        kept = details.get("model_version") == mv.pk and str(details.get("outcome", "")).startswith("kept_on_dp")
        if not (replaced or kept):
            continue
        override = overrides.get(request_id)
        # A later round for the same request supersedes the first (as on the certificate).
        decisions[request_id] = {
            "request_id": request_id,
            "action": (override or {}).get("action") or details.get("planned_action") or details.get("action", ""),
            "outcome": details.get("outcome", ""),
            "standing_version": details.get("version") if not kept else None,
            "justification": (override or {}).get("justification", ""),
            "decided_at": (override or {}).get("decided_at") or finished_at,
        }
    for request_id, override in overrides.items():
        decisions.setdefault(request_id, {
            "request_id": request_id, "action": override["action"], "outcome": "", "standing_version": None,
            "justification": override["justification"], "decided_at": override["decided_at"],
        })
    return sorted(decisions.values(), key=lambda d: (d["decided_at"] is None, d["decided_at"], d["request_id"]))


def model_lineage_flowables(data: dict[str, Any]) -> list:
    m, mv, run, snap, ds = data["model"], data["model_version"], data["run"], data["snapshot"], data["dataset"]
    reason = _reason(data, mv.status, m["status_reason"], mv.supersedes_id)
    flows = tk.title_block(
        "Model lineage report",
        subtitle=f"{m['label']}: a model card for auditors",
        facts=[
            ("Model version", f"{m['label']} (#{mv.pk})"),
            ("Status", m["status"] + (f": {reason}" if reason else "")),
            ("Registered", mv.created_at),
            ("Artifact SHA-256", tk.hash_cell(mv.artifact_sha256, label=f"Artifact SHA-256 of {m['label']}")),
            ("Training run", f"#{run.pk}, {run.get_status_display()}, finished {tk.text(run.finished_at)}"),
        ],
    )
    flows.append(tk.heading("1. Upstream lineage"))
    rows = [[0, ds.name, ds.processing_activity.name, ds.n_records, ds.n_subjects, "training dataset"]]
    rows += [[depth, d.name, d.processing_activity.name, d.n_records, d.n_subjects, f"ancestor (generation {depth})"] for depth, d in data["ancestors"]]
    flows.append(tk.data_table(["Depth", "Dataset", "Processing activity", "Records", "Data subjects", "Role"], rows))
    flows.append(tk.heading("2. Snapshot and Merkle roots", level=2))
    flows.append(
        tk.key_value_table(
            [
                ("Snapshot", f"#{snap.pk} of {ds.name}"),
                ("Purpose", f"{snap.purpose.code} ({snap.purpose.name})"),
                ("Lawful basis relied on", snap.lawful_basis),
                ("Art. 6(4) compatibility", f"#{snap.compatibility_id}" if snap.compatibility_id else "not needed (own purpose)"),
                ("Consent and retention state as of", snap.taken_for),
                ("Included", f"{snap.included_count} records of {snap.included_subjects} data subjects"),
                ("Excluded", provenance_display.exclusions_words(snap.excluded_counts)),
                ("Merkle root at creation", tk.hash_cell(snap.merkle_root, label=f"Merkle root of snapshot #{snap.pk} at creation")),
            ]
        )
    )
    flows.append(
        tk.data_table(
            ["Amendment", "Reason", "Records removed", "Subjects removed", "Root before", "Root after"],
            [[a.created_at, a.get_reason_display() if data["erasure_detail"] else "Members removed", a.records_removed, a.subjects_removed,
              tk.hash_cell(a.previous_root, label=f"Merkle root of snapshot #{snap.pk} before amendment {a.pk}"),
              tk.hash_cell(a.new_root, label=f"Merkle root of snapshot #{snap.pk} after amendment {a.pk}")] for a in data["amendments"]],
            empty="No amendment: the snapshot is as created.",
        )
    )
    flows.append(tk.heading("3. Differential-privacy guarantee"))
    ledger = data["ledger"] or {}
    flows.append(
        tk.key_value_table(
            [
                ("Guarantee", "none: trained without differential privacy (ε = ∞)" if m["epsilon"] is None else f"(ε = {m['epsilon']:.3f}, δ = {m['delta']:.0e})-DP"),
                ("Accountant", m["accountant"]),
                ("Clipping norm (max grad norm)", m["max_grad_norm"]),
                ("Noise multiplier σ", m["noise_multiplier"]),
                ("Sampling rate", m["sample_rate"]),
                ("Steps / epochs", f"{tk.text(m['steps'])} / {m['epochs']}"),
                ("Unit of privacy", "none: no differential privacy" if m["epsilon"] is None
                 else "one record (DP-SGD samples and clips records)"),
                ("Records trained on", m["n_train"]),
                ("Guarantee for a person", m["person_guarantee_text"]),
                ("SISA ensemble", m["is_sisa"]),
                ("Ledger entry", f"{ledger.get('state', 'none')}, ε {tk.text(ledger.get('epsilon'))}"),
                *_external_rows(data),
            ]
        )
    )
    budgets = data["budgets"]
    if budgets:
        b = budgets[0]
        flows.append(tk.note(f"Dataset budget: ε cap {tk.text(b['epsilon_cap'])} at δ {tk.text(b['delta'])}, spent {tk.text('∞' if b['epsilon_spent'] == float('inf') else round(b['epsilon_spent'], 3))} over {b['spent_runs']} run(s){' (EXCEEDED)' if b['exceeded'] else ''}."))
    flows.append(tk.heading("4. Membership-inference audit"))
    mia = m["mia"]
    if mia:
        flows.append(
            tk.key_value_table(
                [
                    ("Attack", mia["attack"] + (f", {mia['n_references']} reference models" if mia.get("n_references") else "")),
                    ("Summary", mia["auc_text"]),
                    *mia["figures_text"],
                    ("Members / non-members attacked", mia["sizes_text"]),
                    ("Audited", mia["created_at"]),
                ]
            )
        )
        for note in mia["notes"]:
            flows.append(tk.note(note))
        if m.get("mia_baseline"):
            flows.append(tk.note(f"Loss-threshold baseline beside it: {m['mia_baseline']['auc_text']}."))
    else:
        flows.append(tk.note("No membership-inference audit recorded for this model version."))
    canary = m.get("canary")
    if canary:
        flows.append(tk.note(
            ("PRIVACY BUG: " if canary["flagged"] else "") + f"Empirical ε from the canary audit run: {canary['bound_text']}; "
            f"{canary['n_correct']:,} of {canary['n_guesses']:,} guesses right on {canary['n_canaries']:,} canaries."
        ))
    for a in m.get("attribute_inference") or []:
        flows.append(tk.note(
            f"Attribute inference of {a['feature']}{' (Art. 9)' if a['special_category'] else ''}: gain over "
            f"imputation {a['gain_text']} (with the model {a['attack_accuracy']:.0%}, imputation "
            f"{a['imputation_accuracy']:.0%}, {a['n_members']:,} members)."
        ))
    flows.append(
        tk.side_by_side(
            tk.line_chart([(m["label"], m["epsilon_per_epoch"])], title="ε spent per epoch", x_label="epoch", y_label="ε"),
            tk.roc_curve(roc_curves_with_band(m)),
        )
    )
    flows.extend(explanation_flowables(m))
    metrics = {k: v for k, v in m["metrics"].items() if isinstance(v, int | float | str | list) and v is not None}
    if metrics:
        flows.append(tk.heading("Utility metrics", level=2))
        flows.append(tk.key_value_table(mlops_display.metric_rows(metrics)))
    flows.append(tk.heading("5. Remediation history"))
    flows.append(
        tk.data_table(
            ["Version", "Status", "Reason", "ε", "Registered", "Supersedes"],
            [
                [f"v{h['version']}" + (" (this)" if h["pk"] == mv.pk else ""), h["status"], _reason(data, h["status"], h["status_reason"], h["supersedes_id"]),
                 "∞" if h["epsilon"] is None else f"{h['epsilon']:.3f}", h["created_at"], h["supersedes_id"] and f"#{h['supersedes_id']}"]
                for h in data["history"]
            ],
        )
    )
    if data["erasure_detail"]:
        flows.append(tk.heading("Erasure remediation decisions", level=2))
        flows.append(
            tk.data_table(
                ["Erasure request", "Remediation decided", "Outcome", "Justification", "Decided at"],
                [
                    [f"#{d['request_id']}", ACTION_LABELS.get(d["action"], d["action"]), _outcome_text(d),
                     d["justification"] or "as the policy proposes", d["decided_at"]]
                    for d in data["remediations"]
                ],
                empty="No erasure remediation decision concerns this model version.",
            )
        )
    flows.append(tk.heading("Audit events", level=2))
    flows.append(
        tk.data_table(
            ["#", "When", "Actor", "Action"],
            [[e["position"], e["occurred_at"], e["actor"], display.action_words(e["action"])] for e in data["events"]],
        )
    )
    flows.append(tk.heading("DPIAs covering this model", level=2))
    flows.append(
        tk.data_table(
            ["DPIA", "Version", "Status", "Signed", "Review date"],
            [[d["title"], d["version"], d["status"], d["signed_at"], d["review_date"]] for d in data["dpias"]],
            empty="No DPIA covers this model version.",
        )
    )
    return flows


def explanation_flowables(m: dict[str, Any], *, level: int = 2) -> list:
    """The output policy with the explanation attack beside it, and the logic involved."""
    ex = m["explanations"]
    ceiling = "none set" if ex["ceiling"] is None else f"AUC {ex['ceiling']:.2f}"
    attributions = (f"withheld: {ex['withheld_because']}" if ex["attributions_withheld"]
                    else "given with each decision")
    flows = [
        tk.heading(f"{m['label']}: decisions, explanations and what they reveal", level=level),
        tk.key_value_table([
            ("Output policy", ex["output_policy"]),
            ("Per-decision attributions now", attributions),
            ("Explanation-based membership attack", ex["attack_text"] or "not run yet"),
            ("Audit ceiling", ceiling),
        ]),
    ]
    logic = ex["logic"]
    if logic is None:
        flows.append(tk.note("The logic involved (Art. 15(1)(h)) has not been computed for this version yet."))
        return flows
    flows.append(tk.key_value_table([
        ("Purpose", logic["purpose"]),
        ("Features used", ", ".join(logic["features_used"])),
        ("Method", logic["method"].replace("_", " ")),
        ("Computed", logic["computed_at"]),
    ]))
    # A paragraph of its own: a text this long reads better under the facts than in a cell.
    flows.append(tk.paragraph(f"Baseline. {logic['baseline_rule']}"))
    flows.append(tk.data_table(
        ["Feature", "Mean |attribution|", "On average it"],
        [[f["feature"], f"{f['mean_abs']:.3f}", f"{f['direction']} the decided class's probability"]
         for f in logic["top_features"]],
        empty="No validation record to average over.",
    ))
    return flows


# rights.models.RemediationAction's labels, short (assessments does not import rights).
ACTION_LABELS = {
    "sisa_unlearn": "Unlearn (SISA shards)",
    "retrain": "Retrain from scratch",
    "rely_on_dp": "Rely on the DP guarantee (accepted risk)",
    "retire": "Retire the model",
}
OUTCOME_LABELS = {
    "retrained": "retrained",
    "unlearned": "unlearned",
    "clean": "already retrained without the person",
    "retired": "retired; artifact deleted",
    "kept_on_dp": "kept on its DP guarantee",
    "kept_on_dp_pending_other_erasures": "kept on its DP guarantee; other erasures remediate it",
    "no_live_version": "no live version; files deleted",
}


def _outcome_text(decision: dict[str, Any]) -> str:
    outcome = OUTCOME_LABELS.get(decision["outcome"], decision["outcome"]) or "not yet carried out"
    if decision["standing_version"] is not None:
        return f"{outcome}: replaced by version {decision['standing_version']}"
    return outcome


def _reason(data: dict[str, Any], status: str, status_reason: str, supersedes_id: int | None) -> str:
    from mlops.selectors import model_status_reason_shown

    versions = {h["pk"]: h["version"] for h in data["history"]}
    return model_status_reason_shown(
        status=status, status_reason=status_reason, supersedes_version=versions.get(supersedes_id),
        erasure_detail=data["erasure_detail"],
    )


def model_lineage_report_render(*, object_id: Any, path: Path, erasure_detail: bool = True) -> str:
    """Render the model card of model version ``object_id``; returns the PDF's SHA-256.

    Without ``erasure_detail`` (asked for by an ML engineer) amendments and status reasons
    say that the training data changed and when, not which erasure request or why."""
    data = {**model_lineage_report_data(model_version_id=int(object_id)), "erasure_detail": erasure_detail}
    return tk.render_pdf(path, model_lineage_flowables(data), title=f"Model lineage: {data['model']['label']}")
