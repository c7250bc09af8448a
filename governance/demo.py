"""Governance: roles, an Art. 30 record under consent, pseudonymised subjects and their consents."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from governance import selectors, services
from governance.demo_context import DemoContext
from governance.models import DataCategory, DataSubjectCategory, Purpose
from governance.pseudonymisation import pseudonymise_many
from governance.roles import ALL_ROLES
from governance.selectors import audit_chain_verify

PURPOSE = "ml.training.clinical_risk"
SUBJECTS = 200
NOTICE = (
    "We would like to use your health records, pseudonymised, to train a model that estimates clinical "
    "risk. You can withdraw at any time in the patient portal; withdrawal does not affect earlier use."
)
# Fixed times, so a re-run of the demo resubmits the same events and the ledger takes them once.
FIRST_CONSENT = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def _consent_events(identifiers: list[str], rng: random.Random) -> tuple[list[dict], int, int]:
    events = []
    withdrawn = expired = 0
    evidence = {"form_url": "https://portal.hospital.example/consent/ml", "ip": "203.0.113.57",
                "user_agent": "Mozilla/5.0 (demo)", "source_system": "patient-portal"}
    for i, identifier in enumerate(identifiers):
        given_at = FIRST_CONSENT + timedelta(hours=i)
        event = {"subject": identifier, "purpose": PURPOSE, "action": "given", "occurred_at": given_at.isoformat(),
                 "notice_version": "clinical-ml-v3", "notice_text": NOTICE, "method": "web_form", "evidence": evidence}
        roll = rng.random()
        if roll < 0.05:
            # A consent limited in time, already over.
            event["expires_at"] = (given_at + timedelta(days=180)).isoformat()
            expired += 1
        events.append(event)
        if 0.05 <= roll < 0.11:
            events.append({**event, "action": "withdrawn", "occurred_at": (given_at + timedelta(days=90)).isoformat(),
                           "method": "patient_portal"})
            withdrawn += 1
    return events, withdrawn, expired


def run(ctx: DemoContext) -> None:
    for role in ALL_ROLES:
        user = services.user_ensure_with_role(username=f"demo_{role}", role=role, actor="demo")
        ctx.shared[f"user_{role}"] = user
    ctx.say(f"role users: {', '.join(f'demo_{r}' for r in ALL_ROLES)}")
    dpo = ctx.shared["user_dpo"]

    purpose = Purpose.objects.get(code=PURPOSE)
    run_tag = uuid.uuid4().hex[:6]
    categories = {c.code: c for c in DataCategory.objects.filter(code__in=["health", "demographic", "identification"])}
    record = {
        "actor": dpo,
        "purposes": [purpose],
        "data_subject_categories": [DataSubjectCategory.objects.get(code="patient")],
        "controller_name": "Example Hospital NHS Trust",
        "controller_contact": "privacy@hospital.example, 1 Hospital Road",
        "dpo_contact": "dpo@hospital.example",
        "recipients": [{"name": "Hospital ML platform team", "third_country": ""}],
        "security_measures": "Pseudonymisation on arrival (HMAC-SHA-256), encryption at rest, role-based access, "
                             "tamper-evident audit chain.",
        "lawful_basis": "consent",
        # The erasure step picks its own people; automatic Art. 17(1)(b) requests on withdrawal
        # are covered by the tests rather than opened here.
        "erasure_on_consent_withdrawal": False,
    }
    try:
        services.processing_activity_create(
            name=f"Refused example {run_tag}", retention={categories["health"]: timedelta(days=1825)}, **record
        )
    except services.ServiceError as refusal:
        ctx.fact("refused record (health data, no Art. 9(2) condition)", str(refusal))
    activity = services.processing_activity_create(
        name=f"Clinical risk model training (demo {run_tag})",
        special_category_condition="9_2_a",
        retention={
            categories["health"]: timedelta(days=5 * 365),
            categories["demographic"]: timedelta(days=5 * 365),
            categories["identification"]: timedelta(days=365),
        },
        **record,
    )
    ctx.fact("processing activity", f"{activity.name}: Art. 6(1)(a) consent + Art. 9(2)(a), retention health 5 y")

    rng = random.Random(ctx.seed)
    identifiers = [f"patient-{i:04d}@demo.example" for i in range(1, SUBJECTS + 1)]
    events, withdrawn, expired = _consent_events(identifiers, rng)
    answer = services.consent_events_ingest(events=events, actor=dpo)
    ctx.fact(
        "consent ledger",
        f"{len(events)} events submitted for {SUBJECTS} people: {answer['created']} created, "
        f"{answer['already_present']} already present",
    )
    status = selectors.consent_status_bulk(purpose=purpose, pseudonyms=pseudonymise_many(identifiers))
    ctx.fact(
        f"may be processed for {PURPOSE} now",
        f"{status.count('valid')} of {SUBJECTS} (withdrawn {status.count('withdrawn')}, "
        f"expired {status.count('expired')}, no consent {status.count('no_consent')})",
    )
    ctx.shared["processing_activity"] = activity
    ctx.shared["purpose"] = purpose
    ctx.shared["subject_identifiers"] = identifiers

    result = audit_chain_verify()
    ctx.fact("audit chain", f"{'verified' if result.ok else 'BROKEN'}, {result.checked} events")
