"""Small worlds for the erasure tests: an activity, a dataset of people, snapshots."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone

from governance.models import DataSubject, ProcessingActivity, Purpose
from governance.pseudonymisation import pseudonymise
from provenance.merkle import merkle_root
from provenance.models import DataRecord, Dataset, Snapshot, SnapshotMembership
from provenance.schema import content_hash


def subject_for(identifier: str) -> DataSubject:
    return DataSubject.objects.get_or_create(pseudonym=pseudonymise(identifier))[0]


def activity(*, erasure_on_withdrawal: bool = False, recipients: list | None = None) -> ProcessingActivity:
    tag = uuid.uuid4().hex[:8]
    purpose, _ = Purpose.objects.get_or_create(code=f"ml.erasure_test_{tag}", defaults={"name": "Erasure test"})
    act = ProcessingActivity.objects.create(
        name=f"Erasure test {tag}", controller_name="Clinic", controller_contact="dpo@clinic.example",
        dpo_contact="dpo@clinic.example", security_measures="encryption", lawful_basis="consent",
        erasure_on_consent_withdrawal=erasure_on_withdrawal,
        recipients=recipients if recipients is not None else [{"name": "Acme Analytics", "third_country": ""}],
    )
    act.purposes.set([purpose])
    return act


def dataset_with_records(*, act: ProcessingActivity, rows: list[tuple[DataSubject, dict, int]]) -> Dataset:
    ds = Dataset.objects.create(
        name=f"erasure-ds-{uuid.uuid4().hex[:8]}", owner="ml", processing_activity=act,
        schema={"features": [{"name": "x0", "type": "float"}, {"name": "x1", "type": "float"}],
                "label": {"name": "y", "type": "int"}},
    )
    now = timezone.now() - timedelta(days=1)
    DataRecord.objects.bulk_create([
        DataRecord(
            dataset=ds, subject=subject, features=features, label=label, ingested_at=now,
            content_hash=content_hash(features, label),  # the real definition: training verifies it
        )
        for subject, features, label in rows
    ])
    return ds


def snapshot_of(ds: Dataset) -> Snapshot:
    records = list(DataRecord.objects.filter(dataset=ds).order_by("id").values_list("id", "subject_id", "content_hash"))
    snap = Snapshot.objects.create(
        dataset=ds, purpose=ds.processing_activity.purposes.first(), taken_for=timezone.now(),
        lawful_basis="consent", included_count=len(records), included_subjects=len({r[1] for r in records}),
        merkle_root=merkle_root((r[0], r[2]) for r in records), completed_at=timezone.now(),
    )
    SnapshotMembership.objects.bulk_create(
        [SnapshotMembership(snapshot=snap, record_id=r[0], subject_id=r[1]) for r in records]
    )
    # A consent snapshot of people who consented (training re-checks its members' consent):
    # those with no consent event for the purpose yet are given one.
    from governance.models import ConsentEvent
    from tests.mlops.factories import consent_given

    known = set(ConsentEvent.objects.filter(purpose=snap.purpose).values_list("subject_id", flat=True))
    consent_given(subject_ids=[r[1] for r in records if r[1] not in known], purpose=snap.purpose,
                  at=timezone.now() - timedelta(hours=1))
    return snap


def people_dataset(*, act: ProcessingActivity, people: list[DataSubject], seed: int = 0, d: int = 4,
                   records_per_person: int = 1) -> Dataset:
    """A learnable synthetic dataset: Gaussian features, a noisy linear label."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    rows = []
    for subject in people:
        for _ in range(records_per_person):
            x = rng.normal(size=d)
            label = int(x @ w + 0.3 * rng.normal() > 0)
            rows.append((subject, {f"x{j}": round(float(x[j]), 6) for j in range(d)}, label))
    ds = dataset_with_records(act=act, rows=rows)
    ds.schema = {"features": [{"name": f"x{j}", "type": "float"} for j in range(d)], "label": {"name": "y", "type": "int"}}
    ds.save(update_fields=["schema"])
    return ds


def crowd(n: int, tag: str | None = None) -> list[DataSubject]:
    tag = tag or uuid.uuid4().hex[:8]
    return [subject_for(f"person-{tag}-{i}@example.org") for i in range(n)]


def train(*, snapshot: Snapshot, name: str, sisa: dict | None = None, wait: bool = True):
    """Queue a tiny DP training run through mlops's service (and wait for it)."""
    from mlops import services as mlops_services
    from tests.mlops.helpers import wait_for_run

    run = mlops_services.training_run_queue(
        snapshot=snapshot, name=name, epochs=2, batch_size=16, noise_multiplier=1.0, seed=3,
        model_spec={"hidden_sizes": [8]}, validation_split=0.0, holdout_fraction=0.0, sisa=sisa,
    )
    if wait:
        run = wait_for_run(run.pk)
        assert run.status == "succeeded", run.error
    return run
