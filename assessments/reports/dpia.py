"""The DPIA report (Art. 35): screening, the Art. 35(7)(a)–(d) content, charts and sign-off."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from assessments.models import Likelihood, Severity, Wp248Criterion, risk_level
from assessments.reports import evidence as selectors
from governance.reports import toolkit as tk

CRITERION_LABELS = dict(Wp248Criterion.choices)


def _screening(data: dict[str, Any]) -> list:
    dpia = data["dpia"]
    rows = []
    for a in data["screening"]:
        rows.append(
            [
                CRITERION_LABELS.get(a.criterion, a.criterion),
                "yes" if a.proposed else "no",
                a.source,
                "not confirmed" if a.confirmed is None else ("yes" if a.confirmed else "no"),
                a.override_reason,
            ]
        )
    met = sum(1 for a in data["screening"] if a.answer)
    cases = ", ".join(f"35(3)({c})" for c in dpia.article_35_3_cases) or "none"
    flows = [
        tk.heading("1. Screening (WP248 rev.01 criteria)"),
        tk.data_table(["Criterion", "Proposed", "Evidence", "DPO answer", "Reason for override"], rows),
        tk.spacer(2),
        tk.key_value_table(
            [
                ("Criteria met", f"{met} of {len(data['screening'])}"),
                ("Art. 35(3) cases", cases),
                ("DPIA required (screening)", dpia.dpia_required),
                ("DPO override", "none" if dpia.required_override is None else ("required" if dpia.required_override else "not required")),
                ("Override justification", dpia.required_override_justification),
            ]
        ),
    ]
    return flows


def _description(data: dict[str, Any]) -> list:
    dpia, a = data["dpia"], data["activity"]
    flows = [
        tk.heading("2. Systematic description of the processing (Art. 35(7)(a))"),
        tk.paragraph(dpia.systematic_description),
        tk.key_value_table(
            [
                ("Processing activity", a["name"]),
                ("Controller", a["controller_name"]),
                ("Purposes", ", ".join(f"{p['code']} ({p['name']})" for p in a["purposes"])),
                ("Lawful basis", a["lawful_basis"]),
                ("Art. 9(2) condition", a["special_category_condition"]),
                ("Data subjects (distinct)", data["totals"]["subjects"]),
                ("Records", data["totals"]["records"]),
                ("Data-subject categories", ", ".join(c["code"] for c in a["data_subject_categories"])),
                (
                    "Data categories",
                    ", ".join(c["code"] + (f" [{c['special_category']}]" if c["special_category"] else "") for c in a["data_categories"]),
                ),
                ("Recipients", "; ".join(r["name"] + (f" ({r['third_country']})" if r["third_country"] else "") for r in a["recipients"])),
                ("Third-country transfers", "; ".join(f"{t['country']}: {t['safeguard']}" for t in a["third_country_transfers"]) or "none"),
                ("Retention", "; ".join(f"{r['data_category']}: {r['retention']}" for r in a["retention"])),
            ]
        ),
        tk.heading("Datasets", level=2),
        tk.data_table(
            ["Dataset", "Records", "Data subjects", "Derived from", "Source system"],
            [[d["name"], d["records"], d["subjects"], ", ".join(d["parents"]), d["source_system"]] for d in data["datasets"]],
        ),
        tk.heading("Snapshots", level=2),
        tk.data_table(
            ["Snapshot", "Dataset", "Purpose", "Taken for", "Records", "Subjects", "Merkle root"],
            [
                [f"#{s.pk}", s.dataset.name, s.purpose.code, s.taken_for, s.included_count, s.included_subjects,
                 tk.hash_cell(s.merkle_root, label=f"Merkle root of snapshot #{s.pk} at creation")]
                for s in data["snapshots"]
            ],
        ),
        tk.heading("Lineage: processing activity → dataset → snapshot → training run → model", level=2),
        tk.data_table(
            ["Processing activity", "Dataset", "Snapshot", "Training run", "Model version"],
            data["lineage_rows"],
            empty="No snapshot has been taken for this activity yet.",
        ),
    ]
    return flows


def _necessity(data: dict[str, Any]) -> list:
    dpia = data["dpia"]
    rows = [[f["dataset"], ", ".join(f["features"]) or "—", f["label"] or "—"] for f in data["features"]]
    return [
        tk.heading("3. Necessity and proportionality (Art. 35(7)(b))"),
        tk.paragraph(dpia.necessity_and_proportionality or "Not yet written."),
        tk.heading("Data minimisation facts", level=2),
        tk.data_table(["Dataset", "Features used", "Label"], rows),
        tk.paragraph(
            "People are pseudonymised on arrival: external identifiers are replaced by an HMAC-SHA-256 keyed "
            "pseudonym (Art. 4(5)); the key is held apart from the data and raw identifiers are never stored. "
            f"{data['totals']['subjects']} data subjects are known only by pseudonym."
        ),
    ]


def _risks(data: dict[str, Any]) -> list:
    risks = data["risks"]
    rows = [
        [i, r.description, f"{r.likelihood} × {r.severity}", r.inherent_level, r.mitigations, f"{r.residual_likelihood} × {r.residual_severity}", r.residual_level]
        for i, r in enumerate(risks, 1)
    ]
    inherent = Counter((r.likelihood, r.severity) for r in risks)
    residual = Counter((r.residual_likelihood, r.residual_severity) for r in risks)
    kwargs = {"likelihoods": list(Likelihood.choices), "severities": list(Severity.choices), "level_of": risk_level}
    return [
        tk.heading("4. Risks to the rights and freedoms of data subjects (Art. 35(7)(c))"),
        tk.data_table(
            ["#", "Risk", "Likelihood × severity", "Inherent", "Mitigations", "Residual", "Residual level"],
            rows,
            empty="No risk recorded yet.",
        ),
        tk.spacer(3),
        tk.keep_together(
            tk.side_by_side(
                tk.risk_heat_map(inherent, title="Inherent risk", **kwargs),
                tk.risk_heat_map(residual, title="Residual risk (after measures)", **kwargs),
            ),
            tk.note("Scoring as in the ICO DPIA template: likelihood × severity on three points each; 1–2 low, 3–4 medium, 6–9 high."),
        ),
        *_measured_model_risk(data["models"]),
    ]


def _measured_model_risk(models: list[dict[str, Any]]) -> list:
    """What the privacy audits measured: the risk a model itself poses to the people it was
    trained on (membership, an empirical ε, attribute inference)."""
    flows = [
        tk.heading("Measured privacy risk of the models", level=2),
        tk.paragraph(
            "Membership inference asks whether an attacker can tell that a person's record was in the training data "
            "(AUC 0.50 and a TPR at 1% FPR of 1% are chance). The canary audit retrains the model's configuration "
            "with planted records and derives, at 95% confidence, a lower bound on the ε the configuration can "
            "have: below the claimed ε is expected and proves only that the claim is not contradicted; above it "
            "is a privacy bug. Attribute inference is the gain, over imputing the feature from a person's other "
            "data, of an attacker who also queries the model (model inversion); a gain near 0 means the model "
            "reveals no more than the other data already do."
        ),
    ]
    rows = []
    for m in models:
        mia = m["mia"]
        canary = m.get("canary")
        gains = "; ".join(
            f"{a['feature']}{' (Art. 9)' if a['special_category'] else ''}: {a['gain_text']}"
            for a in m.get("attribute_inference") or []
        ) or "no sensitive feature audited"
        rows.append([
            m["label"],
            "—" if mia is None else f"{mia['attack']}" + (f", {mia['n_references']} references" if mia.get("n_references") else ""),
            "—" if mia is None else mia["figures_text"][0][1],
            "—" if mia is None else mia["figures_text"][2][1],
            "∞ (no DP)" if m["epsilon"] is None else f"{m['epsilon']:.2f}",
            "—" if canary is None else (("PRIVACY BUG: " if canary["flagged"] else "") + canary["bound_text"]),
            gains,
        ])
    flows.append(tk.data_table(
        ["Model", "Strongest attack", "AUC (95% CI)", "TPR @ 1% FPR", "Claimed ε", "Empirical ε (canaries)",
         "Attribute inference: gain over imputation"],
        rows, empty="This DPIA covers no model version yet.",
    ))
    flows.append(tk.heading("Decisions: output policy and explanation leakage", level=2))
    flows.append(tk.paragraph(
        "What a decision of each model reveals (Art. 22, against model inversion) and how much its explanations "
        "leak: the explanation-based membership attack guesses who was in the training data from the size of a "
        "person's attributions (Shokri et al. 2021). An explanation shows how each feature moved this model's "
        "output from a fixed reference point; it does not show causes in the world or what another model would do."
    ))
    flows.append(tk.data_table(
        ["Model", "Output policy", "Per-decision attributions", "Explanation attack", "Audit ceiling"],
        [[m["label"], m["explanations"]["output_policy"],
          f"withheld: {m['explanations']['withheld_because']}" if m["explanations"]["attributions_withheld"] else "given",
          m["explanations"]["attack_text"] or "not run yet",
          "—" if m["explanations"]["ceiling"] is None else f"AUC {m['explanations']['ceiling']:.2f}"]
         for m in models],
        empty="This DPIA covers no model version yet.",
    ))
    for m in models:
        logic = m["explanations"]["logic"]
        if logic is not None:
            top = ", ".join(f"{f['feature']} ({f['direction']}, {f['mean_abs']:.3f})" for f in logic["top_features"])
            flows.append(tk.note(
                f"Logic involved in {m['label']} (Art. 15(1)(h)): {logic['purpose']}; reads "
                f"{', '.join(logic['features_used'])}; most influential on average: {top or 'none measured'} "
                f"({logic['method'].replace('_', ' ')}; {logic['baseline_rule']})"
            ))
    for m in models:
        if m.get("privacy_bug"):
            flows.append(tk.note(
                f"PRIVACY BUG in {m['label']}: the canary audit's {m['canary']['bound_text']} contradicts the claimed "
                "guarantee. The implementation or the accounting is wrong; the model must not be relied on as private."
            ))
    return flows


def _measures(data: dict[str, Any]) -> list:
    dpia = data["dpia"]
    flows = [tk.heading("5. Measures to address the risks (Art. 35(7)(d))")]
    if dpia.measures:
        flows.append(tk.paragraph(dpia.measures))
    flows.append(tk.heading("Differential privacy and membership-inference evidence per model", level=2))
    models = data["models"]
    flows.append(
        tk.data_table(
            ["Model", "ε", "δ", "Accountant", "Clipping norm", "Noise σ", "MIA AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR"],
            [
                [
                    m["label"],
                    "∞ (no DP)" if m["epsilon"] is None else f"{m['epsilon']:.3f}",
                    "—" if m["delta"] is None else f"{m['delta']:.0e}",
                    m["accountant"],
                    m["max_grad_norm"],
                    m["noise_multiplier"],
                    "—" if m["mia"] is None else m["mia"]["figures_text"][0][1],
                    "—" if m["mia"] is None else m["mia"]["figures_text"][2][1],
                    "—" if m["mia"] is None else m["mia"]["figures_text"][3][1],
                ]
                for m in models
            ],
            empty="This DPIA covers no model version yet.",
        )
    )
    if any(not m["non_private"] for m in models):
        flows.append(tk.note(
            "ε and δ are per record: DP-SGD samples and clips records, so they bound what any one record changes. "
            "What they mean for a person with several records (group privacy):"
        ))
        for m in models:
            if not m["non_private"]:
                flows.append(tk.note(f"{m['label']}: {m['person_guarantee_text']}"))
    for m in models:
        if m["mia"] is not None:
            # What the table's rounded cells cannot hold: sizes and why a figure is not reported.
            flows.append(tk.note(f"{m['label']}: MIA {m['mia']['auc_text']}; {m['mia']['sizes_text']}. " + " ".join(m["mia"]["notes"])))
    for m in models:
        flows.append(
            tk.keep_together(
                tk.heading(f"{m['label']}: privacy spent and membership-inference risk", level=2),
                tk.side_by_side(
                    tk.line_chart([(m["label"], m["epsilon_per_epoch"])], title="ε spent per epoch", x_label="epoch", y_label="ε"),
                    tk.roc_curve(selectors.roc_curves_with_band(m), title="Membership-inference ROC with its 95% band"),
                ),
            )
        )
    flows.append(tk.heading("Privacy-budget ledger", level=2))
    flows.append(
        tk.data_table(
            ["Dataset", "ε cap", "δ", "ε spent", "Runs spent", "Runs reserved", "Non-private runs", "Exceeded"],
            [
                [b["dataset"], b["epsilon_cap"], b["delta"], "∞" if math.isinf(b["epsilon_spent"]) else f"{b['epsilon_spent']:.3f}", b["spent_runs"], b["reserved_runs"], b["non_private_runs"], b["exceeded"]]
                for b in data["budgets"]
            ],
            empty="No privacy budget set for the activity's datasets.",
        )
    )
    chain = data["audit_chain"]
    amendments = data["amendments"]
    flows.append(tk.heading("Organisational and technical safeguards", level=2))
    flows.append(
        tk.key_value_table(
            [
                ("Pseudonymisation", "HMAC-SHA-256 keyed pseudonyms on arrival (Art. 4(5), 32(1)(a))"),
                ("Retention enforcement", f"{amendments.get('retention', 0)} snapshot amendment(s) for expired retention (Art. 5(1)(e))"),
                ("Erasure amendments", f"{amendments.get('erasure', 0)} snapshot amendment(s) for Art. 17 erasure"),
                (
                    "Audit chain",
                    tk.rich(
                        f"{'verified' if chain['ok'] else 'BROKEN at #' + str(chain['broken_position'])}, {chain['checked']} events, head ",
                        tk.hash_cell(chain["head_hash"], label="Audit chain head"),
                    ),
                ),
            ]
        )
    )
    return flows


def _sign_off(data: dict[str, Any]) -> list:
    dpia = data["dpia"]
    return [
        tk.heading("6. DPO advice, data subjects' views and sign-off"),
        tk.heading("Advice of the data protection officer (Art. 35(2))", level=2),
        tk.paragraph(dpia.dpo_advice or "Not yet given."),
        tk.heading("Views of data subjects (Art. 35(9))", level=2),
        tk.paragraph(dpia.data_subject_views or f"Not sought: {dpia.views_not_sought_reason or 'no reason recorded.'}"),
        tk.key_value_table(
            [
                ("Status", dpia.get_status_display()),
                ("Signed by", dpia.signed_by.get_username() if dpia.signed_by else "not signed"),
                ("Signed at", dpia.signed_at),
                ("Review date", dpia.review_date),
                ("Prior consultation (Art. 36)", "required: high residual risk remains" if dpia.prior_consultation_required else "not required"),
                ("Marked for review", f"{tk.text(dpia.marked_for_review_at)}: {dpia.review_reason}" if dpia.marked_for_review_at else "no"),
            ]
        ),
    ]


def dpia_flowables(data: dict[str, Any]) -> list:
    dpia = data["dpia"]
    flows = tk.title_block(
        "Data protection impact assessment",
        subtitle=f"{dpia.title}: Article 35 GDPR",
        facts=[
            ("Processing activity", data["activity"]["name"]),
            ("DPIA", f"#{dpia.pk}, version {dpia.version}"),
            ("Status", dpia.get_status_display()),
            ("Created", dpia.created_at),
            ("Signed", f"{tk.text(dpia.signed_at)} by {dpia.signed_by.get_username()}" if dpia.signed_by else "not signed"),
            ("Review date", dpia.review_date),
        ],
    )
    for part in (_screening, _description, _necessity, _risks, _measures, _sign_off):
        flows.extend(part(data))
    return flows


def dpia_report_render(*, object_id: Any, path: Path) -> str:
    """Render DPIA ``object_id`` to ``path``; returns the PDF's SHA-256."""
    data = selectors.dpia_report_data(dpia_id=int(object_id))
    dpia = data["dpia"]
    return tk.render_pdf(path, dpia_flowables(data), title=f"{dpia.title} (version {dpia.version})", subject="Article 35 GDPR")
