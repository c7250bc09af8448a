"""Right to erasure (Art. 17): three people erased, one of them from a SISA model; a fourth
request refused under Art. 17(3)(e), with its written notice of refusal.

Uses the snapshot and the SISA model of the earlier steps when they are shared
(``ctx.shared["snapshot"]``, ``ctx.shared["sisa_model_version"]``); otherwise trains a
small SISA model itself. Writes each certificate to var/reports/erasure/.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from governance.demo_context import DemoContext
from governance.pseudonymisation import pseudonymise
from governance.selectors import audit_chain_verify
from rights import services
from rights.models import ErasureRequest


def _own_world(ctx: DemoContext):
    """A small dataset and snapshot, for when the provenance step shared none."""
    import random

    from governance.models import ConsentEvent, DataSubject, ProcessingActivity, Purpose
    from provenance import services as prov

    tag = uuid.uuid4().hex[:8]
    purpose, _ = Purpose.objects.get_or_create(code="ml.training.erasure_demo", defaults={"name": "Erasure demo"})
    activity = ProcessingActivity.objects.create(
        name=f"Erasure demo {tag}", controller_name="Demo Clinic", controller_contact="privacy@clinic.example",
        dpo_contact="dpo@clinic.example", security_measures="pseudonymisation, encryption at rest",
        lawful_basis="legitimate_interests", legitimate_interests_assessment="demo",
        recipients=[{"name": "Demo analytics processor", "third_country": ""}],
    )
    activity.purposes.set([purpose])
    identifiers = [f"erasure-demo-{tag}-{i}@demo.example" for i in range(160)]
    rng = random.Random(ctx.seed)
    dataset = prov.dataset_create(
        name=f"erasure-demo-{tag}", owner="ML platform", processing_activity=activity,
        schema={"features": [{"name": f"x{i}", "type": "float"} for i in range(4)], "label": {"name": "y", "type": "bool"}},
        actor="demo",
    )
    rows = []
    for identifier in identifiers:
        x = [round(rng.gauss(0, 1), 4) for _ in range(4)]
        rows.append({"subject": identifier, "features": {f"x{i}": v for i, v in enumerate(x)},
                     "label": x[0] - x[1] + 0.3 * rng.gauss(0, 1) > 0})
    prov.dataset_records_ingest(dataset=dataset, rows=rows, actor="demo")
    snapshot = prov.snapshot_create(dataset=dataset, purpose=purpose)
    subject = DataSubject.objects.get(pseudonym=pseudonymise(identifiers[1]))
    ConsentEvent.objects.create(
        event_id=f"erasure-demo-{tag}", subject=subject, purpose=purpose, action="given",
        occurred_at=timezone.now() - timedelta(days=30), notice_version="demo", notice_sha256="0" * 64, method="web",
    )
    return snapshot, identifiers


def _sisa_model(ctx: DemoContext, snapshot):
    from mlops import services as mlops_services
    from mlops.models import ModelVersion

    run = mlops_services.training_run_queue(
        snapshot=snapshot, name=f"erasure-demo-sisa-{uuid.uuid4().hex[:6]}", epochs=2, batch_size=16,
        noise_multiplier=1.0, seed=ctx.seed, model_spec={"hidden_sizes": [8]}, validation_split=0.0,
        holdout_fraction=0.0, sisa={"shards": 4, "slices": 2},
    )
    _wait(lambda: run.__class__.objects.filter(pk=run.pk, status__in=("succeeded", "failed", "cancelled")).exists())
    return ModelVersion.objects.get(training_run_id=run.pk)


def _wait(done, timeout: float = 900.0) -> None:
    """Embedded mode ran the task at commit; with a broker, a worker runs it: wait for it."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the Celery worker did not finish in time; is a worker running?")
        time.sleep(0.5)


def _erase(ctx: DemoContext, identifier: str, label: str) -> ErasureRequest:
    dpo = ctx.shared.get("user_dpo") or "demo"
    started = time.monotonic()
    request = services.erasure_request_receive(identifier=identifier, ground="17_1_a", channel="email", actor=dpo)
    if request.status == "completed":  # no data held: answered at once
        ctx.fact(f"erasure ({label})", f"request {request.pk}: {request.outcome}")
        return request
    services.erasure_request_verify(erasure_request=request, method="reply from the registered address", actor=dpo)
    services.erasure_request_execute_start(erasure_request=request, actor=dpo)
    _wait(lambda: ErasureRequest.objects.filter(pk=request.pk, status="completed").exists())
    request.refresh_from_db()
    receipt = request.receipt
    ctx.fact(
        f"erasure ({label})",
        f"request {request.pk} {request.status} in {time.monotonic() - started:.1f} s: {receipt.records_deleted} "
        f"record(s), {receipt.snapshots_amended} snapshot(s) amended, {receipt.models_remediated} model(s) remediated, "
        f"{receipt.consent_events_deleted} consent event(s), due {request.due_at}",
    )
    ctx.artifact(f"erasure certificate {request.pk}", Path(settings.REPORT_ROOT) / request.certificate_path)
    return request


