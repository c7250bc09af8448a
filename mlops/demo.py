"""DP training through Celery: a DP model and a SISA ensemble, the budget ledger and an MIA audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from django.conf import settings
from django.utils import timezone

from governance.demo_context import DemoContext
from governance.services import ServiceConflict
from mlops import display as mlops_display
from mlops import selectors, services
from mlops.models import FINISHED_STATUSES, CanaryAudit, MembershipInferenceAudit, ModelVersion, TrainingRun
from mlops.signals import training_run_progress


def _fallback_snapshot(ctx: DemoContext, stamp: str):
    """A small synthetic snapshot when the provenance step shared none."""
    from governance.models import ConsentEvent, DataSubject, ProcessingActivity, Purpose
    from provenance.merkle import merkle_root
    from provenance.models import DataRecord, Dataset, Snapshot, SnapshotMembership
    from provenance.schema import content_hash

    purpose, _ = Purpose.objects.get_or_create(code="ml.training.demo", defaults={"name": "ML training (demo)"})
    activity = ProcessingActivity.objects.create(
        name=f"mlops demo {stamp}", controller_name="Demo Ltd", controller_contact="privacy@demo.test",
        dpo_contact="dpo@demo.test", security_measures="encryption at rest", lawful_basis="consent",
    )
    schema = {"features": [{"name": f"x{i}", "type": "float"} for i in range(8)], "label": {"name": "y", "type": "int"}}
    dataset = Dataset.objects.create(name=f"mlops-demo-{stamp}", owner="demo", processing_activity=activity, schema=schema)
    rng = np.random.default_rng(ctx.seed)
    X = rng.normal(size=(600, 8))
    y = (X @ rng.normal(size=8) > 0).astype(int)
    subjects = DataSubject.objects.bulk_create([DataSubject(pseudonym=f"mlops-demo-{stamp}-{i}") for i in range(600)])
    now = timezone.now()
    records = DataRecord.objects.bulk_create([
        DataRecord(dataset=dataset, subject=s, features=features, label=label,
                   content_hash=content_hash(features, label), ingested_at=now)
        for s, (features, label) in zip(
            subjects, [({f"x{j}": float(X[i, j]) for j in range(8)}, int(y[i])) for i in range(600)], strict=True
        )
    ])
    # Real hashes and root: training verifies a snapshot against its records first.
    root = merkle_root(sorted((r.pk, r.content_hash) for r in records))
    snapshot = Snapshot.objects.create(dataset=dataset, purpose=purpose, taken_for=now, lawful_basis="consent",
                                       included_count=600, included_subjects=600, merkle_root=root)
    SnapshotMembership.objects.bulk_create(
        [SnapshotMembership(snapshot=snapshot, record=r, subject=r.subject) for r in records]
    )
    # Its people consented: training re-checks a snapshot's members against the ledger.
    ConsentEvent.objects.bulk_create([
        ConsentEvent(event_id=f"mlops-demo-{stamp}-{s.pk}", subject=s, purpose=purpose, action="given",
                     occurred_at=now, notice_version="demo", notice_sha256="0" * 64, method="demo")
        for s in subjects
    ])
    ctx.say(f"no snapshot shared: built a synthetic one (#{snapshot.pk}, 600 records)")
    return snapshot


class _Epochs:
    """A run's epochs as progress lines: ``label epoch 3/6`` (a SISA run counts its shards' epochs).

    Embedded mode trains the run in this process, inside ``training_run_queue``, before it
    returns: the progress signal is the only way to see its epochs. With a broker a worker
    trains it, and ``_wait`` reads the same progress from the run row.
    """

    def __init__(self, ctx: DemoContext, label: str):
        self.ctx, self.label = ctx, f"{label} … epoch"
        self.run_id: int | None = None
        self.total = 0

    def __call__(self, *, run_id: int, progress: dict, **kwargs) -> None:
        # The first run that reports is ours; audits train their models without a run.
        if self.run_id is None:
            self.run_id = run_id
        if run_id != self.run_id or not progress.get("epochs"):
            return
        epochs, shards = int(progress["epochs"]), int(progress.get("shards") or 1)
        self.total = epochs * shards
        self.ctx.progress(self.label, int(progress.get("shard") or 0) * epochs + int(progress.get("epoch") or 0), self.total)


@contextmanager
def _watch_epochs(ctx: DemoContext, label: str) -> Iterator[_Epochs]:
    watch = _Epochs(ctx, label)
    training_run_progress.connect(watch, weak=False)
    try:
        yield watch
    finally:
        training_run_progress.disconnect(watch)


def _wait(run: TrainingRun, watch: _Epochs, timeout: float = 300.0) -> TrainingRun:
    # Embedded mode ran the task in-process at commit; with a broker a worker does it.
    deadline = time.monotonic() + timeout
    run.refresh_from_db()
    while run.status not in FINISHED_STATUSES and time.monotonic() < deadline:
        watch(run_id=run.pk, progress=run.progress or {})
        time.sleep(0.5)
        run.refresh_from_db()
    watch(run_id=run.pk, progress=run.progress or {})  # the last epoch, if the loop missed it
    return run


def _mia(version: ModelVersion, attack: str = "loss") -> MembershipInferenceAudit | None:
    deadline = time.monotonic() + (0 if settings.CELERY_EMBEDDED else 120)
    while True:
        audit = version.membership_inference_audits.filter(attack=attack).first()
        if audit is not None or time.monotonic() >= deadline:
            return audit
        time.sleep(0.5)


def _strong_audits(ctx: DemoContext, version: ModelVersion, label: str) -> None:
    """LiRA and the canary ε bound, when they ran (settings may turn them off)."""
    lira = _mia(version, "lira")
    if lira:
        figures = dict(lira.figures_text())
        ctx.fact(f"{label} MIA (LiRA, {lira.n_references} reference models)",
                 f"{lira.auc_text()}, TPR@1%FPR {figures['TPR at 1% FPR']}")
    canary = CanaryAudit.objects.filter(model_version=version).first()
    if canary:
        verdict = "PRIVACY BUG" if canary.flagged else "consistent with the claim"
        ctx.fact(f"{label} empirical ε (canary audit run)", f"{canary.bound_text()}: {verdict}")


def _eps(value: float | None) -> str:
    return "∞ (non-private)" if value is None else f"{value:.3f}"


def run(ctx: DemoContext) -> None:
    stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
    snapshot = ctx.shared.get("snapshot") or _fallback_snapshot(ctx, stamp)
    dpo = ctx.shared.get("user_dpo")
    engineer = ctx.shared.get("user_ml_engineer")
    dataset = snapshot.dataset
    n = snapshot.included_count
    batch = max(8, min(64, n // 10))

    budget = services.privacy_budget_set(dataset=dataset, epsilon_cap=20.0, delta=1e-5, actor=dpo) if dpo else None
    if budget:
        ctx.say(f"DPO set the privacy budget of {dataset.name}: ε ≤ {budget.epsilon_cap:g} at δ = {budget.delta:g}")

    with _watch_epochs(ctx, "training the DP model") as watch:
        dp_run = services.training_run_queue(
            snapshot=snapshot, name=f"demo-dp-{stamp}", epochs=3, batch_size=batch, target_epsilon=3.0,
            model_spec={"hidden_sizes": [32]}, seed=ctx.seed, requested_by=engineer,
        )
        dp_run = _wait(dp_run, watch)
    if dp_run.status != "succeeded":
        ctx.fact("DP training run", f"#{dp_run.pk} {dp_run.status}: {dp_run.error}")
        return
    version = dp_run.model_versions.get()
    ctx.fact("DP model", f"{version} (run #{dp_run.pk}): ε = {_eps(version.epsilon)} at δ = {version.delta:.1e}, "
             f"σ = {dp_run.noise_multiplier:.3f}, val. accuracy {version.metrics.get('val_accuracy') or 0:.3f}")
    ctx.fact("DP model, for a person", mlops_display.person_guarantee_words(
        epsilon=version.epsilon, delta=version.delta, max_records_per_person=dp_run.max_records_per_person))
    audit = _mia(version)
    if audit:
        figures = dict(audit.figures_text())
        ctx.fact("DP model MIA (loss threshold)", f"{audit.auc_text()}, advantage {figures['Advantage (max TPR − FPR)']}, "
                 f"TPR@1%FPR {figures['TPR at 1% FPR']} ({audit.sizes_text()})")
    _strong_audits(ctx, version, "DP model")
    ctx.shared["model_version"] = version

    with _watch_epochs(ctx, "training the SISA ensemble (3 shards)") as watch:
        sisa_run = services.training_run_queue(
            snapshot=snapshot, name=f"demo-sisa-{stamp}", epochs=2, batch_size=max(4, batch // 4), noise_multiplier=1.1,
            model_spec={"hidden_sizes": [32]}, seed=ctx.seed, sisa={"shards": 3, "slices": 2}, requested_by=engineer,
        )
        sisa_run = _wait(sisa_run, watch)
    if sisa_run.status != "succeeded":
        ctx.fact("SISA training run", f"#{sisa_run.pk} {sisa_run.status}: {sisa_run.error}")
        return
    sisa_version = sisa_run.model_versions.get()
    ctx.fact("SISA ensemble (S=3, R=2)", f"{sisa_version}: ε = {_eps(sisa_version.epsilon)} (max over shards "
             f"{', '.join(f'{e:.3f}' for e in sisa_version.metrics.get('shard_epsilons', []))}), "
             f"{sisa_run.sisa_assignments.count()} subjects assigned, {sisa_run.sisa_checkpoints.count()} checkpoints")
    ctx.fact("SISA ensemble, for a person", mlops_display.person_guarantee_words(
        epsilon=sisa_version.epsilon, delta=sisa_version.delta, max_records_per_person=sisa_run.max_records_per_person))
    sisa_audit = _mia(sisa_version)
    if sisa_audit:
        ctx.fact("SISA ensemble MIA", f"{sisa_audit.auc_text()}, advantage {dict(sisa_audit.figures_text())['Advantage (max TPR − FPR)']}")
    ctx.shared["sisa_model_version"] = sisa_version

    status = selectors.privacy_budget_status(dataset=dataset)
    ctx.fact("privacy budget ledger", f"{dataset.name}: spent ε = {_eps(status['spent_epsilon'])} at δ = "
             f"{status['delta']:g} over {len(status['runs'])} run(s), cap {status['epsilon_cap']}")
    if budget:
        try:
            services.training_run_queue(snapshot=snapshot, name=f"demo-greedy-{stamp}", epochs=50,
                                        batch_size=batch, noise_multiplier=0.5, requested_by=engineer)
        except ServiceConflict as refusal:
            ctx.fact("greedy run (σ = 0.5, 50 epochs) refused with 409", str(refusal))
