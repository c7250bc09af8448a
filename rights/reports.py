"""Erasure certificates as report jobs.

The erasure workflow writes its certificate with this toolkit when an execution completes
(rights.certificate); a report job for it hands out that very file, checked
against its SHA-256, so an auditor downloads the certificate the subject was given.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from governance import display
from governance.reports.toolkit import file_sha256


def erasure_certificate_path(*, erasure_request_id: int) -> Path | None:
    """The certificate written for a completed erasure request, or None if there is none yet."""
    from rights.models import ErasureRequest

    relative = ErasureRequest.objects.filter(pk=erasure_request_id).values_list("certificate_path", flat=True).first()
    if not relative:
        return None
    return Path(settings.REPORT_ROOT) / relative


def erasure_certificate_report_render(*, object_id: Any, path: Path) -> str:
    """Copy erasure request ``object_id``'s certificate to ``path``; returns its SHA-256."""
    source = erasure_certificate_path(erasure_request_id=int(object_id))
    if source is None or not source.is_file():
        raise FileNotFoundError(f"Erasure request {object_id} has no certificate: it is written when execution completes.")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(path)
    return file_sha256(path)


def erasure_certificate_precheck(*, object_id: int) -> str:
    if erasure_certificate_path(erasure_request_id=object_id) is None:
        return f"Erasure request {object_id} has no certificate yet: it is written when execution completes."
    return ""


# --- The access answer as a PDF for the person (Art. 15) -----------------------------------


def _value_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) or "—"
    return str(value)


def _when(value: Any) -> Any:
    """An ISO time of the JSON answer as the toolkit shows times (2026-12-02 00:05 UTC)."""
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return value


def _for_you_text(for_you: dict | None) -> str:
    if not for_you or for_you.get("epsilon") is None:
        return "—"
    n = for_you["your_records_in_its_training_data"]
    delta = for_you["delta"]
    delta_text = delta if isinstance(delta, str) else display.number(delta)
    return (f"you have {n} record{'' if n == 1 else 's'} in its training data: ε = {display.number(for_you['epsilon'])}, "
            f"δ = {delta_text} for you (group privacy)")


def _logic_flows(t: Any, logic: dict[str, Any] | None) -> list:
    """The model's "logic involved" in words: what weighs most (a table), how that is
    measured and what a prediction shows."""
    if not logic:
        return [t.note("How this model decides has not been summarised yet.")]
    return [
        t.data_table(
            ["What weighs most", "Effect on the prediction", "Average weight"],
            [[f["feature"], f["direction"], f"{f['average_weight']:.2f}"] for f in logic["what_weighs_most"]],
        ),
        t.paragraph(f"How this is measured: {logic['how_this_is_measured']}"),
        t.paragraph(f"What a prediction shows: {logic['what_a_prediction_shows']}"),
    ]


