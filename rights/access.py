"""The answer to a right-of-access request (GDPR Art. 15): what a person is told and given.

Read-only. The answer is one JSON object a DPO can read and a program can parse: every
item of Art. 15(1)(a)–(h) and 15(2) under a key that names its article, each an object
``{"article": "Art. 15(1)(a)", "title": ..., "items": [...]}``, then the copy of the data
(Art. 15(3)) under ``article_15_3_copy_of_the_data``. docs/rights.md describes it field by
field; ``ACCESS_ANSWER_FORMAT`` versions it.

The person is named only by their audit reference (``DataSubject.reference``, the random
UUID the audit chain uses), never by pseudonym; nothing read here carries another person's
identifier: the person's records, their own consent events without evidence (evidence
blobs are written by the collecting system and may name others, e.g. a parent or a
witness), and aggregate descriptions of the processing.

Lineage (which datasets, snapshots and models hold the person) comes from
provenance.selectors.subject_impact, the same walk the erasure impact uses, so an access
answer and an erasure touch exactly the same models. Neither provenance nor governance has
a selector for a person's records or for activities by purpose yet, so those two reads are
plain querysets over their models, as rights.selectors already reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from governance.models import DataSubject, LawfulBasis, ProcessingActivity

ACCESS_ANSWER_FORMAT = "privacy-ledger/access-answer/v1"

# Art. 21(1) applies to processing on these bases only; Art. 20 to the first two.
OBJECTION_BASES = (LawfulBasis.PUBLIC_TASK, LawfulBasis.LEGITIMATE_INTERESTS)
PORTABILITY_BASES = (LawfulBasis.CONSENT, LawfulBasis.CONTRACT)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _basis_label(code: str) -> str:
    try:
        return str(LawfulBasis(code).label)
    except ValueError:
        return code


def _days(value: timedelta) -> float:
    days = value.total_seconds() / 86400
    return int(days) if days == int(days) else round(days, 3)


def _section(article: str, title: str, items: list[Any], **extra: Any) -> dict[str, Any]:
    return {"article": article, "title": title, **extra, "items": items}


def _epsilon(value: float | None) -> float | str:
    # JSON has no infinity: a model trained without differential privacy says so in words.
    return "infinite (trained without differential privacy)" if value is None else value


# --- What the person's data is in ---------------------------------------------------------


def _records_of(subject: DataSubject) -> list[dict[str, Any]]:
    from provenance.models import DataRecord

    return list(
        # Current values only: a version a rectification replaced is kept for the law, not given out.
        DataRecord.objects.filter(subject=subject, superseded_at__isnull=True).order_by("dataset_id", "ingested_at", "id")
        .values("dataset_id", "features", "label", "ingested_at")
    )


def _datasets(ids: Iterable[int]) -> dict[int, Any]:
    from provenance.models import Dataset

    return {d.pk: d for d in Dataset.objects.filter(pk__in=set(ids)).select_related("processing_activity")}


def _consent_events(subject: DataSubject) -> list[Any]:
    from governance.selectors import consent_history

    return [event for entry in consent_history(subject=subject) for event in entry["events"]]


def _activities_for(*, dataset_activity_ids: set[int], consent_purpose_codes: set[str]) -> list[ProcessingActivity]:
    """The activities holding the person's records, and those whose purposes cover a purpose
    the person gave or withdrew consent for (a purpose covers its dotted descendants)."""
    wanted = set(dataset_activity_ids)
    if consent_purpose_codes:
        for activity_id, code in ProcessingActivity.purposes.through.objects.values_list(
            "processingactivity_id", "purpose__code"
        ):
            if any(c == code or c.startswith(code + ".") for c in consent_purpose_codes):
                wanted.add(activity_id)
    return list(
        ProcessingActivity.objects.filter(pk__in=wanted).order_by("name").prefetch_related(
            "purposes", "retention_rules__data_category"
        )
    )


def _schema_columns(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset's columns in schema order: features, then the label."""
    columns = [
        {"name": f["name"], "type": f.get("type", ""), "role": "feature",
         **({"special_category": True} if f.get("special_category") else {})}
        for f in (schema or {}).get("features", [])
    ]
    label = (schema or {}).get("label")
    if label:
        columns.append({"name": label["name"], "type": label.get("type", ""), "role": "label"})
    return columns


# --- The answer ---------------------------------------------------------------------------


