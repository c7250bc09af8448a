"""A small but complete world for DPIA and report tests: an activity with special-category
data, two parent datasets combined into a derived one, records, a snapshot, a DP training
run, a model version and its membership-inference audit, and a privacy budget."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone
from pypdf import PdfReader

from governance import services as gov_services
from governance.models import (
    DataCategory,
    DataSubjectCategory,
    ProcessingActivity,
    ProcessingActivityDataCategory,
    Purpose,
)

EPSILON = 2.718
DELTA = 1e-5
AUC = 0.5321
TPR_1PCT = 0.0123
EPOCH_EPSILONS = [1.105, 1.902, 2.718]


@dataclass(eq=False)
class World:
    activity: ProcessingActivity
    purpose: Purpose
    datasets: list
    derived: object
    snapshot: object
    run: object
    model_version: object
    n_subjects: int
    n_records: int


def pdf_text(content: bytes) -> str:
    reader = PdfReader(io.BytesIO(content))
    # Table cells wrap; collapse whitespace so phrases are found whole.
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def make_activity(name: str | None = None) -> tuple[ProcessingActivity, Purpose]:
    suffix = uuid.uuid4().hex[:8]
    purpose, _ = Purpose.objects.get_or_create(code=f"ml.training.reports_{suffix}", defaults={"name": "Clinical risk model"})
    health, _ = DataCategory.objects.get_or_create(code="health", defaults={"name": "Health data", "special_category": "health"})
    contact, _ = DataCategory.objects.get_or_create(code="contact", defaults={"name": "Contact details"})
    patients, _ = DataSubjectCategory.objects.get_or_create(code="patients", defaults={"name": "Patients", "vulnerable": True})
    activity = ProcessingActivity.objects.create(
        name=name or f"Clinical risk scoring {suffix}",
        description="Training a readmission-risk model on pseudonymised hospital records.",
        controller_name="St. Example Hospital",
        controller_contact="privacy@example-hospital.test",
        joint_controller="Example Research Institute",
        representative="EU Rep Ltd, Dublin",
        dpo_contact="dpo@example-hospital.test",
        recipients=[{"name": "Cloud hosting processor", "third_country": ""}, {"name": "Research partner", "third_country": "United States"}],
        third_country_transfers=[{"country": "United States", "safeguard": "Standard contractual clauses (Art. 46(2)(c))"}],
        security_measures="Pseudonymisation with HMAC-SHA-256; encryption at rest; role-based access; hash-chained audit log.",
        lawful_basis="public_task",
        special_category_condition="9_2_j",
    )
    activity.purposes.add(purpose)
    activity.data_subject_categories.add(patients)
    ProcessingActivityDataCategory.objects.create(processing_activity=activity, data_category=health, retention=timedelta(days=3650))
    ProcessingActivityDataCategory.objects.create(processing_activity=activity, data_category=contact, retention=timedelta(days=365))
    return activity, purpose


def make_world(*, n_subjects: int = 4, records_per_subject: int = 2, with_model: bool = True) -> World:
    from mlops.models import MembershipInferenceAudit, ModelVersion, PrivacyBudget, TrainingRun
    from provenance.models import DataRecord, Dataset, Snapshot

    activity, purpose = make_activity()
    suffix = uuid.uuid4().hex[:8]
    schema = {"features": [{"name": "age", "type": "int"}, {"name": "bmi", "type": "float"}], "label": {"name": "readmitted", "type": "bool"}}
    parents = [
        Dataset.objects.create(name=f"{label}-{suffix}", owner="data team", processing_activity=activity, schema=schema, source_system=label)
        for label in ("ehr", "claims")
    ]
    derived = Dataset.objects.create(
        name=f"joined-{suffix}", owner="data team", processing_activity=activity, schema=schema, transformation="join on pseudonym"
    )
    derived.parents.set(parents)
    mapping = gov_services.data_subject_ensure_many(pseudonyms=[f"{suffix}-{i:06d}".ljust(64, "0") for i in range(n_subjects)])
    now = timezone.now()
    DataRecord.objects.bulk_create(
        [
            DataRecord(dataset=derived, subject_id=sid, features={"age": 40 + j, "bmi": 22.5}, label=bool(j % 2),
                       content_hash=uuid.uuid4().hex * 2, ingested_at=now)
            for sid in mapping.values()
            for j in range(records_per_subject)
        ]
    )
    n_records = n_subjects * records_per_subject
    snapshot = Snapshot.objects.create(
        dataset=derived, purpose=purpose, taken_for=now, lawful_basis="public_task", included_count=n_records,
        included_subjects=n_subjects, excluded_counts={"no_consent": 0}, merkle_root="ab" * 32, completed_at=now,
    )
    run = model_version = None
    if with_model:
        run = TrainingRun.objects.create(
            name=f"readmission-{suffix}", snapshot=snapshot, target_epsilon=3.0, target_delta=DELTA, max_grad_norm=1.2,
            epochs=3, status="succeeded", noise_multiplier=1.1, sample_rate=0.01, steps=300, epsilon=EPSILON, delta=DELTA,
            n_train=n_subjects, finished_at=now,
            epoch_metrics=[{"epoch": i + 1, "epsilon": e, "loss": 0.5, "val_accuracy": 0.7} for i, e in enumerate(EPOCH_EPSILONS)],
        )
        model_version = ModelVersion.objects.create(
            training_run=run, name=run.name, version=1, artifact_path="x.safetensors", artifact_sha256="cd" * 32,
            epsilon=EPSILON, delta=DELTA, metrics={"val_accuracy": 0.71},
        )
        MembershipInferenceAudit.objects.create(
            model_version=model_version, auc=AUC, advantage=0.041, tpr_at_1pct_fpr=TPR_1PCT, tpr_at_01pct_fpr=0.001,
            n_members=n_subjects, n_nonmembers=n_subjects, roc=[[0, 0], [0.01, 0.0123], [0.5, 0.55], [1, 1]],
        )
        PrivacyBudget.objects.create(dataset=derived, epsilon_cap=8.0, delta=DELTA, set_at=now)
    return World(activity, purpose, parents, derived, snapshot, run, model_version, n_subjects, n_records)


def complete_payload(**overrides) -> dict:
    payload = {
        "necessity_and_proportionality": "Only age and BMI are used; identifiers are pseudonymised on arrival.",
        "measures": "DP-SGD training; membership-inference audit before release.",
        "dpo_advice": "Proceed with the DP guarantee and the yearly review.",
        "views_not_sought_reason": "Patient panel consulted through the ethics committee.",
        "review_date": (timezone.localdate() + timedelta(days=365)).isoformat(),
    }
    payload.update(overrides)
    return payload
