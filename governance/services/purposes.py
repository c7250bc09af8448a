"""The taxonomy a DPO maintains: purposes (Art. 5(1)(b)), their Art. 6(4) compatibility
assessments, data categories (Art. 9 and 10 flags) and data-subject categories.

Records of processing (``activities``) and consent events refer to these; a DPO
writes them through the admin or the API.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.services.audit import audit_event_record
from governance.services.errors import ServiceConflict, ServiceError


@transaction.atomic
def purpose_create(*, code: str, name: str, description: str = "", actor: Any = None):
    """Create a purpose; its parent is the purpose named by the code minus its last segment."""
    from django.core.exceptions import ValidationError

    from governance.models import PURPOSE_CODE_VALIDATOR, Purpose

    code = (code or "").strip()
    try:
        PURPOSE_CODE_VALIDATOR(code)
    except ValidationError as exc:
        raise ServiceError(exc.messages[0], field="code") from exc
    if not (name or "").strip():
        raise ServiceError("A purpose needs a name (Art. 5(1)(b): specified and explicit).", field="name")
    if Purpose.objects.filter(code=code).exists():
        raise ServiceError(f"A purpose with code {code!r} already exists.", field="code")
    parent = None
    if "." in code:
        parent_code = code.rpartition(".")[0]
        parent = Purpose.objects.filter(code=parent_code).first()
        if parent is None:
            raise ServiceError(
                f"The parent purpose {parent_code!r} does not exist; create it first.", field="code"
            )
    purpose = Purpose.objects.create(code=code, name=name.strip(), description=description, parent=parent)
    audit_event_record(
        actor=actor, action="purpose.created", object_type="purpose", object_id=purpose.pk,
        details={"code": code, "name": purpose.name, "parent": parent.code if parent else None},
    )
    return purpose


COMPATIBILITY_FACTORS = {
    "link_between_purposes": "Art. 6(4)(a)",
    "context_of_collection": "Art. 6(4)(b)",
    "nature_of_data": "Art. 6(4)(c)",
    "possible_consequences": "Art. 6(4)(d)",
    "safeguards": "Art. 6(4)(e)",
}


def purpose_compatibility_check(*, original_purpose, compatible_purpose, approved_by, texts: dict[str, str]) -> None:
    """Refuse an Art. 6(4) assessment that is incomplete, unneeded, duplicated or not approved by a DPO."""
    from governance.models import PurposeCompatibility
    from governance.roles import DPO, has_role

    if not has_role(approved_by, DPO):
        raise ServiceError("Only a data protection officer may approve a compatibility assessment.", field="approved_by")
    if original_purpose.pk == compatible_purpose.pk:
        raise ServiceError("A purpose is trivially compatible with itself.", field="compatible_purpose")
    if original_purpose.covers(compatible_purpose.code):
        raise ServiceError(
            f"{compatible_purpose.code!r} is already covered by {original_purpose.code!r}: no assessment needed.",
            field="compatible_purpose",
        )
    for field, text in texts.items():
        if not (text or "").strip():
            raise ServiceError(
                f"{COMPATIBILITY_FACTORS[field]} requires this factor to be assessed; it is empty.", field=field
            )
    if PurposeCompatibility.objects.filter(
        original_purpose=original_purpose, compatible_purpose=compatible_purpose
    ).exists():
        raise ServiceConflict(
            f"A compatibility assessment {original_purpose.code} → {compatible_purpose.code} already exists."
        )


@transaction.atomic
def purpose_compatibility_declare(
    *,
    original_purpose,
    compatible_purpose,
    link_between_purposes: str,
    context_of_collection: str,
    nature_of_data: str,
    possible_consequences: str,
    safeguards: str,
    approved_by,
    actor: Any = None,
):
    """Record that further processing for ``compatible_purpose`` is compatible (Art. 6(4)).

    Only a DPO may approve, and every one of the five Art. 6(4) factors must be assessed.
    """
    from governance.models import PurposeCompatibility

    texts = {
        "link_between_purposes": link_between_purposes,
        "context_of_collection": context_of_collection,
        "nature_of_data": nature_of_data,
        "possible_consequences": possible_consequences,
        "safeguards": safeguards,
    }
    purpose_compatibility_check(
        original_purpose=original_purpose, compatible_purpose=compatible_purpose, approved_by=approved_by, texts=texts
    )
    record = PurposeCompatibility.objects.create(
        original_purpose=original_purpose,
        compatible_purpose=compatible_purpose,
        approved_by=approved_by,
        approved_at=timezone.now(),
        **{k: v.strip() for k, v in texts.items()},
    )
    audit_event_record(
        actor=actor or approved_by, action="purpose_compatibility.declared", object_type="purpose_compatibility",
        object_id=record.pk,
        details={"original": original_purpose.code, "compatible": compatible_purpose.code,
                 "approved_by": approved_by.get_username()},
    )
    return record


@transaction.atomic
def data_category_create(
    *, code: str, name: str, description: str = "", special_category: str = "",
    criminal_offence_data: bool = False, actor: Any = None,
):
    from governance.models import DataCategory, SpecialCategory

    if special_category and special_category not in SpecialCategory.values:
        raise ServiceError(
            f"{special_category!r} is not an Art. 9(1) category; choose one of {', '.join(SpecialCategory.values)}.",
            field="special_category",
        )
    if DataCategory.objects.filter(code=code).exists():
        raise ServiceError(f"A data category with code {code!r} already exists.", field="code")
    category = DataCategory.objects.create(
        code=code, name=name, description=description, special_category=special_category,
        criminal_offence_data=criminal_offence_data,
    )
    audit_event_record(
        actor=actor, action="data_category.created", object_type="data_category", object_id=category.pk,
        details={"code": code, "special_category": special_category, "criminal_offence_data": criminal_offence_data},
    )
    return category


@transaction.atomic
def data_subject_category_create(
    *, code: str, name: str, description: str = "", vulnerable: bool = False, actor: Any = None
):
    from governance.models import DataSubjectCategory

    if DataSubjectCategory.objects.filter(code=code).exists():
        raise ServiceError(f"A data-subject category with code {code!r} already exists.", field="code")
    category = DataSubjectCategory.objects.create(code=code, name=name, description=description, vulnerable=vulnerable)
    audit_event_record(
        actor=actor, action="data_subject_category.created", object_type="data_subject_category",
        object_id=category.pk, details={"code": code, "vulnerable": vulnerable},
    )
    return category


def _category_update(*, category, changed: list[str], entity: str, actor: Any):
    category.save()
    audit_event_record(
        actor=actor, action=f"{entity}.updated", object_type=entity, object_id=category.pk,
        details={"code": category.code, "changed": changed},
    )
    return category


@transaction.atomic
def data_category_update(*, category, changed: list[str], actor: Any = None):
    """Save a data category the DPO edited (its code stays), recording which fields changed."""
    return _category_update(category=category, changed=changed, entity="data_category", actor=actor)


@transaction.atomic
def data_subject_category_update(*, category, changed: list[str], actor: Any = None):
    """Save a data-subject category the DPO edited (its code stays), recording which fields changed."""
    return _category_update(category=category, changed=changed, entity="data_subject_category", actor=actor)