def access_answer_pdf_write(*, answer: dict[str, Any], path: Path) -> str:
    """Write ``answer`` (rights.access.access_answer) to ``path`` as the PDF given to the
    person; returns its SHA-256. It holds what the JSON holds, in the same order, so the two
    answers never disagree."""
    from governance.reports import toolkit as t

    flows = t.title_block(
        "Your right of access: our answer",
        subtitle="GDPR Art. 15 — the information we must give you and a copy of your personal data",
        facts=[("Your reference", answer.get("subject_ref") or "—"), ("Answer produced", _when(answer["generated_at"])),
               ("Format", answer["format"])],
    )
    if not answer["data_held"]:
        flows.append(t.paragraph(answer.get("answer") or "We hold no personal data relating to you."))
        return t.render_pdf(path, flows, title="Right of access: our answer", subject="GDPR Art. 15 access answer")
    if answer["controllers"]:
        flows.append(t.heading("Who processes your data"))
        flows.append(t.data_table(
            ["Controller", "Contact", "Data protection officer", "Representative"],
            [[c["name"], c["contact"], c["data_protection_officer"], c["representative"] or "—"]
             for c in answer["controllers"]],
        ))
    a = answer["article_15_1_a_purposes"]
    flows += [t.heading(f"{a['title']} ({a['article']})"), t.data_table(
        ["Purpose", "Code", "Processing activities", "Lawful basis"],
        [[p["label"], p["code"], _value_text(p["processing_activities"]), _value_text([b["label"] for b in p["lawful_bases"]])]
         for p in a["items"]],
    )]
    b = answer["article_15_1_b_categories_of_personal_data"]
    flows += [t.heading(f"{b['title']} ({b['article']})"), t.data_table(
        ["Category", "Code", "Special category (Art. 9)", "Criminal offence data (Art. 10)"],
        [[c["label"], c["code"], c["special_category"] or "—", _value_text(c["criminal_offence_data"])] for c in b["items"]],
        empty="No data categories are recorded for these processing activities.",
    ), t.data_table(
        ["Dataset", "Fields held", "Special-category fields"],
        [[f["dataset"], _value_text(f["fields"]), _value_text(f["special_category_fields"])]
         for f in b["fields_per_dataset"]],
        empty="No dataset holds records of yours.",
    )]
    c = answer["article_15_1_c_recipients"]
    flows += [t.heading(f"{c['title']} ({c['article']})"), t.data_table(
        ["Processing activity", "Recipients (third country)", "Transfers: country and safeguard"],
        [[r["processing_activity"],
          _value_text([f"{x['name']} ({x['third_country']})" if x["third_country"] else x["name"] for x in r["recipients"]]),
          _value_text([f"{x['country']}: {x['safeguard']}" for x in r["third_country_transfers"]])]
         for r in c["items"]],
    )]
    d = answer["article_15_1_d_retention"]
    flows += [t.heading(f"{d['title']} ({d['article']})"), t.data_table(
        ["Processing activity", "Data category", "Kept for (days)"],
        [[r["processing_activity"], r["data_category_label"], r["retention_days"]] for r in d["items"]],
        empty="No retention period is recorded.",
    )]
    for key in ("article_15_1_e_rights", "article_15_1_f_complaint"):
        section = answer[key]
        flows.append(t.heading(f"{section['title']} ({section['article']})"))
        for item in section["items"]:
            applies = item.get("applies_to_processing_activities")
            extra = f" Applies to: {_value_text(applies)}." if applies else ""
            contacts = item.get("data_protection_officer_contacts")
            extra += f" Our data protection officer: {_value_text(contacts)}." if contacts else ""
            flows.append(t.paragraph(f"{item['article']} — {item['text']}{extra}"))
    g = answer["article_15_1_g_source"]
    flows += [t.heading(f"{g['title']} ({g['article']})"), t.data_table(
        ["Where", "Source"],
        [[s["dataset"], s["source_system"] or "not recorded"] if "dataset" in s
         else ["Consent records", f"collected from you ({_value_text(s['collection_methods'])})"] for s in g["items"]],
    )]
    h = answer["article_15_1_h_automated_decision_making"]
    flows += [t.heading(f"{h['title']} ({h['article']})"), t.note(h["note"])]
    for m in h["items"]:
        flows.append(t.heading(f"{m['model']}, version {m['version']}", level=2))
        flows.append(t.key_value_table([
            ("What it is for", f"{m['purpose']['label']} ({m['purpose']['code']})"),
            ("Model type", f"{m['model_type']}; {_value_text(m['model_spec'])}"),
            ("Features used", _value_text(m["features_used"])), ("Predicts", m["predicts"] or "—"),
            ("Trained on", m["trained_on_dataset"]), ("Trained at", _when(m["trained_at"])),
            ("Privacy guarantee", f"ε = {_value_text(m['differential_privacy']['epsilon'])}, "
                                  f"δ = {_value_text(m['differential_privacy']['delta'])} per record"),
            ("For you", _for_you_text(m["differential_privacy"].get("for_you"))),
            ("Status", m["status_label"]),
        ]))
        flows += _logic_flows(t, m.get("logic_involved"))
    if not h["items"]:
        flows.append(t.paragraph("No model has been trained on your data."))
    decided = answer.get("decisions_about_you")
    if decided is not None:
        flows += [t.heading(f"{decided['title']} ({decided['article']})"), t.note(decided["note"]), t.data_table(
            ["When", "Model", "Outcome", "What weighed most", "Review"],
            [[_when(d["decided_at"]), f"{d['model']} v{d['version']}", d["outcome"], d["what_weighed_most"] or "—",
              _value_text([f"{r['status']}" + (f": {r['outcome']}" if r["outcome"] else "") for r in d["reviews"]])
              or "—"]
             for d in decided["items"]],
            empty="No decision about you was recorded.",
        )]
    copy = answer["article_15_3_copy_of_the_data"]
    flows += [t.heading(f"{copy['title']} ({copy['article']})"), t.heading("Your records", level=2)]
    for record in copy["records"]:
        flows.append(t.key_value_table([("Dataset", record["dataset"]), ("Ingested", _when(record["ingested_at"])),
                                        *((k, _value_text(v)) for k, v in record["values"].items())]))
        flows.append(t.spacer(2))
    if not copy["records"]:
        flows.append(t.paragraph("No dataset holds records of yours."))
    flows += [t.heading("Your consent history", level=2), t.data_table(
        ["Purpose", "Action", "When", "Notice version", "How"],
        [[e["purpose_label"], e["action"], _when(e["occurred_at"]), e["notice_version"], e["method"]]
         for e in copy["consent_history"]],
        empty="No consent was recorded.",
    ), t.heading("Models trained on your data", level=2), t.data_table(
        ["Model", "Version", "ε", "δ", "Status"],
        [[m["model"], m["version"], _value_text(m["epsilon"]), _value_text(m["delta"]), m["status"]]
         for m in copy["models_trained_on_your_data"]],
        empty="None.",
    )]
    return t.render_pdf(path, flows, title="Right of access: our answer", subject="GDPR Art. 15 access answer")
