"""DPIA report cost at full size against the same report on a dataset 100 times smaller.

Both activities are built in this run with the same shape (two parents joined into one
dataset, a snapshot, a DP model with its MIA audit); only the number of records and
subjects differs. Reports read through aggregates, so their query count must not grow
and their time should grow far slower than the data.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from assessments import services
from assessments.reports.dpia import dpia_report_render
from assessments.reports.evidence import dpia_report_data
from benchmarks.harness import BenchContext, Result
from governance import services as gov_services
from governance.models import DataCategory, ProcessingActivity, ProcessingActivityDataCategory, Purpose


def _world(n_subjects: int, records_per_subject: int) -> int:
    from mlops.models import MembershipInferenceAudit, ModelVersion, TrainingRun
    from provenance.models import DataRecord, Dataset, Snapshot

    tag = uuid.uuid4().hex[:8]
    purpose, _ = Purpose.objects.get_or_create(code=f"ml.training.bench_reports_{tag}", defaults={"name": "bench"})
    health, _ = DataCategory.objects.get_or_create(code="health", defaults={"name": "Health data", "special_category": "health"})
    activity = ProcessingActivity.objects.create(
        name=f"bench reports {tag}", controller_name="Bench", controller_contact="c@bench.test", dpo_contact="d@bench.test",
        security_measures="encryption", lawful_basis="public_task", special_category_condition="9_2_j",
    )
    activity.purposes.add(purpose)
    ProcessingActivityDataCategory.objects.create(processing_activity=activity, data_category=health, retention=timedelta(days=365))
    schema = {"features": [{"name": "x0", "type": "float"}], "label": {"name": "y", "type": "bool"}}
    parents = [Dataset.objects.create(name=f"{p}-{tag}", owner="b", processing_activity=activity, schema=schema) for p in "ab"]
    joined = Dataset.objects.create(name=f"joined-{tag}", owner="b", processing_activity=activity, schema=schema)
    joined.parents.set(parents)
    mapping = gov_services.data_subject_ensure_many(pseudonyms=[f"{tag}{i:010d}".ljust(64, "0") for i in range(n_subjects)])
    now = timezone.now()
    DataRecord.objects.bulk_create(
        (
            DataRecord(dataset=joined, subject_id=sid, features={"x0": 0.5}, label=True, content_hash="0" * 64, ingested_at=now)
            for sid in mapping.values()
            for _ in range(records_per_subject)
        ),
        batch_size=5000,
    )
    snapshot = Snapshot.objects.create(
        dataset=joined, purpose=purpose, taken_for=now, lawful_basis="public_task", included_count=n_subjects * records_per_subject,
        included_subjects=n_subjects, merkle_root="a" * 64, completed_at=now,
    )
    run = TrainingRun.objects.create(
        name=f"bench-{tag}", snapshot=snapshot, target_delta=1e-5, status="succeeded", epsilon=3.0, delta=1e-5,
        epoch_metrics=[{"epoch": e, "epsilon": e * 0.6} for e in range(1, 6)],
    )
    mv = ModelVersion.objects.create(
        training_run=run, name=run.name, version=1, artifact_path="x", artifact_sha256="0" * 64, epsilon=3.0, delta=1e-5
    )
    MembershipInferenceAudit.objects.create(
        model_version=mv, auc=0.52, advantage=0.03, tpr_at_1pct_fpr=0.01, tpr_at_01pct_fpr=0.001, n_members=10,
        n_nonmembers=10, roc=[[i / 50, min(1.0, i / 50 + 0.02)] for i in range(51)],
    )
    dpia = services.dpia_create(processing_activity=activity, actor="bench", model_version_ids=[mv.pk])
    for i in range(5):
        services.dpia_risk_add(dpia=dpia, actor="bench", description=f"risk {i}", likelihood="possible", severity="significant")
    return dpia.pk


def _measure(dpia_id: int, out: Path, repeats: int = 3) -> tuple[float, int]:
    with CaptureQueriesContext(connection) as ctx:
        dpia_report_data(dpia_id=dpia_id)
    queries = len(ctx.captured_queries)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dpia_report_render(object_id=dpia_id, path=out)
        best = min(best, time.perf_counter() - start)
    return best, queries


def run(ctx: BenchContext) -> list[Result]:
    subjects = ctx.n(50000, 100)
    large = _world(subjects, 4)
    small = _world(max(1, subjects // 100), 4)
    with tempfile.TemporaryDirectory() as tmp:
        large_s, large_q = _measure(large, Path(tmp) / "large.pdf")
        small_s, small_q = _measure(small, Path(tmp) / "small.pdf")
    note = f"{subjects} subjects / {subjects * 4} records vs {max(1, subjects // 100)} / {max(1, subjects // 100) * 4}"
    return [
        Result(
            name="DPIA report render time (selectors + PDF), 100× the data",
            value=large_s, unit="s", baseline="same report on 1/100 of the data", baseline_value=small_s,
            target="ratio <= 3", note=note,
        ),
        Result(
            name="DPIA report database queries, 100× the data",
            value=large_q, unit="queries", baseline="same report on 1/100 of the data", baseline_value=small_q,
            target="ratio <= 1.0", note=note,
        ),
    ]
