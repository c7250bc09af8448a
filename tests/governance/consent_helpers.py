"""Builders shared by the consent tests: events as a source system would send them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from governance import services
from governance.models import DataCategory, DataSubjectCategory, Purpose

T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def event(subject: str, purpose: str, action: str, occurred_at: datetime, **extra) -> dict:
    body = {
        "subject": subject,
        "purpose": purpose,
        "action": action,
        "occurred_at": occurred_at.isoformat(),
        "notice_version": "v1",
        "notice_text": "We use your data to train clinical risk models.",
        "method": "web_form",
    }
    body.update(extra)
    return body


def consent_activity(purpose_code: str = "ml.training.clinical_risk", **overrides):
    """A valid Art. 30 record: health data under consent and Art. 9(2)(a)."""
    values = {
        "name": f"activity for {purpose_code}",
        "controller_name": "Example Hospital",
        "controller_contact": "privacy@hospital.example",
        "dpo_contact": "dpo@hospital.example",
        "security_measures": "Pseudonymisation, encryption at rest, role-based access.",
        "lawful_basis": "consent",
        "special_category_condition": "9_2_a",
    }
    values.update(overrides)
    return services.processing_activity_create(
        actor="test",
        purposes=[Purpose.objects.get(code=purpose_code)],
        data_subject_categories=[DataSubjectCategory.objects.get(code="patient")],
        retention={DataCategory.objects.get(code="health"): timedelta(days=1825)},
        **values,
    )
