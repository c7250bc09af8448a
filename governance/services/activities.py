"""Records of processing activities (Art. 30(1)): the rules a record must satisfy
(Art. 6, 9 and 30), creating it, and changing it with its before/after diff in the
audit chain, so no earlier version of a record is lost.

Apart from ``purposes`` because validation here is about how a record's lawful basis,
conditions and categories fit together, not about the taxonomy itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from governance.services.audit import audit_event_record
from governance.services.errors import ServiceError


def _model_snapshot(instance, fields: list[str]) -> dict[str, Any]:
    """JSON-safe values of ``fields`` for an audit before/after record."""
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[name] = value
    return out


PROCESSING_ACTIVITY_FIELDS = [
    "name", "description", "controller_name", "controller_contact", "joint_controller", "representative",
    "dpo_contact", "recipients", "third_country_transfers", "security_measures", "lawful_basis",
    "special_category_condition", "legitimate_interests_assessment", "controller_is_public_authority",
    "erasure_on_consent_withdrawal",
]
REQUIRED_ACTIVITY_FIELDS = {
    "name": "Art. 30(1): a record needs a name",
    "controller_name": "Art. 30(1)(a) requires the controller's name",
    "controller_contact": "Art. 30(1)(a) requires the controller's contact details",
    "dpo_contact": "Art. 30(1)(a) requires the data protection officer's contact details",
    "security_measures": "Art. 30(1)(g): describe the Art. 32(1) technical and organisational security measures",
}


def processing_activity_validate(
    *, values: dict[str, Any], purposes: list, data_subject_categories: list, retention: dict
) -> None:
    """Refuse an Art. 30 record whose lawful basis, conditions and categories do not fit together.

    ``retention`` maps DataCategory -> timedelta. Raises ServiceError naming the field and citing
    the article.
    """
    from governance.models import LawfulBasis, SpecialCategoryCondition

    for field, reason in REQUIRED_ACTIVITY_FIELDS.items():
        if not str(values.get(field) or "").strip():
            raise ServiceError(f"{reason}.", field=field)
    basis = values.get("lawful_basis")
    if basis not in LawfulBasis.values:
        raise ServiceError(
            f"Art. 6(1): the lawful basis must be one of {', '.join(LawfulBasis.values)}.", field="lawful_basis"
        )
    condition = values.get("special_category_condition") or ""
    if condition and condition not in SpecialCategoryCondition.values:
        raise ServiceError(
            f"Art. 9(2): the condition must be one of {', '.join(SpecialCategoryCondition.values)}.",
            field="special_category_condition",
        )
    if not purposes:
        raise ServiceError("Art. 30(1)(b) requires the purposes of the processing.", field="purposes")
    if not data_subject_categories:
        raise ServiceError(
            "Art. 30(1)(c) requires the categories of data subjects.", field="data_subject_categories"
        )
    if not retention:
        raise ServiceError(
            "Art. 30(1)(c) and (f) require the categories of personal data, each with a retention period.",
            field="retention",
        )
    for category, period in retention.items():
        if not isinstance(period, timedelta) or period <= timedelta(0):
            raise ServiceError(
                f"Art. 30(1)(f): the retention period for {category.code!r} must be a positive duration.",
                field="retention",
            )
    special = sorted(c.code for c in retention if c.special_category)
    if special and not condition:
        raise ServiceError(
            f"Art. 9(1) prohibits processing special categories ({', '.join(special)}) unless an Art. 9(2) "
            "condition applies; choose one.",
            field="special_category_condition",
        )
    if basis == LawfulBasis.LEGITIMATE_INTERESTS:
        if values.get("controller_is_public_authority"):
            raise ServiceError(
                "Art. 6(1) second subparagraph: legitimate interests (6(1)(f)) do not apply to processing by "
                "public authorities in the performance of their tasks.",
                field="lawful_basis",
            )
        if not str(values.get("legitimate_interests_assessment") or "").strip():
            raise ServiceError(
                "Art. 6(1)(f): a legitimate-interests assessment (the interest, necessity and the balancing "
                "against the data subjects' rights) is required.",
                field="legitimate_interests_assessment",
            )
    if condition == SpecialCategoryCondition.EXPLICIT_CONSENT and basis != LawfulBasis.CONSENT:
        # 9(2)(a) is explicit consent; relying on it while the Art. 6 basis is not consent is
        # a contradiction a DPO must resolve (EDPB Guidelines 05/2020 on consent, para. 91).
        raise ServiceError(
            "Art. 9(2)(a) explicit consent requires consent to be collected; the Art. 6(1) basis must be "
            "6(1)(a) consent as well.",
            field="special_category_condition",
        )
    for key, required in (("recipients", ("name",)), ("third_country_transfers", ("country", "safeguard"))):
        items = values.get(key) or []
        if not isinstance(items, list):
            raise ServiceError("Must be a list of objects.", field=key)
        for index, item in enumerate(items):
            for part in required:
                if not isinstance(item, dict) or not str(item.get(part) or "").strip():
                    article = "Art. 30(1)(d)" if key == "recipients" else "Art. 30(1)(e) and Art. 46"
                    raise ServiceError(f"{article}: every entry needs {part!r}.", field=f"{key}[{index}].{part}")


def _activity_state(activity) -> dict[str, Any]:
    state = _model_snapshot(activity, PROCESSING_ACTIVITY_FIELDS)
    state["purposes"] = sorted(activity.purposes.values_list("code", flat=True))
    state["data_subject_categories"] = sorted(activity.data_subject_categories.values_list("code", flat=True))
    state["retention"] = {
        code: period.total_seconds()
        for code, period in activity.retention_rules.values_list("data_category__code", "retention")
    }
    return state


def _activity_write_relations(activity, *, purposes, data_subject_categories, retention) -> None:
    from governance.models import ProcessingActivityDataCategory

    if purposes is not None:
        activity.purposes.set(purposes)
    if data_subject_categories is not None:
        activity.data_subject_categories.set(data_subject_categories)
    if retention is not None:
        activity.retention_rules.all().delete()
        ProcessingActivityDataCategory.objects.bulk_create(
            [
                ProcessingActivityDataCategory(processing_activity=activity, data_category=c, retention=p)
                for c, p in retention.items()
            ]
        )


@transaction.atomic
def processing_activity_create(
    *, actor: Any = None, purposes: list, data_subject_categories: list, retention: dict, **values: Any
):
    """Create one Art. 30(1) record. ``retention`` maps DataCategory -> timedelta."""
    from governance.models import ProcessingActivity

    unknown = set(values) - set(PROCESSING_ACTIVITY_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    processing_activity_validate(
        values=values, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    if ProcessingActivity.objects.filter(name=values["name"]).exists():
        raise ServiceError(f"A processing activity named {values['name']!r} already exists.", field="name")
    activity = ProcessingActivity.objects.create(**values)
    _activity_write_relations(
        activity, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    audit_event_record(
        actor=actor, action="processing_activity.created", object_type="processing_activity",
        object_id=activity.pk, details={"after": _activity_state(activity)},
    )
    return activity


@transaction.atomic
def processing_activity_update(
    *, activity, actor: Any = None, purposes: list | None = None, data_subject_categories: list | None = None,
    retention: dict | None = None, **changes: Any,
):
    """Change an Art. 30 record; the before/after diff goes to the audit chain, so no earlier
    version of the record is ever lost."""
    from governance.models import ProcessingActivity

    unknown = set(changes) - set(PROCESSING_ACTIVITY_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    activity = ProcessingActivity.objects.select_for_update().get(pk=activity.pk)
    before = _activity_state(activity)
    values = {f: getattr(activity, f) for f in PROCESSING_ACTIVITY_FIELDS} | changes
    current_retention = {r.data_category: r.retention for r in activity.retention_rules.select_related("data_category")}
    processing_activity_validate(
        values=values,
        purposes=purposes if purposes is not None else list(activity.purposes.all()),
        data_subject_categories=(
            data_subject_categories if data_subject_categories is not None
            else list(activity.data_subject_categories.all())
        ),
        retention=retention if retention is not None else current_retention,
    )
    if "name" in changes and ProcessingActivity.objects.filter(name=changes["name"]).exclude(pk=activity.pk).exists():
        raise ServiceError(f"A processing activity named {changes['name']!r} already exists.", field="name")
    for field, value in changes.items():
        setattr(activity, field, value)
    activity.save()
    _activity_write_relations(
        activity, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    after = _activity_state(activity)
    diff = {k: {"before": before[k], "after": after[k]} for k in after if before.get(k) != after[k]}
    if diff:
        audit_event_record(
            actor=actor, action="processing_activity.updated", object_type="processing_activity",
            object_id=activity.pk, details={"changes": diff},
        )
    return activity