def _purposes(activities: list[ProcessingActivity], snapshots: list[dict], consent_codes: set[str]) -> list[dict]:
    from governance.models import Purpose

    by_code: dict[str, dict[str, Any]] = {}
    for activity in activities:
        for purpose in activity.purposes.all():
            entry = by_code.setdefault(purpose.code, {
                "code": purpose.code, "label": purpose.name, "description": purpose.description,
                "processing_activities": [], "lawful_bases": [],
            })
            entry["processing_activities"].append(activity.name)
            if activity.lawful_basis not in entry["lawful_bases"]:
                entry["lawful_bases"].append(activity.lawful_basis)
    # A snapshot may have been taken for a further purpose found compatible (Art. 6(4)), and a
    # consent may name a purpose more specific than the activity's: both are purposes too.
    extra = ({s["purpose"] for s in snapshots} | consent_codes) - set(by_code)
    for purpose in Purpose.objects.filter(code__in=extra).order_by("code"):
        by_code[purpose.code] = {
            "code": purpose.code, "label": purpose.name, "description": purpose.description,
            "processing_activities": [], "lawful_bases": [],
        }
    for entry in by_code.values():
        entry["lawful_bases"] = [{"code": b, "label": _basis_label(b)} for b in entry["lawful_bases"]]
    return [by_code[c] for c in sorted(by_code)]


def _categories(activities: list[ProcessingActivity], datasets: dict[int, Any]) -> dict[str, list]:
    categories: dict[str, dict[str, Any]] = {}
    for activity in activities:
        for rule in activity.retention_rules.all():
            category = rule.data_category
            categories.setdefault(category.code, {
                "code": category.code, "label": category.name,
                "special_category": category.get_special_category_display() if category.special_category else None,
                "criminal_offence_data": category.criminal_offence_data,
            })
    fields = [
        {"dataset": d.name, "fields": [c["name"] for c in _schema_columns(d.schema)],
         "special_category_fields": [c["name"] for c in _schema_columns(d.schema) if c.get("special_category")]}
        for d in sorted(datasets.values(), key=lambda d: d.name)
    ]
    return {"data_categories": [categories[c] for c in sorted(categories)], "fields_per_dataset": fields}


def _recipients(activities: list[ProcessingActivity]) -> list[dict[str, Any]]:
    return [
        {
            "processing_activity": a.name,
            "recipients": [{"name": r.get("name", ""), "third_country": r.get("third_country") or None}
                           for r in a.recipients or []],
            "third_country_transfers": [{"country": t.get("country", ""), "safeguard": t.get("safeguard", "")}
                                        for t in a.third_country_transfers or []],
        }
        for a in activities
    ]


def _retention(activities: list[ProcessingActivity]) -> list[dict[str, Any]]:
    return [
        {"processing_activity": a.name, "data_category": rule.data_category.code,
         "data_category_label": rule.data_category.name, "retention_days": _days(rule.retention),
         "criterion": "kept for this period after the record was ingested, then deleted (Art. 5(1)(e))"}
        for a in activities
        for rule in sorted(a.retention_rules.all(), key=lambda r: r.data_category.code)
    ]


def _rights(activities: list[ProcessingActivity]) -> list[dict[str, Any]]:
    objectable = sorted(a.name for a in activities if a.lawful_basis in OBJECTION_BASES)
    portable = sorted(a.name for a in activities if a.lawful_basis in PORTABILITY_BASES)
    consent = sorted(a.name for a in activities if a.lawful_basis == LawfulBasis.CONSENT)
    return [
        {"right": "rectification", "article": "Art. 16",
         "text": "You may ask us to correct inaccurate personal data about you and to complete incomplete data."},
        {"right": "erasure", "article": "Art. 17",
         "text": "You may ask us to erase your personal data; models trained on it are retrained or unlearned."},
        {"right": "restriction", "article": "Art. 18",
         "text": "You may ask us to restrict processing: your data is then kept but not used, "
                 "including for training new models."},
        {"right": "objection", "article": "Art. 21",
         "text": "You may object to processing based on a public task or on legitimate interests.",
         "applies_to_processing_activities": objectable},
        {"right": "data_portability", "article": "Art. 20",
         "text": "You may receive the data you provided, processed on consent or contract, in a structured, "
                 "machine-readable format.",
         "applies_to_processing_activities": portable},
        {"right": "withdraw_consent", "article": "Art. 7(3)",
         "text": "You may withdraw your consent at any time; processing before the withdrawal stays lawful.",
         "applies_to_processing_activities": consent},
    ]


def _complaint(activities: list[ProcessingActivity]) -> list[dict[str, Any]]:
    contacts = sorted({a.dpo_contact for a in activities if a.dpo_contact})
    return [{
        "right": "lodge_a_complaint", "article": "Art. 77",
        "text": "You have the right to lodge a complaint with a supervisory authority, in particular in the Member "
                "State of your habitual residence, place of work or of the alleged infringement, and to an effective "
                "judicial remedy (Art. 79).",
        "data_protection_officer_contacts": contacts,
    }]


