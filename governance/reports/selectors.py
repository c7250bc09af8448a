"""Reads behind the reports, each with a fixed number of queries whatever the data size.

Counts come from aggregates, related rows from prefetches; nothing loops over records,
subjects or consents in Python.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch

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