def _refuse(ctx: DemoContext, identifier: str) -> ErasureRequest:
    """A request the DPO refuses under Art. 17(3)(e): the person gets a written notice."""
    dpo = ctx.shared.get("user_dpo") or "demo"
    request = services.erasure_request_receive(identifier=identifier, ground="17_1_a", channel="letter", actor=dpo)
    services.erasure_request_verify(erasure_request=request, method="signed letter", actor=dpo)
    request = services.erasure_request_reject(
        erasure_request=request, refusal_ground="17_3_e", actor=dpo,
        justification="The records are evidence in a pending legal claim (case DEMO-2025/118) and are kept "
                      "for that claim only, until it is settled.",
    )
    ctx.fact("erasure refused (Art. 17(3)(e))", f"request {request.pk}: notice of refusal written (Art. 12(4))")
    ctx.artifact(f"notice of refusal {request.pk}", Path(settings.REPORT_ROOT) / request.certificate_path)
    return request


def run(ctx: DemoContext) -> None:
    from governance.models import DataSubject
    from mlops.models import ModelVersion, SisaAssignment
    from provenance.models import DataRecord, SnapshotMembership

    sisa_version = ctx.shared.get("sisa_model_version")
    if sisa_version is not None:
        sisa_version = ModelVersion.objects.select_related("training_run").get(pk=sisa_version.pk)
        snapshot = sisa_version.training_run.snapshot
        identifiers = list(ctx.shared.get("subject_identifiers") or [])
    else:
        snapshot, identifiers = ctx.shared.get("snapshot"), list(ctx.shared.get("subject_identifiers") or [])
        if snapshot is None or not identifiers:
            snapshot, identifiers = _own_world(ctx)
        sisa_version = _sisa_model(ctx, snapshot)
        ctx.fact("SISA model for the demo", f"{sisa_version} (S=4, R=2) on snapshot {snapshot.pk}")

    subjects = dict(DataSubject.objects.filter(pseudonym__in=[pseudonymise(i) for i in identifiers])
                    .values_list("pseudonym", "id"))
    by_subject = {subjects[p]: i for i, p in ((i, pseudonymise(i)) for i in identifiers) if p in subjects}
    in_sisa = set(SisaAssignment.objects.filter(training_run_id=sisa_version.training_run_id).values_list("subject_id", flat=True))
    in_snapshots = set(SnapshotMembership.objects.filter(subject_id__in=by_subject).values_list("subject_id", flat=True))
    with_records = set(DataRecord.objects.filter(subject_id__in=by_subject).values_list("subject_id", flat=True))
    sisa_person = next(by_subject[s] for s in sorted(in_sisa) if s in by_subject)
    # A second person holds data no model saw (not in any snapshot), or at least consent events.
    others = [by_subject[s] for s in sorted(by_subject) if s not in in_snapshots and by_subject[s] != sisa_person]
    others.sort(key=lambda i: subjects[pseudonymise(i)] not in with_records)
    second = others[0] if others else f"unknown-{uuid.uuid4().hex[:6]}@demo.example"
    third = f"never-seen-{uuid.uuid4().hex[:6]}@demo.example"

    kept = next((by_subject[s] for s in sorted(by_subject) if by_subject[s] not in (sisa_person, second)), None)
    total = 4 if kept is not None else 3
    label = "answering erasure requests …"
    ctx.progress(label, 0, total)
    ctx.shared["erasure_request"] = _erase(ctx, sisa_person, "person in the SISA model")
    ctx.progress(label, 1, total)
    _erase(ctx, second, "person with data outside any model")
    ctx.progress(label, 2, total)
    _erase(ctx, third, "unknown person")
    ctx.progress(label, 3, total)
    if kept is not None:
        _refuse(ctx, kept)
        ctx.progress(label, 4, total)
    new = ModelVersion.objects.filter(supersedes=sisa_version).first()
    if new is not None:
        shards = new.metrics.get("retrained_shards", {})
        epsilon = "∞ (non-private)" if new.epsilon is None else f"{new.epsilon:.3f}"
        ctx.fact("SISA unlearning", f"{sisa_version} superseded by {new}: shard(s) {', '.join(shards) or '—'} "
                                    f"retrained from their last clean checkpoint; ε = {epsilon}")
        ctx.shared["sisa_model_version"] = new
    result = audit_chain_verify()
    ctx.fact("audit chain after erasure", f"{'verified' if result.ok else 'BROKEN'}, {result.checked} events")