def _sources(datasets: dict[int, Any], consent_events: list[Any]) -> list[dict[str, Any]]:
    items = [
        {"dataset": d.name, "source_system": d.source_system or None,
         "derived_from": sorted(p.name for p in d.parents.all()), "transformation": d.transformation or None}
        for d in sorted(datasets.values(), key=lambda d: d.name)
    ]
    methods = sorted({e.method for e in consent_events if e.method})
    if methods:
        items.append({"consent_records": "collected from you", "collection_methods": methods})
    return items


def _for_you(*, epsilon: float | None, delta: float | None, records: int) -> dict[str, Any]:
    """What a version's record-level (ε, δ) means for this person, who has ``records`` records
    in its training snapshot: the group-privacy bound (mlops.engine.accounting.group_privacy)."""
    from mlops import display as mlops_display

    if epsilon is None or delta is None or records < 1:
        return {"your_records_in_its_training_data": records, "epsilon": None, "delta": None}
    person_epsilon, person_delta = mlops_display.person_guarantee(
        epsilon=epsilon, delta=delta, max_records_per_person=records)
    holds = person_delta < 1
    return {"your_records_in_its_training_data": records, "epsilon": person_epsilon,
            "delta": person_delta if holds else "1 or more: no guarantee"}


def _model_versions(model_version_ids: list[int], *, subject: DataSubject) -> list[dict[str, Any]]:
    from mlops.selectors import model_logic_summary, model_versions_visible
    from provenance.selectors import subject_records_in_snapshots

    versions = []
    visible = list(model_versions_visible().filter(pk__in=model_version_ids).select_related("explanation_summary")
                   .order_by("pk"))
    yours = subject_records_in_snapshots(subject_id=subject.pk, snapshot_ids={mv.training_run.snapshot_id for mv in visible})
    for mv in visible:
        run = mv.training_run
        snapshot = run.snapshot
        dataset = snapshot.dataset
        versions.append({
            "model": mv.name, "version": mv.version, "status": mv.status,
            "status_label": mv.get_status_display(),
            "trained_at": _iso(mv.created_at),
            "purpose": {"code": snapshot.purpose.code, "label": snapshot.purpose.name,
                        "description": snapshot.purpose.description},
            "processing_activity": dataset.processing_activity.name,
            "lawful_basis": snapshot.lawful_basis,
            "trained_on_dataset": dataset.name,
            "task": run.task, "model_type": run.get_task_display(), "model_spec": run.model_spec,
            "features_used": [c["name"] for c in _schema_columns(dataset.schema) if c["role"] == "feature"],
            "predicts": next((c["name"] for c in _schema_columns(dataset.schema) if c["role"] == "label"), None),
            "differential_privacy": {
                "epsilon": _epsilon(mv.epsilon), "delta": mv.delta, "non_private": mv.non_private,
                "meaning": "ε bounds how much the model can reveal about any one record, at δ; smaller is more "
                           "private. Someone with several records is protected less: for_you gives the bound for "
                           "your records in its training data (group privacy).",
                "for_you": _for_you(epsilon=None if mv.non_private else mv.epsilon, delta=mv.delta,
                                    records=yours.get(snapshot.pk, 0)),
            },
            "sisa_ensemble": bool(run.sisa) or mv.is_sisa_ensemble,
            "logic_involved": _logic(model_logic_summary(model_version=mv)),
        })
    return versions


