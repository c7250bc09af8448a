"""Governance rows for provenance tests, created directly with the ORM."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from governance.models import (
    ConsentEvent,
    DataCategory,
    DataSubject,
    ProcessingActivity,
    ProcessingActivityDataCategory,
    Purpose,
    PurposeCompatibility,
)
from governance.pseudonymisation import pseudonymise

_counter = itertools.count(1)

SCHEMA = {
    "features": [
        {"name": "age", "type": "int"},
        {"name": "bmi", "type": "float"},
        {"name": "smoker", "type": "bool"},
        {"name": "region", "type": "category", "categories": ["north", "south"]},
    ],
    "label": {"name": "outcome", "type": "bool"},
}


def purpose(code: str) -> Purpose:
    parent = None
    parts = code.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        parent, _ = Purpose.objects.get_or_create(code=prefix, defaults={"name": prefix, "parent": parent})
    return parent


def activity(
    *, lawful_basis: str = "consent", purposes: tuple[str, ...] = ("ml.training.clinical_risk",),
    retention_days: tuple[int, ...] = (),
) -> ProcessingActivity:
    n = next(_counter)
    act = ProcessingActivity.objects.create(
        name=f"prov test activity {n} {timezone.now().timestamp()}", controller_name="Clinic", controller_contact="dpo@clinic.example",
        dpo_contact="dpo@clinic.example", security_measures="encryption at rest", lawful_basis=lawful_basis,
    )
    act.purposes.set([purpose(code) for code in purposes])
    for i, days in enumerate(retention_days):
        category, _ = DataCategory.objects.get_or_create(code=f"prov-test-cat-{i}", defaults={"name": f"cat {i}"})
        ProcessingActivityDataCategory.objects.create(
            processing_activity=act, data_category=category, retention=timedelta(days=days)
        )
    return act


def consent(external_id: str, code: str, action: str, at: datetime, expires_at: datetime | None = None) -> ConsentEvent:
    subject, _ = DataSubject.objects.get_or_create(pseudonym=pseudonymise(external_id))
    return ConsentEvent.objects.create(
        event_id=f"prov-test-{next(_counter)}", subject=subject, purpose=purpose(code), action=action,
        occurred_at=at, notice_version="v1", notice_sha256="0" * 64, method="web form", expires_at=expires_at,
    )


def compatibility(original: str, compatible: str) -> PurposeCompatibility:
    user, _ = get_user_model().objects.get_or_create(username="prov-test-dpo")
    return PurposeCompatibility.objects.create(
        original_purpose=purpose(original), compatible_purpose=purpose(compatible),
        link_between_purposes="same clinical question", context_of_collection="patients of the clinic",
        nature_of_data="health data, pseudonymised", possible_consequences="none for the individual",
        safeguards="pseudonymisation, DP training", approved_by=user, approved_at=timezone.now(),
    )


def row(external_id: str, age: int = 40, outcome: bool = True) -> dict:
    return {
        "subject": external_id,
        "features": {"age": age, "bmi": 22.5, "smoker": False, "region": "north"},
        "label": outcome,
    }


def merkle_root_independent(pairs: list[tuple[int, str]]) -> str:
    """The documented definition, level by level, written without the project's code."""
    level = [hashlib.sha256(f"{rid}:{h}".encode()).hexdigest() for rid, h in pairs]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [hashlib.sha256((level[i] + level[i + 1]).encode()).hexdigest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
