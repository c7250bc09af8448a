"""Training data for the benchmarks that train through the services: one home for the
consent-covered snapshot they need (training re-checks every member's consent)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
from django.utils import timezone


def consented_snapshot(n: int, d: int, seed: int, *, bounds: tuple[float, float] | None = None, tag: str = "bench"):
    """A snapshot of ``n`` records of ``d`` float features and a linear binary label, with real
    content hashes and Merkle root, every member's consent for the purpose recorded. With
    ``bounds`` every feature publishes them and values are drawn inside; otherwise normal."""
    from governance.models import ConsentEvent, DataSubject, ProcessingActivity, Purpose
    from provenance.merkle import merkle_root
    from provenance.models import DataRecord, Dataset, Snapshot, SnapshotMembership
    from provenance.schema import content_hash

    tag = f"{tag}-{uuid.uuid4().hex[:10]}"
    purpose, _ = Purpose.objects.get_or_create(code="ml.training.bench", defaults={"name": "ML training (bench)"})
    activity = ProcessingActivity.objects.create(
        name=tag, controller_name="Bench", controller_contact="b@bench.test",
        dpo_contact="dpo@bench.test", security_measures="-", lawful_basis="consent",
    )
    activity.purposes.add(purpose)
    extra = {"min": bounds[0], "max": bounds[1]} if bounds else {}
    schema = {"features": [{"name": f"x{j}", "type": "float", **extra} for j in range(d)],
              "label": {"name": "y", "type": "int"}}
    dataset = Dataset.objects.create(name=tag, owner="bench", processing_activity=activity, schema=schema)
    rng = np.random.default_rng(seed)
    X = rng.uniform(bounds[0], bounds[1], size=(n, d)) if bounds else rng.normal(size=(n, d))
    y = (X @ rng.normal(size=d) > 0).astype(int)
    DataSubject.objects.bulk_create([DataSubject(pseudonym=f"{tag}-{i}") for i in range(n)], batch_size=5000)
    subject_ids = list(
        DataSubject.objects.filter(pseudonym__startswith=f"{tag}-").order_by("id").values_list("id", flat=True)
    )
    now = timezone.now()
    rows = [({f"x{j}": float(X[i, j]) for j in range(d)}, int(y[i])) for i in range(n)]
    DataRecord.objects.bulk_create(
        [DataRecord(dataset=dataset, subject_id=s, features=features, label=label,
                    content_hash=content_hash(features, label), ingested_at=now)
         for s, (features, label) in zip(subject_ids, rows, strict=True)],
        batch_size=5000,
    )
    records = list(DataRecord.objects.filter(dataset=dataset).order_by("id").values_list("id", "subject_id", "content_hash"))
    # Real hashes and root: training verifies a snapshot against its records first.
    snapshot = Snapshot.objects.create(dataset=dataset, purpose=purpose, taken_for=now, lawful_basis="consent",
                                       included_count=n, included_subjects=n,
                                       merkle_root=merkle_root((r, h) for r, _, h in records))
    SnapshotMembership.objects.bulk_create(
        [SnapshotMembership(snapshot=snapshot, record_id=r, subject_id=s) for r, s, _ in records], batch_size=5000,
    )
    ConsentEvent.objects.bulk_create(
        [ConsentEvent(event_id=f"{tag}-{s}", subject_id=s, purpose=purpose, action="given",
                      occurred_at=now - timedelta(hours=1), notice_version="v1", notice_sha256="0" * 64,
                      method="web_form")
         for s in subject_ids],
        batch_size=5000,
    )
    return snapshot