def _logic(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's "logic involved" (mlops' logic summary) in the answer's terms; None until
    the worker has computed it."""
    if summary is None:
        return None
    return {
        "what_weighs_most": [
            {"feature": f["feature"], "direction": f["direction"], "average_weight": round(float(f["mean_abs"]), 4)}
            for f in summary["top_features"]
        ],
        "how_this_is_measured": f"{summary['method']}; baseline: {summary['baseline_rule']}",
        "what_a_prediction_shows": summary["output_policy"],
    }


def _from_apps_above(subject: DataSubject) -> dict[str, Any]:
    """What the apps above governance hold about the person (the decisions made about them),
    through governance.subject_data: rights does not import those apps."""
    from governance.subject_data import subject_data_from_providers

    return subject_data_from_providers(pseudonym=subject.pseudonym)


NO_DATA_HELD = "We hold no personal data relating to the identifier given."


def access_answer_no_data(*, generated_at: datetime | None = None) -> dict[str, Any]:
    """The answer for an identifier with no subject: no data held (Art. 15(1), first limb)."""
    return {"format": ACCESS_ANSWER_FORMAT, "generated_at": _iso(generated_at or timezone.now()),
            "subject_ref": None, "data_held": False, "answer": NO_DATA_HELD}


def access_answer(*, subject: DataSubject, generated_at: datetime | None = None) -> dict[str, Any]:
    """The full Art. 15 answer for ``subject``: every Art. 15(1)(a)–(h) and 15(2) item and the
    copy of the data (15(3)). See the module docstring and docs/rights.md for the format."""
    from provenance.selectors import subject_impact

    lineage = subject_impact(subject=subject)
    records = _records_of(subject)
    datasets = _datasets(r["dataset_id"] for r in records)
    events = _consent_events(subject)
    consent_codes = {e.purpose.code for e in events}
    activities = _activities_for(
        dataset_activity_ids={d.processing_activity_id for d in datasets.values()}, consent_purpose_codes=consent_codes,
    )
    model_versions = _model_versions([m["id"] for m in lineage["model_versions"]], subject=subject)
    in_training = [
        {"model": m["model"], "version": m["version"], "status": m["status"],
         "epsilon": m["differential_privacy"]["epsilon"], "delta": m["differential_privacy"]["delta"],
         "purpose": m["purpose"]["code"], "trained_on_dataset": m["trained_on_dataset"]}
        for m in model_versions
    ]
    categories = _categories(activities, datasets)
    above = _from_apps_above(subject)
    return {
        "format": ACCESS_ANSWER_FORMAT,
        "generated_at": _iso(generated_at or timezone.now()),
        "subject_ref": str(subject.reference),
        # Decisions recorded about the person are data held about them too.
        "data_held": bool(records or events or any(part.get("items") for part in above.values())),
        "controllers": sorted(
            ({"name": a.controller_name, "contact": a.controller_contact, "representative": a.representative or None,
              "joint_controller": a.joint_controller or None, "data_protection_officer": a.dpo_contact}
             for a in activities),
            key=lambda c: (c["name"], c["contact"]),
        ),
        "article_15_1_a_purposes": _section(
            "Art. 15(1)(a)", "Purposes of the processing",
            _purposes(activities, lineage["snapshots"], consent_codes),
        ),
        "article_15_1_b_categories_of_personal_data": _section(
            "Art. 15(1)(b)", "Categories of personal data concerned", categories["data_categories"],
            fields_per_dataset=categories["fields_per_dataset"],
        ),
        "article_15_1_c_recipients": _section(
            "Art. 15(1)(c) and 15(2)", "Recipients, third countries and the safeguards of transfers",
            _recipients(activities),
        ),
        "article_15_1_d_retention": _section(
            "Art. 15(1)(d)", "How long the data is stored, per category", _retention(activities),
        ),
        "article_15_1_e_rights": _section(
            "Art. 15(1)(e)", "Your rights to rectification, erasure, restriction and objection", _rights(activities),
        ),
        "article_15_1_f_complaint": _section(
            "Art. 15(1)(f)", "Your right to lodge a complaint with a supervisory authority", _complaint(activities),
        ),
        "article_15_1_g_source": _section(
            "Art. 15(1)(g)", "Where the data came from", _sources(datasets, events),
        ),
        "article_15_1_h_automated_decision_making": _section(
            "Art. 15(1)(h)", "Models trained on your data: the logic involved, what they are for, their privacy "
            "guarantee and status", model_versions,
            note="From the model registry. Each model learns a rule from the listed features of many people's "
                 "records to predict the listed label for the stated purpose.",
        ),
        **above,
        "article_15_3_copy_of_the_data": {
            "article": "Art. 15(3)", "title": "A copy of your personal data",
            "records": [
                {"dataset": datasets[r["dataset_id"]].name, "ingested_at": _iso(r["ingested_at"]),
                 "values": _ordered_values(datasets[r["dataset_id"]].schema, r["features"], r["label"])}
                for r in records
            ],
            "consent_history": [
                {"purpose": e.purpose.code, "purpose_label": e.purpose.name, "action": e.action,
                 "occurred_at": _iso(e.occurred_at), "notice_version": e.notice_version, "method": e.method,
                 "expires_at": _iso(e.expires_at)}
                for e in events
            ],
            "models_trained_on_your_data": in_training,
        },
    }


def _ordered_values(schema: dict[str, Any], features: dict[str, Any], label: Any) -> dict[str, Any]:
    """The record's values keyed by column, in schema order (then any field the schema lacks)."""
    values: dict[str, Any] = {}
    for column in _schema_columns(schema):
        values[column["name"]] = label if column["role"] == "label" else (features or {}).get(column["name"])
    for name, value in (features or {}).items():
        values.setdefault(name, value)
    return values
