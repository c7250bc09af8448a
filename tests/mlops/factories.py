"""Small synthetic snapshots for MLOps tests, built directly with the ORM.

Built without provenance's services so these tests do not depend on snapshot-creation
details; each person has one record, features are Gaussian and the label is a noisy
linear rule (learnable, not trivially).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
from django.utils import timezone

from governance.models import ConsentEvent, DataSubject, ProcessingActivity, Purpose
from provenance.merkle import merkle_root
from provenance.models import DataRecord, Dataset, Snapshot, SnapshotMembership
from provenance.schema import content_hash


def make_snapshot(
    *,
    n: int = 300,
    d: int = 10,
    seed: int = 0,
    classes: int = 2,
    label_noise: float = 0.1,
    single_class: bool = False,
    name: str | None = None,
    health_condition: bool = False,
    records_per_subject: int = 1,
) -> Snapshot:
    """``health_condition``: add a category feature "condition" ("none"/"diabetes"), marked as
    Art. 9 special-category data, independent of the other features, that moves the label.
    ``records_per_subject``: record i belongs to person i // records_per_subject."""
    tag = uuid.uuid4().hex[:10]
    purpose, _ = Purpose.objects.get_or_create(code="ml.training.test", defaults={"name": "ML training (test)"})
    activity = ProcessingActivity.objects.create(
        name=f"activity-{tag}",
        controller_name="Acme",
        controller_contact="privacy@acme.test",
        dpo_contact="dpo@acme.test",
        security_measures="encryption at rest",
        lawful_basis="consent",
    )
    activity.purposes.add(purpose)
    schema = {"features": [{"name": f"x{j}", "type": "float"} for j in range(d)], "label": {"name": "y", "type": "int"}}
    if health_condition:
        schema["features"].append(
            {"name": "condition", "type": "category", "categories": ["none", "diabetes"], "special_category": True}
        )
    dataset = Dataset.objects.create(
        name=name or f"dataset-{tag}", owner="ml-team", processing_activity=activity, schema=schema
    )
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=(d, classes))
    y = (X @ w).argmax(axis=1)
    flip = rng.random(n) < label_noise
    y[flip] = rng.integers(0, classes, size=int(flip.sum()))
    if single_class:
        y[:] = 1
    n_subjects = -(-n // records_per_subject)
    subjects = DataSubject.objects.bulk_create([DataSubject(pseudonym=f"{tag}-{i:06d}") for i in range(n_subjects)])
    if subjects[0].pk is None:  # backends that do not return ids from bulk_create
        subjects = list(DataSubject.objects.filter(pseudonym__startswith=f"{tag}-").order_by("pseudonym"))
    now = timezone.now()
    rows = [({f"x{j}": float(X[i, j]) for j in range(d)}, int(y[i])) for i in range(n)]
    if health_condition:
        condition = rng.random(n) < 0.4
        # The condition moves the label (for some people), so a model can learn it — and
        # an over-fitted one memorises it per person.
        y = np.where(condition & (rng.random(n) < 0.5), (y + 1) % classes, y)
        rows = [({**features, "condition": "diabetes" if condition[i] else "none"}, int(y[i]))
                for i, (features, _) in enumerate(rows)]
    DataRecord.objects.bulk_create(
        [
            DataRecord(
                dataset=dataset,
                subject=subjects[i // records_per_subject],
                features=features,
                label=label,
                # Genuine hashes and root: training verifies the snapshot against its records.
                content_hash=content_hash(features, label),
                ingested_at=now,
            )
            for i, (features, label) in enumerate(rows)
        ]
    )
    records = list(DataRecord.objects.filter(dataset=dataset).order_by("id").values_list("id", "subject_id", "content_hash"))
    snapshot = Snapshot.objects.create(
        dataset=dataset,
        purpose=purpose,
        taken_for=now,
        lawful_basis="consent",
        included_count=n,
        included_subjects=n_subjects,
        excluded_counts={},
        merkle_root=merkle_root((r, h) for r, _, h in records),
    )
    SnapshotMembership.objects.bulk_create(
        [SnapshotMembership(snapshot=snapshot, record_id=r, subject_id=s) for r, s, _ in records]
    )
    # A consent snapshot of people who consented: training re-checks its members' consent.
    consent_given(subject_ids=sorted({s for _, s, _ in records}), purpose=purpose, at=now - timedelta(hours=1))
    return snapshot


def consent_given(*, subject_ids, purpose: Purpose, at) -> None:
    ConsentEvent.objects.bulk_create([
        ConsentEvent(
            event_id=f"factory-{uuid.uuid4().hex}", subject_id=sid, purpose=purpose, action="given", occurred_at=at,
            notice_version="v1", notice_sha256="0" * 64, method="web_form",
        )
        for sid in sorted(set(subject_ids))
    ])
